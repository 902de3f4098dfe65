"""Build everything a run needs from a `Config`: device, data, model, optimizer, LR
schedule, loss scaler, DynSp controller, FLOPs. No training happens here.

Order matters for reproducibility: the global RNGs are seeded from
`training.seed` first (dropout draws from torch's global generator); the model is
initialised from its own generator; the data order and masks are counter-based
(seed, epoch, index), and the controller derives its random numbers from
(sparsity.seed, update index, layer), so no component consumes another's randomness.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bert_ipu.config import Config, ConfigError
from bert_ipu.data import PretrainingDataset, PretrainingLoader, TokenizerInfo, build_datasets
from bert_ipu.devices import Device, resolve_device
from bert_ipu.devices import distributed as D
from bert_ipu.devices.pipeline import stage_keeps
from bert_ipu.model import build_model, encoder_linear_shapes, sparse_modules
from bert_ipu.train.optim import LRSchedule, parameter_groups, trainable_params, warmup_steps_from
from bert_ipu.train.precision import LossScaler, build_loss_scaler
from bert_ipu.train.runners import step_runner
from bert_ipu.train.step import StepRunner
from bert_ipu.logs import Log
from sparse_ops.flops import FlopsBreakdown, training_flops
from sparse_ops.dynsp.controller import DynSpController
from sparse_ops.dynsp.freeze import FrozenSubset



@dataclass
class Components:
    """The built run; `model` may be DDP-wrapped, `core` never is."""

    cfg: Config
    device: Device
    dist: D.DistInfo
    precision: str
    model: nn.Module
    core: nn.Module
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    schedule: LRSchedule
    scaler: LossScaler
    controller: DynSpController | None
    """None for a dense run."""
    frozen: FrozenSubset | None
    """The freeze ablation (sparse_ops/dynsp/freeze.py); None when off."""
    train_loader: PretrainingLoader | None
    """None when built without data (benchmarks feed their own batches)."""
    eval_dataset: PretrainingDataset | None
    total_steps: int
    sequences_per_step: int
    flops: FlopsBreakdown
    """Training FLOPs per sequence from the model's actual nnz (sparse_ops.flops)."""
    runner: StepRunner
    """The step runner (train/runners.py picks it; protocol: train/step.py)."""
    tokenizer: TokenizerInfo | None = None
    """The run's vocabulary (kept in the output folder and every checkpoint); None without data."""


def seed_everything(seed: int) -> None:
    """Seed torch (CPU + CUDA), numpy and python's global RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` on `device`, in place; its meta-device parts (other pipeline stages')
    stay where they are."""
    return model._apply(lambda t: t if t.is_meta else t.to(device))


def check_pipeline(cfg: Config, info: D.DistInfo) -> tuple[D.DistInfo, Any]:
    """Check a CPU/CUDA pipeline split against the job (before any data preparation);
    returns the data-parallel place of this rank (its replica among the replicas) and
    its PipelineLayout (None: not pipelined)."""
    from bert_ipu.devices.pipeline import LayoutError, pipeline_layout

    t = cfg.training
    try:
        layout = pipeline_layout(cfg, info.rank, info.world_size)
    except LayoutError as exc:
        raise ConfigError(str(exc), exc.key) from None
    if layout is None:
        return info, None
    for bad, name in ((t.compile, "training.compile"),
                      (cfg.sparsity.freeze_fraction > 0, "sparsity.freeze_fraction")):
        if bad:
            raise ConfigError(f"{name}: expected it off in a pipelined run (layers per "
                              f"stage {list(layout.layers_per_stage)}), got it set", name)
    return D.DistInfo(rank=layout.replica, world_size=info.world_size // layout.stages,
                      local_rank=info.local_rank), layout


def build_loaders(cfg: Config, info: D.DistInfo, log: Log
                  ) -> tuple[PretrainingLoader, PretrainingDataset | None, TokenizerInfo]:
    """Prepare the data once: every rank asks for it, and the cache's file lock lets the
    first prepare while the others wait and then reuse it (no collective is held open
    for the minutes a preparation can take)."""
    train_ds, eval_ds, tok = build_datasets(cfg.data, log=log if info.is_main else (lambda s: None))
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size: expected >= the tokenizer's {tok.vocab_size} tokens "
            f"({tok.vocab_file}), got {cfg.model.vocab_size}", "model.vocab_size")
    t = cfg.training
    if len(train_ds) < t.micro_batch_size * info.world_size:
        raise ConfigError(
            f"training.micro_batch_size: expected at most the {len(train_ds)} training "
            f"examples of the prepared data (over {info.world_size} rank(s)), got "
            f"{t.micro_batch_size}; lower it or use a larger corpus", "training.micro_batch_size")
    train = PretrainingLoader(train_ds, t.micro_batch_size, seed=cfg.data.seed_value, rank=info.rank,
                              world_size=info.world_size, num_workers=cfg.data.num_workers)
    return train, eval_ds, tok


def total_training_steps(cfg: Config, loader: PretrainingLoader | None) -> int:
    """training.training_steps, else ceil(epochs x batches per epoch / accumulation)."""
    t = cfg.training
    if t.training_steps is not None or loader is None:
        return t.training_steps
    return max(1, math.ceil(t.epochs * len(loader) / t.gradient_accumulation))


MAX_THREADS_PER_CPU = 4  # oversubscription beyond this is a typo (100000 crashed OpenMP)


def check_threads(n: int) -> None:
    """training.num_threads within MAX_THREADS_PER_CPU x this machine's CPUs."""
    cpus = os.cpu_count() or 1
    if n > MAX_THREADS_PER_CPU * cpus:
        raise ConfigError(f"training.num_threads: expected at most {MAX_THREADS_PER_CPU * cpus} "
                          f"({MAX_THREADS_PER_CPU} x the {cpus} CPUs of this machine), got {n}",
                          "training.num_threads")


def check_backend(cfg: Config, device: torch.device) -> None:
    """A named sparsity.backend must run on the run's device (auto always does)."""
    s = cfg.sparsity
    if s.method == "dense" or s.backend == "auto":
        return
    from sparse_ops.kernels import BackendError, get_backend

    try:
        backend = get_backend(s.backend)
    except BackendError:
        backend = None
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    if backend is None or not any(backend.supports(device, d, s.block_size) for d in dtypes):
        raise ConfigError(f"sparsity.backend: {s.backend!r} cannot run on this run's device "
                          f"({device.type}) with block size {s.block_size}; use auto (or a backend "
                          "for this device)", "sparsity.backend")


def check_before_data(cfg: Config) -> None:
    """What can be checked without the prepared data, checked before preparing it (a
    preparation can take as long as a tokenisation of the corpus): the pattern updates
    must fit in training.training_steps when that is given. (Vocabulary size against
    data.vocab_file and the output folder are checked earlier, by the config and by
    prepare_outputs.)"""
    s, steps = cfg.sparsity, cfg.training.training_steps
    if s.method == "dense" or steps is None:
        return
    from sparse_ops.dynsp.settings import SettingsError

    try:
        s.controller_settings().schedule(steps)
    except SettingsError as exc:
        raise ConfigError(str(exc), exc.path, exc.expected, exc.value) from None


def build_controller(cfg: Config, model: nn.Module | dict[str, nn.Module],
                     optimizer: torch.optim.Optimizer | None, total_steps: int,
                     **options: Any) -> Any | None:
    """DynSpController for static/dynamic sparsity (static = 0 updates); None if dense.

    The `sparsity` section is the controller's settings (a DynSpSettings); when the
    updates do not fit the run the error names `sparsity.n_updates`. `options` are the
    runner's (a pipeline stage's process group, layer offset, metrics combination)."""
    if cfg.sparsity.method == "dense":
        return None
    from sparse_ops.dynsp.controller import DynSpController
    from sparse_ops.dynsp.settings import SettingsError

    try:
        return DynSpController(model, optimizer, total_steps, cfg.sparsity.controller_settings(),
                               **options)
    except SettingsError as exc:
        raise ConfigError(str(exc), exc.path, exc.expected, exc.value) from None


def build_frozen_subset(cfg: Config, model: nn.Module) -> Any | None:
    """The freeze/unfreeze ablation (sparsity.freeze_fraction > 0), else None."""
    s = cfg.sparsity
    if s.freeze_fraction <= 0 or s.method == "dense":
        return None
    from sparse_ops.dynsp.freeze import FrozenSubset

    if s.freeze_until_step is not None:
        return FrozenSubset(model, s.freeze_fraction, s.freeze_until_step, "until", s.seed)
    return FrozenSubset(model, s.freeze_fraction, s.freeze_from_step, "from", s.seed)


def run_flops(cfg: Config, core: nn.Module, total_steps: int) -> FlopsBreakdown:
    """The run's FLOPs per sequence (sparse_ops.flops.training_flops) from the actual
    active weights of every encoder linear; RigL's dense gradient amortised over the run."""
    m, s = cfg.model, cfg.sparsity
    shapes = encoder_linear_shapes(m)
    sparse = sparse_modules(core)
    active = [sparse[n].nnz * sparse[n].block_size ** 2 if n in sparse else o * i
              for n, (o, i) in shapes.items()]
    n_updates = s.controller_settings().n_updates if s.method != "dense" else 0
    return training_flops(active, list(shapes.values()), seq_len=cfg.data.sequence_length,
                          hidden=m.hidden_size, n_layers=m.num_hidden_layers,
                          needs_gradient=s.needs_gradient, n_updates=n_updates,
                          training_steps=total_steps)


def build_components(cfg: Config, log: Log = print, *, data: bool = True) -> Components:
    """Device, data, model, optimizer, schedule, scaler, controller: ready to train.

    The one composition root of a run: the trainer and every tool build through it.
    `data=False` skips the data stage (no corpus, no tokenizer: `train_loader` and
    `eval_dataset` are None) for callers that feed their own batches (benchmarks); the
    step count must then come from training.training_steps."""
    t = cfg.training
    if not data and t.training_steps is None:
        raise ConfigError("training.training_steps: expected a step count when the run is "
                          "built without data (nothing to count epochs over), got None",
                          "training.training_steps")
    if t.num_threads is not None:
        check_threads(t.num_threads)
        torch.set_num_threads(t.num_threads)
    info = D.from_environment()
    device = resolve_device(t.device, info.local_rank)
    check_backend(cfg, device.torch_device)
    data_info, layout = check_pipeline(cfg, info) if device.torch_pipeline else (info, None)
    D.init(info, device.distributed_backend)
    seed_everything(t.seed)
    check_before_data(cfg)
    quiet = log if info.is_main else (lambda s: None)
    train, held_out, tok = build_loaders(cfg, data_info, quiet) if data else (None, None, None)
    total = total_training_steps(cfg, train)
    # A pipeline stage builds only its own layers (the rest stays on the meta device).
    keep = None if layout is None else stage_keeps(layout)
    core = build_model(cfg.model, cfg.sparsity, seed=t.seed, keep=keep)
    if cfg.checkpoint.init_from:  # a resume then overwrites it with the run's own state
        from bert_ipu.hub.init import init_from_pretrained
        init_from_pretrained(core, cfg, tok, log)
    core = to_device(core, device.torch_device)
    runner = step_runner(device, core, parameter_groups(core, t.weight_decay), cfg, info, log)
    return Components(
        cfg=cfg, device=device, dist=info, precision=runner.precision, model=runner.model,
        core=core, optimizer=runner.optimizer, params=trainable_params(runner.optimizer),
        schedule=LRSchedule(t.learning_rate, total, warmup_steps_from(t.lr_warmup, total),
                            t.lr_schedule),
        scaler=build_loss_scaler(runner.precision, t.loss_scaling, t.auto_loss_scaling,
                                 t.loss_scaling_growth_interval),
        controller=build_controller(cfg, runner.trained, runner.controller_optimizer, total,
                                    **runner.dynsp_options),
        frozen=build_frozen_subset(cfg, core), train_loader=train, eval_dataset=held_out,
        total_steps=total, sequences_per_step=t.micro_batch_size * t.gradient_accumulation
        * runner.replicas, flops=run_flops(cfg, core, total), runner=runner, tokenizer=tok)
