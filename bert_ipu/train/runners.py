"""What runs one optimizer step on the run's device, chosen here (devices keep only
hardware facts): the torch step runner (bert_ipu/train/step.py) on CPU and CUDA, a
pipeline stage (train/pipeline_step.py) when training.layers_per_stage has several
stages, PopTorch's own on the IPU (train/ipu_step.py, imported only there)."""
from __future__ import annotations

from typing import Any

import torch

from bert_ipu.devices import Device
from bert_ipu.devices.distributed import DistInfo
from bert_ipu.train.step import StepRunner, TorchStepRunner
from bert_ipu.logs import Log


def step_runner(device: Device, core: torch.nn.Module, groups: list[dict[str, Any]], cfg: Any,
                dist: DistInfo, log: Log) -> Any:
    """The runner of this device and layout, checked against the StepRunner protocol."""
    runner = _build(device, core, groups, cfg, dist, log)
    if not isinstance(runner, StepRunner):
        missing = [m for m in StepRunner.__protocol_attrs__ if not hasattr(runner, m)] if hasattr(
            StepRunner, "__protocol_attrs__") else []
        raise TypeError(f"step_runner: {type(runner).__name__} does not follow the StepRunner "
                        f"protocol (bert_ipu/train/step.py){': lacks ' + ', '.join(missing) if missing else ''}")
    return runner


def _build(device: Device, core: torch.nn.Module, groups: list[dict[str, Any]], cfg: Any,
           dist: DistInfo, log: Log) -> StepRunner:
    if device.kind == "ipu":
        from bert_ipu.train.ipu_step import IpuRunner

        return IpuRunner(core, groups, cfg)
    layers = cfg.training.pipeline_layers
    if layers is not None and len(layers) > 1:
        from bert_ipu.train.pipeline_step import PipelineStepRunner

        return PipelineStepRunner(device, core, groups, cfg, dist, log)
    return TorchStepRunner(device, core, groups, cfg, dist, log)
