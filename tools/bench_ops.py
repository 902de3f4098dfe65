"""Benchmark SparseLinear kernels against dense nn.Linear (fwd + bwd), pattern updates, memory.

    dynsp-bench-ops [--device cpu|cuda] [--suite linear|step|kernels|all] [--quick] [--json PATH]

Three suites; every ratio compares variants measured in the same run.

``step`` (CPU): a layer's whole training step (forward, grad-input, grad-values through
autograd, then AdamW) for BERT-Base layers (default: the FFN, 4HxH and Hx4H, H = 768),
N = 4096 tokens, s = 0.9, B = 16 and 8, fp32 and bf16 autocast, 1 and 2 threads: per
backend the speed-up over dense nn.Linear + AdamW (min and median over interleaved
rounds), useful GFLOP/s against the core's measured FMA peak, and the paper's epsilon
(time per sparse FLOP / time per dense FLOP; benchlib/cpu_step.py).

``linear`` (default on CPU): each row is one layer case; backend cells read
``ratio (ms)`` where ratio = time / dense nn.Linear time at the same dtype, measured
in the same run (interleaved, median). ``>Nx`` = slower than N x dense in warm-up, not
timed further; ``n/a`` = backend does not support the case; ``skip`` = not timed in
--quick (gather_bmm at B = 1: over 100x dense in the full run). ``update`` = one
DynSp pattern update of the layer (prune + regrow + AdamW state remap); ``mem`` =
persistent bytes (values + bias + int64 indices + 2 fp32 Adam moments) relative to
dense (weight + bias + moments). The full grid (no --quick) takes hours on a 2-core
CPU; narrow it with the options.

``kernels`` (default with --device cuda; CUDA only): per BERT layer shape (HxH, fused
QKV 3HxH, FFN 4HxH and Hx4H; H = 768), N in {4096, 16384} and B in {16, 8}, the
fwd+bwd time (forward, grad-input, grad-values) of this package's Triton kernels
against dense cuBLAS (nn.Linear) and torch.sparse BSR (``bsr_dense_addmm``), with
CUDA events (`dynsp_tools.benchlib.triton_layers.bench_cuda_layer`), and the achieved
fraction of the memory-bound roofline (`dynsp_tools.benchlib.roofline`; 1.0 = at the
bound). ``x dense`` and ``x t.sparse`` are speed-ups (> 1: Triton is faster).

Results also go to JSON (default ``runs/bench/bench_ops_<device>.json``), rewritten after
every case (``"complete": false`` until the suite ends), so an interrupted run keeps what
it measured. Without
CUDA, ``--device cuda`` prints one line and exits 0.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable


import torch

from dynsp_tools.benchlib import cpu_step
from dynsp_tools.benchlib import layers as bench

BACKENDS = ("auto", "dense", "bsr", "gather_bmm", "cpp")
LINEAR_SHAPES = ("HxH", "3HxH", "4HxH", "Hx4H")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--suite", choices=("linear", "step", "kernels", "all"),
                   help="linear: SparseLinear backends vs nn.Linear; step: a layer's fwd + bwd + "
                        "AdamW vs dense on the CPU, with GFLOP/s and epsilon; kernels: Triton vs "
                        "cuBLAS vs torch.sparse on CUDA (default: kernels with --device cuda, else linear)")
    p.add_argument("--threads", type=int, nargs="+", help="step suite: thread counts (default 1 2)")
    p.add_argument("--quick", action="store_true", help="BERT-Base layers, B=16, fp32 (~2 min on 2 CPU cores)")
    p.add_argument("--json", type=Path, help="write all rows and the machine as JSON here "
                   "(default: runs/bench/bench_ops_<device>.json)")
    p.add_argument("--hidden", type=int, nargs="+", help="H values (default: grid)")
    p.add_argument("--tokens", type=int, nargs="+", help="N values (default: grid)")
    p.add_argument("--sparsity", type=float, nargs="+", help="sparsity values (default: grid)")
    p.add_argument("--block-sizes", type=int, nargs="+", help="B values (default: grid)")
    p.add_argument("--amp", nargs="+", choices=tuple(DTYPES) + ("bf16act",),
                   help="dtypes (default: grid; kernels: bf16; step: fp32 bf16 bf16act, where bf16 "
                        "takes an fp32 input as after a LayerNorm and bf16act bf16 activations in "
                        "and out as after GELU)")
    p.add_argument("--shapes", nargs="+", choices=LINEAR_SHAPES,
                   help="layer shapes (default: linear HxH 4HxH Hx4H; kernels all four)")
    p.add_argument("--backends", nargs="+", help=f"SparseLinear backends (default: {' '.join(BACKENDS)}"
                   f" + triton on CUDA)")
    p.add_argument("--repeats", type=int, help="timed rounds per case (default 5, quick 3; kernels 20)")
    p.add_argument("--cap", type=float, default=20.0, help="stop timing a backend slower than CAP x dense")
    return p.parse_args(argv)


def _cell(t: float | None, dense: float | None, timed: bool | str) -> str:
    if timed is not True:
        return timed or "n/a"
    if t is None or dense is None:
        return "capped"
    return f"{t / dense:5.2f}x ({t:7.1f})"


def run_linear(args: argparse.Namespace, device: torch.device,
               save: Callable[[list[dict[str, Any]]], None] = lambda rows: None
               ) -> list[dict[str, Any]]:
    """The SparseLinear suite: prints one line per case and calls `save(rows so far)` as it
    goes (an interrupted run keeps what it measured); returns the rows."""
    grid = dict(bench.QUICK_GRID if args.quick else bench.FULL_GRID)
    for key in ("hidden", "tokens", "sparsity", "block_sizes", "amp"):
        if getattr(args, key) is not None:
            grid[key] = tuple(getattr(args, key))
    shapes = tuple(args.shapes or ("HxH", "4HxH", "Hx4H"))
    backends = list(args.backends or (BACKENDS + (("triton",) if device.type == "cuda" else ())))
    repeats = args.repeats or (3 if args.quick else 5)
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
        save(rows)
    return rows


STEP_HEADER = ["layer", "O x I", "B", "dtype", "thr", "nn.Linear ms (min/med)", "variant", "ms (min/med)",
               "speed-up min/med", "GFLOP/s", "% peak", "epsilon"]


def run_step(args: argparse.Namespace,
             save: Callable[[list[dict[str, Any]]], None] = lambda rows: None) -> list[dict[str, Any]]:
    """The CPU layer-step suite: one table row per (case, backend); `save` after each case."""
    shapes = {n: (bench.KERNEL_SHAPES[n][0] * h, bench.KERNEL_SHAPES[n][1] * h)
              for n in (args.shapes or ("4HxH", "Hx4H")) for h in (args.hidden or (768,))[:1]}
    cases = cpu_step.step_cases(shapes, (args.tokens or [4096])[0], (args.sparsity or [0.9])[0],
                                tuple(args.block_sizes or (16, 8)), tuple(args.amp or ("fp32", "bf16", "bf16act")),
                                tuple(args.threads or (1, 2)))
    backends = list(args.backends or ("auto", "cpp", "dense", "gather_bmm", "bsr"))
    peak = cpu_step.peak_gflops()
    print(f"core fp32 FMA peak (measured): {peak:.1f} GFLOP/s" if peak else "core peak: n/a (no C++ extension)")
    rows, cells = [], []
    for case in cases:
        times = cpu_step.bench_step(case, backends, repeats=args.repeats or 7)
        extra = cpu_step.derived(case, times, peak)
        rows.append({"case": case.__dict__, "ms": times, "derived": extra, "peak_gflops": peak,
                     "repeats": args.repeats or 7,
                     "auto_choices": cpu_step.auto_choices(case)})
        d = times[cpu_step.BASELINE]
        for name in [cpu_step.BASELINE] + [b for b in backends if b in times]:
            t, x = times[name], extra[name]
            ratio = "1" if name == cpu_step.BASELINE else f"{x['speedup_min']:.2f}/{x['speedup_median']:.2f}"
            cells.append([case.name, f"{case.out_features}x{case.in_features}", case.block_size, case.amp,
                          case.threads, f"{d['min_ms']:.1f}/{d['median_ms']:.1f}", name,
                          f"{t['min_ms']:.1f}/{t['median_ms']:.1f}", ratio, f"{x['gflops']:.0f}",
                          f"{100 * x['peak_fraction']:.0f}" if x["peak_fraction"] else "n/a",
                          f"{x['epsilon']:.2f}" if "epsilon" in x else "-"])
        print(f"{case.name} B={case.block_size} {case.amp} threads={case.threads}: "
              + ", ".join(f"{n} {extra[n]['speedup_median']:.2f}x" for n in times if n != cpu_step.BASELINE),
              flush=True)
        save(rows)
    print(bench.format_table(STEP_HEADER, cells))
    return rows


KERNEL_HEADER = ["shape", "role", "N", "s", "B", "dtype", "dense ms", "t.sparse ms", "triton ms",
                 "x dense", "x t.sparse", "roofline ms", "roofline frac", "bound x", "fwd rel err"]


def kernel_row_cells(case: bench.KernelCase, dtype: str, r: dict[str, Any]) -> list[str]:
    """Table cells of one kernel case from `bench_cuda_layer`'s result (or its ``error``)."""
    head = [case.shape_name, bench.KERNEL_SHAPE_ROLES[case.shape_name], str(case.n_tokens),
            f"{case.sparsity:g}", str(case.block_size), dtype]
    if "error" in r:
        return head + [f"error: {r['error']}"] + [""] * (len(KERNEL_HEADER) - len(head) - 1)

    def num(key: str, fmt: str) -> str:
        return format(r[key], fmt) if isinstance(r.get(key), (int, float)) else "n/a"
    return head + [num("dense_ms", ".3f"), num("torch_sparse_ms", ".3f"), num("triton_ms", ".3f"),
                   num("speedup_vs_dense", ".2f"), num("speedup_vs_torch_sparse", ".2f"),
                   num("roofline_ms", ".3f"), num("roofline_fraction", ".2f"),
                   num("speedup_bound", ".2f"), num("triton_forward_rel_err", ".1e")]


def run_kernels(args: argparse.Namespace,
                save: Callable[[list[dict[str, Any]]], None] = lambda rows: None
                ) -> list[dict[str, Any]]:
    """The CUDA kernel suite (bench_cuda_layer per case, `save(rows so far)` after each);
    prints the table at the end."""
    from dynsp_tools.benchlib.triton_layers import bench_cuda_layer

    grid = dict(bench.KERNEL_GRID)
    for key in ("hidden", "tokens", "sparsity", "block_sizes"):
        if getattr(args, key) is not None:
            grid[key] = tuple(getattr(args, key))
    dtypes = [a for a in (args.amp or ["bf16"]) if a in DTYPES and a != "fp32"] or ["bf16"]
    rows, cells = [], []
    for case in bench.kernel_cases(shapes=tuple(args.shapes or LINEAR_SHAPES), **grid):
        for amp in dtypes:
            try:
                r = bench_cuda_layer(case.shape, case.n_tokens, case.sparsity, case.block_size,
                                     DTYPES[amp], iters=args.repeats or 20)
            except Exception as exc:  # one failing case (e.g. no triton) must not hide the rest
                r = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            print(f"{case.shape_name} N={case.n_tokens} B={case.block_size} {amp}: done", flush=True)
            rows.append({"case": {**case.__dict__, "dtype": amp}, **r})
            cells.append(kernel_row_cells(case, amp, r))
            save(rows)
    print(bench.format_table(KERNEL_HEADER, cells))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_ops: --device cuda requested but CUDA is not available; nothing to do.")
        return 0
    device = torch.device(args.device)
    suite = args.suite or ("kernels" if device.type == "cuda" else "linear")
    if suite in ("kernels", "all") and device.type != "cuda":
        print(f"bench_ops: --suite {suite} needs --device cuda (Triton kernels vs cuBLAS); nothing to do.")
        return 0
    if suite != "step" and "bf16act" in (args.amp or ()):
        print("bench_ops: error: argument --amp: 'bf16act' is a --suite step setting (bf16 "
              f"activations in and out of one layer's step), not one of --suite {suite}")
        return 2
    if suite == "step" and device.type != "cpu":
        print("bench_ops: --suite step measures the CPU kernels (--device cpu); nothing to do.")
        return 0
    info = bench.machine_info(device)
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()))
    out: dict[str, Any] = {"machine": info, "device": device.type, "suite": suite,
                           "complete": False}
    path = args.json or Path("runs/bench") / f"bench_ops_{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(key: str) -> Callable[[list[dict[str, Any]]], None]:
        def write(rows: list[dict[str, Any]]) -> None:  # after every case, atomically
            out[key] = rows
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(out, indent=1))
            tmp.replace(path)
        return write

    if suite in ("linear", "all"):
        run_linear(args, device, save("rows"))
    if suite == "step":
        run_step(args, save("step_rows"))
    if suite in ("kernels", "all"):
        run_kernels(args, save("kernel_rows"))
    out["complete"] = True
    save("suite")(suite)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
