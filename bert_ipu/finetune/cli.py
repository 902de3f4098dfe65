"""Command line: `python -m bert_ipu.finetune --model DIR --task TASK [options]`.

TASK is a folder holding train.{tsv,csv,json,jsonl} and dev/validation/test.* (GLUE's
folders work as-is), or `hf:NAME[:CONFIG]` for a `datasets` dataset in the local cache;
--train / --eval name the files directly. Results (every evaluation and the final one:
loss, accuracy, F1, Matthews correlation) are printed and written as JSON (--output).

Exit codes: 0 done; 2 bad input (one line naming the file, column or argument).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from bert_ipu.finetune.data import TaskError, load_task
from bert_ipu.finetune.trainer import FinetuneSettings, finetune

EXIT_OK, EXIT_USAGE = 0, 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bert_ipu.finetune",
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
    p.add_argument("--keep-sparsity", action="store_true",
                   help="keep the pre-trained block-sparsity (needs an export with --sparse)")
    p.add_argument("--random-init", action="store_true",
                   help="same architecture, random weights (a baseline)")
    p.add_argument("--output", help="results JSON file")
    return p.parse_args(argv)


def _settings(args: argparse.Namespace) -> FinetuneSettings:
    fields = FinetuneSettings.__dataclass_fields__
    s = FinetuneSettings(**{k: getattr(args, k) for k in fields})
    for name in ("epochs", "learning_rate", "batch_size", "max_length"):
        if not getattr(s, name) > 0:
            raise TaskError(f"--{name.replace('_', '-')}: expected > 0, got {getattr(s, name)}")
    return s


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    from bert_ipu.hub import HubError

    args = parse_args(argv)
    try:
        settings = _settings(args)
        cols = args.text_columns.split(",") if args.text_columns else None
        task = load_task(args.task, args.train, args.eval, cols, args.label_column,
                         not args.no_header, tuple(args.splits.split(",")))
        results = finetune(args.model, task, settings)
    except (TaskError, HubError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    text = json.dumps(results, indent=1)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    print(json.dumps(results["final"]))
    return EXIT_OK


def cli() -> None:
    """Console entry point: main() and the exit code."""
    sys.exit(main())
