"""Sweep files: a base config plus override sets and seeds, expanded into validated runs.

A sweep file (see configs/sweeps/) has these keys:

    config: ../mini_dense.yaml          # base config, relative to the sweep file (required)
    output_root: runs/sweeps/NAME       # where the run folders go (default runs/sweeps/<stem>)
    overrides: [training.training_steps=1000]   # applied to every run
    runs:                                # explicit points (lists of KEY=VALUE), optional
      - [sparsity.method=dense, sparsity.sparsity=0]
      - [sparsity.method=dynamic]
    grid:                                # cartesian product, in key order, optional
      sparsity.sparsity: [0.8, 0.9]
    zip:                                 # equal-length lists stepped together, optional
      model.size: [mini, small]
      training.learning_rate: [1.0e-3, 8.0e-4]
    seeds: [0, 1, 2]                     # training.seed of every point (default: the config's)

The points are every `runs` entry (one empty point without `runs`) crossed with every
`grid` combination and every `zip` row; each point runs once per seed. Run `i` (in that
order) gets `name=<stem>_NNN[_sS]` and `output_dir=<output_root>/NNN[_sS]` unless its
overrides set them. Every run is validated with `load_config` before anything is launched;
an error names the sweep file, the point and the key.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bert_ipu.userfiles import UserFileError, read_text
from bert_ipu.config import Config, ConfigError, load_config
from bert_ipu.schema import dump_yaml, need, parse_yaml_value

__all__ = ["SweepRun", "expand_sweep", "load_sweep"]

_KEYS = ("config", "output_root", "overrides", "runs", "grid", "zip", "seeds")


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its index, the point's own overrides (what varies), its seed
    (None: the config's), the full override list and the validated config."""

    index: int
    point: tuple[str, ...]
    seed: int | None
    config_path: Path
    overrides: tuple[str, ...]
    config: Config

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def label(self) -> str:
        """Short text for plans and logs: the point's overrides and the seed."""
        seed = [] if self.seed is None else [f"seed={self.seed}"]
        return " ".join(list(self.point) + seed) or "(base config)"


def _override_value(value: Any) -> str:
    """Override text whose YAML parse gives back `value` (`[1, 2]`, `0.001`, `bsr`)."""
    if isinstance(value, str):
        return value
    return dump_yaml({"v": value}).split(":", 1)[1].strip() if not isinstance(value, list) \
        else "[" + ", ".join(_override_value(v) for v in value) + "]"


def _string_list(value: Any, where: str) -> list[str]:
    need(isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value), where,
         "a list of KEY=VALUE strings", value)
    return list(value)


def _named(stem: str, root: str, index: int, seed: int | None, overrides: list[str]) -> list[str]:
    """Give a run its own name and output_dir unless its overrides set them; its trackers
    group the sweep's runs (logging.tracker_group = the sweep file's stem, tracker_dir =
    output_root: one wandb group, one MLflow experiment and store) unless set."""
    keys = {o.partition("=")[0].strip() for o in overrides}
    tag = f"{index:03d}" + ("" if seed is None else f"_s{seed}")
    defaults = {"name": f"{stem}_{tag}", "output_dir": f"{root}/{tag}",
                "logging.tracker_group": stem, "logging.tracker_dir": root}
    return overrides + [f"{k}={v}" for k, v in defaults.items() if k not in keys]


def _table_points(raw: dict, key: str, path: Path, product: bool) -> list[list[str]]:
    """Override lists of `grid` (product=True) or `zip` (rows of equal-length lists)."""
    table = raw.get(key)
    if table is None:
        return [[]]
    need(isinstance(table, dict) and table and all(isinstance(v, list) and v for v in table.values()),
         f"{path}: {key}", "a mapping of dotted key -> non-empty list of values", table)
    if product:
        combos = list(itertools.product(*table.values()))
    else:
        lengths = {len(v) for v in table.values()}
        need(len(lengths) == 1, f"{path}: zip", "lists of one length",
             {k: len(v) for k, v in table.items()})
        combos = list(zip(*table.values()))
    return [[f"{k}={_override_value(v)}" for k, v in zip(table, c)] for c in combos]


def load_sweep(path: str | Path) -> dict[str, Any]:
    """The sweep file's mapping, its keys checked (unknown key, empty lists, seeds)."""
    path = Path(path)
    try:
        text = read_text(path, "sweep file")
    except UserFileError as err:
        raise ConfigError(str(err), str(path)) from None
    raw = parse_yaml_value(text, str(path)) or {}
    need(isinstance(raw, dict) and isinstance(raw.get("config"), str), f"{path}: config",
         "a mapping with `config: PATH`", raw)
    unknown = sorted(set(raw) - set(_KEYS))
    need(not unknown, f"{path}: {', '.join(map(str, unknown))}",
         f"only the keys {', '.join(_KEYS)}", unknown)
    runs = raw.get("runs")
    need(runs is None or (isinstance(runs, list) and runs), f"{path}: runs",
         "a non-empty list of override lists", runs)
    seeds = raw.get("seeds")
    need(seeds is None or (isinstance(seeds, list) and seeds and len(set(seeds)) == len(seeds)
                           and all(isinstance(s, int) and s >= 0 for s in seeds)),
         f"{path}: seeds", "a non-empty list of distinct integers >= 0", seeds)
    root = raw.get("output_root", f"runs/sweeps/{path.stem}")
    need(isinstance(root, str) and root, f"{path}: output_root", "a folder path", root)
    need(not Path(root).exists() or Path(root).is_dir(), f"{path}: output_root",
         "a folder path (new or an existing folder)", f"{root} (an existing file)")
    return raw


def expand_sweep(path: str | Path) -> list[SweepRun]:
    """Every run of the sweep at `path`, validated; a bad point fails before any launch
    with a ConfigError naming the file, the point and the key."""
    path = Path(path)
    raw = load_sweep(path)
    common = _string_list(raw.get("overrides") or [], f"{path}: overrides")
    explicit = [_string_list(r, f"{path}: runs[{i}]") for i, r in enumerate(raw.get("runs") or [[]])]
    points = [a + b + c for a, b, c in itertools.product(
        explicit, _table_points(raw, "grid", path, True), _table_points(raw, "zip", path, False))]
    seeds = raw.get("seeds") or [None]
    root, base = raw.get("output_root", f"runs/sweeps/{path.stem}"), path.parent / raw["config"]
    out = []
    for p, point in enumerate(points):
        for seed in seeds:
            index = len(out)
            extra = [] if seed is None else [f"training.seed={seed}"]
            overrides = _named(path.stem, root, index, seed, common + point + extra)
            try:
                cfg = load_config(base, overrides)
            except ConfigError as err:
                label = " ".join(point + extra) or "(base config)"
                raise ConfigError(f"{path}: run {index:03d} ({label}): {err}",
                                  getattr(err, "path", str(path))) from None
            out.append(SweepRun(index, tuple(point), seed, base, tuple(overrides), cfg))
    _distinct_folders(out, path)
    return out


def _distinct_folders(runs: list[SweepRun], path: Path) -> None:
    """Every run writes its own output and checkpoint folders (two runs sharing one
    would archive each other's files forever): a ConfigError names the two runs."""
    seen: dict[Path, int] = {}
    for r in runs:
        folders = {r.output_dir.resolve(), Path(r.config.checkpoint.checkpoint_output_dir).resolve()}
        for folder in folders:
            if folder in seen and seen[folder] != r.index:
                raise ConfigError(f"{path}: runs {seen[folder]:03d} and {r.index:03d} write the same "
                                  f"folder {folder} (an `output_dir` or `checkpoint.checkpoint_output_dir` "
                                  "override shared by several runs); give each run its own", str(path))
            seen[folder] = r.index
