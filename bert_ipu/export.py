"""Command line: `python -m bert_ipu.export CHECKPOINT OUT_DIR [--sparse]`.

CHECKPOINT is a checkpoint folder (`.../checkpoints/step_XXXXXXXX`) or a run folder (its
newest valid checkpoint). OUT_DIR receives a Hugging Face folder that `transformers`
loads offline (AutoTokenizer, AutoModelForPreTraining / MaskedLM /
SequenceClassification, pipeline("fill-mask")); `--sparse` also writes the compressed
block-sparse form (`OUT_DIR/sparse/model.safetensors`). See bert_ipu/hub/export.py.

Exit codes: 0 exported; 2 bad input (one line naming the path or argument).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from bert_ipu.cliutil import Parser

EXIT_OK, EXIT_USAGE = 0, 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = Parser(prog="python -m bert_ipu.export",
                                     description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("checkpoint", help="checkpoint folder or run folder")
    parser.add_argument("out_dir", help="folder to write (must not exist or be empty)")
    parser.add_argument("--sparse", action="store_true",
                        help="also write the compressed block-sparse form")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty OUT_DIR (atomically)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Export; prints the weight file sizes. Returns the exit code."""
    from bert_ipu.hub import HubError, load_pretrained
    from bert_ipu.hub.export import export_folder

    args = parse_args(argv)
    try:
        src = load_pretrained(args.checkpoint)
        sizes = export_folder(src, args.out_dir, args.sparse, args.overwrite)
    except (HubError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"exported {src.path} (step {src.step}) to {args.out_dir}")
    for name, size in sizes.items():
        print(f"  {name}: {size:,} bytes")
    return EXIT_OK


def cli() -> None:
    """Console entry point (`bert-ipu-export`): main() and the exit code."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
