"""Training throughput against the number of DynSp pattern updates ("host-update count
against throughput"), with the host-side and the device-side controller.

    dynsp-bench-updates [--config configs/demo.yaml] [--steps T]
        [--n-updates 0,20,40,80,160,320] [--placements host,device] [key=value ...]

For every n and placement: a fresh build of the config (sparsity.method=dynamic,
sparsity.n_updates=n, sparsity.placement=...) trains T steps with the trainer's own
`train_step` (`benchlib.training`; updates at t_k = floor(k T / (n + 1))), after
--warmup untimed steps. Data: synthetic random token batches shaped like the config's
(default; isolates the model from data loading) or, with --no-synthetic, the config's
corpus. n must be < T: T defaults to 2 x max(n); with a smaller --steps, larger n
are dropped with a note.

Table: sequences/s over the T steps (updates included), its ratio to n = 0 of the same
placement in the same run, the median step time without updates, the updates' total
time (controller's `update_time_s`) and its fraction of the run, and that fraction
projected to a run of --project-steps steps (default: the config's
training.training_steps) with the same n, step time and update time. A second table
gives the time of one update of one layer of each type (encoder layer 0, a copy,
constant prune ratio = sparsity.prune_ratio: the largest k). On a CPU both placements
run on the CPU (same numbers up to noise). JSON goes to --json, the plot (throughput
and update fraction against n, one line per placement) to --plot.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

import torch

from dynsp_tools.benchlib import training as bm
from bert_ipu.devices import resolve_device
from dynsp_tools.benchlib.layers import format_table, machine_info

DEFAULT_N = (0, 20, 40, 80, 160, 320)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"must be integers >= 0, got {text!r}")
    return values


def _str_list(text: str) -> list[str]:
    return [v for v in text.replace(" ", ",").split(",") if v]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"),
                   help="run config (default: configs/demo.yaml)")
    p.add_argument("--steps", type=int, help="timed training steps T (default: 2 x max n, at least 10)")
    p.add_argument("--n-updates", type=_int_list, default=list(DEFAULT_N), help="comma-separated n")
    p.add_argument("--placements", type=_str_list, default=["host", "device"], help="host,device")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    p.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=True,
                   help="synthetic token batches (default) or the config's data (--no-synthetic)")
    p.add_argument("--project-steps", type=int, help="run length for the projected update fraction "
                   "(default: the config's training.training_steps)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=True,
                   help="build all runs first and time them step by step in turn (default; one "
                        "model + optimizer per run in memory) or one after the other")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=Path("runs/bench/bench_updates.json"))
    p.add_argument("--plot", type=Path, help="PNG path (default: the JSON path with .png)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args(argv)
    bad = [x for x in args.placements if x not in ("host", "device")]
    if bad:
        p.error(f"--placements: expected host and/or device, got {bad}")
    return args


def plan(n_list: list[int], steps: int | None) -> tuple[int, list[int], list[int]]:
    """(T, kept n, dropped n): T = steps or max(2 max n, 10); n >= T cannot be scheduled."""
    T = steps if steps is not None else max(2 * max(n_list), 10)
    return T, [n for n in n_list if n < T], [n for n in n_list if n >= T]


def summarise(runs: list[dict[str, Any]], project_steps: int | None) -> list[dict[str, Any]]:
    """Adds ``ratio_vs_n0`` (same placement, same run) and ``projected_update_fraction``."""
    base = {r["placement"]: r["sequences_per_second"] for r in runs if r["n_updates"] == 0}
    for r in runs:
        b = base.get(r["placement"])
        r["ratio_vs_n0"] = r["sequences_per_second"] / b if b else None
        per_update = r["update_time_s"] / r["n_updates"] if r["n_updates"] else 0.0
        if project_steps:
            total = project_steps * r["median_step_s"] + r["n_updates"] * per_update
            r["projected_update_fraction"] = r["n_updates"] * per_update / total
    return runs


def runs_table(runs: list[dict[str, Any]], project_steps: int | None) -> str:
    head = ["placement", "n", "updates", "seq/s", "vs n=0", "median step ms", "update total s",
            "update % of run", f"projected % ({project_steps} steps)"]
    rows = [[r["placement"], r["n_updates"], len(r["update_steps"]), f"{r['sequences_per_second']:.2f}",
             "n/a" if r["ratio_vs_n0"] is None else f"{r['ratio_vs_n0']:.3f}",
             f"{1e3 * r['median_step_s']:.1f}", f"{r['update_time_s']:.3f}",
             f"{100 * r['update_fraction']:.2f}",
             f"{100 * r['projected_update_fraction']:.3f}" if "projected_update_fraction" in r else "n/a"]
            for r in sorted(runs, key=lambda r: (r["placement"], r["n_updates"]))]
    return format_table(head, rows)


def layer_table(per_layer: dict[str, dict[str, float]], n_layers: int) -> str:
    types = list(bm.LAYER_TYPES)
    head = ["placement"] + [f"{t} ms" for t in types] + [f"all {n_layers} layers ms (sum x L)"]
    rows = [[p] + [f"{ms.get(t, float('nan')):.2f}" for t in types] + [f"{n_layers * sum(ms.values()):.1f}"]
            for p, ms in per_layer.items()]
    return format_table(head, rows)


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Throughput and update-time fraction against n, one line per placement (PNG)."""
    try:
        import matplotlib
    except ImportError:
        print("bench_updates: matplotlib is not installed (pip install -r requirements.txt); no plot written")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for placement in sorted({r["placement"] for r in runs}):
        mine = sorted((r for r in runs if r["placement"] == placement), key=lambda r: r["n_updates"])
        n = [r["n_updates"] for r in mine]
        ax1.plot(n, [r["sequences_per_second"] for r in mine], marker="o", label=placement)
        ax2.plot(n, [100 * r["update_fraction"] for r in mine], marker="o", label=placement)
    ax1.set(xlabel="pattern updates n", ylabel="sequences / s", title="throughput")
    ax1.set_ylim(bottom=0)
    ax2.set(xlabel="pattern updates n", ylabel="% of run time", title="update time")
    for ax, where in ((ax1, "lower left"), (ax2, "upper left")):
        ax.grid(alpha=0.3)
        ax.legend(title="controller", loc=where)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    T, n_list, dropped = plan(args.n_updates, args.steps)
    if dropped:
        print(f"note: n = {dropped} dropped: n must be < T = {T} steps (raise --steps to {2 * max(dropped)})")
    if not n_list:
        print("bench_updates: no n left to run")
        return 2
    base = bm.bench_config(args.config, args.overrides)
    project = args.project_steps or base.training.training_steps
    overrides = list(args.overrides) + [f"training.training_steps={T}"]
    result = bm.sweep_updates(args.config, overrides, n_list, args.placements, args.synthetic,
                              args.warmup, args.interleave, log=print)
    runs = summarise(result["runs"], project)
    device = resolve_device(base.training.device).torch_device
    info = machine_info(device)
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"config {args.config} {' '.join(args.overrides)}: T = {T} steps x {base.training.micro_batch_size} "
          f"sequences, {'synthetic' if args.synthetic else 'config'} data, {result['precision']}, "
          f"model {base.model.size or base.model.hidden_size}")
    print(runs_table(runs, project))
    print("one pattern update of one layer (encoder layer 0):")
    print(layer_table(result["layer_update_ms"], base.model.num_hidden_layers))
    out = {"machine": info, "config": str(args.config), "overrides": args.overrides, "steps": T,
           "warmup": args.warmup, "synthetic": args.synthetic, "dropped_n": dropped,
           "project_steps": project, **result, "runs": runs}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    png = plot(runs, args.plot or args.json.with_suffix(".png"),
               f"{args.config} T={T} {info.get('gpu') or info.get('cpu')}")
    if png:
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
