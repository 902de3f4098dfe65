"""CUDA benchmark of one layer's forward + backward: dense cuBLAS, torch.sparse BSR, Triton.

`bench_cuda_layer` times, with CUDA events in one process (same GPU state):

* ``dense``: ``nn.Linear`` forward + ``backward`` (cuBLAS: Y, dX and the dense dW);
* ``torch_sparse``: ``torch.sparse._triton_ops.bsr_dense_addmm`` for the forward (Y^T = W X^T)
  and the grad-input (dX^T = W^T dY^T, with a BSR of W^T built once per pattern), plus the
  faster of ``sampled_addmm`` and a dense dY^T X followed by a block gather for grad-values;
  the activation transposes it needs are made outside the timed region (its best case);
* ``triton``: this package's kernels (`triton_bsr`), index cached per pattern;

and reports milliseconds, ratios and the achieved fraction of the memory-bound roofline
(`roofline.layer_roofline`). tools/bench_ops.py prints these as table columns.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from dynsp_tools.benchlib import roofline

Fn = Callable[[], object]


def _require_cuda(fn: str) -> torch.device:
    if not torch.cuda.is_available():
        raise RuntimeError(f"{fn}: needs a CUDA device (torch.cuda.is_available() is False); "
                           f"use tools/bench_ops.py --device cpu on this machine")
    return torch.device("cuda")


def time_cuda_ms(fn: Fn, warmup: int = 5, iters: int = 20) -> float:
    """Median milliseconds of ``fn()`` over ``iters`` runs, timed with CUDA events."""
    for _ in range(warmup):  # includes compilation and autotuning
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _pattern(shape: tuple[int, int], sparsity: float, B: int, dtype: torch.dtype, dev: torch.device):
    from sparse_ops.format import random_pattern

    nbr, nbc = shape[0] // B, shape[1] // B
    nnz = max(1, round((1.0 - sparsity) * nbr * nbc))
    rows, cols = random_pattern(nbr, nbc, nnz, torch.Generator().manual_seed(0), dev)
    values = (torch.randn(nnz, B, B, device=dev) * 0.02).to(dtype)
    return values, rows, cols


def _dense_fn(shape: tuple[int, int], x: Tensor, dy: Tensor) -> Fn:
    lin = torch.nn.Linear(shape[1], shape[0], device=x.device, dtype=x.dtype)
    xg = x.detach().requires_grad_(True)

    def run() -> None:
        lin.weight.grad = lin.bias.grad = xg.grad = None  # store, do not accumulate
        lin(xg).backward(dy)
    return run


def _bsr(values: Tensor, rows: Tensor, cols: Tensor, shape: tuple[int, int], B: int) -> Tensor:
    crow = torch.searchsorted(rows, torch.arange(shape[0] // B + 1, device=rows.device)).to(cols.dtype)
    return torch.sparse_bsr_tensor(crow, cols, values, size=shape, check_invariants=False)


def _torch_sparse_fns(values, rows, cols, shape, B, x: Tensor, dy: Tensor) -> tuple[Fn, Fn, Fn]:
    """(forward + grad-input, grad-values by sampled_addmm, grad-values by dense + gather)."""
    from torch.sparse._triton_ops import bsr_dense_addmm, sampled_addmm

    w = _bsr(values, rows, cols, shape, B)
    order = torch.argsort(cols.long() * (shape[0] // B) + rows)  # W^T pattern in its canonical order
    wt = _bsr(values[order].transpose(1, 2).contiguous(), cols[order], rows[order], (shape[1], shape[0]), B)
    mask = _bsr(torch.ones_like(values), rows, cols, shape, B)
    zy, zx = dy.new_zeros(shape[0], x.shape[0]), x.new_zeros(shape[1], x.shape[0])
    # torch.sparse multiplies BSR x dense, so it wants activations transposed; the transposes
    # are made here, outside the timed region (its best case).
    xt, dyt = x.t().contiguous(), dy.t().contiguous()

    def fwd_gin() -> None:
        bsr_dense_addmm(zy, w, xt, beta=0)  # Y^T [O, N]
        bsr_dense_addmm(zx, wt, dyt, beta=0)  # dX^T [I, N]

    def gv_sampled() -> None:
        sampled_addmm(mask, dyt, x, beta=0.0)

    def gv_gather() -> None:
        g = (dyt @ x).reshape(shape[0] // B, B, shape[1] // B, B).transpose(1, 2)
        g[rows, cols]
    return fwd_gin, gv_sampled, gv_gather


def _triton_fns(values, rows, cols, shape, B, x: Tensor, dy: Tensor) -> dict[str, Fn]:
    """The three Triton products (index cached once, as in training) and their sequence."""
    from sparse_ops.kernels import triton_bsr

    index = triton_bsr.get_index(rows, cols, shape[0] // B, shape[1] // B)
    parts: dict[str, Fn] = {
        "forward": lambda: triton_bsr.forward(x, values, rows, cols, shape, index=index),
        "grad_input": lambda: triton_bsr.grad_input(dy, values, rows, cols, shape, index=index),
        "grad_values": lambda: triton_bsr.grad_values(dy, x, rows, cols, shape, B, index=index),
    }

    def all_three() -> None:
        for fn in parts.values():
            fn()
    return {**parts, "total": all_three}


def _triton_error(values, rows, cols, shape, B, x: Tensor) -> float:
    """Max |forward - dense reference| relative to max |reference| (a sanity check on the GPU)."""
    from sparse_ops.kernels import triton_bsr

    w = torch.zeros(shape[0] // B, shape[1] // B, B, B, device=x.device, dtype=torch.float32)
    w[rows, cols] = values.float()
    ref = x.float() @ w.transpose(1, 2).reshape(shape).t()
    y = triton_bsr.forward(x, values, rows, cols, shape).float()
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def bench_cuda_layer(shape: tuple[int, int], N: int, sparsity: float, block_size: int,
                     dtype: torch.dtype = torch.bfloat16, iters: int = 20) -> dict[str, float | str]:
    """Fwd+bwd milliseconds of one (O, I) = ``shape`` layer on ``N`` tokens, three ways.

    Keys: ``dense_ms``, ``torch_sparse_ms`` (forward + grad-input + best grad-values),
    ``torch_sparse_gv_sampled_ms``, ``torch_sparse_gv_gather_ms``, ``triton_ms`` (the three
    products in sequence), ``triton_{forward,grad_input,grad_values}_ms``,
    ``triton_forward_rel_err`` (against a dense fp32 product),
    ``roofline_ms`` (sparse, memory-bound), ``roofline_fraction`` (roofline / triton),
    ``speedup_vs_dense``, ``speedup_vs_torch_sparse``, ``speedup_bound``, ``device``,
    ``roofline_device``; ``torch_sparse_error`` instead of the torch.sparse keys when
    torch.sparse rejects the configuration. Raises RuntimeError without CUDA.
    """
    dev = _require_cuda("bench_cuda_layer")
    values, rows, cols = _pattern(shape, sparsity, block_size, dtype, dev)
    x = torch.randn(N, shape[1], device=dev, dtype=dtype)
    dy = torch.randn(N, shape[0], device=dev, dtype=dtype)
    res: dict[str, float | str] = {"device": torch.cuda.get_device_name()}
    res["dense_ms"] = time_cuda_ms(_dense_fn(shape, x, dy), iters=iters)
    res.update(_bench_torch_sparse(values, rows, cols, shape, block_size, x, dy, iters))
    for name, fn in _triton_fns(values, rows, cols, shape, block_size, x, dy).items():
        res["triton_ms" if name == "total" else f"triton_{name}_ms"] = time_cuda_ms(fn, iters=iters)
    res["triton_forward_rel_err"] = _triton_error(values, rows, cols, shape, block_size, x)
    spec = _spec_or_default()
    roof = roofline.layer_roofline(shape, N, sparsity, block_size, dtype, device=spec)
    res["roofline_device"] = spec.name
    res["roofline_ms"] = roof["sparse_s"] * 1e3
    res["speedup_bound"] = roof["speedup_bound"]
    res["roofline_fraction"] = res["roofline_ms"] / res["triton_ms"]
    res["speedup_vs_dense"] = res["dense_ms"] / res["triton_ms"]
    if "torch_sparse_ms" in res:
        res["speedup_vs_torch_sparse"] = res["torch_sparse_ms"] / res["triton_ms"]
    return res


def _bench_torch_sparse(values, rows, cols, shape, B, x: Tensor, dy: Tensor, iters: int) -> dict:
    """torch.sparse timings, or ``torch_sparse_error`` when it rejects this configuration."""
    try:
        fwd_gin, gv_s, gv_g = _torch_sparse_fns(values, rows, cols, shape, B, x, dy)
        base = time_cuda_ms(fwd_gin, iters=iters)
        sampled, gather = time_cuda_ms(gv_s, iters=iters), time_cuda_ms(gv_g, iters=iters)
    except Exception as exc:  # e.g. a block size / dtype torch.sparse's Triton ops do not take
        return {"torch_sparse_error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"torch_sparse_gv_sampled_ms": sampled, "torch_sparse_gv_gather_ms": gather,
            "torch_sparse_ms": base + min(sampled, gather)}


def _spec_or_default() -> roofline.DeviceSpec:
    try:
        return roofline.device_spec(None)
    except ValueError:  # unknown GPU: the H100 SXM datasheet (named in `roofline_device`)
        return roofline.DEVICES["h100-sxm"]
