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
from bert_ipu.schema import coerce_fields, dump_yaml, from_dict, need, parse_yaml_value

__all__ = ["SweepFile", "SweepRun", "expand_sweep", "load_sweep"]

def _override_list(values: tuple[str, ...], where: str) -> None:
    need(all("=" in v for v in values), where, "a list of KEY=VALUE strings", list(values))


@dataclass(frozen=True)
class SweepFile:
    """The keys of a sweep file (module docstring), checked by the config schema: an
    unknown key, a value of the wrong type, an empty list or a repeated seed is a
    ConfigError naming the key."""

    config: str
    """Base config, relative to the sweep file."""
    output_root: str | None = None
    """Where the run folders go (null: runs/sweeps/<stem>)."""
    overrides: tuple[str, ...] = ()
    """KEY=VALUE applied to every run."""
    runs: tuple[tuple[str, ...], ...] | None = None
    """Explicit points, each a list of KEY=VALUE."""
    grid: dict[str, tuple[Any, ...]] | None = None
    """KEY -> values: the cartesian product, in key order."""
    zip: dict[str, tuple[Any, ...]] | None = None
    """KEY -> values of equal length, stepped together."""
    seeds: tuple[int, ...] | None = None
    """training.seed of every point (null: the config's)."""

    def __post_init__(self) -> None:
        coerce_fields(self, "")
        _override_list(self.overrides, "overrides")
        need(self.runs is None or len(self.runs) > 0, "runs", "a non-empty list of override lists",
             self.runs)
        for i, run in enumerate(self.runs or ()):
            _override_list(run, f"runs[{i}]")
        for key in ("grid", "zip"):
            table = getattr(self, key) or {}
            need(all(len(v) > 0 for v in table.values()), key,
                 "a mapping of dotted key -> non-empty list of values", table)
        if self.zip:
            need(len({len(v) for v in self.zip.values()}) == 1, "zip",
                 "lists of equal length", {k: len(v) for k, v in self.zip.items()})
        need(self.seeds is None or (self.seeds and len(set(self.seeds)) == len(self.seeds)
                                    and all(s >= 0 for s in self.seeds)),
             "seeds", "a non-empty list of distinct integers >= 0", self.seeds)
        need(self.output_root is None or self.output_root != "", "output_root", "a folder path",
             self.output_root)


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


def _named(stem: str, root: str, index: int, seed: int | None, overrides: list[str]) -> list[str]:
    """Give a run its own name and output_dir unless its overrides set them; its trackers
    group the sweep's runs (logging.tracker_group = the sweep file's stem, tracker_dir =
    output_root: one wandb group, one MLflow experiment and store) unless set."""
    keys = {o.partition("=")[0].strip() for o in overrides}
    tag = f"{index:03d}" + ("" if seed is None else f"_s{seed}")
    defaults = {"name": f"{stem}_{tag}", "output_dir": f"{root}/{tag}",
                "logging.tracker_group": stem, "logging.tracker_dir": root}
    return overrides + [f"{k}={v}" for k, v in defaults.items() if k not in keys]


def _table_points(table: dict[str, tuple[Any, ...]] | None, product: bool) -> list[list[str]]:
    """Override lists of `grid` (product=True) or `zip` (rows of equal-length lists)."""
    if not table:
        return [[]]
    combos = list(itertools.product(*table.values())) if product else list(zip(*table.values()))
    return [[f"{k}={_override_value(v)}" for k, v in zip(table, c)] for c in combos]


def load_sweep(path: str | Path) -> SweepFile:
    """The sweep file, its keys checked (ConfigError: `FILE: KEY: expected ..., got ...`)."""
    path = Path(path)
    try:
        text = read_text(path, "sweep file")
    except UserFileError as err:
        raise ConfigError(str(err), str(path)) from None
    raw = parse_yaml_value(text, str(path)) or {}
    need(isinstance(raw, dict) and isinstance(raw.get("config"), str), f"{path}: config",
         "a mapping with `config: PATH`", raw)
    try:
        sweep = from_dict(SweepFile, raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}", getattr(err, "path", None) or str(path)) from None
    root = sweep.output_root or f"runs/sweeps/{path.stem}"
    need(not Path(root).exists() or Path(root).is_dir(), f"{path}: output_root",
         "a folder path (new or an existing folder)", f"{root} (an existing file)")
    return sweep


def expand_sweep(path: str | Path) -> list[SweepRun]:
    """Every run of the sweep at `path`, validated; a bad point fails before any launch
    with a ConfigError naming the file, the point and the key."""
    path = Path(path)
    sweep = load_sweep(path)
    common = list(sweep.overrides)
    explicit = [list(r) for r in sweep.runs or [()]]
    points = [a + b + c for a, b, c in itertools.product(
        explicit, _table_points(sweep.grid, True), _table_points(sweep.zip, False))]
    seeds = list(sweep.seeds or [None])
    root, base = sweep.output_root or f"runs/sweeps/{path.stem}", path.parent / sweep.config
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
