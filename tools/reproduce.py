"""The reproduction suite, unattended and resumable (`make reproduce`, docs/results/README.md).

    python -m dynsp_tools.reproduce [--suite cpu|cpu_b16|gpu] [--only NAME ...] [--dry-run] [--jobs N]

Every sweep of configs/sweeps/<suite>/ is validated first (a bad file stops everything,
exit 2, before any run); then, in order (lr first), each sweep runs its unfinished runs
(finished ones are skipped, interrupted ones resume from their checkpoint, a failure is
recorded and the suite carries on) and is collected into docs/results/<suite>/<name>/
(tables and figures). docs/results/<suite>/RUN.md records the commit, the machine, the
wall time of this invocation and the summed run time of every sweep. Run it again after
a stop: it continues where it was.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bert_ipu.config import ConfigError
from bert_ipu.sweep.results import write_results
from bert_ipu.sweep.runner import RUN_RECORD, plan_lines, run_state, run_sweep
from bert_ipu.sweep.spec import SweepRun, expand_sweep

ROOT = Path(__file__).resolve().parents[1]
JOBS = {"cpu": 2, "cpu_b16": 2, "gpu": 1}  # default runs at a time (CPU suites: 1 thread a run)
_FIRST_SUITE = ("lr", "pareto", "n_updates", "prune_ratio", "regrow", "ablations", "block_size")
# The sweeps of each suite, in the order they run (lr first: the others use its winners).
SUITES = {
    "cpu": ("lr", "dose", "prose_gate", "prose", "dose_extra"),  # the paper's settings (issue 18)
    "cpu_b16": _FIRST_SUITE,                       # the first, 16 x 16-block CPU suite
    "gpu": _FIRST_SUITE,
}
ORDER = tuple(dict.fromkeys(n for names in SUITES.values() for n in names))
# A sweep that runs only when an earlier one passes its gate: (suite, sweep) -> gate sweep
# (dynsp_tools.claims.gate decides from the gate sweep's runs and says why).
GATED = {("cpu", "prose"): "prose_gate"}
# Corpora the suite's configs read from data/<name> (configs/base/repro_cpu_prose.yaml):
# linked from the developers' offline copy (shared/data/<name> beside the repository)
# when it is missing.
CORPORA = {"cpu": ("sotu",)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dynsp_tools.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=tuple(SUITES), default="cpu")
    p.add_argument("--only", nargs="+", choices=ORDER, help="these sweeps only")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at a time (default: 2 for the CPU suite, whose runs use one "
                        "thread each, so two share 2 cores; 1 for the GPU suite)")
    p.add_argument("--results", default=str(ROOT / "docs" / "results"),
                   help="where tables, figures and RUN.md go (default docs/results)")
    return p.parse_args(argv)


def machine() -> str:
    """CPU model, its instruction set (the flags the kernels care about), cores,
    accelerator and torch version, in one line."""
    import torch

    from sparse_ops.kernels.cpp_build import cpu_flags, cpu_model, isa_key

    model = cpu_model()
    if model == "unknown":
        model = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{model} ({isa_key(cpu_flags()).replace('-', ' ')}), {os.cpu_count()} cores, {gpu}, "
            f"torch {torch.__version__}")


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_seconds(runs: list[SweepRun]) -> tuple[float, list[str]]:
    """Summed wall seconds of the runs' attempts, and the runs not finished."""
    total, missing = 0.0, []
    for r in runs:
        try:
            record = json.loads((r.output_dir / RUN_RECORD).read_text())
            total += float(record["wall_s"])
        except (OSError, ValueError, KeyError, TypeError):
            record = {}  # run outside the runner (its time is not known) or not run
        if run_state(r) != "done":
            missing.append(f"{r.output_dir} ({record.get('status', 'not run')})")
    return total, missing


def elapsed_span(runs: list[SweepRun]) -> tuple[float, float] | None:
    """(first start, last end) in epoch seconds over the runs' records, across every
    invocation: a record is written when its run ends (its mtime) after `wall_s` seconds
    (summed over attempts, so a resumed run counts from before its first attempt)."""
    spans = []
    for r in runs:
        path = r.output_dir / RUN_RECORD
        try:
            end = path.stat().st_mtime
            spans.append((end - float(json.loads(path.read_text())["wall_s"]), end))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return (min(s for s, _ in spans), max(e for _, e in spans)) if spans else None


def write_run_md(path: Path, suite: str, sweeps: dict[str, list[SweepRun]], wall: float,
                 jobs: int = 1) -> None:
    span = elapsed_span([r for runs in sweeps.values() for r in runs])
    elapsed = f"{(span[1] - span[0]) / 60:.1f} min" if span else "-"
    lines = [f"# {suite.upper()} suite: how it was run", "",
             f"* commit: `{commit()}`", f"* machine: {machine()}",
             f"* runs at a time: {jobs} (summed run times below are about {jobs}x the elapsed time)",
             f"* finished: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"* wall time of the last invocation: {wall / 60:.1f} min",
             f"* elapsed from the first run's start to the last run's end (all invocations, "
             f"gaps included): {elapsed}", "",
             "| sweep | runs | summed run time (min, all attempts) | not finished |", "|---|---|---|---|"]
    for name, runs in sweeps.items():
        seconds, missing = run_seconds(runs)
        lines.append(f"| {name} | {len(runs)} | {seconds / 60:.1f} | {', '.join(missing) or '-'} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def runs_root(sweeps: dict[str, list[SweepRun]]) -> Path:
    """The folder holding the suite's sweep folders (runs/repro/<suite>)."""
    first = next(iter(sweeps.values()))[0]
    return first.output_dir.parent.parent


def link_corpora(suite: str) -> str:
    """Link data/<name> to shared/data/<name> beside the repository where the suite needs
    a corpus that is not there; '' when every corpus is present, else a one-line error naming what is missing."""
    for name in CORPORA.get(suite, ()):
        target = ROOT / "data" / name
        if target.exists():
            continue
        offline = ROOT.parent / "shared" / "data" / name
        if not offline.is_dir():
            return (f"suite {suite} reads the {name} corpus from {target}, which does not exist "
                    f"(put the text files there; docs/results/README.md says where to get them)")
        if target.is_symlink():  # a dangling link: not ours to remove, whoever made it
            return (f"suite {suite} reads the {name} corpus from {target}, a link to "
                    f"{os.readlink(target)} which does not exist (remove or repoint the link)")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(offline, target_is_directory=True)
    return ""


def gate_closed(suite: str, name: str, sweeps: dict[str, list[SweepRun]], out: Path) -> str:
    """'' when sweep `name` may run; else why not (also written to out/name/GATE.md)."""
    gate_sweep = GATED.get((suite, name))
    if gate_sweep is None or gate_sweep not in sweeps:
        return ""
    from dynsp_tools import claims

    ok, why = claims.gate(sweeps[gate_sweep][0].output_dir.parent)
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / name / "GATE.md").write_text(f"# Gate of `{name}` (from `{gate_sweep}`)\n\n{why}\n",
                                        encoding="utf-8")
    return "" if ok else why


def main(argv: list[str] | None = None) -> int:
    """Run the suite; 0 all finished, 1 some run did not, 2 bad input."""
    args = parse_args(argv)
    jobs = args.jobs or JOBS[args.suite]
    folder = ROOT / "configs" / "sweeps" / args.suite
    try:
        names = [n for n in SUITES[args.suite] if not args.only or n in args.only]
        unknown = sorted(set(args.only or ()) - set(SUITES[args.suite]))
        if unknown:
            raise ConfigError(f"--only: suite {args.suite} has no sweep {', '.join(unknown)} "
                              f"(it has {', '.join(SUITES[args.suite])})")
        sweeps = {n: expand_sweep(folder / f"{n}.yaml") for n in names}
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, runs in sweeps.items():
        print(f"{name}: {len(runs)} runs\n" + "\n".join(plan_lines(runs)), file=sys.stderr)
    if args.dry_run:
        return 0
    missing = link_corpora(args.suite)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    start, failed = time.monotonic(), 0
    out = Path(args.results) / args.suite
    for name, runs in sweeps.items():
        held = gate_closed(args.suite, name, sweeps, out)
        if held:
            print(f"{name}: not run, {held}", file=sys.stderr)
            continue
        codes = run_sweep(runs, jobs, log=lambda s: print(f"{name} {s}", file=sys.stderr, flush=True))
        failed += sum(c != 0 for c in codes.values())
        try:
            write_results(runs[0].output_dir.parent, out / name)
        except (OSError, ImportError) as err:
            print(f"warning: {name}: collect failed: {err}", file=sys.stderr)
        write_run_md(out / "RUN.md", args.suite, sweeps, time.monotonic() - start, jobs)
    if args.suite == "cpu":
        from dynsp_tools import claims

        claims.write(runs_root(sweeps), out)
    print(f"suite {args.suite}: {failed} runs did not finish; results in {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
