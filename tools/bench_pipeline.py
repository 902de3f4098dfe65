"""Throughput of pipeline vs data parallelism at the same number of processes.

    python -m dynsp_tools.bench_pipeline --config RUN.yaml [--procs 2] [--accumulation 8]
        [--steps 20] [--json out.json] [key=value ...]

Every case trains the same config (its corpus, model, sparsity) through the real CLI
(`bert_ipu.pretrain`, under torchrun for several processes, one thread each) with the
same micro-batch size and the same sequences per optimizer step:

* ``single``: 1 process, gradient_accumulation = --accumulation (the baseline);
* ``dp``: --procs data-parallel replicas, accumulation = --accumulation / --procs;
* ``gpipe`` / ``1f1b``: --procs pipeline stages (the encoder layers split evenly),
  accumulation = --accumulation micro-batches through the schedule.

Columns: ``seq/s`` (the run's summary: sequences per second of training steps,
evaluation and checkpoints excluded); ``bubble`` = (P - 1) / (M + P - 1), the idle
fraction of a P-stage schedule over M micro-batches (0 for data parallelism);
``lost`` = 1 - seq/s / (procs x single seq/s): the bubble plus communication and
contention measured against perfect scaling of the single process; ``peak RSS/rank``:
every rank's peak resident memory (the summary's `peak_memory_mib`, rank order).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


from bert_ipu.config import load_config


def even_split(layers: int, stages: int) -> list[int]:
    """`layers` encoder layers over `stages` stages, the first ones one larger."""
    if not 1 <= stages <= layers:
        raise SystemExit(f"error: --procs: expected 1..{layers} (model.num_hidden_layers), "
                         f"got {stages}")
    return [layers // stages + (s < layers % stages) for s in range(stages)]


def cases(procs: int, accumulation: int, layers: int) -> list[tuple[str, int, list[str]]]:
    """(name, processes, overrides) of every case."""
    if accumulation % procs:
        raise SystemExit(f"error: --accumulation: expected a multiple of --procs={procs} "
                         f"(data parallelism keeps the step's sequences), got {accumulation}")
    split = json.dumps(even_split(layers, procs))
    pipe = [f"training.layers_per_stage={split}", f"training.gradient_accumulation={accumulation}"]
    return [("single", 1, [f"training.gradient_accumulation={accumulation}"]),
            ("dp", procs, [f"training.gradient_accumulation={accumulation // procs}"]),
            ("gpipe", procs, [*pipe, "training.pipeline_schedule=gpipe"]),
            ("1f1b", procs, [*pipe, "training.pipeline_schedule=1f1b"])]


def run_case(config: Path, procs: int, overrides: list[str], out: Path) -> dict[str, Any]:
    """Train one case through the CLI (P > 1 under bert_ipu.launch, one thread per
    process); its summary.json."""
    launcher = [sys.executable] + ([] if procs == 1 else [
        "-m", "bert_ipu.launch", "--standalone", f"--nproc_per_node={procs}"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "-m", "bert_ipu.pretrain", "--config", str(config), *overrides,
           f"output_dir={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: case {out.name} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="the run's YAML (corpus, model, sparsity)")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--accumulation", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", type=Path)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    common = [f"training.training_steps={args.steps}", "logging.eval_steps=0",
              "checkpoint.checkpoint_steps=0", "logging.progress_bar=false", *args.overrides]
    layers = load_config(args.config, common).model.num_hidden_layers
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, procs, extra in cases(args.procs, args.accumulation, layers):
            summary = run_case(Path(args.config), procs, common + extra, Path(tmp) / name)
            rss = [m["rss"] for m in summary.get("peak_memory_mib") or []]
            rows.append({"case": name, "procs": procs, "seq_per_s": summary["sequences_per_second"],
                         "peak_rss_mib": rss})
    single = rows[0]["seq_per_s"]
    print(f"{'case':8} {'procs':>5} {'seq/s':>8} {'bubble':>7} {'lost':>6} {'peak RSS/rank MiB':>20}")
    for r in rows:
        pipelined = r["case"] in ("gpipe", "1f1b")
        r["bubble"] = (args.procs - 1) / (args.accumulation + args.procs - 1) if pipelined else 0.0
        r["lost"] = 1 - r["seq_per_s"] / (r["procs"] * single)
        rss = "/".join(f"{v:.0f}" for v in r["peak_rss_mib"]) or "-"
        print(f"{r['case']:8} {r['procs']:>5} {r['seq_per_s']:>8.1f} {r['bubble']:>7.3f} "
              f"{r['lost']:>6.3f} {rss:>20}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
