"""What runs one optimizer step on the run's device, chosen here (devices keep only
hardware facts): the torch step runner (bert_ipu/train/step.py) on CPU and CUDA, a
pipeline stage (train/pipeline_step.py) when training.layers_per_stage has several
stages, PopTorch's own on the IPU (train/ipu_step.py, imported only there)."""
from __future__ import annotations

from typing import Any, Callable

import torch

from bert_ipu.devices import Device
from bert_ipu.devices.distributed import DistInfo


def step_runner(device: Device, core: torch.nn.Module, groups: list[dict[str, Any]], cfg: Any,
                dist: DistInfo, log: Callable[[str], None]) -> Any:
    """The runner of this device and layout (see bert_ipu/train/step.py for the protocol)."""
    if device.kind == "ipu":
        from bert_ipu.train.ipu_step import IpuRunner

        return IpuRunner(core, groups, cfg)
    layers = cfg.training.pipeline_layers
    if layers is not None and len(layers) > 1:
        from bert_ipu.train.pipeline_step import PipelineStepRunner

        return PipelineStepRunner(device, core, groups, cfg, dist, log)
    from bert_ipu.train.step import TorchStepRunner

    return TorchStepRunner(device, core, groups, cfg, dist, log)
