"""What a pipeline stage holds and how long its checkpoints take, for P = 1, 2, 4 stages.

    dynsp-bench-stages --config RUN.yaml [--stages 1 2 4] [--repeats 3] [--steps 20]
        [--every 5] [--json out.json] [key=value ...]

Every case trains the same config through the real CLI (`bert_ipu.pretrain`; P > 1
under `bert_ipu.launch`, one thread per process), with the encoder layers split evenly
over P stages, and checkpoints every --every steps:

* ``P=1``: one process (the single-process state and the single-file checkpoint);
* ``P=n sharded``: n stages, every rank writing its shard (checkpoint.sharded=true);
* ``P=n gathered``: n stages, rank 0 gathering every stage's state and writing the
  single-process files (checkpoint.sharded=false: how pipelined checkpoints were
  written before the sharded ones).

The cases run interleaved (one of each per repeat). Per rank it reports the model
state the process holds (the summary's `model_state_mib`: encoder layers apart from
embeddings and heads; weights, patterns, gradients, AdamW moments) and its peak RSS; per
case the checkpoint time (capture + write, every checkpoint of every repeat: min and
median). The encoder fraction is the rank's encoder state over the single process's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from bert_ipu.config import load_config
from dynsp_tools.bench_pipeline import even_split
from dynsp_tools.benchlib.layers import machine_info


def cases(stages: list[int], layers: int) -> list[tuple[str, int, list[str]]]:
    """(name, processes, overrides) of every case."""
    out: list[tuple[str, int, list[str]]] = []
    for p in stages:
        if p == 1:
            out.append(("P=1", 1, []))
            continue
        split = f"training.layers_per_stage={json.dumps(even_split(layers, p))}"
        out += [(f"P={p} sharded", p, [split, "checkpoint.sharded=true"]),
                (f"P={p} gathered", p, [split, "checkpoint.sharded=false"])]
    return out


def run_case(config: Path, procs: int, overrides: list[str], out: Path) -> dict[str, Any]:
    """Train one case; its summary.json."""
    launcher = [sys.executable] + ([] if procs == 1 else [
        "-m", "bert_ipu.launch", "--standalone", f"--nproc_per_node={procs}"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "-m", "bert_ipu.pretrain", "--config", str(config), *overrides,
           f"output_dir={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: case {out.name} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per case: the first repeat's memory per rank, the checkpoint times of
    every repeat."""
    single = next((r for r in rows if r["case"] == "P=1"), None)
    base = single["model_state_mib"][0]["encoder"] if single else None
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        runs = [r for r in rows if r["case"] == case]
        times = [t for r in runs for t in r["checkpoint_write_s"]]
        first = runs[0]
        out.append({
            "case": case, "procs": first["procs"],
            "encoder_mib": [m["encoder"] for m in first["model_state_mib"]],
            "rest_mib": [m["rest"] for m in first["model_state_mib"]],
            "encoder_fraction": [m["encoder"] / base if base else None
                                 for m in first["model_state_mib"]],
            "peak_rss_mib": [m["rss"] for m in first["peak_memory_mib"]],
            "checkpoints": len(times),
            "checkpoint_s_min": min(times) if times else None,
            "checkpoint_s_median": statistics.median(times) if times else None,
        })
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="the run's YAML (corpus, model, sparsity)")
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--every", type=int, default=5, help="checkpoint every N steps")
    ap.add_argument("--json", type=Path)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    common = [f"training.training_steps={args.steps}", "logging.eval_steps=0",
              f"checkpoint.checkpoint_steps={args.every}", "logging.progress_bar=false",
              "logging.trackers=[]", *args.overrides]
    layers = load_config(args.config, common).model.num_hidden_layers
    plan = cases(args.stages, layers)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, procs, extra in plan:
                folder = Path(tmp) / f"{name.replace(' ', '_').replace('=', '')}_{repeat}"
                summary = run_case(Path(args.config), procs, common + extra, folder)
                rows.append({"case": name, "procs": procs, "repeat": repeat,
                             "model_state_mib": summary["model_state_mib"],
                             "peak_memory_mib": summary["peak_memory_mib"],
                             "checkpoint_write_s": summary["checkpoint_write_s"]})
    lines = table(rows)
    machine = machine_info(torch.device("cpu"))
    print(f"CPU: {machine['cpu']} ({', '.join(f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if machine[f])}); "
          f"{args.repeats} repeats; memory of the first repeat")
    print(f"{'case':13} {'encoder MiB/rank':>22} {'enc/single':>18} {'rest MiB/rank':>22} "
          f"{'peak RSS MiB/rank':>20} {'ckpt s min/med':>15}")
    for r in lines:
        enc = "/".join(f"{v:.2f}" for v in r["encoder_mib"])
        frac = "/".join(f"{v:.2f}" for v in r["encoder_fraction"] if v is not None)
        rest = "/".join(f"{v:.1f}" for v in r["rest_mib"])
        rss = "/".join(f"{v:.0f}" for v in r["peak_rss_mib"])
        ckpt = f"{r['checkpoint_s_min']:.3f}/{r['checkpoint_s_median']:.3f}" \
            if r["checkpoints"] else "-"
        print(f"{r['case']:13} {enc:>22} {frac:>18} {rest:>22} {rss:>20} {ckpt:>15}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "machine": machine, "table": lines, "runs": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
