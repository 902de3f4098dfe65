"""Trainer-side benchmark helpers: time the trainer's own `train_step`, not a copy of it.

    c = build_bench_components(cfg)                   # model, optimizer, controller, ...
    timing = time_training(c, synthetic_batches(cfg))  # cfg.training.training_steps steps

`tools/bench_updates.py` (throughput against the number of pattern updates, host and
device controllers, one update per layer type) and `tools/bench_train.py` (dense vs
static vs DynSp sequences/s and memory) are thin CLIs over `sweep_updates` and
`compare_training`.

Choices (they decide what the numbers mean):

* Every step is `trainer.train_step` (forward/backward under the run's autocast, loss
  scaling, clipping, AdamW, then `controller.step(t)`), so pattern updates cost what
  they cost in training. Evaluation, logging and checkpoints are not run.
* Warm-up: `warmup` extra steps at position 0 (never an update step: t_1 >= 1) run
  first, then the counters are reset, so the timed steps follow the real schedule.
* Data: `synthetic_batches` (default of the tools) are random token batches shaped
  like the loader's; they isolate the model from data loading. `synthetic=False` uses
  the config's data exactly as training does (prepared once, then cached on disk).
* Single process only (no torchrun): throughput per device.
"""
from __future__ import annotations

import gc
import itertools
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from bert_ipu.config import Config, load_config
from bert_ipu.devices import resolve_device
from bert_ipu.model import encoder_linear_shapes
from bert_ipu.train.build import Components, build_components
from bert_ipu.train.loop import Run, TrainerHooks, train_step
from bert_ipu.train.metrics import MetricsWriter, Progress
from bert_ipu.train.signals import StopRequest
from bert_ipu.train.state import TrainState
from dynsp_tools.benchlib.layers import PeakMemory, layer_update_ms
from sparse_ops.memory import state_bytes

Batch = dict[str, torch.Tensor]
# Layer type -> module name inside `bert.encoder.layer.{i}` (model.ENCODER_LINEARS).
LAYER_TYPES: dict[str, str] = {
    "query": "attention.self.query", "key": "attention.self.key",
    "value": "attention.self.value", "attention_output": "attention.output.dense",
    "ffn_up": "intermediate.dense", "ffn_down": "output.dense",
}
QUIET = ("logging.progress_bar=false", "logging.trackers=[]")


def _quiet(_: str) -> None:
    return None


def bench_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """`load_config(path, [progress bar and TensorBoard off] + overrides)`."""
    return load_config(path, list(QUIET) + list(overrides))


# ------------------------------------------------------------------ data
def synthetic_batch(cfg: Config, generator: torch.Generator) -> Batch:
    """One random batch with the loader's keys, dtypes and shapes (B, S, P from `cfg`):
    uniform token ids (above the 5 special ids), two segments, every token real, P
    distinct masked positions per row (all weights 1), random NSP labels."""
    B, S, P = cfg.training.micro_batch_size, cfg.data.sequence_length, cfg.data.mask_tokens
    V = cfg.model.vocab_size
    positions = torch.rand(B, S - 1, generator=generator).argsort(dim=1)[:, :P] + 1  # (B, P)
    return {
        "input_ids": torch.randint(5, V, (B, S), generator=generator),
        "token_type_ids": (torch.arange(S) >= S // 2).long().expand(B, S).contiguous(),
        "attention_mask": torch.ones(B, S, dtype=torch.long),
        "masked_lm_positions": positions.sort(dim=1).values,
        "masked_lm_ids": torch.randint(5, V, (B, P), generator=generator),
        "masked_lm_weights": torch.ones(B, P),
        "next_sentence_label": torch.randint(0, 2, (B,), generator=generator),
    }


def synthetic_batches(cfg: Config, count: int = 4, seed: int = 0) -> Iterator[Batch]:
    """Endless cycle over `count` synthetic batches (made once: no RNG in the timing)."""
    gen = torch.Generator().manual_seed(seed)
    return itertools.cycle([synthetic_batch(cfg, gen) for _ in range(count)])


# ------------------------------------------------------------------ components and runs
def build_bench_components(cfg: Config, synthetic: bool = True,
                           log: Callable[[str], None] = _quiet) -> Components:
    """The run's components from the one builder (`bert_ipu.train.build`): with
    `synthetic`, without the data stage (needs training.training_steps)."""
    return build_components(cfg, log, data=not synthetic)


def make_run(c: Components, batches: Iterator[Batch]) -> Run:
    """A `trainer.Run` that trains from `batches` and writes nothing (no metrics file,
    no progress bar, no signal handlers)."""
    return Run(c, TrainState(), None, StopRequest(), TrainerHooks(), batches,  # type: ignore[arg-type]
               MetricsWriter(Path("."), False, False), Progress(c.total_steps, 0, False))


# ------------------------------------------------------------------ timing
@dataclass
class StepTiming:
    """Wall times of the timed steps of one run."""

    steps: int
    sequences: int
    seconds: float
    """Total wall time of the timed steps, pattern updates included."""
    step_seconds: list[float] = field(default_factory=list)
    update_steps: list[int] = field(default_factory=list)
    update_seconds: float = 0.0
    """Sum of the controller's `update_time_s` over the updates."""

    @property
    def sequences_per_second(self) -> float:
        return self.sequences / max(self.seconds, 1e-12)

    @property
    def sequences_per_second_no_updates(self) -> float:
        """Throughput with the pattern-update time taken out."""
        return self.sequences / max(self.seconds - self.update_seconds, 1e-12)

    def median_step_seconds(self, exclude_updates: bool = True) -> float:
        """Median step time (by default over the steps without a pattern update)."""
        skip = set(self.update_steps) if exclude_updates else set()
        times = [s for i, s in enumerate(self.step_seconds) if i not in skip] or self.step_seconds
        return statistics.median(times)

    def spread(self) -> float:
        """(max - min) / median of the step times without a pattern update: how much
        one step's time varies (a shared machine's load bursts); 0 with one step."""
        skip = set(self.update_steps)
        times = [s for i, s in enumerate(self.step_seconds) if i not in skip] or self.step_seconds
        return (max(times) - min(times)) / max(statistics.median(times), 1e-12)

    def as_dict(self) -> dict[str, Any]:
        median = self.median_step_seconds()
        return {"steps": self.steps, "sequences": self.sequences, "seconds": self.seconds,
                "sequences_per_second": self.sequences_per_second,
                "sequences_per_second_no_updates": self.sequences_per_second_no_updates,
                "sequences_per_second_median": self.sequences / max(self.steps * median, 1e-12),
                "median_step_s": median, "step_time_spread": self.spread(),
                "n_updates": len(self.update_steps),
                "update_steps": self.update_steps, "update_time_s": self.update_seconds,
                "update_fraction": self.update_seconds / max(self.seconds, 1e-12)}


def time_training(c: Components, batches: Iterator[Batch], warmup: int = 2) -> StepTiming:
    """Run `warmup` untimed steps at position 0, reset the counters, then time all
    `c.total_steps` steps of the schedule with `trainer.train_step`."""
    return time_interleaved([(c, batches)], warmup)[0]


def time_interleaved(cases: Sequence[tuple[Components, Iterator[Batch]]], warmup: int = 2,
                     log: Callable[[str], None] = _quiet) -> list[StepTiming]:
    """`time_training` of several runs at once, interleaved step by step (step t of every
    run, then step t + 1, ...), so a load change on a shared machine hits all alike.
    `log` gets a progress line every tenth of the steps."""
    runs = [make_run(c, batches) for c, batches in cases]
    for run in runs:
        for _ in range(warmup):  # position 0 is never an update step (t_1 >= 1)
            train_step(run)
            run.state = TrainState()
    timings = [StepTiming(run.c.total_steps, 0, 0.0) for run in runs]
    total = max(run.c.total_steps for run in runs)
    for t in range(total):
        if t and t % max(1, total // 10) == 0:
            log(f"step {t}/{total} of {len(runs)} interleaved run(s)")
        for run, timing in zip(runs, timings):
            if t < run.c.total_steps:
                _timed_step(run, timing, t)
    for run, timing in zip(runs, timings):
        timing.seconds = sum(timing.step_seconds)
        timing.sequences = run.state.sequences
    return timings


def _timed_step(run: Run, timing: StepTiming, t: int) -> None:
    device, state = run.c.device, run.state
    updates, update_seconds = state.pattern_updates, state.update_time_s
    device.synchronize()
    t0 = time.perf_counter()
    train_step(run)
    device.synchronize()
    timing.step_seconds.append(time.perf_counter() - t0)
    if state.pattern_updates > updates:  # the step ended with a pattern update
        timing.update_steps.append(t)
        timing.update_seconds += state.update_time_s - update_seconds


def layer_type_update_ms(core: nn.Module, placement: str, layer: int = 0, repeats: int = 5,
                         prune_ratio: float = 0.5) -> dict[str, float]:
    """Median ms of one pattern update of encoder layer `layer`'s linear of each type
    (`LAYER_TYPES`), on a copy (`benchlib.layers.layer_update_ms`); {} when dense."""
    modules = dict(core.named_modules())
    out = {}
    for kind, rel in LAYER_TYPES.items():
        module = modules.get(f"bert.encoder.layer.{layer}.{rel}")
        if module is not None and hasattr(module, "rows"):
            out[kind] = layer_update_ms(module, placement, repeats, prune_ratio)
    return out


def state_bytes_report(c: Components) -> dict[str, int]:
    """Parameters + buffers + actual AdamW state: whole model and the encoder linears."""
    modules = dict(c.core.named_modules())
    linears = [modules[n] for n in encoder_linear_shapes(c.cfg.model)]
    return {"state_bytes_model": state_bytes(c.core, c.optimizer),
            "state_bytes_encoder_linears": sum(state_bytes(m, c.optimizer) for m in linears)}


# ------------------------------------------------------------------ the two benchmarks
def sweep_updates(config: str | Path | None, overrides: Sequence[str], n_updates: Sequence[int],
                  placements: Sequence[str], synthetic: bool = True, warmup: int = 2,
                  interleave: bool = True, layer_repeats: int = 5,
                  log: Callable[[str], None] = _quiet) -> dict[str, Any]:
    """Throughput against the number of pattern updates, per controller placement.

    Every (n, placement) is a fresh build of `config` + `overrides` with
    sparsity.method=dynamic, sparsity.n_updates=n, sparsity.placement=placement. With
    `interleave` all runs are built first (memory: one model + optimizer per run) and
    timed step by step in turn (`time_interleaved`); else one after the other.
    Returns {"runs": [...], "layer_update_ms": {placement: {type: ms}}, "precision"}.
    """
    cfgs = [bench_config(config, list(overrides) + [
        "sparsity.method=dynamic", f"sparsity.n_updates={n}", f"sparsity.placement={p}"])
        for n in n_updates for p in placements]

    def build(cfg: Config) -> tuple[Components, Iterator[Batch]]:
        c = build_bench_components(cfg, synthetic)
        return c, synthetic_batches(cfg) if synthetic else c.train_loader.endless()

    if interleave:
        cases = [build(cfg) for cfg in cfgs]
        timings = time_interleaved(cases, warmup, log)
    else:
        cases, timings = [], []
        for cfg in cfgs:  # keep only the last run's components alive
            cases = [build(cfg)]
            timings.append(time_interleaved(cases, warmup, log)[0])
    runs = [{"n_updates": cfg.sparsity.n_updates, "placement": cfg.sparsity.placement,
             **timing.as_dict()} for cfg, timing in zip(cfgs, timings)]
    core = cases[-1][0].core
    per_layer = {p: layer_type_update_ms(core, p, repeats=layer_repeats,
                                         prune_ratio=cfgs[-1].sparsity.prune_ratio)
                 for p in placements}
    precision = cases[-1][0].precision
    del cases, core
    gc.collect()
    return {"runs": runs, "layer_update_ms": per_layer, "precision": precision}


def train_case(cfg: Config, synthetic: bool = True, warmup: int = 2) -> dict[str, Any]:
    """Sequences/s, peak memory growth (`benchlib.layers.PeakMemory`: from before the
    model is built to the end of the timed steps) and persistent state bytes of one
    config; the components are released before returning."""
    device = resolve_device(cfg.training.device).torch_device
    with PeakMemory(device) as peak:
        c = build_bench_components(cfg, synthetic)
        batches = synthetic_batches(cfg) if synthetic else c.train_loader.endless()
        timing = time_training(c, batches, warmup)
    out = {**timing.as_dict(), **state_bytes_report(c), "peak_memory_bytes": peak.peak_bytes,
           "peak_memory_method": peak.method, "precision": c.precision,
           "flops_per_sequence": c.flops.flops_per_sequence}
    del c, batches
    gc.collect()
    return out


def train_variants(sparsity: float = 0.9, block_sizes: Sequence[int] = (1, 16),
                   dynsp_updates: int = 1) -> dict[str, list[str]]:
    """Name -> overrides of the methods `compare_training` runs: dense, then static and
    DynSp (random regrowth, `dynsp_updates` pattern updates in the timed steps) at
    sparsity `sparsity` for each block size."""
    out = {"dense": ["sparsity.method=dense", "sparsity.sparsity=0"]}
    for method, name, extra in (("static", "static", []),
                                ("dynamic", "dynsp", [f"sparsity.n_updates={dynsp_updates}"])):
        for B in block_sizes:
            out[f"{name}_b{B}"] = [f"sparsity.method={method}", f"sparsity.sparsity={sparsity}",
                                   f"sparsity.block_size={B}"] + extra
    return out


def compare_training(config: str | Path | None, overrides: Sequence[str], sizes: Sequence[str],
                     variants: dict[str, list[str]], synthetic: bool = True, warmup: int = 2,
                     prime: bool = True, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """`train_case` for every model size x variant (`train_variants`); `overrides` go
    between the config and the size/variant settings. One row per case. `prime` first
    runs every variant once on the tiny model (results dropped), so one-time costs (lazy
    imports, oneDNN / cuBLAS initialisation) land in no case's time or memory."""
    if prime:
        for extra in variants.values():
            train_case(bench_config(config, list(overrides) + ["model.size=tiny"] + extra), synthetic, 1)
    rows = []
    for size in sizes:
        for name, extra in variants.items():
            cfg = bench_config(config, list(overrides) + [f"model.size={size}"] + extra)
            rows.append({"size": size, "variant": name, **train_case(cfg, synthetic, warmup)})
            log(f"{size} {name}: {rows[-1]['sequences_per_second_median']:.2f} seq/s, peak "
                f"{rows[-1]['peak_memory_bytes'] / 2**20:.0f} MiB")
    return rows


def profile_case(cfg: Config, steps: int = 2, top: int = 12, synthetic: bool = True) -> list[dict[str, Any]]:
    """Where one training step's time goes: torch.profiler over `steps` steps after one
    warm-up step; the `top` operators by self CPU time, each with ms per step and its
    share of all self time (the C++ kernels show as `cpp_bsr::*`, the other sparse
    backends inside `SparseLinearFunction*`)."""
    from torch.profiler import ProfilerActivity, profile

    c = build_bench_components(cfg, synthetic)
    run = make_run(c, synthetic_batches(cfg) if synthetic else c.train_loader.endless())
    train_step(run)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step(run)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    del c, run
    gc.collect()
    return [{"op": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / steps,
             "share": e.self_cpu_time_total / total} for e in events[:top]]
