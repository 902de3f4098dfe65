"""Corpus sources -> documents (lists of sentences), with an identity for the cache key.

    corpus = open_corpus(DataConfig(source="files", input_files=("texts/*.txt",)))
    corpus.identity()      # JSON-able; changes when the corpus content may have changed
    for sentences in corpus.documents(): ...   # every call is a fresh, identical pass

Sources: `builtin` (stdlib documentation, see stdlib_docs.py), `files` (plain text files,
globs or folders; binary and non-UTF-8 files skipped with a count), `hf` (one or several
Hugging Face `datasets` datasets, concatenated; see hf.py). Every bad input raises
`DataError` naming the thing.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from bert_ipu.data import stdlib_docs
from bert_ipu.data.hf import ConcatCorpus, HFCorpus, open_hf_corpus
from bert_ipu.data.cache import file_sha256
from bert_ipu.data.config import DataError, DataConfig
from bert_ipu.data.text import parse_documents, sentences_of
from bert_ipu.logs import Log

Document = list[str]
_MAGIC = set("*?[")


class Corpus:
    """A re-iterable source of documents; subclasses set `description`."""

    description = "corpus"

    def identity(self) -> dict[str, Any]:
        """What the prepared data depends on (hashed into the cache key)."""
        raise NotImplementedError

    def documents(self) -> Iterator[Document]:
        """One pass over the documents, in a deterministic order."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- builtin
@lru_cache(maxsize=2)
def _stdlib_extract(python: str) -> dict:
    """Run stdlib_docs.py in an isolated subprocess of interpreter `python` (cached)."""
    cmd = [python, "-I", "-W", "ignore", stdlib_docs.__file__]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode("utf-8", "replace")[-2000:])
        return json.loads(done.stdout.decode("utf-8"))
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as err:
        raise DataError(f"data.source='builtin': extracting the standard library "
                        f"documentation with {python} failed: {err}") from err


class BuiltinCorpus(Corpus):
    """The installed Python standard library's docstrings and `pydoc` topics."""

    def __init__(self) -> None:
        data = _stdlib_extract(sys.executable)
        self._docs: list[list[str]] = data["documents"]
        self.description = (f"built-in corpus (Python {sys.version.split()[0]} stdlib docs: "
                            f"{data['imported']} modules, {len(data['failed'])} not importable,"
                            f" {len(self._docs)} documents)")
        text = json.dumps(self._docs, ensure_ascii=False).encode("utf-8")
        self._sha = hashlib.sha256(text).hexdigest()

    def identity(self) -> dict[str, Any]:
        return {"source": "builtin", "python": sys.version, "docs_sha256": self._sha}

    def documents(self) -> Iterator[Document]:
        for paragraphs in self._docs:
            sentences = sentences_of(paragraphs)
            if sentences:
                yield sentences


# ----------------------------------------------------------------------------- files
def resolve_input_files(patterns: tuple[str, ...]) -> list[Path]:
    """Files, globs (`**` recursive) and folders -> existing files, sorted per pattern,
    de-duplicated in order. A pattern matching nothing raises DataError naming it."""
    out: dict[Path, None] = {}
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if _MAGIC & set(expanded):
            found = [Path(p) for p in sorted(glob.glob(expanded, recursive=True))]
            found = [p for p in found if p.is_file()]
            what = "glob matches no file"
        elif Path(expanded).is_dir():
            root = Path(expanded)  # hidden files and folders below it are left out
            found = sorted(p for p in root.rglob("*") if p.is_file() and not any(
                s.startswith(".") for s in p.relative_to(root).parts))
            what = "folder holds no file"
        else:
            found = [Path(expanded)] if Path(expanded).is_file() else []
            what = "file does not exist"
        if not found:
            raise DataError(f"data.input_files: {pattern!r}: {what}")
        out.update(dict.fromkeys(p.resolve() for p in found))
    return list(out)


def read_text_file(path: Path) -> tuple[str | None, str, int]:
    """(text, "", replaced) for a text file: UTF-8, bytes that are not UTF-8 replaced by
    U+FFFD and counted (one stray byte no longer drops a whole file); (None, "binary", 0)
    for a binary file (NUL bytes in its first 64 KiB)."""
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        return None, "binary", 0
    try:
        return data.decode("utf-8-sig"), "", 0
    except UnicodeDecodeError:
        text = data.decode("utf-8-sig", errors="replace")
        # U+FFFD in the decoded text minus any the file already held as valid UTF-8
        return text, "", text.count("\ufffd") - data.count("\ufffd".encode())


class FilesCorpus(Corpus):
    """Plain-text files; layout per file from `spec.format` (auto-detected by default)."""

    def __init__(self, spec: DataConfig, log: Log = print) -> None:
        self.files = resolve_input_files(spec.input_files)
        self.layout = spec.format
        self.log = log
        self.skipped: list[tuple[Path, str]] = []
        self._reported = False
        self.description = f"{len(self.files)} input file(s) from {list(spec.input_files)}"

    def identity(self) -> dict[str, Any]:
        """Path, size and content sha256 of every file: an edit that keeps the size and
        the modification time still changes the key (hashing runs at ~1-2 GB/s)."""
        stats = [(str(p), p.stat().st_size, file_sha256(p)) for p in self.files]
        return {"source": "files", "format": self.layout, "files": stats}

    def documents(self) -> Iterator[Document]:
        skipped: list[tuple[Path, str]] = []
        replaced: list[tuple[Path, int]] = []
        for path in self.files:
            text, reason, n_replaced = read_text_file(path)
            if text is None:
                skipped.append((path, reason))
                continue
            if n_replaced:
                replaced.append((path, n_replaced))
            yield from parse_documents(text, self.layout)
        if replaced and not self._reported:
            shown = ", ".join(f"{p} ({n} byte(s))" for p, n in replaced[:5])
            more = f", ... {len(replaced) - 5} more" if len(replaced) > 5 else ""
            self.log(f"data: {len(replaced)} input file(s) are not valid UTF-8; their invalid bytes "
                     f"were replaced by U+FFFD: {shown}{more}")
        self.skipped = skipped
        if len(skipped) == len(self.files):
            raise DataError(f"data.input_files: all {len(skipped)} file(s) skipped, "
                            f"nothing left: {_list_skipped(skipped)}")
        if skipped and not self._reported:
            self.log(f"data: skipped {len(skipped)} of {len(self.files)} input file(s) "
                     f"(binary): {_list_skipped(skipped)}")
        self._reported = True


def _list_skipped(skipped: list[tuple[Path, str]], limit: int = 5) -> str:
    shown = ", ".join(f"{p} ({why})" for p, why in skipped[:limit])
    return shown + (f", ... {len(skipped) - limit} more" if len(skipped) > limit else "")


def open_corpus(spec: DataConfig, log: Log = print) -> Corpus:
    """The corpus named by `spec.source` (DataError on a missing or unreadable source)."""
    if spec.source == "builtin":
        return BuiltinCorpus()
    if spec.source == "files":
        return FilesCorpus(spec, log)
    return open_hf_corpus(spec, log)


__all__ = ["Corpus", "BuiltinCorpus", "FilesCorpus", "HFCorpus", "ConcatCorpus", "open_corpus",
           "resolve_input_files", "read_text_file"]
