"""Graphcore IPU path through PopTorch (importable only where the Poplar SDK is).

Shape of the original system: the encoder is pipelined over IPUs by
`layers_per_ipu` (embeddings on IPU 0, the heads after the last layer), fp16
weights/activations with a static loss scale (or PopTorch's automatic loss scaling),
gradient accumulation and replication handled on the device, and after every DynSp
pattern update the host-side (CPU) model, which the controller edits, is written
back to the device with `copyWeightsToDevice()`. The device's Adam moments of the
sparse values follow the same update (re-allocated blocks start at zero, survivors
move with their block; see bert_ipu/devices/ipu_state.py), and the PopTorch optimizer's
state dict, device state included, is what checkpoints save and resume restores.

This module is never imported on CPU or CUDA runs (bert_ipu/train/runners.py imports it
for the `ipu` device only).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import poptorch  # noqa: F401  (ImportError here is the point: no SDK, no IPU path)
import torch
from torch import nn

from bert_ipu.devices.ipu_state import DeviceMoments
from bert_ipu.model import sparse_modules
from bert_ipu.train.step import StepResult, UnpipelinedCheckpoints


def stage_boundaries(layers_per_ipu: Sequence[int]) -> list[int]:
    """Index of the first encoder layer of every IPU after the first.

    >>> stage_boundaries([1, 3, 3, 3])
    [1, 4, 7]
    """
    bounds, total = [], 0
    for count in layers_per_ipu[:-1]:
        total += count
        bounds.append(total)
    return bounds


def annotate_pipeline(model: nn.Module, layers_per_ipu: Sequence[int]) -> None:
    """Wrap modules in `poptorch.BeginBlock` so each IPU gets its share of layers.

    Expects the Hugging Face module tree: `bert.embeddings`, `bert.encoder.layer[i]`,
    `cls` (heads). Embeddings start on IPU 0; the heads go with the last layer."""
    bert = model.bert
    bert.embeddings = poptorch.BeginBlock(bert.embeddings, "embeddings", ipu_id=0)
    layers = bert.encoder.layer
    ipu = 0
    for index in stage_boundaries(layers_per_ipu):
        ipu += 1
        layers[index] = poptorch.BeginBlock(layers[index], f"layer{index}", ipu_id=ipu)
    model.cls = poptorch.BeginBlock(model.cls, "heads", ipu_id=ipu)


def ipu_options(
    gradient_accumulation: int, replication_factor: int, device_iterations: int, seed: int,
    pipelined: bool, auto_loss_scaling: bool = False,
) -> "poptorch.Options":
    """PopTorch options mirroring Graphcore's BERT example defaults."""
    opts = poptorch.Options()
    opts.randomSeed(seed)
    opts.deviceIterations(device_iterations)
    opts.replicationFactor(replication_factor)
    opts.Training.gradientAccumulation(gradient_accumulation)
    opts.Training.accumulationAndReplicationReductionType(poptorch.ReductionType.Mean)
    if auto_loss_scaling:  # training.auto_loss_scaling: PopTorch's own dynamic scaling
        opts.Training.setAutomaticLossScaling(True)
    opts.Precision.enableStochasticRounding(True)
    if pipelined:
        opts.setExecutionStrategy(poptorch.PipelinedExecution(poptorch.AutoStage.AutoIncrement))
    return opts


def build_ipu_optimizer(groups: Sequence[dict[str, Any]], t: Any) -> "poptorch.optim.AdamW":
    """PopTorch's AdamW (training config `t`) with fp32 moments and the loss scale
    applied on device."""
    return poptorch.optim.AdamW(
        list(groups), lr=t.learning_rate, betas=tuple(t.adam_betas), eps=t.adam_eps,
        loss_scaling=t.loss_scaling, accum_type=torch.float32,
        first_order_momentum_accum_type=torch.float32,
        second_order_momentum_accum_type=torch.float32,
        max_grad_norm=t.max_grad_norm if t.max_grad_norm > 0 else None,
    )


def training_model(
    model: nn.Module, optimizer: Any, layers_per_ipu: Sequence[int], options: Any
) -> Any:
    """The PopTorch training wrapper of `model` (BertForPreTraining; fp16 weights)."""
    annotate_pipeline(model, layers_per_ipu)
    model.half()
    return poptorch.trainingModel(_Losses(model), options=options, optimizer=optimizer)


class _Losses(nn.Module):
    """PopTorch wants tensors out, not a dataclass: (loss, mlm_loss, nsp_loss)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**batch)
        return poptorch.identity_loss(out.loss, reduction="none"), out.mlm_loss, out.nsp_loss


class IpuRunner(UnpipelinedCheckpoints):
    """One optimizer step per call on the IPUs (accumulation and replication happen on
    the device); the host model is the copy the DynSp controller edits.

    `optimizer` (PopTorch AdamW) is the run's optimizer: its state dict holds the
    device state and is what checkpoints save and resume loads. `moments` is what the
    controller is given as its optimizer (see bert_ipu/devices/ipu_state.py)."""

    precision = "fp16"

    def __init__(self, model: nn.Module, groups: Sequence[dict[str, Any]], cfg: Any) -> None:
        t = cfg.training
        self.model = model
        self.optimizer = build_ipu_optimizer(groups, t)
        layers = t.pipeline_layers or (cfg.model.num_hidden_layers,)
        options = ipu_options(t.gradient_accumulation, t.replication_factor, 1, t.seed,
                              pipelined=len(layers) > 1, auto_loss_scaling=t.auto_loss_scaling)
        self.compiled = training_model(model, self.optimizer, layers, options)
        self.micro_batches = t.gradient_accumulation * t.replication_factor
        self.replicas = t.replication_factor
        self.moments = DeviceMoments({f"{name}.values": m.values
                                      for name, m in sparse_modules(model).items()})
        self.controller_optimizer = self.moments
        self.trained: Any = model
        self.dynsp_options: dict[str, Any] = {}

    def step(self, run: Any, t: int) -> StepResult:
        """One PopTorch call runs accumulation, replication, clipping and AdamW on the
        device; the controller then edits the host model, which is copied back."""
        c = run.c
        batches = [next(run.batches) for _ in range(self.micro_batches)]
        lr = c.schedule(t)
        run.state.step_sums = self.run_batches(batches, lr)
        run.timer.add(c.sequences_per_step)
        update = self.pattern_update(c.controller, t) if c.controller is not None else None
        return StepResult(lr, math.nan, True, update)

    def eval_model(self, core: nn.Module) -> tuple[nn.Module, str]:
        """An fp32 host copy of the weights trained on the device, evaluated on the CPU."""
        return self.host_eval_model(), "fp32"

    def run_batches(self, batches: list[dict[str, torch.Tensor]], lr: float) -> dict[str, float]:
        """Forward, backward and AdamW over `batches` (accumulation x replicas)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.compiled.setOptimizer(self.optimizer)
        batch = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
        loss, mlm, nsp = self.compiled(**batch)
        return {"loss": float(loss.float().mean()), "mlm_loss": float(mlm.float().mean()),
                "nsp_loss": float(nsp.float().mean())}

    def sync_to_host(self) -> None:
        """Device weights -> host model (before evaluation or a checkpoint)."""
        if self.compiled.isCompiled():
            before_host_access(self.compiled)

    def host_eval_model(self) -> nn.Module:
        """An fp32 copy of the (synchronised) host model for evaluation on the CPU."""
        self.sync_to_host()
        return copy.deepcopy(self.model).float().eval()

    def pattern_update(self, controller: Any, t: int) -> Any:
        """Run the controller on the host copy with the device's Adam state of the sparse
        values, then write the new patterns, values and state back to the IPUs."""
        if not controller.is_update_step(t):
            return controller.step(t)
        before_host_access(self.compiled)
        state = self.optimizer.state_dict()
        device_state = state.get("ipu_state") or {}
        self.moments.pull(device_state)
        result = controller.step(t)
        if device_state:
            state["ipu_state"] = self.moments.push(device_state)
            self.optimizer.load_state_dict(state)  # written to the device before the next run
        after_pattern_update(self.compiled)
        return result


def after_pattern_update(compiled: Any) -> None:
    """Write the host model (new values, rows, cols) back to the IPUs.

    The number of active blocks never changes, so the compiled graph stays valid;
    only the tensors change."""
    compiled.copyWeightsToDevice()


def before_host_access(compiled: Any) -> None:
    """Bring device weights to the host model (before the controller or a checkpoint
    reads them)."""
    compiled.copyWeightsToHost()
