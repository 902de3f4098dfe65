"""Graphcore IPU path through PopTorch (importable only where the Poplar SDK is).

Shape of the original system: the encoder is pipelined over IPUs by
`layers_per_ipu` (embeddings on IPU 0, the heads after the last layer), fp16
weights/activations with a static loss scale (or PopTorch's automatic loss scaling),
gradient accumulation and replication handled on the device, and after every DynSp
pattern update the host-side (CPU) model, which the controller edits, is written
back to the device with `copyWeightsToDevice()`.

This module is never imported on CPU or CUDA runs (see `bert_ipu.devices`).
"""
from __future__ import annotations

from typing import Any, Sequence

import poptorch  # noqa: F401  (ImportError here is the point: no SDK, no IPU path)
import torch
from torch import nn


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
    pipelined: bool,
) -> "poptorch.Options":
    """PopTorch options mirroring Graphcore's BERT example defaults."""
    opts = poptorch.Options()
    opts.randomSeed(seed)
    opts.deviceIterations(device_iterations)
    opts.replicationFactor(replication_factor)
    opts.Training.gradientAccumulation(gradient_accumulation)
    opts.Training.accumulationAndReplicationReductionType(poptorch.ReductionType.Mean)
    opts.Precision.enableStochasticRounding(True)
    if pipelined:
        opts.setExecutionStrategy(poptorch.PipelinedExecution(poptorch.AutoStage.AutoIncrement))
    return opts


def build_ipu_optimizer(
    groups: Sequence[dict[str, Any]], lr: float, loss_scaling: float, auto_loss_scaling: bool,
) -> "poptorch.optim.AdamW":
    """PopTorch's AdamW with fp32 moments and the loss scale applied on device."""
    opt = poptorch.optim.AdamW(
        list(groups), lr=lr, betas=(0.9, 0.999), eps=1e-6, loss_scaling=loss_scaling,
        accum_type=torch.float32, first_order_momentum_accum_type=torch.float32,
        second_order_momentum_accum_type=torch.float32, max_grad_norm=1.0,
    )
    return opt


def training_model(
    model: nn.Module, optimizer: Any, layers_per_ipu: Sequence[int], options: Any
) -> Any:
    """The compiled PopTorch training wrapper (fp16 on device, fp32 host master)."""
    annotate_pipeline(model, layers_per_ipu)
    model.half()
    return poptorch.trainingModel(model, options=options, optimizer=optimizer)


class _Losses(nn.Module):
    """PopTorch wants tensors out, not a dataclass: (loss, mlm_loss, nsp_loss)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**batch)
        return poptorch.identity_loss(out.loss, reduction="none"), out.mlm_loss, out.nsp_loss


class IpuRunner:
    """One optimizer step per call on the IPUs (accumulation and replication happen on
    the device); the host model stays the master copy the DynSp controller edits.

    Untested here (no Poplar SDK on the development machines). Known limitation: the
    device-side Adam moments of re-allocated blocks are not reset after a pattern
    update (PopTorch keeps optimizer state on the device)."""

    def __init__(self, model: nn.Module, groups: Sequence[dict[str, Any]], cfg: Any) -> None:
        t = cfg.training
        self.optimizer = build_ipu_optimizer(groups, t.learning_rate, t.loss_scaling,
                                             t.auto_loss_scaling)
        layers = t.layers_per_ipu or (cfg.model.num_hidden_layers,)
        options = ipu_options(t.gradient_accumulation, t.replication_factor, 1, t.seed,
                              pipelined=len(layers) > 1)
        self.compiled = training_model(_Losses(model), self.optimizer, layers, options)
        self.micro_batches = t.gradient_accumulation * t.replication_factor

    def step(self, batches: list[dict[str, torch.Tensor]], lr: float) -> dict[str, float]:
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

    def pattern_update(self, controller: Any, t: int) -> Any:
        """Run the controller on the host copy, then write the new patterns back."""
        if not controller.is_update_step(t):
            return controller.step(t)
        before_host_access(self.compiled)
        result = controller.step(t)
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
