"""Collect a sweep's run folders into one table: a row per run, and means / standard
deviations over seeds per point (the settings that vary, seeds excepted).

Read per run folder: `config.yaml` (what varies), `summary.json` (steps, sequences, total
training FLOPs, sequences/s, final held-out evaluation, final DOF), `metrics.jsonl` (the
removed-new fraction, averaged over pattern updates) and the runner's `sweep_run.json`
(wall time, a failure). A folder with a config or a runner record but no summary is listed as unfinished (a
run that failed before writing its config has only the runner's record).
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

from bert_ipu.config import Config, ConfigError, ModelConfig
from bert_ipu.config.sections import default_heads, default_intermediate
from bert_ipu.model import encoder_linear_shapes
from bert_ipu.schema import flatten_tree, parse_yaml_value, tagged
from bert_ipu.store.jsonl import METRICS_FILE, UPDATES_FILE, read_run_jsonl
from bert_ipu.sweep.runner import RUN_RECORD

__all__ = ["collect_runs", "varying_keys", "aggregate", "point_label", "CONTEXT", "METRICS", "read_metrics"]

# Settings that never define a point (identity, seeds, bookkeeping) and those always in
# a row (what the figures group and label by, under their label): the config's tags.
IGNORED = tuple(tagged(Config, "identity"))
CONTEXT = {meta["label"]: path for path, meta in tagged(Config, "context").items()}
METRICS = ("steps", "sequences", "total_flops", "nonembedding_params", "mlm_loss",
           "mlm_accuracy", "nsp_loss", "nsp_accuracy", "dof", "removed_new_fraction",
           "wall_s", "sequences_per_second")


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of `metrics.jsonl` (empty when missing); unreadable lines are skipped."""
    return read_run_jsonl(run_dir, METRICS_FILE)


def read_updates(run_dir: Path) -> list[dict[str, Any]]:
    """The pattern-update records of `dynsp_updates.jsonl` (empty when missing)."""
    return read_run_jsonl(run_dir, UPDATES_FILE)


def nonembedding_params(config: dict[str, Any]) -> float:
    """Active weights of the encoder's fully connected layers (the model's own shape rule,
    bert_ipu.model.encoder_linear_shapes) times the density; 0 for an unreadable model."""
    raw = config.get("model") or {}
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        model = ModelConfig(**{k: v for k, v in raw.items() if k in known})
    except (ConfigError, TypeError, ValueError):
        return 0.0
    density = 1.0 - float(config.get("sparsity", {}).get("sparsity") or 0.0)
    return float(sum(o * i for o, i in encoder_linear_shapes(model).values()) * density)


def run_status(summary: dict[str, Any], record: dict[str, Any], config: dict[str, Any]) -> str:
    """'finished' only when summary.json reports every step the run's config.yaml asks
    for: a summary of fewer steps (an interrupted run, or an earlier shorter run whose
    longer redo was stopped) is not a finished run. Else the runner's status, or
    'unfinished'."""
    target = (config.get("training") or {}).get("training_steps")
    steps = summary.get("steps")
    if summary and (target is None or (isinstance(steps, int) and steps >= target)):
        return "finished"
    status = record.get("status")
    return status if status and status != "finished" else "unfinished"


def _run_row(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    summary = _json(run_dir / "summary.json") or {}
    record = _json(run_dir / RUN_RECORD) or {}
    final = summary.get("final_eval") or {}
    fractions = [r["removed_new_fraction"] for r in read_updates(run_dir)
                 if r.get("removed_new_fraction") is not None]
    seqs, rate = summary.get("sequences"), summary.get("sequences_per_second")
    wall = record.get("wall_s") or (seqs / rate if seqs and rate else None)
    status = run_status(summary, record, config)
    return {"run": str(run_dir), "status": status,
            "seed": config.get("training", {}).get("seed"),
            "steps": summary.get("steps"), "sequences": seqs,
            "total_flops": summary.get("total_flops"),
            "nonembedding_params": nonembedding_params(config),
            **{k: final.get(k) for k in ("mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy")},
            "dof": summary.get("dof_mean"),
            "removed_new_fraction": sum(fractions) / len(fractions) if fractions else None,
            "wall_s": wall, "sequences_per_second": rate}


# Model settings that follow the hidden size unless set: not shown when they do.
DERIVED = {"model.intermediate_size": default_intermediate,
           "model.num_attention_heads": default_heads}


def varying_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Dotted config keys whose values differ between the runs that have them, or that
    some runs of a method set and others not (seeds and names excepted; a dense run has no
    block size, which does not make the block size vary), less model settings that only
    follow the hidden size (FFN 4H, H/64 heads)."""
    flat = [flatten_tree(c) for c in configs]
    keys = sorted({k for f in flat for k in f})

    def derived(k: str) -> bool:
        return k in DERIVED and all(f.get(k) == DERIVED[k](f["model.hidden_size"]) for f in flat
                                    if f.get(k) is not None and f.get("model.hidden_size"))

    def varies(k: str) -> bool:
        values = {json.dumps(f[k], sort_keys=True, default=str) for f in flat if f.get(k) is not None}
        if len(values) > 1:
            return True
        by_method: dict[Any, set[bool]] = {}  # set in some runs of a method, not in others
        for f in flat:
            by_method.setdefault(f.get("sparsity.method"), set()).add(f.get(k) is None)
        return any(len(present) > 1 for present in by_method.values())

    return [k for k in keys if k not in IGNORED and not derived(k) and varies(k)]


def collect_runs(root: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(one row per run folder under `root`, the varying keys). Each row holds the varying
    settings under their dotted keys, then the METRICS and `run`, `status`, `seed`."""
    root = Path(root)
    found = [p.parent for name in ("config.yaml", RUN_RECORD) for p in root.rglob(name)]
    dirs = sorted({d for d in found if "checkpoints" not in d.relative_to(root).parts})
    configs = []
    for d in dirs:
        try:
            configs.append(parse_yaml_value((d / "config.yaml").read_text(encoding="utf-8"),
                                            str(d / "config.yaml")) or {})
        except (OSError, ValueError):
            configs.append({})
    keys = varying_keys([c for c in configs if c])  # a run that failed early has none
    rows = []
    for d, c in zip(dirs, configs):
        flat = flatten_tree(c)
        context = {name: flat.get(key) for name, key in CONTEXT.items()}
        rows.append({**{k: flat.get(k) for k in keys}, **context, **_run_row(d, c)})
    return rows, keys


def point_label(row: dict[str, Any], keys: list[str]) -> str:
    """`key=value` of the varying settings, last dotted part of each key only."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={row.get(k)}" for k in keys) or "base"


def _stats(values: list[Any]) -> tuple[float | None, float | None]:
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def aggregate(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """One row per point (finished runs only): the varying settings, `n` seeds, `seeds`,
    and `<metric>` (mean) with `<metric>_std` (sample std; None for one seed)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "finished":
            groups.setdefault(tuple(json.dumps(r.get(k), default=str) for k in keys), []).append(r)
    out = []
    for members in groups.values():
        row: dict[str, Any] = {k: members[0].get(k) for k in keys + list(CONTEXT)}
        row["label"] = point_label(members[0], keys)
        row["runs"] = [m["run"] for m in members]
        row["n"] = len(members)
        row["seeds"] = " ".join(str(m["seed"]) for m in members)
        for m in METRICS:
            row[m], row[f"{m}_std"] = _stats([x.get(m) for x in members])
        out.append(row)
    return out
