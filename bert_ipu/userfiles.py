"""Reading files the user hands us: one place that turns read, decode, parse and size errors
into one line naming the file (``UserFileError``, a ValueError), never a traceback.

    read_text(path, what)            UTF-8 text (not binary, not a folder, within a size)
    read_json(path, what)            parsed JSON
    read_csv(path, delimiter, ...)   rows of a CSV / TSV (fields of any length)
    read_safetensors(path, what)     {name: tensor} and the file's metadata

Callers wrap the message in their own error type where they have one (ConfigError,
HubError, TaskError) or let it reach the command line, which prints it in one line.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

MAX_TEXT_BYTES = 2 << 30   # a config, vocabulary or task file larger than this is a mistake


class UserFileError(ValueError):
    """A user-supplied file cannot be used (one line: the file, what was expected, what came)."""


def _read_bytes(path: Path, what: str, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise UserFileError(f"{path}: is a folder; expected the {what} (a file)")
        if size > max_bytes:
            raise UserFileError(f"{path}: the {what} is {size:,} bytes, more than the "
                                f"{max_bytes:,} allowed")
        return path.read_bytes()
    except UserFileError:
        raise
    except FileNotFoundError:
        raise UserFileError(f"{path}: does not exist; expected the {what}") from None
    except OSError as exc:
        raise UserFileError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def read_text(path: str | Path, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The file's UTF-8 text (a leading BOM dropped)."""
    path = Path(path)
    data = _read_bytes(path, what, max_bytes)
    if b"\x00" in data[:65536]:
        raise UserFileError(f"{path}: the {what} is a binary file (it holds NUL bytes); "
                            "expected UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserFileError(f"{path}: the {what} is not UTF-8 text (byte {exc.start}, line {line}: "
                            f"{data[exc.start:exc.start + 1]!r}); save it as UTF-8") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The parsed JSON document."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UserFileError(f"{path}: the {what} is not valid JSON: {exc}") from None


def read_csv(path: str | Path, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL,
             what: str = "CSV file") -> list[list[str]]:
    """The rows of a CSV / TSV file; fields may be of any length (csv's own limit is 128 KiB)."""
    path = Path(path)
    text = read_text(path, what)
    old = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
    try:
        return list(csv.reader(text.splitlines(), delimiter=delimiter, quoting=quoting))
    except csv.Error as exc:
        raise UserFileError(f"{path}: the {what} is not valid CSV: {exc}") from None
    finally:
        csv.field_size_limit(old)


def read_safetensors(path: str | Path, what: str = "weights file") -> tuple[dict[str, Any], dict[str, str]]:
    """({name: tensor}, metadata) of a safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    _read_bytes_check(path, what)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
            return {k: handle.get_tensor(k) for k in handle.keys()}, meta
    except Exception as exc:  # SafetensorError, OSError, ValueError: all mean "not usable"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserFileError(f"{path}: the {what} is not a readable safetensors file: {first}") from None


def _read_bytes_check(path: Path, what: str) -> None:
    """Existence and kind of a binary file, without reading it."""
    if not path.exists():
        raise UserFileError(f"{path}: does not exist; expected the {what}")
    if path.is_dir():
        raise UserFileError(f"{path}: is a folder; expected the {what} (a file)")


__all__ = ["UserFileError", "read_csv", "read_json", "read_safetensors", "read_text"]
