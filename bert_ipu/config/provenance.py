"""`--print-config`: the resolved config, each value with where it came from.

Sources, in precedence order: `command line` (a key=value override), the config file
(with what it `extends:`), `resolved` (derived by a resolution rule: model.size presets,
vocab size, seeds, output folders), `default` (the schema's default).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from bert_ipu.config import Config, config_to_dict
from bert_ipu.schema import apply_overrides, read_yaml_tree


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every non-mapping value of a nested dict."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _defaults() -> dict[str, Any]:
    """The schema's defaults, before any resolution rule ran (a section's own
    construction only coerces; resolution happens in Config)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        if f.default_factory is dataclasses.MISSING:
            out[f.name] = f.default
        else:
            out.update(_leaves(config_to_dict(f.default_factory()), f"{f.name}."))
    return out


def config_sources(cfg: Config, path: str | Path | None, overrides: list[str]) -> str:
    """`key: value  # source` lines for every field of the resolved `cfg`."""
    from_cli = dict(_leaves(apply_overrides({}, overrides)))
    from_file = dict(_leaves(read_yaml_tree(path))) if path is not None else {}
    defaults = _defaults()
    lines = []
    for key, value in _leaves(config_to_dict(cfg)):
        if key in from_cli:
            source = "command line"
        elif key in from_file:
            source = str(path)
        elif key in defaults and defaults[key] == value:
            source = "default"
        else:
            source = "resolved"
        note = UNUSED.get(key, lambda c: None)(cfg)
        lines.append(f"{key}: {json.dumps(value)}  # {source}" + (f"; {note}" if note else ""))
    return "\n".join(lines)


# Settings another setting overrides: key -> the note when it is unused in `cfg`
UNUSED = {
    "training.epochs": lambda c: ("not used: training.training_steps is set (it wins over epochs)"
                                  if c.training.training_steps is not None else None),
}
