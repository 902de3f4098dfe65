"""Training throughput of the same configs with an earlier commit and with this tree.

    python -m dynsp_tools.before_after --before COMMIT [--after COMMIT] [--repeats 2]
                                       [--json PATH] [--only NAME ...]

For each case (a config file of this tree plus overrides, below) it runs `python -m
bert_ipu.pretrain` on it from a git worktree of COMMIT ("before") and from a worktree of
`--after` (default: this working tree, as it is while the runs go on), alternating
before / after `--repeats` times on the same machine, and reads `sequences_per_second` from
each run's summary.json. Writes {description, machine, rows: [{run, precision, before,
after, before_runs, after_runs}]} (medians over the repeats) for `kernel_report
--before-after`. Runs go to a fresh temporary folder, removed at the end; the worktree is
created and removed by this tool (nothing else is touched).
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from dynsp_tools.benchlib.layers import machine_info

ROOT = Path(__file__).resolve().parents[1]

# name -> (label, precision label, config, overrides)
CASES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "demo_fp32": ("make pretrain (configs/demo.yaml, BERT-Mini DynSp B=16, 200 steps)", "fp32",
                  "configs/demo.yaml", ("training.precision=fp32", "training.training_steps=200",
                                        "sparsity.n_updates=10")),
    "demo_auto": ("make pretrain (configs/demo.yaml, BERT-Mini DynSp B=16, 200 steps)", "auto (bf16 here)",
                  "configs/demo.yaml", ("training.precision=auto", "training.training_steps=200",
                                        "sparsity.n_updates=10")),
    "cpu_b16": ("first CPU suite run (repro_cpu_b16.yaml, BERT-Tiny DynSp B=16, 1 thread, 300 steps)", "fp32",
                "configs/base/repro_cpu_b16.yaml", ("training.training_steps=300", "sparsity.n_updates=15",
                                                    "training.num_threads=1")),
    "cpu": ("CPU suite run (repro_cpu.yaml, BERT-Tiny DynSp B=1, 1 thread, 300 steps)", "fp32",
            "configs/base/repro_cpu.yaml", ("training.training_steps=300", "sparsity.n_updates=60",
                                            "training.num_threads=1")),
}


def _run(tree: Path, config: str, overrides: tuple[str, ...], out: Path) -> float:
    # the config file of this tree for both sides: the same settings, the code differs
    cmd = [sys.executable, "-m", "bert_ipu.pretrain", "--config", str(ROOT / config), *overrides,
           f"output_dir={out}", "logging.progress_bar=false"]
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"before_after: {' '.join(cmd[2:])} in {tree} failed (exit {proc.returncode}): {tail[0]}")
    return float(json.loads((out / "summary.json").read_text())["sequences_per_second"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    p.add_argument("--after", help="the later commit (default: this working tree); a fixed "
                   "commit keeps edits made while the runs go on out of the measurement")
    p.add_argument("--repeats", type=int, default=2, help="before/after pairs per case (default 2)")
    p.add_argument("--only", nargs="+", choices=tuple(CASES), help="cases to run (default: all)")
    p.add_argument("--json", type=Path, default=Path("runs/bench/before_after.json"))
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"argument --repeats: expected an integer >= 1, got {args.repeats}")
    revs = {}
    for side in ("before", "after"):
        spec = getattr(args, side)
        if spec is None:
            continue
        rev = subprocess.run(["git", "rev-parse", "--short", spec], cwd=ROOT, capture_output=True, text=True)
        if rev.returncode != 0:
            p.error(f"argument --{side}: {spec!r} is not a commit of this repository")
        revs[side] = rev.stdout.strip()
    before = revs["before"]
    after = revs.get("after") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                capture_output=True, text=True).stdout.strip() + " + working tree"
    # SIGTERM (kill, a job scheduler) ends it through the cleanup below, like Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="dynsp-before-after-"))
    tree = tmp / "before"
    later = tmp / "after" if "after" in revs else ROOT
    rows: list[dict[str, Any]] = []
    try:
        for where, rev in ((tree, before), (later, revs.get("after"))):
            if rev is not None:
                subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=ROOT,
                               check=True, capture_output=True)
        for name in args.only or CASES:
            label, precision, config, overrides = CASES[name]
            runs: dict[str, list[float]] = {"before": [], "after": []}
            for r in range(args.repeats):
                for side, where in (("before", tree), ("after", later)):
                    rate = _run(where, config, overrides, tmp / f"{name}-{side}-{r}")
                    runs[side].append(rate)
                    print(f"{name} {side} #{r}: {rate:.1f} seq/s", flush=True)
            rows.append({"run": label, "precision": precision, "before": statistics.median(runs["before"]),
                         "after": statistics.median(runs["after"]), "before_runs": runs["before"],
                         "after_runs": runs["after"]})
    except KeyboardInterrupt:
        print("before_after: interrupted; its worktrees and runs are removed, nothing was written",
              file=sys.stderr)
        return 130
    finally:
        for where in (tree, later):
            if where != ROOT:
                subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT,
                               capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "description": (f"Sequences/s from each run's summary.json: the same config run with commit {before} "
                        f"(before) and with {after} (after), alternating before/after {args.repeats} time(s) "
                        f"on the same machine (`python -m dynsp_tools.before_after --before {before} "
                        + (f"--after {revs['after']} " if "after" in revs else "")
                        + f"--repeats {args.repeats}`); medians, every run listed in the JSON."),
        "machine": machine_info(torch.device("cpu")), "before_commit": before, "after_commit": after,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
