"""Fused QKV projection: one (3H, H) block-sparse weight instead of three (H, H) ones.

The query, key and value weights stacked along the output dimension form one block-sparse
matrix of shape (3H, H); its block rows [0, H/B) are Q, [H/B, 2H/B) K and [2H/B, 3H/B) V.
Stacking keeps canonical order (row offsets only grow), so the fused pattern is a plain
concatenation. One forward kernel then reads X once for all three projections (the
memory-bound roofline of a 2304 x 768 layer is about 1.5x better than three 768 x 768 ones);
the backward is the ordinary grad-input / grad-values of the fused weight.

Helpers (pure torch, any device, except `fused_qkv_forward` which runs the Triton kernel):

    stack_patterns(parts, block_size)        -> (values, rows, cols)   fuse [(v, r, c, O_i)]
    split_pattern(values, rows, cols, sizes, block_size) -> [(v, r, c)]  the inverse
    fused_qkv_forward(x, values, rows, cols, hidden, bias) -> (q, k, v)  views of one output

A DynSp model that fuses QKV treats it as one sparse layer of shape (3H, H) (one nnz budget);
`stack_patterns`/`split_pattern` map checkpoints to and from the three HF weights.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from sparse_ops.kernels import triton_bsr

Pattern = tuple[Tensor, Tensor, Tensor]  # values [nnz, B, B], rows [nnz], cols [nnz]


def stack_patterns(parts: Sequence[tuple[Tensor, Tensor, Tensor, int]], block_size: int) -> Pattern:
    """Stack block-sparse matrices (values, rows, cols, out_features) along the output dim.

    Equivalent to ``torch.cat([W_0, W_1, ...], dim=0)`` in dense form; canonical order holds.
    >>> v = torch.ones(1, 16, 16); r = c = torch.zeros(1, dtype=torch.long)
    >>> stack_patterns([(v, r, c, 32), (v, r, c, 32)], 16)[1].tolist()
    [0, 2]
    """
    if not parts:
        raise ValueError("stack_patterns: argument 'parts' must not be empty, got []")
    values, rows, cols, offset = [], [], [], 0
    for i, (v, r, c, out_features) in enumerate(parts):
        if out_features % block_size:
            raise ValueError(f"stack_patterns: parts[{i}] out_features must be a multiple of "
                             f"block_size={block_size}, got {out_features}")
        values.append(v)
        rows.append(r + offset)
        cols.append(c)
        offset += out_features // block_size
    return torch.cat(values), torch.cat(rows), torch.cat(cols)


def split_pattern(values: Tensor, rows: Tensor, cols: Tensor, sizes: Sequence[int],
                  block_size: int) -> list[Pattern]:
    """Inverse of `stack_patterns`: cut the output dim into ``sizes`` (multiples of B)."""
    if any(s % block_size for s in sizes):
        raise ValueError(f"split_pattern: argument 'sizes' must be multiples of block_size={block_size}, "
                         f"got {list(sizes)}")
    bounds = torch.tensor([0] + list(sizes), device=rows.device).cumsum(0) // block_size
    cuts = torch.searchsorted(rows, bounds).tolist()  # rows are sorted (canonical order)
    out = []
    for i in range(len(sizes)):
        lo, hi = cuts[i], cuts[i + 1]
        out.append((values[lo:hi], rows[lo:hi] - int(bounds[i]), cols[lo:hi]))
    return out


def fused_qkv_forward(x: Tensor, values: Tensor, rows: Tensor, cols: Tensor, hidden: int,
                      bias: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """(q, k, v), each [..., H]: one Triton forward of the fused (3H, H) weight, then views.

    Equivalent to ``(x @ W.t() + bias).split(hidden, dim=-1)`` with W = stack of Wq, Wk, Wv.
    """
    y = triton_bsr.forward(x, values, rows, cols, (3 * hidden, hidden), bias=bias)
    q, k, v = y.split(hidden, dim=-1)
    return q, k, v
