"""A run's JSON-lines files (metrics.jsonl, dynsp_layers.jsonl), read by the trainer
(resume), the hub (model cards of mid-run checkpoints) and anything else below them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
