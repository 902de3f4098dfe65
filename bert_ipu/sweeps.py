"""Sweep files: a base config plus override sets, expanded into validated runs.

A sweep file (see configs/sweeps/) has `config` (a path relative to the sweep file),
optional `overrides` applied to every run, and `grid` (dotted key -> list of values,
expanded as a cartesian product in key order) and/or `runs` (a list of override lists).
Each run also gets `name=<stem>_NNN` and `output_dir=runs/sweeps/<stem>/NNN` unless its
overrides set them:

    config: ../medium_dynsp_s0.9.yaml
    overrides: [training.training_steps=1000]
    grid:
      sparsity.sparsity: [0.8, 0.9]
      training.learning_rate: [7e-4, 1.4e-3]
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from bert_ipu.config import ConfigError, load_config
from bert_ipu.schema import dump_yaml, need, parse_yaml_value

__all__ = ["expand_sweep"]

_KEYS = ("config", "overrides", "grid", "runs")


def _override_value(value: Any) -> str:
    """Override text whose YAML parse gives back `value` (`[1, 2]`, `0.001`, `bsr`)."""
    if isinstance(value, str):
        return value
    return dump_yaml({"v": value}).split(":", 1)[1].strip() if not isinstance(value, list) \
        else "[" + ", ".join(_override_value(v) for v in value) + "]"


def _string_list(value: Any, where: str) -> list[str]:
    need(isinstance(value, list) and all(isinstance(v, str) for v in value), where,
         "a list of KEY=VALUE strings", value)
    return list(value)


def _named(stem: str, index: int, overrides: list[str]) -> list[str]:
    """Give run `index` its own name and output_dir unless its overrides set them."""
    keys = {o.partition("=")[0].strip() for o in overrides}
    extra = [] if "name" in keys else [f"name={stem}_{index:03d}"]
    extra += [] if "output_dir" in keys else [f"output_dir=runs/sweeps/{stem}/{index:03d}"]
    return overrides + extra


def expand_sweep(path: str | Path) -> list[tuple[Path, list[str]]]:
    """Every run of the sweep at `path` as (config path, overrides); each is validated
    with `load_config`, so a bad grid fails before anything is launched."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read sweep file: {err}", str(path)) from None
    raw = parse_yaml_value(text, str(path)) or {}
    need(isinstance(raw, dict) and isinstance(raw.get("config"), str), f"{path}: config",
         "a mapping with `config: PATH`", raw)
    unknown = sorted(set(raw) - set(_KEYS))
    need(not unknown, f"{path}", f"only the keys {', '.join(_KEYS)}", unknown)
    common = _string_list(raw.get("overrides") or [], f"{path}: overrides")
    grid = raw.get("grid") or {}
    need(isinstance(grid, dict) and all(isinstance(v, list) and v for v in grid.values()),
         f"{path}: grid", "a mapping of dotted key -> non-empty list of values", grid)
    runs = [[f"{k}={_override_value(v)}" for k, v in zip(grid, combo)]
            for combo in itertools.product(*grid.values())] if grid else []
    for i, run in enumerate(raw.get("runs") or []):
        runs.append(_string_list(run, f"{path}: runs[{i}]"))
    base = path.parent / raw["config"]
    out = [(base, _named(path.stem, i, common + run)) for i, run in enumerate(runs or [[]])]
    for config, overrides in out:
        load_config(config, overrides)
    return out
