"""The `data:` section of a run: `DataConfig`, the one schema of the data pipeline.

The run config (`bert_ipu.config.Config.data`) *is* a `DataConfig`; the data package
uses it directly. Every bad value raises `ConfigError` naming `data.<field>`; bad data
(a missing file, an unusable vocabulary, an empty corpus) raises `DataError`, whose
message also starts with the field it comes from.

>>> DataConfig(source="files", input_files=("corpus/*.txt",)).sequence_length
128
>>> try:
...     DataConfig(mask_tokens=0)
... except ConfigError as err:
...     print(err)
data.mask_tokens: expected an integer in [1, data.sequence_length - 2 = 126], got 0
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from bert_ipu.data.text import FORMATS
from bert_ipu.schema import (
    ConfigError, check_ranges, choices, coerce_fields, need, nonneg, pos, tags, unit, unit_open,
)

SOURCES = ("builtin", "files", "hf")
"""Corpus sources (bert_ipu.data.corpus.open_corpus has one reader per name)."""
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

__all__ = ["DataConfig", "DataError", "HFSource", "SOURCES", "SPECIAL_TOKENS", "ConfigError",
           "vocab_file_size"]


class DataError(ValueError):
    """Bad data input: names the field or file, what was expected and what came."""


@dataclass(frozen=True)
class HFSource:
    """One Hugging Face dataset of `DataConfig.hf_*`."""

    path: str
    name: str | None
    split: str
    text_column: str
    data_files: tuple[str, ...] = ()
    streaming: bool = False


def _seed(v: int) -> bool:
    return 0 <= v < 2**63


def vocab_file_size(path: str | None) -> int | None:
    """Tokens in a vocab.txt (one per line), or None when there is no readable file (the
    data stage then reports the file itself). Cheap: config resolution uses it."""
    if path is None:
        return None
    try:
        lines = Path(path).expanduser().read_bytes().split(b"\n")
    except OSError:
        return None
    return len(lines) - (1 if lines and lines[-1] == b"" else 0)


@dataclass(frozen=True)
class DataConfig:
    """Corpus, tokenizer and pre-training examples (MLM with whole-word masking + NSP)."""

    SECTION: ClassVar[str] = "data"
    source: str = field(default="builtin", metadata=choices(lambda: SOURCES))
    """Corpus: builtin (Python standard-library documentation, no download), files
    (`input_files`) or hf (Hugging Face `datasets`)."""
    input_files: tuple[str, ...] = ()
    """source=files: text files, globs (recursive `**`) or folders (all files below)."""
    format: str = field(default="auto", metadata=choices(lambda: FORMATS))
    """Document layout of a text: auto | file (one document per file) | blank_line (one
    sentence per line, blank line between documents) | paragraphs (one document of
    blank-line paragraphs: README files, manuals) | wikitext (` = Title = ` headings).
    For hf: auto/file = one document per row."""
    hf_path: tuple[str, ...] = ()
    """source=hf: datasets read one after the other: hub names, builders (`text`, `json`)
    or local folders written by `save_to_disk`."""
    hf_name: tuple[str | None, ...] = ()
    """source=hf: configuration names, one per hf_path (empty: none)."""
    hf_split: tuple[str, ...] = ("train",)
    """source=hf: split to read: one for every dataset, or one per hf_path."""
    hf_text_column: tuple[str, ...] = ("text",)
    """source=hf: column holding the document text: one for all, or one per hf_path."""
    hf_data_files: tuple[str, ...] = ()
    """source=hf: data files for a builder such as `text` or `json` (one hf_path only)."""
    hf_streaming: bool = False
    """source=hf: read the datasets as a stream (`datasets` streaming=True): preparation
    starts at once, nothing is downloaded or converted first; with data.max_documents,
    only that many documents are read. A streamed hub dataset is identified in the cache
    key by its name, configuration and split (no fingerprint exists)."""
    vocab_file: str | None = None
    """WordPiece vocab.txt to use; null trains a vocabulary of `vocab_size` on the corpus."""
    vocab_size: int = 30522
    """Size of the trained WordPiece vocabulary (ignored with vocab_file)."""
    lowercase: bool = True
    """Lowercase and strip accents before WordPiece (uncased BERT)."""
    sequence_length: int = 128
    """S: tokens per example, [CLS] A [SEP] B [SEP] included."""
    mask_tokens: int = 20
    """P: maximum masked-LM predictions per sequence."""
    masked_lm_prob: float = 0.15
    """Fraction of the tokens chosen for masked-LM prediction (by whole words)."""
    short_seq_prob: float = 0.1
    """Probability of a shorter random target length (as Google's create_pretraining_data)."""
    eval_fraction: float = 0.02
    """Fraction of the documents held out for evaluation (at least 2 when > 0; 0 = none)."""
    max_documents: int | None = None
    """Use only the first N documents of the corpus (null: all)."""
    shard_documents: int = 100_000
    """Documents prepared at a time (random-next B segments come from the same shard)."""
    cache_dir: str = field(default="~/.cache/bert_ipu/data", metadata=tags("identity"))
    """Folder of prepared-data caches (one sub-folder per content hash)."""
    verify_checksums: bool = True
    """Check the sha256 of every cache file when loading (else sizes and structure only)."""
    num_workers: int = field(default=0, metadata=tags("identity"))
    """DataLoader worker processes."""
    num_proc: int = field(default=1, metadata=tags("identity"))
    """Processes that prepare the data (tokenize and pair shards of shard_documents
    documents); the prepared data is the same for any number."""
    seed: int | None = field(default=None, metadata=tags("identity"))
    """Seed of pairing, held-out selection, fixed eval masks and dynamic masks (null: the
    run's training.seed; 0 when the data pipeline is used on its own)."""

    def __post_init__(self) -> None:
        coerce_fields(self, self.SECTION)
        check_ranges(self, {
            "vocab_size": (lambda v: v > len(SPECIAL_TOKENS),
                           f"an integer > {len(SPECIAL_TOKENS)} (the special tokens)"),
            "sequence_length": (lambda v: 8 <= v <= 65535, "an integer in [8, 65535]"),
            "mask_tokens": (lambda v: 1 <= v <= self.sequence_length - 2,
                            f"an integer in [1, data.sequence_length - 2 = "
                            f"{self.sequence_length - 2}]"),
            "masked_lm_prob": (lambda v: 0 < v < 1, "a number in (0, 1)"),
            "short_seq_prob": (unit, "a number in [0, 1]"),
            "eval_fraction": (unit_open, "a number in [0, 1)"),
            "max_documents": (pos, "an integer > 0 or null"),
            "shard_documents": (lambda v: v >= 2, "an integer >= 2"),
            "seed": (_seed, "an integer in [0, 2**63 - 1] or null"),
            "num_workers": (nonneg, "an integer >= 0"),
            "num_proc": (pos, "an integer > 0"),
        })
        need(self.source != "files" or len(self.input_files) > 0, "data.input_files",
             "at least one file, glob or folder with data.source='files'", self.input_files)
        need(self.source != "hf" or len(self.hf_path) > 0, "data.hf_path",
             "at least one dataset with data.source='hf'", self.hf_path)
        n = len(self.hf_path)
        need(len(self.hf_name) in (0, n), "data.hf_name",
             f"empty or one entry per data.hf_path ({n})", self.hf_name)
        for name in ("hf_split", "hf_text_column"):
            need(len(getattr(self, name)) == 1 or len(getattr(self, name)) == n,
                 f"data.{name}", f"one entry, or one per data.hf_path ({n})", getattr(self, name))
        need(len(self.hf_data_files) == 0 or n <= 1, "data.hf_data_files",
             f"empty with several data.hf_path entries ({n}): data files belong to one "
             "builder", self.hf_data_files)

    @property
    def seed_value(self) -> int:
        """`seed`, or 0 when it is null (a run always fills it from training.seed)."""
        return 0 if self.seed is None else self.seed

    def hf_sources(self) -> tuple[HFSource, ...]:
        """One HFSource per hf_path, single-valued fields broadcast.

        >>> [s.name for s in DataConfig(source="hf", hf_path=("a", "b")).hf_sources()]
        [None, None]
        """
        n = len(self.hf_path)

        def each(values: tuple) -> tuple:
            return values * n if len(values) == 1 else values

        names = self.hf_name or (None,) * n
        return tuple(HFSource(p, nm, sp, col, self.hf_data_files, self.hf_streaming)
                     for p, nm, sp, col in zip(
            self.hf_path, names, each(self.hf_split), each(self.hf_text_column)))
