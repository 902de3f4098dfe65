"""The device interface: everything the training loop asks of the hardware.

A device kind is one `Device` subclass registered with `@register_device`:

    kind                 the config name (training.device)
    distributed_backend  torch.distributed backend for several ranks (gloo, nccl)
    available()          can this machine run it?
    default_precision()  what `training.precision: auto` means here
    synchronize()        wait for queued work (honest timings)
    rng_state()          device-side RNG state (checkpoints), set_rng_state()
Hardware facts only: what runs an optimizer step on a device is chosen in the trainer
(`bert_ipu.train.runners.step_runner`). Adding a device = one file with its subclass + one
import line in `devices/__init__.py` (and a runner in train/runners.py only when the torch
step runner cannot drive it, as for the IPU).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
"""training.precision: a matmul dtype, or `auto` (each device resolves it: resolve_precision)."""

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
