"""One layer's whole training step on the CPU, sparse backends against dense, with the
numbers the paper's wall-clock argument needs (tools/bench_ops.py --suite step).

A step = forward + grad-input + grad-values (+ bias) through autograd + one AdamW step
over the layer's parameters, for dense ``nn.Linear`` and for SparseLinear with each
backend, on the same input, with ``torch.set_num_threads(threads)``. Variants are timed
interleaved (round r runs each variant once, the order rotated by one every round so that
no variant always follows the cache-evicting dense layer), ``repeats`` rounds after one
warm-up; min and median are reported.

* ``speedup`` = dense time / sparse time (> 1: the sparse layer is faster);
* ``GFLOP/s`` = useful FLOPs / time, useful = 6 N O I density (the three products,
  biases and optimizer left out), against the core's measured fp32 FMA peak times the
  threads (``peak_gflops``: the C++ extension's register-only FMA loop, widest vectors);
* ``epsilon`` = (time per sparse FLOP) / (time per dense FLOP) = (t_sparse / t_dense) /
  density: the paper's wall-clock criterion (DynSp beats dense in time at equal loss only
  when epsilon is small enough: < 1.2 at 16 x 16 blocks, < 2 unstructured, in the
  paper's setting); 1 would be perfect sparse efficiency.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from sparse_ops.linear import SparseLinear


BASELINE = "nn.Linear"  # the dense layer every sparse variant is compared with

# amp -> (autocast dtype or None, dtype of the layer's input and upstream gradient).
# "bf16": the layer's input is fp32 (as after a LayerNorm, which autocast keeps in fp32), so
# the step includes autocast's cast of x to bf16 and of the input gradient back to fp32.
# "bf16act": bf16 activations in and out (as after GELU or attention under autocast): the
# casts belong to other layers and are not in the step. Both apply to every variant alike.
AMPS: dict[str, tuple[Optional[torch.dtype], torch.dtype]] = {
    "fp32": (None, torch.float32),
    "bf16": (torch.bfloat16, torch.float32),
    "bf16act": (torch.bfloat16, torch.bfloat16),
}


@dataclass(frozen=True)
class StepCase:
    """One layer step: (O, I) on N tokens, sparsity, block size, an ``AMPS`` key, threads."""

    name: str
    out_features: int
    in_features: int
    n_tokens: int
    sparsity: float
    block_size: int
    amp: str
    threads: int


def peak_gflops() -> Optional[float]:
    """One core's fp32 FMA peak (GFLOP/s), measured; None without the C++ extension."""
    from sparse_ops.kernels import cpp_build

    ext = cpp_build.load()
    return None if ext is None else float(ext.peak_gflops(20_000_000, 3))


def _step_fn(module: nn.Module, x: torch.Tensor, amp: str) -> Callable[[], None]:
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    dtype = AMPS[amp][0]
    # The upstream gradient in the output's dtype, made once: in a network it arrives in the
    # compute dtype from the next op. (Casting a synthetic fp32 gradient every step cost
    # ~22 ms for 4096 x 3072 on the Xeon measured, more than the sparse bf16 layer itself,
    # and the same for every variant: it is not part of the layer's step.)
    grad = torch.randn(x.shape[0], int(module.out_features)).to(dtype or torch.float32)

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        x.grad = None  # a fresh input gradient every step, as in a network (not summed over steps)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            y = module(x)
        y.backward(grad)
        opt.step()
    return run


def bench_step(case: StepCase, backends: list[str], repeats: int = 7, seed: int = 0) -> dict[str, Any]:
    """{variant: {"min_ms", "median_ms"}} for the BASELINE (nn.Linear) and each supported
    SparseLinear backend (``dense`` among them is SparseLinear's dense-scratch backend)."""
    from sparse_ops.kernels import AUTO, get_backend

    before = torch.get_num_threads()
    torch.set_num_threads(case.threads)
    try:
        torch.manual_seed(seed)
        compute, x_dtype = AMPS[case.amp]
        x = torch.randn(case.n_tokens, case.in_features).to(x_dtype).requires_grad_(True)
        fns = {BASELINE: _step_fn(nn.Linear(case.in_features, case.out_features), x, case.amp)}
        dtype = compute or torch.float32
        for name in backends:
            if name != AUTO and not get_backend(name).supports(torch.device("cpu"), dtype, case.block_size):
                continue
            layer = SparseLinear(case.in_features, case.out_features, sparsity=case.sparsity,
                                 block_size=case.block_size, backend=name, seed=seed)
            fns[name] = _step_fn(layer, x, case.amp)
        samples: dict[str, list[float]] = {n: [] for n in fns}
        for fn in fns.values():
            fn()  # warm-up: index builds, auto's one-time measurement, allocator
        names = list(fns)
        for r in range(repeats):
            # rotate the order every round: a variant that runs right after nn.Linear finds
            # the caches cold (its weights and inputs evicted), the next one warm
            for name in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                fns[name]()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(before)
    return {n: {"min_ms": min(s), "median_ms": statistics.median(s)} for n, s in samples.items()}


def derived(case: StepCase, times: dict[str, Any], peak: Optional[float]) -> dict[str, dict[str, Any]]:
    """Per sparse variant: speed-up (min, median), GFLOP/s, fraction of peak, epsilon."""
    density = 1.0 - case.sparsity
    useful = 6.0 * case.n_tokens * case.out_features * case.in_features * density
    dense = times[BASELINE]
    out: dict[str, dict[str, Any]] = {}
    for name, t in times.items():
        flops = useful / density if name == BASELINE else useful
        gflops = flops / (t["min_ms"] * 1e-3) / 1e9
        # the peak is fp32 FMA's: no yardstick for bf16 (AMX / VDPBF16PS run several times faster)
        fraction = gflops / (peak * case.threads) if peak and case.amp == "fp32" else None
        row = {"gflops": gflops, "peak_fraction": fraction}
        if name != BASELINE:
            row.update(speedup_min=dense["min_ms"] / t["min_ms"],
                       speedup_median=dense["median_ms"] / t["median_ms"],
                       epsilon=(t["median_ms"] / dense["median_ms"]) / density)
        out[name] = row
    return out


def step_cases(shapes: dict[str, tuple[int, int]], n_tokens: int, sparsity: float,
               block_sizes: tuple[int, ...], amps: tuple[str, ...], threads: tuple[int, ...]) -> list[StepCase]:
    return [StepCase(name, o, i, n_tokens, sparsity, b, a, t)
            for name, (o, i) in shapes.items() for b in block_sizes for a in amps for t in threads]


def auto_choices(case: StepCase) -> dict[str, str]:
    """The backends `auto` chose for this case's products (problem key -> backend)."""
    from sparse_ops.kernels import autotune

    shape = f"|{case.out_features}x{case.in_features}|"
    dtype = f"|{str(AMPS[case.amp][0] or torch.float32).replace('torch.', '')}|"
    return {k: v for k, v in autotune.choices().items()
            if shape in k and dtype in k and f"|B{case.block_size}|" in k and k.endswith(f"|t{case.threads}")}
