"""Typed dataclass <-> YAML machinery behind `bert_ipu.config` (no BERT knowledge here).

Everything a user can get wrong ends in ONE exception type, `ConfigError`, whose message
names the dotted path, the expectation and the value that arrived:

>>> try:
...     coerce("fp64", Literal["fp32", "bf16"], "training.precision")
... except ConfigError as err:
...     print(err)
training.precision: expected one of 'fp32', 'bf16', got 'fp64'

YAML dialect: PyYAML's safe loader with YAML 1.2 booleans (only true/false, so `no`
stays a string) and YAML 1.2 floats (`1e-4` is a float, not the string YAML 1.1 makes
of it); duplicate keys are errors. A file may start with `extends: PATH` (or a list of
paths, relative to the file): the parents are loaded first and this file is merged on
top (mappings merge key by key, anything else is replaced).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
from pathlib import Path
from typing import (Any, Callable, Literal, Mapping, Sequence, Union, get_args, get_origin,
                    get_type_hints)

import yaml

__all__ = [
    "ConfigError", "coerce", "describe", "from_dict", "to_dict", "read_yaml_tree",
    "parse_override", "apply_overrides", "deep_merge", "parse_yaml_value", "dump_yaml",
    "need", "check_ranges", "choices", "tags", "tagged", "flatten_tree", "field_choices", "coerce_fields", "pos", "nonneg", "unit",
    "unit_open",
]


class ConfigError(ValueError):
    """A bad configuration: `path` (dotted key or file), what was `expected`, the `value`."""

    def __init__(self, message: str, path: str | None = None,
                 expected: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.path, self.expected, self.value = path, expected, value


def short_repr(value: Any, limit: int = 80) -> str:
    """repr() cut to `limit` characters, so that huge values keep messages readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fail(path: str, expected: str, value: Any) -> ConfigError:
    """The standard error: `path: expected ..., got value`."""
    message = f"{path}: expected {expected}, got {short_repr(value)}"
    return ConfigError(message, path, expected, value)


# ---------------------------------------------------------------- YAML dialect
class _Loader(yaml.SafeLoader):
    """Safe loader with YAML 1.2 bools/floats and duplicate-key detection."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if not tag.endswith((":bool", ":float"))]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (dict, list)):
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be scalars", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# Dumped floats must read back as floats: PyYAML writes 1e-05 as "1.0e-05", which our
# YAML 1.2 float pattern accepts. The dumper resolves plain scalars as the loader does, so
# a string the loader would read as a number or a bool ("0E0", "1e5") is quoted.


class _Dumper(yaml.SafeDumper):
    """Safe dumper whose implicit resolvers are the loader's."""


_Dumper.yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers


def _yaml_error(source: str, err: yaml.YAMLError) -> ConfigError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    problem = getattr(err, "problem", None) or str(err)
    return ConfigError(f"{where}: invalid YAML: {problem}", source, "valid YAML", None)


def parse_yaml_value(text: str, source: str) -> Any:
    """Parse YAML text with our dialect; syntax errors become ConfigError with line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as err:
        raise _yaml_error(source, err) from None
    except (ValueError, OverflowError, RecursionError) as err:  # e.g. float("1e99999")
        raise ConfigError(f"{source}: invalid YAML value: {err}", source) from None


def dump_yaml(data: Mapping[str, Any]) -> str:
    """YAML text for a plain dict (key order kept) that `parse_yaml_value` reads back."""
    return yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=100)


# ---------------------------------------------------------------- files, extends, overrides
def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`: mappings merge key by key, anything else is replaced.

    >>> deep_merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}})
    {'a': {'x': 1, 'y': 3}, 'b': 1}
    """
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml_tree(path: str | Path, _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config file, resolving `extends:` (relative to the file) recursively."""
    from bert_ipu.userfiles import UserFileError, read_text

    path = Path(path)
    try:
        text = read_text(path, "config file")
    except UserFileError as err:
        raise ConfigError(str(err), str(path)) from None
    data = parse_yaml_value(text, str(path))
    if data is None or data == {}:
        # An empty file would silently start a full default (BERT-Base) run.
        raise fail(str(path), "a mapping of config sections (the file is empty or null)",
                   data)
    if not isinstance(data, dict):
        raise fail(str(path), "a mapping of config sections at the top level", data)
    parents = data.pop("extends", None)
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise fail(f"{path}: extends", "a path or a list of paths", parents)
    merged: dict[str, Any] = {}
    for parent in parents:
        target = (path.parent / parent).resolve()
        if target in _stack or target == path.resolve():
            raise ConfigError(f"{path}: extends: cycle through {target}", str(path))
        if not target.is_file():
            raise ConfigError(f"{path}: extends: no such config file {parent!r}", str(path))
        merged = deep_merge(merged, read_yaml_tree(target, _stack + (path.resolve(),)))
    return deep_merge(merged, data)


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_override(text: str) -> tuple[str, Any]:
    """`"a.b=VALUE"` -> `("a.b", value)`, VALUE parsed as YAML (`null`, `[1, 2]`, `1e-4`).

    >>> parse_override("training.learning_rate=1e-4")
    ('training.learning_rate', 0.0001)
    """
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {short_repr(text)}: expected KEY=VALUE with a dotted KEY "
                          "(e.g. training.learning_rate=1e-4)", "override", "KEY=VALUE", text)
    key, _, raw = text.partition("=")
    key = key.strip()
    if not _KEY.match(key):
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted key like "
                          "sparsity.block_size", "override", "a dotted key", key)
    return key, parse_yaml_value(raw, f"override {text!r}")


def apply_overrides(raw: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge `key=value` overrides into a raw config dict (later overrides win)."""
    if isinstance(overrides, str) or not isinstance(overrides, (list, tuple)):
        raise fail("overrides", "a list of KEY=VALUE strings", overrides)
    out = dict(raw)
    for text in overrides:
        key, value = parse_override(text)
        for part in reversed(key.split(".")):
            value = {part: value}
        out = deep_merge(out, value)
    return out


# ---------------------------------------------------------------- typed conversion
def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def describe(tp: Any) -> str:
    """Human words for a field type: `int | None` -> 'an integer or null'."""
    if tp is type(None):
        return "null"
    if _is_union(tp):
        return " or ".join(describe(a) for a in get_args(tp))
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of ({describe(args[0])})"
        return f"a list of {len(args)} items ({', '.join(describe(a) for a in args)})"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {getattr(tp, 'SECTION', '') or tp.__name__} settings"
    if get_origin(tp) is dict:
        key, value = get_args(tp)
        return f"a non-empty mapping of {describe(key)} -> {describe(value)}"
    if tp is Any:
        return "any value"
    return {int: "an integer", float: "a number", bool: "true or false",
            str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce_scalar(value: Any, tp: Any) -> Any:
    """Converted value, or a `_NO` sentinel when `value` does not fit scalar type `tp`."""
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if tp is float:  # ints are accepted and widened; NaN and infinities never
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                return _NO
            return value if math.isfinite(value) else _NO
        return _NO
    if tp is str:
        return value if isinstance(value, str) else _NO
    if tp is type(None):
        return None if value is None else _NO
    raise TypeError(f"coerce: unsupported field type {tp!r}")


_NO = object()


def coerce(value: Any, tp: Any, path: str) -> Any:
    """`value` checked against `tp` (lists become tuples, ints widen to float), or
    ConfigError naming `path`. A single value is accepted for a `tuple[T, ...]`."""
    if _is_union(tp):
        arms = [a for a in get_args(tp) if value is None or a is not type(None)]
        if len(arms) == 1:  # `X | None` with a value: X's own, more precise, error
            return coerce(value, arms[0], path)
        # int | float keeps ints as ints: try the exact types before the widening ones.
        for arg in sorted(arms, key=lambda a: a is float):
            try:
                return coerce(value, arg, path)
            except ConfigError:
                continue
        raise fail(path, describe(tp), value)
    if get_origin(tp) is Literal:
        for choice in get_args(tp):
            if type(value) is type(choice) and value == choice:
                return choice
        raise fail(path, describe(tp), value)
    if get_origin(tp) is tuple:
        return _coerce_tuple(value, tp, path)
    if get_origin(tp) is dict:  # a non-empty mapping; keys and values checked
        key_tp, value_tp = get_args(tp)
        if not isinstance(value, Mapping) or not value:
            raise fail(path, describe(tp), value)
        return {coerce(k, key_tp, path): coerce(v, value_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        raise fail(path, describe(tp), value)
    result = _coerce_scalar(value, tp)
    if result is _NO:
        raise fail(path, describe(tp), value)
    return result


def _coerce_tuple(value: Any, tp: Any, path: str) -> tuple:
    args = get_args(tp)
    variadic = len(args) == 2 and args[1] is Ellipsis
    if variadic and not isinstance(value, (list, tuple)):
        return (coerce(value, args[0], path),)  # a single value stands for a 1-item list
    if not isinstance(value, (list, tuple)):
        raise fail(path, describe(tp), value)
    if not variadic and len(value) != len(args):
        raise fail(path, describe(tp), value)
    item_types = [args[0]] * len(value) if variadic else list(args)
    return tuple(coerce(v, t, f"{path}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))


def choices(names: Callable[[], Sequence[Any]]) -> dict[str, Any]:
    """Field metadata for a value that must be one of a registry's names; `names` is
    called at validation time, so a name registered later (a new regrowth method, a
    kernel backend) is accepted without touching the config.

    >>> from dataclasses import field
    >>> field(default="random", metadata=choices(lambda: ("random", "gradient"))).metadata["choices"]()
    ('random', 'gradient')
    """
    return {"choices": names}


def tags(*names: str, **values: Any) -> dict[str, Any]:
    """Field metadata saying what a config key is to the tools that read configs, kept
    with the key instead of in their own lists. Names used: `structural` (fixes the shape
    or meaning of a saved tensor: a checkpoint with another value cannot be resumed),
    `identity` (never defines a sweep point: names, folders, seeds, bookkeeping),
    `context` (always shown in a sweep's results, under `label=`). Combine with
    `choices(...)`: `metadata={**choices(...), **tags("structural")}`.

    >>> tags("context", label="size")
    {'tags': frozenset({'context'}), 'label': 'size'}
    """
    return {"tags": frozenset(names), **values}


def tagged(cls: type, tag: str, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Dotted path -> metadata of every field of dataclass `cls` (nested sections
    included) carrying `tag`; a section's class-level `TAGS` (field name -> metadata)
    tags inherited fields, and a section tagged as a whole (`SECTION_TAGS`) tags all its
    fields."""
    out: dict[str, dict[str, Any]] = {}
    hints = get_type_hints(cls)
    whole = tag in getattr(cls, "SECTION_TAGS", ())
    extra = getattr(cls, "TAGS", {})
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(tagged(hints[f.name], tag, path + "."))
            continue
        meta = dict(extra.get(f.name) or f.metadata)
        if whole or tag in meta.get("tags", ()):
            out[path] = meta
    return out


def field_choices(field: dataclasses.Field) -> tuple[Any, ...] | None:
    """The valid values of a field declared with `choices(...)` metadata, else None."""
    names = field.metadata.get("choices")
    return None if names is None else tuple(names())


def coerce_fields(obj: Any, prefix: str) -> None:
    """Check and convert every field of a (frozen) dataclass instance in place; fields
    with `choices(...)` metadata must hold one of the registry's names (or null)."""
    hints = get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        path = f"{prefix}.{field.name}" if prefix else field.name
        raw, valid = getattr(obj, field.name), field_choices(field)
        try:
            value = coerce(raw, hints[field.name], path)
        except ConfigError:
            if valid is None:
                raise
            value = _NO  # a value of the wrong type: say which names are valid
        if valid is not None and isinstance(value, tuple):  # a list: each item is checked
            for i, item in enumerate(value):
                if item not in valid:
                    raise fail(f"{path}[{i}]", "one of " + ", ".join(map(repr, valid)), item)
        elif valid is not None and value is not None and value not in valid:
            optional = get_origin(hints[field.name]) in (Union, types.UnionType) and \
                type(None) in get_args(hints[field.name])
            words = "one of " + ", ".join(repr(v) for v in valid) + (" or null" if optional else "")
            raise fail(path, words, raw)
        object.__setattr__(obj, field.name, value)


def _unknown_key(cls: type, key: Any, prefix: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    path = f"{prefix}.{key}" if prefix else str(key)
    hint = difflib.get_close_matches(str(key), names, n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    where = f"in {prefix!r}" if prefix else "at the top level"
    return ConfigError(f"{short_repr(path)}: unknown config key; valid keys {where}: "
                       f"{', '.join(names)}{extra}", path, "a known key", key)


def from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a raw mapping; nested dataclass fields recurse.

    Missing keys take the defaults; unknown keys, non-string keys and bad values raise
    ConfigError. A section given as null counts as empty. A class may map keys of older
    configs to today's in `RENAMED` (old key -> function of its value -> {key: value})."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise fail(prefix or "config", describe(cls), raw)
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    renamed = getattr(cls, "RENAMED", {})
    for key, value in raw.items():
        if isinstance(key, str) and key in renamed and key not in names:
            # a key of older configs (and checkpoints): its value in today's keys, unless given
            for new_key, new_value in renamed[key](value).items():
                if new_key not in raw:
                    kwargs[new_key] = new_value
            continue
        if not isinstance(key, str) or key not in names:
            raise _unknown_key(cls, key, prefix)
        path = f"{prefix}.{key}" if prefix else key
        tp = hints[key]
        kwargs[key] = from_dict(tp, value, path) if dataclasses.is_dataclass(tp) else value
    return cls(**kwargs)


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as dotted keys: {'a': {'b': 1, 'c': [1]}} -> {'a.b': 1,
    'a.c': '[1]'} (lists as their JSON text, so that every value is a scalar or null).

    >>> flatten_tree({"a": {"b": 1, "c": [1, "x"]}, "d": None})
    {'a.b': 1, 'a.c': '[1, "x"]', 'd': None}
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_tree(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return out


def to_dict(obj: Any) -> Any:
    """Plain YAML-able data for a dataclass tree (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


# ---------------------------------------------------------------- range rules
def need(ok: bool, path: str, expected: str, value: Any) -> None:
    """Raise the standard ConfigError unless `ok` (written so that NaN fails)."""
    if not ok:
        raise fail(path, expected, value)


def check_ranges(obj: Any, rules: dict[str, tuple[Any, str]]) -> None:
    """`rules`: field -> (predicate on the value, expectation words)."""
    for name, (predicate, words) in rules.items():
        value = getattr(obj, name)
        need(value is None or predicate(value), f"{obj.SECTION}.{name}", words, value)


def pos(v: float) -> bool:
    return v > 0


def nonneg(v: float) -> bool:
    return v >= 0


def unit_open(v: float) -> bool:
    return 0 <= v < 1


def unit(v: float) -> bool:
    return 0 <= v <= 1
