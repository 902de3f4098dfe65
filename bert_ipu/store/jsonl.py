"""A run's JSON-lines files, read by the trainer (resume), the hub (model cards of
mid-run checkpoints), the sweep collector and anything else above them:

    metrics.jsonl         training rows (loss averaged over the logging interval), evaluations
    dynsp_updates.jsonl   one row per DynSp pattern update (pooled metrics)
    dynsp_layers.jsonl    the per-layer metrics of each pattern update
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
UPDATES_FILE = "dynsp_updates.jsonl"
LAYER_FILE = "dynsp_layers.jsonl"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON object line of `path` (a torn last line, or any line that is not
    a JSON object, is ignored)."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def read_run_jsonl(run_dir: Path, name: str) -> list[dict[str, Any]]:
    """`read_jsonl` of the run's file `name` (METRICS_FILE, UPDATES_FILE, LAYER_FILE);
    empty when the file is missing or unreadable."""
    try:
        return read_jsonl(Path(run_dir) / name)
    except OSError:
        return []
