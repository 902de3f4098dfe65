"""Benchmark SparseLinear kernels against dense nn.Linear (fwd + bwd), pattern updates, memory.

    python tools/bench_ops.py [--device cpu|cuda] [--quick] [--json PATH]

Each row is one layer case; backend cells read ``ratio (ms)`` where ratio = time /
dense nn.Linear time at the same dtype, measured in the same run (interleaved,
median). ``>Nx`` = slower than N x dense in warm-up, not timed further; ``n/a`` =
backend does not support the case; ``skip`` = not timed in --quick (gather_bmm at
B = 1: over 100x dense in the full run). ``update`` = one DynSp pattern update of the
layer (prune + regrow + AdamW state remap); ``mem`` = persistent bytes (values +
bias + int64 indices + 2 fp32 Adam moments) relative to dense (weight + bias + moments).
The full grid (no --quick) takes hours on a 2-core CPU; narrow it with the options.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sparse_ops import bench  # noqa: E402

BACKENDS = ("auto", "dense", "bsr", "gather_bmm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="small subset (~2-3 min on 2 CPU cores)")
    p.add_argument("--json", type=Path, help="also write all rows and the machine as JSON here")
    p.add_argument("--hidden", type=int, nargs="+", help="H values (default: grid)")
    p.add_argument("--tokens", type=int, nargs="+", help="N values (default: grid)")
    p.add_argument("--sparsity", type=float, nargs="+", help="sparsity values (default: grid)")
    p.add_argument("--block-sizes", type=int, nargs="+", help="B values (default: grid)")
    p.add_argument("--amp", nargs="+", choices=("fp32", "bf16", "fp16"), help="dtypes (default: grid)")
    p.add_argument("--shapes", nargs="+", choices=("HxH", "4HxH", "Hx4H"), help="layer shapes")
    p.add_argument("--backends", nargs="+", help=f"SparseLinear backends (default: {' '.join(BACKENDS)}"
                   f" + triton on CUDA)")
    p.add_argument("--repeats", type=int, help="timed rounds per case (default 5, quick 3)")
    p.add_argument("--cap", type=float, default=20.0, help="stop timing a backend slower than CAP x dense")
    return p.parse_args(argv)


def _cell(t: float | None, dense: float | None, timed: bool | str) -> str:
    if timed is not True:
        return timed or "n/a"
    if t is None or dense is None:
        return "capped"
    return f"{t / dense:5.2f}x ({t:7.1f})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_ops: --device cuda requested but CUDA is not available; nothing to do.")
        return 0
    device = torch.device(args.device)
    grid = dict(bench.QUICK_GRID if args.quick else bench.FULL_GRID)
    for key in ("hidden", "tokens", "sparsity", "block_sizes", "amp"):
        if getattr(args, key) is not None:
            grid[key] = tuple(getattr(args, key))
    shapes = tuple(args.shapes or ("HxH", "4HxH", "Hx4H"))
    backends = list(args.backends or (BACKENDS + (("triton",) if device.type == "cuda" else ())))
    repeats = args.repeats or (3 if args.quick else 5)
    info = bench.machine_info(device)
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
    header = ["H", "shape", "N", "s", "B", "amp", "dense ms"] + backends + ["update ms", "mem"]
    print(" | ".join(header))
    rows, updates, mems = [], {}, {}
    for case in bench.layer_cases(shapes=shapes, **grid):
        skip = {b for b in backends if args.quick and (b, case.block_size) in bench.QUICK_SKIP}
        times = bench.bench_layer(case, [b for b in backends if b not in skip], device,
                                  repeats=repeats, cap=args.cap)
        key = (case.out_features, case.in_features, case.sparsity, case.block_size)
        if key not in updates:
            updates[key] = bench.pattern_update_ms(case, device)
            mems[key] = bench.memory_ratio(case)
        dense = times["dense_linear"]
        supported = {b: "skip" if b in skip else bench.backend_supported(b, device, case) for b in backends}
        times.update({b: None for b in skip})
        cells = [_cell(times[b], dense, supported[b]) for b in backends]
        upd = "n/a (no sparse_ops.dynsp.controller)" if updates[key] is None else f"{updates[key]:.1f}"
        mem = mems[key][0] / mems[key][1]
        print(" | ".join([str(case.hidden), case.shape_name, str(case.n_tokens), f"{case.sparsity:g}",
                          str(case.block_size), case.amp, f"{dense:.1f}"] + cells + [upd, f"{mem:.3f}"]),
              flush=True)
        rows.append(dict(case=case.__dict__, ms=times, update_ms=updates[key],
                         sparse_bytes=mems[key][0], dense_bytes=mems[key][1]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
