"""The Graphcore IPU device (PopTorch); this file never imports PopTorch itself.

Host-side tensors stay on the CPU (PopTorch moves the model); precision is always fp16
(with loss scaling); the step runner is `bert_ipu.train.ipu_step.IpuRunner`, imported only
when an IPU run is built.
"""
from __future__ import annotations

import importlib.util
import torch

from bert_ipu.devices.base import Device, register_device


def poptorch_available() -> bool:
    """True when PopTorch (the Poplar SDK) is importable."""
    return importlib.util.find_spec("poptorch") is not None


@register_device
class IpuDevice(Device):
    """Graphcore IPUs through PopTorch: pipelined stages, replicas, fp16."""

    kind = "ipu"
    torch_pipeline = False  # PopTorch pipelines layers_per_ipu itself

    @classmethod
    def available(cls) -> bool:
        return poptorch_available()

    @classmethod
    def unavailable_reason(cls) -> str:
        return ("'ipu' was requested but PopTorch is not installed (install the Poplar SDK "
                "and its poptorch wheel)")

    @classmethod
    def create(cls, local_rank: int) -> Device:
        return cls(torch.device("cpu"))

    def resolve_precision(self, precision: str) -> str:
        return "fp16"  # the IPU path always trains in fp16 with loss scaling
