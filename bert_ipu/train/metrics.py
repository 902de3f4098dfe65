"""Run outputs: `metrics.jsonl` (training rows and evaluations), `dynsp_updates.jsonl` and
`dynsp_layers.jsonl` (pattern updates: pooled and per layer), the experiment trackers of
`logging.trackers`, a tqdm progress bar, JSON files.

Every writer is a no-op on non-zero ranks (`enabled=False`), so the trainer calls
them unconditionally.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from bert_ipu.fsutil import naming
from bert_ipu.trackers import Tracker
from bert_ipu.store.jsonl import LAYER_FILE, METRICS_FILE, UPDATES_FILE, read_jsonl

log = logging.getLogger(__name__)

# Fields that measure wall time; they differ between two otherwise identical runs.
TIMING_FIELDS = ("sequences_per_second", "update_time_s")


def _jsonable(value: Any) -> Any:
    """Plain (standard) JSON values; non-finite floats (a skipped step's gradient norm,
    a NaN loss) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # 0-d tensors, numpy scalars
        return _jsonable(value.item())
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write a JSON file atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with naming(path, cleanup=tmp):
        tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)


DYNSP_KEYS = ("update_index", "prune_ratio", "update_time_s", "dof_mean",
              "removed_new_fraction")


def tracker_name(key: str) -> str:
    """Grouped TensorBoard tag: `eval/` held-out, `dynsp_layers/` per layer (keys with a
    `/`), `dynsp/` pattern updates, `train/` everything else."""
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):]
    if "/" in key:
        return "dynsp_layers/" + key
    return ("dynsp/" if key in DYNSP_KEYS else "train/") + key


def _truncate_jsonl(path: Path, step: int) -> None:
    """Keep only the records of `path` with `step <= step` (atomic rewrite)."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= step]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with naming(path):
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, path)


class MetricsWriter:
    """Appends one JSON object per logged step to `metrics.jsonl` (`log`); a pattern update
    (`log_update`) goes to its own files: the pooled metrics with the step to
    `dynsp_updates.jsonl`, the per-layer ones (keys `dof/NAME`, `density/NAME`, ...) to
    `dynsp_layers.jsonl`, so that the training curve has one row per logging interval.
    The trackers (bert_ipu/trackers.py) get every numeric value under a grouped name
    (`tracker_name`)."""

    def __init__(self, output_dir: Path, enabled: bool = True,
                 trackers: Sequence[Tracker] = ()) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.updates_path = Path(output_dir) / UPDATES_FILE
        self.layers_path = Path(output_dir) / LAYER_FILE
        self.enabled = enabled
        self.trackers = list(trackers) if enabled else []
        self._handles: dict[Path, Any] = {}

    def truncate_after(self, step: int) -> None:
        """Keep only records with `step <= step` (resume: the interrupted run may have
        logged steps past its checkpoint; the resumed run logs them again)."""
        if self.enabled:
            for path in (self.path, self.updates_path, self.layers_path):
                _truncate_jsonl(path, step)
            for tracker in self.trackers:
                tracker.truncate_after(step)

    def amend(self, step: int, values: Mapping[str, Any]) -> None:
        """Add `values` to the last record of `step` (appended as its own record when there
        is none): an evaluation cut short by a stop signal, redone on resume, lands in the
        step's record as if it had never been interrupted."""
        if not self.enabled:
            return
        records = read_jsonl(self.path) if self.path.exists() else []
        mine = [i for i, r in enumerate(records) if int(r.get("step", -1)) == step]
        if not mine:
            self.log({"step": step, **values})
            return
        records[mine[-1]].update(_jsonable(dict(values)))
        handle = self._handles.pop(self.path, None)
        if handle is not None:
            handle.close()
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with naming(self.path, cleanup=tmp):
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
            os.replace(tmp, self.path)
        self._scalars({"step": step, **values})

    def _append(self, path: Path, record: Mapping[str, Any]) -> None:
        with naming(path):
            if path not in self._handles:
                self._handles[path] = open(path, "a", encoding="utf-8")
            self._handles[path].write(json.dumps(_jsonable(record)) + "\n")
            self._handles[path].flush()

    def log(self, record: Mapping[str, Any]) -> None:
        """A training (or evaluation) row of metrics.jsonl."""
        if self.enabled:
            self._append(self.path, record)
            self._scalars(record)

    def log_update(self, record: Mapping[str, Any]) -> None:
        """A pattern update's record (`step`, pooled keys, per-layer keys with a `/`)."""
        if not self.enabled:
            return
        pooled = {k: v for k, v in record.items() if "/" not in k}
        layers = {k: v for k, v in record.items() if "/" in k}
        self._append(self.updates_path, pooled)
        if layers:
            self._append(self.layers_path, {"step": record["step"], **layers})
        self._scalars(record)

    def _scalars(self, record: Mapping[str, Any]) -> None:
        """Every numeric value of `record` to every tracker, under its grouped name."""
        values = {tracker_name(k): float(v) for k, v in record.items() if k != "step" and
                  isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values:
            for tracker in self.trackers:
                tracker.log(int(record["step"]), values)

    def close(self) -> None:
        handles, self._handles = self._handles, {}
        for handle in handles.values():
            try:
                handle.close()
            except OSError:  # the write that failed was already reported by log()
                pass
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()


class Progress:
    """Progress over optimizer steps with loss, sequences/s and ETA: a tqdm bar on a
    terminal, a plain line at most every `interval` seconds otherwise (log files)."""

    def __init__(self, total: int, initial: int, enabled: bool = True,
                 interval: float = 30.0) -> None:
        self.total, self.done, self.initial, self.enabled = total, initial, initial, enabled
        self.interval = interval
        self._start = self._last_line = time.perf_counter()
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                             file=sys.stderr, mininterval=1.0)

    def update(self, steps: int, loss: float, sequences_per_second: float) -> None:
        self.done += steps
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", seq_s=f"{sequences_per_second:.1f}",
                                  refresh=False)
            self._bar.update(steps)
            return
        now = time.perf_counter()
        if self.enabled and (now - self._last_line >= self.interval or self.done == self.total):
            self._last_line = now
            eta = (now - self._start) / max(self.done - self.initial, 1) * (self.total - self.done)
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} step {self.done}/{self.total} loss {loss:.4f} "
                  f"{sequences_per_second:.1f} seq/s ETA {_duration(eta)}", file=sys.stderr,
                  flush=True)

    def write(self, line: str) -> None:
        """A line on screen (an evaluation result) above the bar, which is redrawn below
        it; without a bar, a plain line."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        elif self.enabled:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Throughput:
    """Sequences per second since the last `rate()` call (excludes time spent in
    evaluation and checkpointing, which call `pause()`)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._sequences = 0
        self._paused = 0.0
        self.total_sequences = 0
        self.total_time = 0.0

    def add(self, sequences: int) -> None:
        self._sequences += sequences
        self.total_sequences += sequences

    def pause(self, seconds: float) -> None:
        self._paused += seconds

    def peek(self) -> float:
        """Sequences per second since the last `rate()` call, without starting a new
        interval (for the progress bar between metrics records)."""
        elapsed = time.perf_counter() - self._start - self._paused
        return self._sequences / elapsed if elapsed > 0 else math.nan

    def rate(self) -> float:
        now = time.perf_counter()
        elapsed = max(now - self._start - self._paused, 1e-9)
        rate = self._sequences / elapsed
        self.total_time += elapsed
        self._start, self._sequences, self._paused = now, 0, 0.0
        return rate


def format_summary(summary: Mapping[str, Any]) -> str:
    """The end-of-run summary as aligned `key: value` lines."""
    lines = ["run summary"]
    for key, value in summary.items():
        if isinstance(value, Mapping):
            inner = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
            lines.append(f"  {key:<24} {inner}")
        else:
            lines.append(f"  {key:<24} {_fmt(value)}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """`1h02m03s` style."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}h" if hours else "") + f"{rest // 60:02d}m{rest % 60:02d}s"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
