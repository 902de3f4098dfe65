"""Collect the run folders under one root into tables and figures (one call)."""
from __future__ import annotations

from pathlib import Path

from bert_ipu.sweep.collect import aggregate, collect_runs
from bert_ipu.sweep.tables import write_tables

__all__ = ["write_results"]


def write_results(root: str | Path, out: str | Path | None = None,
                  figures: bool = True) -> list[Path]:
    """runs.csv, points.csv, results.md (and the PNG figures) of the runs under `root`,
    written to `out` (default `root/results`); FileNotFoundError without any run."""
    root = Path(root)
    rows, keys = collect_runs(root)
    if not rows:
        raise FileNotFoundError(f"{root}: no run folders (config.yaml) found")
    out = Path(out) if out is not None else root / "results"
    points = aggregate(rows, keys)
    paths = write_tables(rows, points, keys, out)
    if figures:
        from bert_ipu.sweep.figures import draw_all  # matplotlib: the `plots` extra

        paths += draw_all(rows, points, out)
    return paths
