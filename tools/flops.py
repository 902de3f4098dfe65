"""Training FLOPs per sequence of a BERT family member (docs/flops.md).

    dynsp-flops --model base --sparsity 0.9 --block-size 16 [--seq-len 128]
                          [--n-updates 160 --regrow gradient --training-steps 100000] [--json]
    dynsp-flops --config configs/mini_dynsp_s0.9.yaml [key=value ...] [--json]

With ``--config`` everything comes from the run config (model shape, sparsity, block
size, distribution, updates, regrowth, sequence length, steps and sequences per step:
micro_batch_size x gradient_accumulation x replication_factor), and the numbers are
those the run's summary.json reports (same function, sparse_ops.flops.training_flops).

Prints the breakdown (sparse linears, attention, RigL extra); ``--json`` prints one JSON
object with ``flops_per_sequence`` and the parts. The RigL dense-gradient cost is paid
at update steps only; it is amortised per sequence when ``--training-steps`` is given
(and ``--batch-size`` adds per-run totals).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence


from bert_ipu.config import ModelConfig
from bert_ipu.model import encoder_linear_shapes
from bert_ipu.model.sizes import MODEL_SIZES
from sparse_ops.dynsp.distribution import DISTRIBUTIONS
from sparse_ops.dynsp.methods import regrowth_names
from sparse_ops.flops import training_flops_per_sequence
from sparse_ops.format import VALID_BLOCK_SIZES


def encoder_shapes(model: ModelConfig) -> list[tuple[int, int]]:
    """(O, I) of the sparse-able weights of every encoder layer, from the model's own shape
    rule (bert_ipu.model.encoder_linear_shapes: Q, K, V, attn-out, FFN up, down)."""
    return list(encoder_linear_shapes(model).values())


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {lo}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be an int >= {lo}, got {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="a run config: everything below comes from it")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (--config)")
    p.add_argument("--model", choices=sorted(MODEL_SIZES), help="BERT family member")
    p.add_argument("--sparsity", type=_fraction, default=0.0, help="sparsity s in [0, 1) (0: dense)")
    p.add_argument("--block-size", type=int, choices=VALID_BLOCK_SIZES, default=1, help="block size B")
    p.add_argument("--seq-len", type=_int_at_least(1), default=128, help="sequence length S")
    p.add_argument("--distribution", choices=DISTRIBUTIONS, default="uniform", help="layer densities")
    p.add_argument("--n-updates", type=_int_at_least(0), default=0, help="pattern updates n")
    p.add_argument("--regrow", choices=regrowth_names(), default="random", help="regrowth method")
    p.add_argument("--training-steps", type=_int_at_least(1), default=None,
                   help="steps T (amortises the RigL extra per sequence)")
    p.add_argument("--batch-size", type=_int_at_least(1), default=None,
                   help="sequences per step (adds per-run totals; needs --training-steps)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def from_config(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments a run config implies (the run's own shapes, sparsity and steps)."""
    from bert_ipu.config import load_config

    cfg = load_config(args.config, list(args.overrides))
    m, s, t = cfg.model, cfg.sparsity, cfg.training
    sparse = s.method != "dense"
    steps = t.training_steps if t.training_steps is not None else args.training_steps
    return argparse.Namespace(
        json=args.json, model=cfg.name, model_cfg=m, sparsity=s.sparsity if sparse else 0.0,
        block_size=s.block_size if sparse else 1, seq_len=cfg.data.sequence_length,
        distribution=s.distribution, n_updates=s.controller_settings().n_updates if sparse else 0,
        regrow=s.regrow, training_steps=steps,
        batch_size=None if steps is None else
        t.micro_batch_size * t.gradient_accumulation * t.replication_factor)


def compute(args: argparse.Namespace) -> dict:
    """The report as a dict (flops_per_sequence, breakdown, inputs, optional run totals)."""
    m = getattr(args, "model_cfg", None) or ModelConfig(size=args.model)
    b = training_flops_per_sequence(
        encoder_shapes(m), seq_len=args.seq_len, hidden=m.hidden_size,
        n_layers=m.num_hidden_layers, sparsity=args.sparsity, block_size=args.block_size,
        distribution=args.distribution, n_updates=args.n_updates, regrow=args.regrow,
        training_steps=args.training_steps)
    out = {"model": args.model, "sparsity": args.sparsity, "block_size": args.block_size,
           "seq_len": args.seq_len, "distribution": args.distribution, "n_updates": args.n_updates,
           "regrow": args.regrow, "training_steps": args.training_steps, **b.as_dict()}
    if args.batch_size is not None:
        sequences = args.training_steps * args.batch_size
        out["batch_size"] = args.batch_size
        out["sequences"] = sequences
        out["flops_total"] = b.total(sequences)
    return out


def render(report: dict) -> str:
    """Human-readable table of the report."""
    lines = [f"BERT-{report['model']}  s={report['sparsity']}  B={report['block_size']}  "
             f"S={report['seq_len']}  ({report['distribution']})",
             f"  sparse linears      {report['sparse_linears']:.4e}",
             f"  attention           {report['attention']:.4e}"]
    if report["rigl_extra_per_update_sequence"]:
        lines.append(f"  RigL extra / seq at an update step  {report['rigl_extra_per_update_sequence']:.4e}")
        amortised = report["rigl_extra_per_sequence"]
        lines.append("  RigL extra (amortised)  " + (f"{amortised:.4e}" if amortised is not None
                                                     else "n/a: pass --training-steps to amortise"))
    lines.append(f"  training FLOPs / sequence  {report['flops_per_sequence']:.4e}")
    if "flops_total" in report:
        lines.append(f"  run total ({report['sequences']} sequences)  {report['flops_total']:.4e}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.training_steps is None:
        parser.error("argument --batch-size: needs --training-steps for per-run totals")
    if args.config is None and args.model is None:
        parser.error("one of --model or --config is required")
    if args.config is None and args.overrides:
        parser.error(f"key=value overrides need --config, got {args.overrides}")
    if args.config is not None:
        from bert_ipu.config import ConfigError

        try:
            args = from_config(args)
        except ConfigError as exc:
            parser.error(str(exc))
    report = compute(args)
    print(json.dumps(report) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
