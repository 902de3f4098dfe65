"""Classification and regression examples from local CSV / TSV / JSON / JSON-lines files or
a Hugging Face `datasets` dataset: single sentences or sentence pairs with a label.

    task = load_task("glue_data/SST-2")                  # train.tsv + dev.tsv, GLUE as-is
    task = load_task("hf:nyu-mll/glue:sst2")             # datasets (local cache only)
    task.train.texts_a, task.train.texts_b, task.train.labels, task.label_names

Labels are integers or strings (classification: strings are numbered in sorted order,
integers keep their meaning, their sorted distinct values are numbered), or numbers with
fractions (regression, e.g. STS-B's similarity scores: `Task.kind == "regression"`, the
labels kept as floats). Anything else (lists, empty cells, a mix) is refused with a
`TaskError` naming the file, row and column.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from bert_ipu.userfiles import UserFileError, read_csv, read_text

# Column names tried in order when none are given (GLUE's, then common ones).
TEXT_COLUMNS = (("sentence1", "sentence2"), ("question", "sentence"), ("question1", "question2"),
                ("#1 String", "#2 String"), ("premise", "hypothesis"), ("sentence",), ("text",))
LABEL_COLUMNS = ("label", "Quality", "gold_label")
TRAIN_NAMES = ("train",)
EVAL_NAMES = ("dev", "validation", "dev_matched", "test")
SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")


class TaskError(ValueError):
    """Unusable task data (one line naming the file or argument, expected and found)."""


@dataclass
class Split:
    """One split: texts (second texts for pairs, else None) and label ids."""

    texts_a: list[str]
    texts_b: list[str] | None
    labels: list[int] | list[float]


@dataclass
class Task:
    name: str
    train: Split
    eval: Split
    label_names: list[str]
    """Classification: the class names; regression: empty."""
    kind: str = "classification"
    """classification or regression."""


def read_rows(path: Path, header: bool = True) -> list[dict[str, Any]]:
    """Rows of a .csv/.tsv (GLUE TSVs: no quoting) or .json (list) / .jsonl file; without
    a header, columns are named by their index ("0", "1", ...)."""
    try:
        if path.suffix in (".json", ".jsonl"):
            text = read_text(path, "task file")
            try:
                rows = json.loads(text) if path.suffix == ".json" else [
                    json.loads(line) for line in text.splitlines() if line.strip()]
            except ValueError as exc:
                raise TaskError(f"{path}: expected JSON ({path.suffix}), could not parse it: {exc}") from None
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise TaskError(f"{path}: expected a list of objects (one per example)")
            return rows
        delimiter, quoting = ("\t", csv.QUOTE_NONE) if path.suffix == ".tsv" else (",", csv.QUOTE_MINIMAL)
        lines = read_csv(path, delimiter, quoting, "task file")
    except UserFileError as exc:
        raise TaskError(str(exc)) from None
    names = lines[0] if header and lines else [str(i) for i in range(len(lines[0]) if lines else 0)]
    body = lines[1:] if header else lines
    return [dict(zip(names, line)) for line in body if line]


def pick_columns(columns: Sequence[str], text: Sequence[str] | None, label: str | None,
                 where: str) -> tuple[list[str], str]:
    """The text column(s) (1 or 2) and the label column, given or found by name."""
    if text is None:
        text = next((list(c) for c in TEXT_COLUMNS if all(x in columns for x in c)), None)
    if label is None:
        label = next((c for c in LABEL_COLUMNS if c in columns), None)
    if label is None or label not in columns:
        raise TaskError(f"{where}: no label column (expected {label or ' or '.join(LABEL_COLUMNS)}"
                        f"; --label-column names another), found columns {list(columns)}")
    if not text or len(text) > 2 or any(c not in columns for c in text):
        raise TaskError(f"{where}: text column(s) {text or 'sentence/text/sentence1,sentence2'} "
                        f"not found (--text-columns A[,B]); found columns {list(columns)}")
    return list(text), label


def _label_value(value: Any, where: str, row: int, column: str) -> int | float | str:
    """An integer, a finite number or a non-empty string label; TaskError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TaskError(f"{where}: row {row}, column {column!r}: expected a number or string "
                        f"label, got {value!r}")
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise TaskError(f"{where}: row {row}, column {column!r}: empty label")
        try:
            number = float(value)
        except ValueError:
            return value
        value = int(value) if value.lstrip("-").isdigit() else number
    if isinstance(value, float) and not math.isfinite(value):
        raise TaskError(f"{where}: row {row}, column {column!r}: expected a finite number, "
                        f"got {value!r}")
    return value


def to_split(rows: list[dict[str, Any]], text: list[str], label: str, where: str
             ) -> tuple[list[str], list[str] | None, list[int | str]]:
    """(texts_a, texts_b, raw labels) of `rows`; TaskError names a bad row."""
    if not rows:
        raise TaskError(f"{where}: no examples")
    a, b, y = [], [] if len(text) == 2 else None, []
    for i, row in enumerate(rows, 1):
        if any(not isinstance(row.get(c), str) for c in text) or label not in row:
            raise TaskError(f"{where}: row {i}: expected text in {text} and a {label!r} label")
        a.append(row[text[0]])
        if b is not None:
            b.append(row[text[1]])
        y.append(_label_value(row[label], where, i, label))
    return a, b, y


def find_split_file(folder: Path, names: Sequence[str], what: str) -> Path:
    """folder/NAME.{tsv,csv,jsonl,json} for the first NAME that exists."""
    for name in names:
        for suffix in SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    raise TaskError(f"{folder}: no {what} file (expected one of "
                    f"{', '.join(n + '.tsv/.csv/.json/.jsonl' for n in names)})")


def hf_name(spec: str) -> tuple[str, str | None]:
    """`hf:NAME[:CONFIG]` -> (NAME, CONFIG): NAME is a Hub id (`nyu-mll/glue`, `imdb`) or
    a local dataset folder (data files named by split, as `datasets` reads them)."""
    name, _, config = spec[3:].rpartition(":") if ":" in spec[3:] else (spec[3:], "", "")
    if not name or (":" in spec[3:] and not config):
        raise TaskError(f"--task {spec}: expected hf:NAME or hf:NAME:CONFIG "
                        "(e.g. hf:nyu-mll/glue:sst2)")
    return name, config or None


def _hf_rows(spec: str, split: str) -> list[dict[str, Any]]:
    """Rows of a `datasets` dataset split: spec `hf:NAME` or `hf:NAME:CONFIG`."""
    import datasets

    name, config = hf_name(spec)
    try:
        data = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types; one line is what the user needs
        raise TaskError(f"--task {spec}: cannot load split {split!r} from datasets: "
                        f"{str(exc).splitlines()[0]}") from None
    return [dict(r) for r in data]


def number_labels(*splits: list[int | float | str], where: str
                  ) -> tuple[list[list[int]] | list[list[float]], list[str], str]:
    """Raw labels of every split -> (ids or values per split, label names, kind): numbers
    with a fraction anywhere make a regression task (values as floats, no names); else
    classification (ids of the sorted distinct values)."""
    values = {v for split in splits for v in split}
    if any(isinstance(v, float) for v in values):
        if any(isinstance(v, str) for v in values):
            raise TaskError(f"{where}: labels mix numbers and strings: {sorted(map(str, values))[:6]}")
        return [[float(v) for v in split] for split in splits], [], "regression"
    if len({type(v) for v in values}) > 1:
        raise TaskError(f"{where}: labels mix integers and strings: {sorted(map(str, values))[:6]}")
    if len(values) < 2:
        raise TaskError(f"{where}: expected at least 2 distinct labels, got {sorted(values)}")
    if len(splits) > 1:
        unseen = sorted({v for split in splits[1:] for v in split} - set(splits[0]), key=str)
        if unseen:
            raise TaskError(f"{where}: the evaluation labels {[str(v) for v in unseen][:6]} never occur "
                            "in the training file; a classifier cannot learn them (check the label "
                            "column and the files)")
    ordered = sorted(values)
    ids = {v: i for i, v in enumerate(ordered)}
    return [[ids[v] for v in split] for split in splits], [str(v) for v in ordered], "classification"


def load_task(task: str, train: str | None = None, eval_file: str | None = None,
              text_columns: Sequence[str] | None = None, label_column: str | None = None,
              header: bool = True, splits: tuple[str, str] = ("train", "validation")) -> Task:
    """The task's train and evaluation splits (see the module docstring)."""
    if task.startswith("hf:"):
        raw = [_hf_rows(task, s) for s in splits]
        where = [f"{task}[{s}]" for s in splits]
    else:
        folder = Path(task).expanduser()
        if train is None and not folder.is_dir():
            raise TaskError(f"--task {task}: expected a folder with train/dev files or "
                            "hf:NAME[:CONFIG], got a path that is not a folder")
        paths = [Path(train) if train else find_split_file(folder, TRAIN_NAMES, "training"),
                 Path(eval_file) if eval_file else find_split_file(folder, EVAL_NAMES, "evaluation")]
        raw = [read_rows(p, header) for p in paths]
        where = [str(p) for p in paths]
    parts = []
    for rows, w in zip(raw, where):
        if not rows:
            raise TaskError(f"{w}: no examples")
        text, label = pick_columns(list(rows[0]), text_columns, label_column, w)
        parts.append(to_split(rows, text, label, w))
    (y_train, y_eval), names, kind = number_labels(parts[0][2], parts[1][2], where=where[0])
    return Task(Path(task).name if not task.startswith("hf:") else task,
                Split(parts[0][0], parts[0][1], y_train), Split(parts[1][0], parts[1][1], y_eval),
                names, kind)
