"""Does a checkpoint fit this run? Compare the fields that fix the shapes of the saved
tensors, named by their config path, before any state dict is loaded.

Loading a checkpoint of another model size, sparsity or block size into this run's
model fails deep inside PyTorch with a dump of every mismatching tensor; comparing the
checkpoint's own config.yaml first gives one line that says which setting differs.
"""
from __future__ import annotations

from typing import Any

from bert_ipu.config import Config, config_to_dict
from bert_ipu.schema import ConfigError, parse_yaml_value, tagged


def structural_keys() -> dict[str, tuple[str, ...]]:
    """Section -> the settings that decide the shape or the meaning of a saved tensor
    (the config fields tagged `structural`)."""
    out: dict[str, tuple[str, ...]] = {}
    for path in tagged(Config, "structural"):
        section, _, name = path.partition(".")
        out[section] = out.get(section, ()) + (name,)
    return out


def structural_differences(saved_yaml: str, cfg: Config) -> list[str]:
    """`path: checkpoint X, this run Y` for every structural field that differs; an
    unreadable saved config gives no differences (the state dicts are still checked)."""
    try:
        saved = parse_yaml_value(saved_yaml, "checkpoint config.yaml")
    except ConfigError:
        return []
    if not isinstance(saved, dict):
        return []
    current = config_to_dict(cfg)
    out = []
    for section, names in structural_keys().items():
        old: Any = saved.get(section) or {}
        for name in names:
            if name in old and old[name] != current[section][name]:
                out.append(f"{section}.{name}: checkpoint {old[name]!r}, this run "
                           f"{current[section][name]!r}")
    return out


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to `limit` characters (PyTorch's
    load_state_dict errors list every tensor over dozens of lines)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
