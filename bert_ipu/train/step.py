"""One optimizer step: the step-runner protocol (`StepRunner`), and the runner of torch
devices.

A step runner runs step t on the run's device (train/runners.py picks it); the loop
(loop.py) calls `runner.step(run, t)` and does the bookkeeping. Protocol (`StepRunner`):

    model                 the module the forward pass runs (may be compiled / DDP-wrapped)
    optimizer             the run's optimizer (its state dict is checkpointed)
    controller_optimizer  what the DynSp controller remaps at a pattern update (the
                          optimizer itself, or a view of device-held state)
    precision             the concrete precision (fp32 | bf16 | fp16)
    replicas              data-parallel replicas contributing to one step
    trained               what this process trains: the module (or name -> SparseLinear
                          dict) the DynSp controller updates
    dynsp_options         extra DynSpController arguments (a pipeline stage's group,
                          layer offset and metrics combination; {} otherwise)
    sharded               whether the model, optimizer and controller state is per rank
                          (pipelines): the runner then saves it (checkpoint_shard, or
                          gathered in checkpoint_files) and restores it (checkpoint_view)
    checkpoint_files(ctl, scaler)  extra checkpoint files (collective; {} unless pipelined)
    checkpoint_shard(ctl) this rank's part of a sharded checkpoint (pipelines; None:
                          rank 0 writes the single-process files)
    checkpoint_view(l, ctl)  the loaded checkpoint as this process restores it (a
                          pipeline stage restores its own part there)
    step(run, t)          -> StepResult, or None when a stop was requested between
                          micro-batches (the loop checkpoints that position)
    sync_to_host()        bring device-held weights to the host model (checkpoints)
    eval_model(core)      -> (module, precision) to evaluate

`TorchStepRunner` (CPU, CUDA): for each micro-batch forward under autocast, scaled
loss / accumulation, backward; then `optimizer_update`, the one order of a step shared
with the pipeline runner: unscale, finite check, freeze ablation, clip, AdamW, and the
DynSp controller RIGHT AFTER optimizer.step(). The IPU runner is bert_ipu/train/ipu_step.py,
the pipeline runner (torch.distributed.pipelining) bert_ipu/train/pipeline_step.py.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from bert_ipu.devices import distributed as D
from bert_ipu.train.evaluate import to_device
from bert_ipu.train.optim import build_optimizer, clip_gradients, set_lr
from bert_ipu.train.precision import autocast, grads_are_finite
from bert_ipu.logs import Log

if TYPE_CHECKING:
    from bert_ipu.config import Config
    from bert_ipu.devices import Device
    from bert_ipu.train.loop import Run

LOSS_KEYS = ("loss", "mlm_loss", "nsp_loss")


@dataclass
class StepResult:
    """What a runner reports of step t (the losses are in run.state.step_sums)."""

    lr: float
    grad_norm: float
    applied: bool
    """False when the optimizer step was skipped (non-finite gradients / fp16 overflow)."""
    update: dict[str, Any] | None
    """The DynSp controller's metrics when t was an update step."""


@runtime_checkable
class StepRunner(Protocol):
    """What the loop, the checkpoints and the controller ask of a step runner (the module
    docstring says what each member means); TorchStepRunner, PipelineStepRunner and the
    IPU's IpuRunner implement it."""

    model: nn.Module
    optimizer: Any
    controller_optimizer: Any
    precision: str
    replicas: int
    trained: Any
    dynsp_options: dict[str, Any]
    sharded: bool

    def checkpoint_files(self, controller: Any | None, scaler: Any) -> dict[str, Any]: ...

    def checkpoint_shard(self, controller: Any | None) -> dict[str, Any] | None: ...

    def checkpoint_view(self, loaded: dict[str, Any], controller: Any | None) -> dict[str, Any]: ...

    def step(self, run: "Run", t: int) -> StepResult | None: ...

    def sync_to_host(self) -> None: ...

    def eval_model(self, core: nn.Module) -> tuple[nn.Module, str]: ...


class UnpipelinedCheckpoints:
    """Checkpoint hooks of a runner whose whole model lives in one program (CPU/CUDA
    processes, a PopTorch executable): rank 0 writes the single-process files; a
    pipelined run's sharded checkpoint is read back as those files
    (store/checkpoint.py: load_checkpoint), so it resumes here too."""

    sharded = False

    def checkpoint_files(self, controller: Any | None, scaler: Any) -> dict[str, Any]:
        """No files beyond the common ones."""
        return {}

    def checkpoint_shard(self, controller: Any | None) -> dict[str, Any] | None:
        return None

    def checkpoint_view(self, loaded: dict[str, Any], controller: Any | None) -> dict[str, Any]:
        return loaded


class TorchStepRunner(UnpipelinedCheckpoints):
    """The step of CPU and CUDA runs (see the module docstring)."""

    def __init__(self, device: "Device", core: nn.Module, groups: list[dict[str, Any]],
                 cfg: "Config", dist: D.DistInfo, log: Log) -> None:
        t = cfg.training
        self.device, self.dist = device, dist
        self.optimizer = build_optimizer(groups, t.learning_rate, betas=tuple(t.adam_betas),
                                         eps=t.adam_eps)
        self.controller_optimizer = self.optimizer
        self.precision = device.resolve_precision(t.precision)
        self.replicas = dist.world_size
        if t.replication_factor != dist.world_size and dist.is_main:
            log(f"warning: training.replication_factor={t.replication_factor} is used on IPUs "
                f"only; this run has {dist.world_size} data-parallel rank(s) (WORLD_SIZE)")
        # torch.compile (training.compile) inside DDP (several ranks); checkpoints always
        # come from the unwrapped core.
        self.model = D.wrap_model(torch.compile(core) if t.compile else core, dist,
                                  device.torch_device)
        self.trained: Any = core
        self.dynsp_options: dict[str, Any] = {}

    def sync_to_host(self) -> None:
        """Nothing to do: the weights live in the host-visible module."""

    def eval_model(self, core: nn.Module) -> tuple[nn.Module, str]:
        return core, self.precision

    def step(self, run: "Run", t: int) -> StepResult | None:
        """Accumulate the micro-batches of step t and apply the update; None when a stop
        was requested mid-accumulation."""
        c, state = run.c, run.state
        if c.controller is not None:
            c.controller.before_step(t)  # arms X/dY capture when a RigL update follows t
        accumulation = c.cfg.training.gradient_accumulation
        while state.micro_step < accumulation:
            last = state.micro_step == accumulation - 1
            self.forward_backward(run, next(run.batches), t, last)
            state.micro_step += 1
            run.timer.add(c.cfg.training.micro_batch_size * self.dist.world_size)
            if not last and stop_now(run, t):
                flush_losses(run)  # the checkpoint of this position holds the partial sums
                return None
        return optimizer_update(run, t, self)

    def forward_backward(self, run: "Run", batch: dict[str, torch.Tensor], t: int,
                         last: bool) -> None:
        """One micro-batch: forward under autocast, scaled loss / accumulation, backward."""
        c = run.c
        accumulation = c.cfg.training.gradient_accumulation
        sync = nullcontext() if last or not self.dist.enabled else self.model.no_sync()
        with sync:
            with autocast(self.precision, self.device.torch_device):
                out = self.model(**to_device(batch, self.device.torch_device))
            loss = out.loss
            if run.hooks.loss_multiplier is not None:
                loss = loss * run.hooks.loss_multiplier(t)
            c.scaler.scale_loss(loss / accumulation).backward()
        # Kept on the device: one host sync per step (flush_losses), not three per micro-batch.
        run.pending_losses.append(torch.stack([v.detach().float()
                                               for v in (loss, out.mlm_loss, out.nsp_loss)]))

    def clip(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Clip the global gradient norm (of this process's parameters here)."""
        return clip_gradients(params, max_norm)


def optimizer_update(run: "Run", t: int, runner: TorchStepRunner) -> StepResult:
    """THE order of an optimizer step, for every runner whose gradients are on the host
    (CPU/CUDA processes, pipeline stages): unscale -> finite check (all ranks) -> freeze
    ablation -> clip -> learning rate -> loss-scaler decision -> optimizer.step() ->
    freeze after-step -> DynSp controller (RIGHT AFTER the optimizer step) -> zero grads.
    Runners own the micro-batches that make the gradients and how they clip them
    (`runner.clip`: a pipeline stage's norm is global over stages); the IPU runner, whose
    optimizer runs on the device, has its own step and the config refuses what it cannot
    run there (freeze ablation, RigL)."""
    c, state = run.c, run.state
    c.scaler.unscale_(c.params)
    flush_losses(run)
    loss = state.step_sums.get("loss", math.nan)
    finite = math.isfinite(loss) and grads_are_finite(c.params)
    finite = not D.any_rank(not finite, runner.dist, runner.device.torch_device)
    if c.frozen is not None:
        c.frozen.apply(t)
    grad_norm = runner.clip(c.params, c.cfg.training.max_grad_norm) if finite else math.nan
    lr = c.schedule(t)
    set_lr(runner.optimizer, lr)
    applied = c.scaler.update(found_nonfinite=not finite)
    if applied:
        runner.optimizer.step()
        if c.frozen is not None:
            c.frozen.after_optimizer_step()
    update = c.controller.step(t) if c.controller is not None else None  # DynSp, right here
    runner.optimizer.zero_grad(set_to_none=True)
    return StepResult(lr, grad_norm, applied, update)


def flush_losses(run: "Run") -> None:
    """Add the pending micro-batch losses into state.step_sums in micro-batch order,
    each divided by the accumulation (the same arithmetic as summing them one by one)."""
    if not run.pending_losses:
        return
    values = torch.stack(run.pending_losses).tolist()  # [micro, 3]; one device sync
    run.pending_losses.clear()
    accumulation = run.c.cfg.training.gradient_accumulation
    sums = run.state.step_sums
    for row in values:
        for key, value in zip(LOSS_KEYS, row):
            sums[key] = sums.get(key, 0.0) + value / accumulation


def poll_stop_hook(run: "Run") -> None:
    """Test hook: request a stop once position `hooks.stop_at` is reached."""
    if run.hooks.stop_at == (run.state.step, run.state.micro_step):
        run.stop.request()


def stop_now(run: "Run", t: int) -> bool:
    """Stop between micro-batches? Only when that position can be resumed exactly:
    single process (gradients are rank-local until the last micro-batch) and no RigL
    capture in flight (its X/dY pairs are not checkpointed)."""
    poll_stop_hook(run)
    if not run.stop.requested or run.c.dist.enabled:
        return False
    ctrl = run.c.controller
    return not (ctrl is not None and ctrl.method.needs_gradient and ctrl.is_update_step(t))
