"""What the data pipeline needs to know: `DataSpec`, and the one error type `DataError`.

The run config (bert_ipu/config/__init__.py) maps its `data:` section onto a `DataSpec`; this
package depends on nothing else of the product.

>>> DataSpec(source="files", input_files=("corpus/*.txt",)).sequence_length
128
>>> try:
...     DataSpec(mask_tokens=0)
... except DataError as err:
...     print(err)
DataSpec.mask_tokens: expected an integer in [1, 126], got 0
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from bert_ipu.data.text import FORMATS

SOURCES = ("builtin", "files", "hf")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class DataError(ValueError):
    """Bad data input: names the field or file, what was expected and what came."""


@dataclass(frozen=True)
class DataSpec:
    """Everything that decides the prepared data (and so the cache key), plus where it lives."""

    source: str = "builtin"
    """Corpus: "builtin" (stdlib documentation), "files" (input_files) or "hf" (datasets)."""
    input_files: tuple[str, ...] = ()
    """source=files: text files, globs (recursive `**`) or folders (all files below)."""
    format: str = "auto"
    """Layout of a text: auto | file (one document) | blank_line | wikitext. For hf: auto /
    file = one document per row; blank_line / wikitext = rows are lines of one text."""
    hf_path: tuple[str, ...] = ()
    """source=hf: datasets, read one after the other: hub names ("wikimedia/wikipedia"),
    builders ("text", "json") or local folders (`save_to_disk`). A str means one."""
    hf_name: tuple[str | None, ...] = ()
    """source=hf: configuration names ("20231101.en"), one per hf_path (empty: none)."""
    hf_split: tuple[str, ...] = ("train",)
    """source=hf: split to read: one for every dataset, or one per hf_path."""
    hf_text_column: tuple[str, ...] = ("text",)
    """source=hf: column holding the text: one for every dataset, or one per hf_path."""
    hf_data_files: tuple[str, ...] = ()
    """source=hf: data files for a builder such as "text" or "json" (one hf_path only)."""
    vocab_file: str | None = None
    """WordPiece vocab.txt; None trains a vocabulary of `vocab_size` on the corpus."""
    vocab_size: int = 30522
    """Size of the trained vocabulary (ignored with vocab_file)."""
    lowercase: bool = True
    """Lower-case and strip accents before WordPiece (True for uncased vocabularies)."""
    sequence_length: int = 128
    """S: tokens per sequence, [CLS] A [SEP] B [SEP] included."""
    mask_tokens: int = 20
    """P: maximum masked-LM predictions per sequence."""
    masked_lm_prob: float = 0.15
    """Fraction of the tokens chosen for masked-LM prediction (whole words)."""
    short_seq_prob: float = 0.1
    """Probability of a shorter random target length for a pair."""
    eval_fraction: float = 0.02
    """Fraction of the documents held out for evaluation (at least 2 when > 0; 0 = none)."""
    max_documents: int | None = None
    """Use only the first N documents of the corpus (None = all)."""
    shard_documents: int = 100_000
    """Documents prepared at a time (random-next B segments come from the same shard)."""
    cache_dir: str = "~/.cache/bert_ipu/data"
    """Folder of prepared-data caches (one sub-folder per cache key)."""
    seed: int = 12345
    """Seed of pair creation, held-out selection, fixed eval masks and dynamic masks."""
    verify_checksums: bool = True
    """Check the sha256 of every cache file when loading (else sizes and structure only)."""

    def __post_init__(self) -> None:
        for name in _TUPLES:  # lists from YAML are welcome; a single value means one
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            elif isinstance(value, str) or (name == "hf_name" and value is None):
                object.__setattr__(self, name, () if value is None else (value,))
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        _choice("source", self.source, SOURCES)
        _choice("format", self.format, FORMATS)
        _int_range("sequence_length", self.sequence_length, 8, 65535)
        _int_range("mask_tokens", self.mask_tokens, 1, self.sequence_length - 2)
        _int_range("vocab_size", self.vocab_size, len(SPECIAL_TOKENS) + 1, 2**31 - 1)
        _int_range("shard_documents", self.shard_documents, 2, 2**31 - 1)
        _int_range("seed", self.seed, 0, 2**63 - 1)
        if self.max_documents is not None:
            _int_range("max_documents", self.max_documents, 1, 2**63 - 1)
        _prob("masked_lm_prob", self.masked_lm_prob, open_low=True)
        _prob("short_seq_prob", self.short_seq_prob)
        _prob("eval_fraction", self.eval_fraction, open_high=True)
        if self.source == "files" and not self.input_files:
            raise DataError("DataSpec.input_files: expected at least one file, glob or "
                            "folder with source='files', got ()")
        if self.source == "hf":
            self._check_hf()

    def _check_hf(self) -> None:
        n = len(self.hf_path)
        if n == 0:
            raise DataError("DataSpec.hf_path: expected a dataset name or local path with "
                            f"source='hf', got {self.hf_path!r}")
        for name, allowed in (("hf_name", (0, n)), ("hf_split", (1, n)),
                              ("hf_text_column", (1, n))):
            if len(getattr(self, name)) not in allowed:
                raise DataError(f"DataSpec.{name}: expected {' or '.join(map(str, allowed))} "
                                f"entries (hf_path has {n}), got {getattr(self, name)!r}")
        if self.hf_data_files and n != 1:
            raise DataError(f"DataSpec.hf_data_files: expected a single hf_path (data files "
                            f"belong to one builder), got {n} datasets {self.hf_path!r}")

    def hf_sources(self) -> tuple[HFSource, ...]:
        """One HFSource per hf_path, single-valued fields broadcast.

        >>> [s.name for s in DataSpec(source="hf", hf_path=("a", "b")).hf_sources()]
        [None, None]
        """
        n = len(self.hf_path)

        def each(values: tuple) -> tuple:
            return values * n if len(values) == 1 else values

        names = self.hf_name or (None,) * n
        return tuple(HFSource(p, nm, sp, col, self.hf_data_files) for p, nm, sp, col in zip(
            self.hf_path, names, each(self.hf_split), each(self.hf_text_column)))


@dataclass(frozen=True)
class HFSource:
    """One Hugging Face dataset of DataSpec.hf_*."""

    path: str
    name: str | None
    split: str
    text_column: str
    data_files: tuple[str, ...] = ()


_TUPLES = ("input_files", "hf_data_files", "hf_path", "hf_name", "hf_split", "hf_text_column")


_TYPES: dict[str, Any] = {
    "str": str, "int": int, "float": (int, float), "bool": bool,
    "str | None": (str, type(None)), "int | None": (int, type(None)),
}


def _check_type(name: str, value: Any, annotation: Any) -> None:
    if annotation == "tuple[str, ...]":
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    elif annotation == "tuple[str | None, ...]":
        ok = isinstance(value, tuple) and all(v is None or isinstance(v, str) for v in value)
    else:
        want = _TYPES[annotation]
        ok = isinstance(value, want) and not (
            isinstance(value, bool) and annotation in ("int", "float", "int | None"))
    if not ok:
        raise DataError(f"DataSpec.{name}: expected {annotation}, got {value!r} "
                        f"({type(value).__name__})")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DataError(f"DataSpec.{name}: expected one of {', '.join(choices)}, got {value!r}")


def _int_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise DataError(f"DataSpec.{name}: expected an integer in [{low}, {high}], got {value}")


def _prob(name: str, value: float, open_low: bool = False, open_high: bool = False) -> None:
    low_ok = value > 0 if open_low else value >= 0
    high_ok = value < 1 if open_high else value <= 1
    if not (math.isfinite(value) and low_ok and high_ok):
        interval = ("(" if open_low else "[") + "0, 1" + (")" if open_high else "]")
        raise DataError(f"DataSpec.{name}: expected a number in {interval}, got {value}")
