"""Write the collected sweep as CSV (every run; every point) and Markdown (the points,
mean +- std over seeds)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from bert_ipu.sweep.collect import METRICS

__all__ = ["write_csv", "markdown_table", "write_tables"]

# Markdown columns: (metric, header, format).
_SHOWN = (("total_flops", "train FLOPs", "{:.3g}"), ("nonembedding_params", "active params", "{:.3g}"),
          ("mlm_loss", "MLM loss", "{:.3f}"), ("mlm_accuracy", "MLM acc", "{:.3f}"),
          ("nsp_loss", "NSP loss", "{:.3f}"), ("nsp_accuracy", "NSP acc", "{:.3f}"),
          ("dof", "DOF", "{:.3f}"), ("removed_new_fraction", "removed-new", "{:.3f}"),
          ("steps", "steps", "{:.0f}"), ("wall_s", "wall s", "{:.0f}"),
          ("sequences_per_second", "seq/s", "{:.1f}"))


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """All keys of all rows as columns (first-seen order), one line per row."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cell(mean: Any, std: Any, fmt: str) -> str:
    if mean is None:
        return "-"
    text = fmt.format(mean)
    return text if std is None else f"{text} ± {fmt.format(std)}"


def _setting(value: Any) -> str:
    """A setting's cell; '-' where the point has none (e.g. the block size of a dense run)."""
    return "-" if value is None else str(value)


def _seeds(point: dict[str, Any]) -> str:
    """The seeds of a point's runs ('0, 1, 2'; 'config' for the config's own seed)."""
    seeds = [s for s in str(point.get("seeds") or "").split() if s]
    return ", ".join("config" if s == "None" else s for s in seeds) or "-"


def markdown_table(points: list[dict[str, Any]], keys: list[str]) -> str:
    """The points as a Markdown table: the varying settings, seeds, then mean ± std."""
    shown = [m for m in _SHOWN if any(p.get(m[0]) is not None for p in points)]
    head = keys + ["seeds"] + [h for _, h, _ in shown]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        cells = [_setting(p.get(k)) for k in keys] + [_seeds(p)]
        cells += [_cell(p.get(m), p.get(f"{m}_std"), fmt) for m, _, fmt in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict[str, Any]], points: list[dict[str, Any]], keys: list[str],
                 out: Path) -> list[Path]:
    """runs.csv, points.csv and results.md in `out`; returns the paths."""
    unfinished = [r for r in rows if r["status"] != "finished"]
    md = markdown_table(points, keys)
    if unfinished:
        md += "\nNot finished: " + ", ".join(f"{r['run']} ({r['status']})" for r in unfinished) + "\n"
    md_path = out / "results.md"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(md, encoding="utf-8")
    metrics = set(METRICS)
    ordered = [{**{k: v for k, v in r.items() if k not in metrics}, **{m: r.get(m) for m in METRICS}}
               for r in rows]
    return [write_csv(ordered, out / "runs.csv"), write_csv(points, out / "points.csv"), md_path]
