"""The device interface: everything the training loop asks of the hardware.

A device kind is one `Device` subclass registered with `@register_device`:

    kind                 the config name (training.device)
    distributed_backend  torch.distributed backend for several ranks (gloo, nccl)
    available()          can this machine run it?
    default_precision()  what `training.precision: auto` means here
    synchronize()        wait for queued work (honest timings)
    rng_state()          device-side RNG state (checkpoints), set_rng_state()
    step_runner(...)     what runs one optimizer step: `bert_ipu.train.step.TorchStepRunner`
                         for torch devices (`train.pipeline_step.PipelineStepRunner` when
                         pipelined); the IPU brings its own (PopTorch)

Adding a device = one file with its subclass + one import line in `devices/__init__.py`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch

from bert_ipu.train.precision import PRECISIONS

if TYPE_CHECKING:  # the runners live with the training loop; imported when one is built
    from bert_ipu.config import Config
    from bert_ipu.devices.distributed import DistInfo

AUTO = "auto"


class DeviceError(RuntimeError):
    """The requested device is not available on this machine."""


class Device:
    """One accelerator (or the CPU) the run executes on; torch-device defaults."""

    kind: ClassVar[str] = ""
    distributed_backend: ClassVar[str] = "gloo"
    auto_priority: ClassVar[int] = 0
    """`training.device: auto` takes the available kind with the highest priority."""
    torch_pipeline: ClassVar[bool] = True
    """training.layers_per_stage runs torch.distributed.pipelining stages on torchrun
    ranks (False where the device pipelines by itself: IPUs)."""

    def __init__(self, torch_device: torch.device) -> None:
        self.torch_device = torch_device

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.torch_device})"

    @classmethod
    def available(cls) -> bool:
        return True

    @classmethod
    def unavailable_reason(cls) -> str:
        return f"{cls.kind!r} is not available on this machine"

    @classmethod
    def create(cls, local_rank: int) -> "Device":
        """The device of this process (`local_rank` picks one of several accelerators)."""
        return cls(torch.device(cls.kind))

    def default_precision(self) -> str:
        return "fp32"

    def resolve_precision(self, precision: str) -> str:
        """`auto` -> default_precision(); a concrete name is checked and kept."""
        if precision not in PRECISIONS:
            raise ValueError(f"resolve_precision: precision must be one of {PRECISIONS}, "
                             f"got {precision!r}")
        return self.default_precision() if precision == AUTO else precision

    def synchronize(self) -> None:
        """Wait for queued work (no-op where work is synchronous)."""

    def rng_state(self) -> dict[str, Any]:
        """Device-side RNG state (the CPU's is saved with the process RNGs)."""
        return {}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Inverse of rng_state()."""

    def step_runner(self, core: torch.nn.Module, groups: list[dict[str, Any]], cfg: "Config",
                    dist: "DistInfo", log: Callable[[str], None]) -> Any:
        """What runs one optimizer step (see bert_ipu/train/step.py for the protocol):
        a pipeline stage when training.layers_per_stage has several stages."""
        from bert_ipu.train.step import TorchStepRunner

        layers = cfg.training.pipeline_layers
        if layers is not None and len(layers) > 1:
            from bert_ipu.train.pipeline_step import PipelineStepRunner

            return PipelineStepRunner(self, core, groups, cfg, dist, log)
        return TorchStepRunner(self, core, groups, cfg, dist, log)


DEVICES: dict[str, type[Device]] = {}


def register_device(cls: type[Device]) -> type[Device]:
    """Class decorator adding a device kind; a duplicate kind is an error."""
    if not cls.kind or cls.kind == AUTO or cls.kind in DEVICES:
        raise ValueError(f"register_device: kind {cls.kind!r} is empty, reserved or taken "
                         f"(registered: {sorted(DEVICES)})")
    DEVICES[cls.kind] = cls
    return cls


def device_kinds() -> tuple[str, ...]:
    """Valid `training.device` values: auto and every registered kind."""
    return (AUTO,) + tuple(DEVICES)


def resolve_device(name: str, local_rank: int = 0) -> Device:
    """`auto` -> the available kind with the highest `auto_priority` (cuda, then cpu);
    an explicit kind must be available (DeviceError says why not).

    >>> resolve_device("cpu").torch_device
    device(type='cpu')
    """
    if name not in device_kinds():
        raise DeviceError(f"device: expected one of {device_kinds()}, got {name!r}")
    if name == AUTO:
        ranked = sorted(DEVICES.values(), key=lambda c: -c.auto_priority)
        cls = next(c for c in ranked if c.auto_priority > 0 and c.available())
    else:
        cls = DEVICES[name]
        if not cls.available():
            raise DeviceError(f"device: {cls.unavailable_reason()}")
    return cls.create(local_rank)
