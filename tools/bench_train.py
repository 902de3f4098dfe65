"""Sequences/s and memory of dense vs static vs DynSp training, per BERT size, on this device.

    dynsp-bench-train [--sizes mini,small,medium,base] [--steps 5]
        [--micro-batch-size 32] [--config PATH] [key=value ...]

For every size and variant (dense; static and DynSp at --sparsity 0.9 with block
sizes --block-sizes 1,16) the config (default: the library defaults, i.e. phase-I
settings with vocabulary 30522; `training.precision=auto`) is built fresh and trained
--steps steps with the trainer's own `train_step` after --warmup untimed steps
(`benchlib.training.train_case`). DynSp runs --dynsp-updates pattern updates within
the timed steps; their time is reported and taken out of the throughput
(tools/bench_updates.py measures what updates cost a run).

Columns (ratios are against dense of the same size, measured in the same run):
* ``epsilon``: time per non-embedding training FLOP over dense's (the paper's wall-clock
  criterion; docs/results/kernels.md);
* ``seq/s``: sequences per step / median step time (robust to load bursts on a shared
  machine; the mean-based numbers are in the JSON);
* ``spread``: (max - min) / median of the timed step times without an update; a ratio
  to dense within the two rows' spreads is flagged with a warning (not a measured
  difference), as is a case with fewer than 3 timed steps;
* ``peak MiB``: peak memory growth from before the model is built to the end of the
  timed steps (model, gradients, Adam state, activations, workspace). CUDA:
  ``torch.cuda.max_memory_allocated`` (tensors). CPU: the process's peak resident set
  size (VmHWM, reset before each case, freed heap trimmed first) minus its RSS at the
  start: everything the process touched, allocator slack included; noisy at the MiB
  level. ``tracemalloc`` would miss torch's tensors, hence RSS.
* ``state MiB``: parameters + buffers + the actual AdamW state
  (`sparse_ops.memory.state_bytes`), whole model and encoder linears only (the weights
  that are sparse; embeddings and heads stay dense).

Data: synthetic random token batches (default: isolates the model from data loading)
or the config's corpus with --no-synthetic. JSON goes to --json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


import torch

from dynsp_tools.benchlib import training as bm
from bert_ipu.devices import resolve_device
from bert_ipu.model.sizes import MODEL_SIZES
from dynsp_tools.benchlib.layers import format_table, machine_info

MIB = 2.0 ** 20


def _list(text: str) -> list[str]:
    return [v for v in text.replace(" ", ",").split(",") if v]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="run config (default: library defaults)")
    p.add_argument("--sizes", type=_list, default=["mini", "small", "medium", "base"],
                   help="comma-separated model sizes")
    p.add_argument("--variants", type=_list, help="subset of dense,static_bB,dynsp_bB (default: all)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    p.add_argument("--micro-batch-size", type=int, help="training.micro_batch_size (default: config's)")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--block-sizes", type=lambda t: [int(v) for v in _list(t)], default=[1, 16])
    p.add_argument("--dynsp-updates", type=int, default=1, help="pattern updates in the timed steps")
    p.add_argument("--precision", default="auto", help="training.precision (default auto)")
    p.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=True,
                   help="synthetic token batches (default) or the config's data (--no-synthetic)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--profile", type=int, default=0, metavar="TOP",
                   help="also profile 2 steps of each variant and print its TOP operators by self time")
    p.add_argument("--json", type=Path, default=Path("runs/bench/bench_train.json"))
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args(argv)
    bad = [s for s in args.sizes if s not in MODEL_SIZES]
    if bad:
        p.error(f"--sizes: expected names from {list(MODEL_SIZES)}, got {bad}")
    if args.dynsp_updates >= args.steps:
        p.error(f"--dynsp-updates must be < --steps ({args.steps}), got {args.dynsp_updates}")
    return args


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds ``*_vs_dense`` for throughput, peak memory and state bytes (same size), and
    ``epsilon``: the paper's wall-clock criterion, time per non-embedding training FLOP
    (docs/flops.md) of the row over that of dense."""
    keys = ("sequences_per_second_median", "peak_memory_bytes", "state_bytes_model",
            "state_bytes_encoder_linears")
    dense = {r["size"]: r for r in rows if r["variant"] == "dense"}
    for r in rows:
        d = dense.get(r["size"])
        for k in keys:
            r[f"{k}_vs_dense"] = r[k] / d[k] if d and d[k] else None
        rate, flops = r["sequences_per_second_median"], r.get("flops_per_sequence")
        r["epsilon"] = ((d["sequences_per_second_median"] * d["flops_per_sequence"]) / (rate * flops)
                        if d and rate and flops and d.get("flops_per_sequence") else None)
    return rows


def noise_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """One warning per sparse row whose speed ratio to dense is within the step-time spread
    of the two (the effect is smaller than the noise: 2 steps on a busy machine once gave
    DynSp 1.96x dense), and one when there are too few steps to see a spread at all."""
    dense = {r["size"]: r for r in rows if r["variant"] == "dense"}
    out = []
    for r in rows:
        d, ratio = dense.get(r["size"]), r.get("sequences_per_second_median_vs_dense")
        if d is None or r is d or ratio is None:
            continue
        steps = r["steps"] - r["n_updates"]
        noise = r["step_time_spread"] + d["step_time_spread"]
        if min(steps, d["steps"]) < 3:
            out.append(f"warning: {r['size']} {r['variant']}: {ratio:.2f}x dense from fewer than "
                       "3 timed steps; the spread cannot be seen (use --steps 5 or more)")
        elif abs(ratio - 1) <= noise:
            out.append(f"warning: {r['size']} {r['variant']}: {ratio:.2f}x dense is within the "
                       f"step-time spread ({noise:.0%} of a step, this row and dense together); "
                       "not a measured difference (more --steps, a quieter machine)")
    return out


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ["size", "variant", "seq/s", "vs dense", "epsilon", "spread", "peak MiB", "vs dense", "state MiB", "vs dense",
            "enc-linear state MiB", "vs dense", "update ms"]
    cells = [[r["size"], r["variant"], f"{r['sequences_per_second_median']:.2f}",
              _ratio(r["sequences_per_second_median_vs_dense"]), _ratio(r.get("epsilon")),
              f"{r['step_time_spread']:.0%}", f"{r['peak_memory_bytes'] / MIB:.0f}", _ratio(r["peak_memory_bytes_vs_dense"]),
              f"{r['state_bytes_model'] / MIB:.1f}", _ratio(r["state_bytes_model_vs_dense"]),
              f"{r['state_bytes_encoder_linears'] / MIB:.1f}",
              _ratio(r["state_bytes_encoder_linears_vs_dense"]),
              f"{1e3 * r['update_time_s'] / r['n_updates']:.1f}" if r["n_updates"] else "-"]
             for r in rows]
    return format_table(head, cells)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [f"training.training_steps={args.steps}", f"training.precision={args.precision}"]
    if args.micro_batch_size:
        overrides.append(f"training.micro_batch_size={args.micro_batch_size}")
    overrides += args.overrides
    variants = bm.train_variants(args.sparsity, args.block_sizes, args.dynsp_updates)
    if args.variants:
        unknown = [v for v in args.variants if v not in variants]
        if unknown:
            print(f"bench_train: --variants: expected names from {list(variants)}, got {unknown}")
            return 2
        variants = {k: v for k, v in variants.items() if k in args.variants}
    rows = with_ratios(bm.compare_training(args.config, overrides, args.sizes, variants,
                                           args.synthetic, args.warmup))
    cfg = bm.bench_config(args.config, overrides)
    info = machine_info(resolve_device(cfg.training.device).torch_device)
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"{args.steps} steps x {cfg.training.micro_batch_size} sequences of {cfg.data.sequence_length} "
          f"tokens, {rows[0]['precision']}, {'synthetic' if args.synthetic else 'config'} data, "
          f"peak memory: {rows[0]['peak_memory_method']}")
    print(table(rows))
    for line in noise_warnings(rows):
        print(line)
    profiles = {}
    if args.profile:
        for size in args.sizes:
            for name, extra in variants.items():
                cfg_v = bm.bench_config(args.config, overrides + [f"model.size={size}"] + extra)
                profiles[f"{size} {name}"] = bm.profile_case(cfg_v, top=args.profile, synthetic=args.synthetic)
                print(f"profile of one {size} {name} step (self time):")
                print(format_table(["operator", "ms / step", "share"],
                                   [[p["op"], f"{p['ms_per_step']:.1f}", f"{p['share']:.1%}"]
                                    for p in profiles[f"{size} {name}"]]))
    out = {"machine": info, "config": args.config, "profiles": profiles, "threads": torch.get_num_threads(), "overrides": overrides, "steps": args.steps,
           "warmup": args.warmup, "synthetic": args.synthetic, "sparsity": args.sparsity,
           "variants": variants, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
