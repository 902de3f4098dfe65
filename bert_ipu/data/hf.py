"""Hugging Face `datasets` sources: one dataset, or several read one after the other.

    corpus = open_hf_corpus(DataConfig(source="hf",
                                     hf_path=("wikimedia/wikipedia", "bookcorpus/bookcorpus"),
                                     hf_name=("20231101.en", None)))
    corpus.identity()   # {"source": "hf", "datasets": [one identity per dataset]}

Each dataset is named by `spec.hf_sources()` (path, configuration name, split, text
column; see DataConfig): a hub name, a builder with data files ("text", "json"), or a
local folder written by `save_to_disk`. The documents of the datasets are concatenated
in the order given; every dataset's identity (including its fingerprint) goes into the
cache key. Every bad input raises `DataError` naming the field (and, with several
datasets, its index: `data.hf_path[1]`).
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Iterator

from bert_ipu.data.cache import file_sha256
from bert_ipu.data.config import DataError, DataConfig, HFSource
from bert_ipu.data.text import iter_documents, sentences_of
from bert_ipu.logs import Log

Document = list[str]


def load_hf_dataset(src: HFSource, field: str = "hf_path") -> Any:
    """The `datasets.Dataset` of one source (DataError naming `field` on failure)."""
    import datasets

    path = Path(os.path.expanduser(src.path))
    where = f"hf_path={src.path!r}, hf_name={src.name!r}, hf_split={src.split!r}"
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if src.split not in ds:
                    raise DataError(f"data.{field.replace('path', 'split')}: expected one "
                                    f"of {sorted(ds)} for {src.path!r}, got {src.split!r}")
                ds = ds[src.split]
            return ds
        files = list(src.data_files) or None
        ds = datasets.load_dataset(src.path, src.name, split=src.split, data_files=files,
                                   streaming=src.streaming)
        if src.streaming:  # an unreachable or unreadable stream fails here, not mid-run
            next(iter(ds.take(1)), None)
        return ds
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many types; name the input
        raise DataError(f"data.{field}: could not load the dataset ({where}): "
                        f"{type(err).__name__}: {err}") from err


class HFCorpus:
    """Rows of one Hugging Face dataset: one document per row, or lines of one text."""

    def __init__(self, src: HFSource, layout: str, log: Log = print, index: str = "") -> None:
        self.src, self.layout, self.log = src, layout, log
        self.ds = load_hf_dataset(src, f"hf_path{index}")
        self.streamed = not hasattr(self.ds, "__len__")
        columns = self.ds.column_names
        if columns is None:  # a stream of unknown features: the first row's keys
            columns = list(next(iter(self.ds.take(1)), {}))
        if src.text_column not in columns:
            raise DataError(f"data.hf_text_column{index}: expected one of "
                            f"{columns} in {src.path!r}, got {src.text_column!r}")
        self.non_text_rows, self._reported = 0, False
        rows = "streamed" if self.streamed else f"{len(self.ds)} rows"
        self.description = (f"Hugging Face dataset {src.path!r} ({src.name}, split "
                            f"{src.split}, {rows})")

    def identity(self) -> dict[str, Any]:
        s = self.src
        out = {"source": "hf", "path": s.path, "name": s.name, "split": s.split,
               "column": s.text_column, "data_files": list(s.data_files),
               "format": self.layout}
        if not self.streamed:
            return out | {"rows": len(self.ds), "fingerprint": getattr(self.ds, "_fingerprint", None)}
        # a stream has no fingerprint: local data files are identified by their content
        files = [Path(os.path.expanduser(f)) for f in s.data_files]
        return out | {"streaming": True, "files_sha256": [
            file_sha256(f) if f.is_file() else None for f in files]}

    def _rows(self) -> Iterator[str]:
        self.non_text_rows = 0
        column = self.ds.select_columns([self.src.text_column])
        for batch in column.iter(batch_size=1000):
            for value in batch[self.src.text_column]:
                if isinstance(value, str):
                    yield value
                else:
                    self.non_text_rows += 1

    def _documents(self) -> Iterator[Document]:
        if self.layout in ("blank_line", "wikitext"):
            lines = (line for row in self._rows() for line in (row.splitlines() or [""]))
            yield from iter_documents(lines, self.layout)
            return
        for row in self._rows():
            sentences = sentences_of(row.splitlines())
            if sentences:
                yield sentences

    def documents(self) -> Iterator[Document]:
        """One pass; the first complete pass reports skipped rows and single-sentence
        documents (NSP cannot use those; e.g. a dataset with one sentence per row)."""
        counts = {"documents": 0, "single": 0}
        for doc in self._documents():
            counts["documents"] += 1
            counts["single"] += len(doc) < 2
            yield doc
        if self._reported:
            return
        self._reported = True
        name, col = self.src.path, self.src.text_column
        if self.non_text_rows:
            self.log(f"data: skipped {self.non_text_rows} row(s) of {name!r} whose {col!r} "
                     "is not a string")
        if counts["documents"] and counts["single"] == counts["documents"]:
            self.log(f"WARNING: data: all {counts['documents']} documents of {name!r} have a "
                     "single sentence, too short for NSP pairs (one sentence per row?); use a "
                     "dataset with a whole document per row, or data.format=blank_line when "
                     "its rows are lines with blank rows between documents")


class ConcatCorpus:
    """Several corpora read one after the other (documents never cross a boundary)."""

    def __init__(self, parts: list[HFCorpus]) -> None:
        self.parts = parts
        self.description = " + ".join(p.description for p in parts)

    def identity(self) -> dict[str, Any]:
        return {"source": "hf", "datasets": [p.identity() for p in self.parts]}

    def documents(self) -> Iterator[Document]:
        return itertools.chain.from_iterable(p.documents() for p in self.parts)


def open_hf_corpus(spec: DataConfig, log: Log = print) -> HFCorpus | ConcatCorpus:
    """The dataset(s) of `spec.hf_sources()`: one HFCorpus, or their concatenation."""
    sources = spec.hf_sources()
    if len(sources) == 1:
        return HFCorpus(sources[0], spec.format, log)
    return ConcatCorpus([HFCorpus(src, spec.format, log, f"[{i}]")
                         for i, src in enumerate(sources)])


__all__ = ["HFCorpus", "ConcatCorpus", "open_hf_corpus", "load_hf_dataset"]
