"""Command line: `python -m bert_ipu.finetune --model DIR --task TASK [options]`.

TASK is a folder holding train.{tsv,csv,json,jsonl} and dev/validation/test.* (GLUE's
folders work as-is), or `hf:NAME[:CONFIG]` for a `datasets` dataset in the local cache;
--train / --eval name the files directly. Classification (integer or string labels) or
regression (numbers with fractions, e.g. STS-B), on the `transformers` Trainer. Results
(every evaluation and the final one: loss, accuracy, F1, Matthews correlation; Pearson,
Spearman, MSE) are printed and written as JSON (--output); --save keeps the fine-tuned
model.

Exit codes: 0 done; 2 bad input (one line naming the file, column or argument).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from bert_ipu.cliutil import Parser
from bert_ipu.finetune.data import TaskError, load_task
from bert_ipu.finetune.trainer import FinetuneSettings, finetune, settings_from
from bert_ipu.schema import ConfigError

EXIT_OK, EXIT_USAGE = 0, 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m bert_ipu.finetune",
                                description=__doc__.split("\n\n")[1])
    p.add_argument("--model", required=True, help="exported model folder (bert_ipu.export)")
    p.add_argument("--task", required=True, help="task folder or hf:NAME[:CONFIG]")
    p.add_argument("--train", help="training file (default: TASK/train.*)")
    p.add_argument("--eval", help="evaluation file (default: TASK/dev.* or validation.*)")
    p.add_argument("--splits", default="train,validation", help="hf: train,eval split names")
    p.add_argument("--text-columns", help="A or A,B (default: GLUE's names, sentence, text)")
    p.add_argument("--label-column", help="default: label, Quality or gold_label")
    p.add_argument("--no-header", action="store_true", help="CSV/TSV without a header row: "
                   "columns are named 0, 1, ... (e.g. CoLA: --text-columns 3 --label-column 1)")
    defaults = FinetuneSettings()
    for name in ("epochs", "learning_rate", "batch_size", "max_length", "seed", "warmup",
                 "weight_decay", "eval_steps"):
        value = getattr(defaults, name)
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--keep-sparsity", action="store_true",
                   help="keep the pre-trained block-sparsity (needs an export with --sparse)")
    p.add_argument("--random-init", action="store_true",
                   help="same architecture, random weights (a baseline)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (step lines only)")
    p.add_argument("--save", help="folder for the fine-tuned model (save_pretrained form)")
    p.add_argument("--output", help="results JSON file")
    return p.parse_args(argv)


def _settings(args: argparse.Namespace) -> FinetuneSettings:
    """The settings of the command line; a bad value is one TaskError naming its flag."""
    try:
        return settings_from(vars(args))
    except ConfigError as exc:
        flag = "--" + str(exc.path).removeprefix("finetune.").replace("_", "-")
        raise TaskError(f"{flag}: expected {exc.expected}, got {exc.value!r}") from None


def _check_output(output: str | None) -> Path | None:
    """The results file, checked writable before any training (a failure after training
    would lose the results)."""
    if not output:
        return None
    path = Path(output).expanduser()
    if path.is_dir():
        raise TaskError(f"--output {output}: is a folder; expected a results file path")
    if path.exists() and not _is_results(path):  # replace only an earlier results file
        raise TaskError(f"--output {output}: exists and is not a results file of this command; "
                        "it is never replaced; choose a new file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise TaskError(f"--output {output}: cannot write there: {exc.strerror or exc}") from None
    return path


def _is_results(path: Path) -> bool:
    """Whether `path` holds the results JSON this command writes."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"model", "task", "final", "settings"} <= set(data)


def _write_results(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TaskError(f"--output {path}: writing the results failed: {exc.strerror or exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    from bert_ipu.hub import HubError

    args = parse_args(argv)
    try:
        settings = _settings(args)
        output = _check_output(args.output)
        cols = args.text_columns.split(",") if args.text_columns else None
        task = load_task(args.task, args.train, args.eval, cols, args.label_column,
                         not args.no_header, tuple(args.splits.split(",")))
        results = finetune(args.model, task, settings, save_dir=args.save)
        if output is not None:
            _write_results(output, json.dumps(results, indent=1))
    except (TaskError, HubError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(results["final"]))
    return EXIT_OK


def cli() -> None:
    """Console entry point: main() and the exit code."""
    sys.exit(main())
