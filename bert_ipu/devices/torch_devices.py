"""The CPU and CUDA devices (plain torch; the standard step runner)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sparse_ops.kernels.cpp_build import cpu_flags

from bert_ipu.devices.base import Device, register_device


# CPU flags of native bf16 matrix arithmetic: AMX tiles, or AVX-512 BF16 dot products
# (VDPBF16PS). With either, oneDNN's bf16 GEMM beats fp32 (measured, docs/results/kernels.md:
# 2.4x on an AMD Zen 4 with AVX512-BF16 and no AMX; 8-10x with AMX); without, bf16 is
# emulated and slower than fp32.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bf16_matmul(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has native bf16 matrix support (AMX or AVX512-BF16)."""
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "AMX" in capability:
        return True
    return any(f in cpu_flags(cpuinfo) for f in BF16_FLAGS)


@register_device
class CpuDevice(Device):
    """The host CPU: gloo for several ranks; bf16 autocast by default where the CPU has
    native bf16 matrix support (AMX or AVX512-BF16), fp32 elsewhere."""

    kind = "cpu"
    auto_priority = 1

    def default_precision(self) -> str:
        return "bf16" if cpu_has_bf16_matmul() else "fp32"


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
