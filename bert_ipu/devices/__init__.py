"""`cpu`, `cuda` and `ipu` behind one small interface.

The trainer asks a `Device` for the torch device, to synchronise (for honest timings)
and for its RNG state (part of every checkpoint). The IPU path lives in
`bert_ipu.devices.ipu` and is imported only when the user asks for an IPU, so CPU and CUDA
never need PopTorch.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

DEVICE_KINDS = ("auto", "cpu", "cuda", "ipu")


class DeviceError(RuntimeError):
    """The requested device is not available on this machine."""


def poptorch_available() -> bool:
    """True when PopTorch (the Poplar SDK) is importable."""
    return importlib.util.find_spec("poptorch") is not None


@dataclass(frozen=True)
class Device:
    """One accelerator (or the CPU) the run executes on."""

    kind: str
    torch_device: torch.device

    def synchronize(self) -> None:
        if self.kind == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def rng_state(self) -> dict[str, Any]:
        """Device-side RNG state (dropout on CUDA); the CPU RNG is saved elsewhere."""
        if self.kind == "cuda":
            return {"cuda": torch.cuda.get_rng_state(self.torch_device)}
        return {}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        if self.kind == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"].cpu(), self.torch_device)


def resolve_device(name: str, local_rank: int = 0) -> Device:
    """`auto` -> cuda when available, else cpu; `cuda` uses GPU `local_rank`.

    >>> resolve_device("cpu").torch_device
    device(type='cpu')
    """
    if name not in DEVICE_KINDS:
        raise DeviceError(f"device: expected one of {DEVICE_KINDS}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device: 'cuda' was requested but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        return Device("cuda", torch.device("cuda", local_rank))
    if name == "ipu":
        if not poptorch_available():
            raise DeviceError(
                "device: 'ipu' was requested but PopTorch is not installed "
                "(install the Poplar SDK and its poptorch wheel)"
            )
        # Host-side tensors stay on the CPU; PopTorch moves the model itself.
        return Device("ipu", torch.device("cpu"))
    return Device("cpu", torch.device("cpu"))
