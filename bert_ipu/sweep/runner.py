"""Run every point of a sweep, each in its own folder, resumably.

Each run is `python -m bert_ipu.pretrain --config BASE OVERRIDES...` in a child process
(so a crash, a divergence or bad data in one run cannot stop the others), with its output
appended to `<output_dir>/sweep.log`. Per run:

* its `config.yaml` differs from the sweep's config for it (a setting of the sweep file or
  of its base config was changed since): started again (`redo`); the trainer moves the
  earlier run's files to `checkpoints/previous-<time>/`;
* `summary.json` present with all its steps: finished, skipped;
* `summary.json` of fewer steps (the sweep was lengthened): started again, the same way
  (a DynSp schedule depends on the total steps, so the old checkpoints cannot be
  continued);
* a checkpoint present (an interrupted or failed run): resumed
  (`checkpoint.resume_training_from_checkpoint=latest`);
* otherwise started.

`<output_dir>/sweep_run.json` records the last attempt: exit code, status, wall seconds
(summed over attempts) and the command. A failed run is recorded and the others carry on.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bert_ipu.config import ConfigError, applied_config_dict, load_config
from bert_ipu.sweep.spec import SweepRun
from bert_ipu.logs import Log

__all__ = ["run_state", "command", "plan_lines", "run_sweep", "RUN_RECORD"]

RUN_RECORD = "sweep_run.json"
RESUME = "checkpoint.resume_training_from_checkpoint=latest"


def config_changed(run: SweepRun) -> bool:
    """True when the run folder holds a run of another config than the sweep's for it."""
    saved = run.output_dir / "config.yaml"
    if not saved.is_file():
        return False
    try:
        return _settings(load_config(saved)) != _settings(run.config)
    except ConfigError:
        return True


def _settings(cfg) -> dict:
    """What a run computes (a resumed attempt saves `resume_training_from_checkpoint`)."""
    out = applied_config_dict(cfg)
    out["checkpoint"] = {k: v for k, v in out["checkpoint"].items()
                         if k != "resume_training_from_checkpoint"}
    return out


def run_state(run: SweepRun) -> str:
    """'done', 'resume', 'start' or 'redo' (another config ran there) for this run's folder."""
    out = run.output_dir
    if config_changed(run):
        return "redo"
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        steps = int(summary.get("steps", -1))
        return "done" if steps >= (run.config.training.training_steps or 0) else "start"
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    ckpts = out / "checkpoints"
    has = ckpts.is_dir() and any(p.is_dir() for p in ckpts.glob("step_*"))
    return "resume" if has else "start"


def command(run: SweepRun, launcher: str | None = None, resume: bool = False) -> list[str]:
    """The argv of this run; `launcher` replaces `python` (e.g. `torchrun --nproc_per_node 8`)."""
    head = shlex.split(launcher) if launcher else [sys.executable]
    extra = [RESUME] if resume else []
    return head + ["-m", "bert_ipu.pretrain", "--config", str(run.config_path),
                   *run.overrides, *extra]


def plan_lines(runs: list[SweepRun]) -> list[str]:
    """One line per run: index, state, output folder, what varies."""
    return [f"  {r.index:03d}  {run_state(r):6s}  {r.output_dir}  {r.label}" for r in runs]


def _previous_wall(out: Path) -> float:
    try:
        return float(json.loads((out / RUN_RECORD).read_text(encoding="utf-8"))["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def execute(run: SweepRun, log: Log) -> int:
    """Start or resume one run in a child process; returns its exit code (0 when done)."""
    state = run_state(run)
    if state == "done":
        return 0
    out = run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    argv = command(run, resume=state == "resume")
    log(f"[{run.index:03d}] {state}: {run.label} -> {out}")
    start, wall = time.monotonic(), 0.0 if state == "redo" else _previous_wall(out)
    with open(out / "sweep.log", "a", encoding="utf-8") as stream:
        stream.write(f"\n$ {shlex.join(argv)}\n")
        stream.flush()
        code = subprocess.run(argv, stdout=stream, stderr=subprocess.STDOUT, check=False).returncode
    wall += time.monotonic() - start
    status = "finished" if code == 0 else ("interrupted" if code in (130, 143) else "failed")
    record = {"index": run.index, "label": run.label, "status": status, "exit_code": code,
              "wall_s": wall, "command": shlex.join(argv)}
    (out / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log(f"[{run.index:03d}] {status} (exit {code}, {wall:.0f} s)"
        + ("" if code == 0 else f": see {out / 'sweep.log'}"))
    return code


def run_sweep(runs: list[SweepRun], jobs: int = 1,
              log: Log = print) -> dict[int, int]:
    """Run every unfinished run, `jobs` at a time; {index: exit code}. Ctrl-C stops the
    running children (each saves a checkpoint) and launches nothing more."""
    codes: dict[int, int] = {}
    stop = False

    def one(run: SweepRun) -> None:
        if not stop:
            codes[run.index] = execute(run, log)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(one, r) for r in runs]
        try:
            for f in futures:
                f.result()
        except KeyboardInterrupt:
            stop = True
            for f in futures:
                f.cancel()
            raise
    return codes
