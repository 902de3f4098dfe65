"""The CPU and CUDA devices (plain torch; the standard step runner)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bert_ipu.devices.base import Device, register_device


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has AMX bf16 tiles (fast bf16 matmuls through oneDNN)."""
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "AMX" in capability:
        return True
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return "amx_bf16" in text


@register_device
class CpuDevice(Device):
    """The host CPU: gloo for several ranks; bf16 autocast by default where AMX is."""

    kind = "cpu"
    auto_priority = 1

    def default_precision(self) -> str:
        return "bf16" if cpu_has_amx() else "fp32"


@register_device
class CudaDevice(Device):
    """One NVIDIA GPU per rank (`LOCAL_RANK`): nccl, bf16 autocast by default."""

    kind = "cuda"
    distributed_backend = "nccl"
    auto_priority = 2

    @classmethod
    def available(cls) -> bool:
        return torch.cuda.is_available()

    @classmethod
    def unavailable_reason(cls) -> str:
        return "'cuda' was requested but torch sees no CUDA device"

    @classmethod
    def create(cls, local_rank: int) -> Device:
        torch.cuda.set_device(local_rank)
        return cls(torch.device("cuda", local_rank))

    def default_precision(self) -> str:
        return "bf16"

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.torch_device)

    def rng_state(self) -> dict[str, Any]:
        return {"cuda": torch.cuda.get_rng_state(self.torch_device)}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"].cpu(), self.torch_device)
