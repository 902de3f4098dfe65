"""Triton JIT kernels of the block-sparse linear (launch code: `triton_bsr.py`).

Notation: W is [M_out, K] block-sparse with B x B blocks, values[k] = W[r*B:(r+1)*B, c*B:(c+1)*B].
Tiles are W_T = G * B wide with G = max(1, 16 // B): ``tl.dot`` needs every dimension >= 16,
so for B = 8 two block-rows (or block-columns, or active blocks) are processed in lock-step
and the B x B blocks are placed on the diagonal of a 16 x 16 operand (the off-diagonal
zeros cost tensor-core work, which is not the bottleneck of these memory-bound products).
For B >= 16, G = 1 and the operand is the block itself.

* `_dsd_kernel` (dense x sparse): ``out[:, seg] = sum_k A[:, coord_k] @ op(values[k])``
  over the active blocks k of segment ``seg``. Forward (segments = block-rows of W,
  coord = block-column, op = transpose) and grad-input (segments = block-columns through the
  CSC permutation, coord = block-row, op = identity) are both this kernel.
  Grid: (cdiv(n_segs, G), cdiv(N, BLOCK_N)); axis 0 varies fastest, so the programs that
  run together share one BLOCK_N-token slab of A, which stays in L2.
* `_sdd_kernel` (sampled dense x dense): ``out[s, k] = dY[n_s, r_k]^T @ X[n_s, c_k]`` for
  G active blocks per program and token split s. Grid: (cdiv(nnz, G), n_splits); fp32
  partials [n_splits, nnz, B, B] are summed by the caller (deterministic, no atomics).

Indices are run-time tensors: a pattern change never recompiles. Autotuning is keyed on the
shape (N, M_out, K), block size, dtype (added by Triton) and an nnz bucket, never on the
pattern. ``UPCAST`` converts operands to fp32 before ``tl.dot``: Triton 3.6's interpreter
computes bf16 dots wrongly; bf16 x bf16 products are exact in fp32, so results equal a
tensor-core bf16 dot with fp32 accumulation.
"""
from __future__ import annotations

import triton
import triton.language as tl


def dsd_configs() -> list[triton.Config]:
    """Autotuning space of `_dsd_kernel` (BLOCK_N tokens per program, warps, pipeline stages)."""
    space = [(32, 2, 4), (64, 4, 3), (64, 4, 4), (128, 4, 3), (128, 4, 4), (128, 8, 3),
             (256, 8, 3), (256, 8, 4)]
    return [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s) for bn, w, s in space]


def sdd_configs() -> list[triton.Config]:
    """Autotuning space of `_sdd_kernel`; every BLOCK_N divides the 256-token split unit."""
    space = [(64, 4, 3), (64, 4, 4), (128, 4, 3), (128, 4, 4), (128, 8, 3), (256, 8, 3), (256, 8, 4)]
    return [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s) for bn, w, s in space]


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION, out_dtype=tl.float32)


@triton.jit
def _dsd_single(acc, a_rows, n_ok, seg, seg_ptr, perm_ptr, coord_ptr, v_ptr,
                B: tl.constexpr, TRANS_V: tl.constexpr, HAS_PERM: tl.constexpr,
                UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """G = 1 (B >= 16): scalar block index and coordinate, so loads of A vectorise."""
    lane = tl.arange(0, B)
    start = tl.load(seg_ptr + seg)
    end = tl.load(seg_ptr + seg + 1)
    for j in range(0, end - start):
        pos = start + j
        if HAS_PERM:
            k = tl.load(perm_ptr + pos)
        else:
            k = pos
        coord = tl.load(coord_ptr + k)
        a = tl.load(a_rows + (coord * B + lane)[None, :], mask=n_ok[:, None], other=0.0)  # [BLOCK_N, B]
        v = tl.load(v_ptr + k.to(tl.int64) * (B * B) + lane[:, None] * B + lane[None, :])  # block [row, col]
        if TRANS_V:
            v = tl.trans(v)
        acc += _dot(a, v, UPCAST, PRECISION)
    return acc


@triton.jit
def _dsd_grouped(acc, a_rows, n_ok, pid_s, n_segs, seg_ptr, perm_ptr, coord_ptr, v_ptr,
                 B: tl.constexpr, G: tl.constexpr, TRANS_V: tl.constexpr, HAS_PERM: tl.constexpr,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """G > 1 (B = 8): G segments in lock-step, blocks on the diagonal of a (G B)^2 operand."""
    t = tl.arange(0, G * B)  # lane: gathered reduction index / output column
    lane = t % B
    seg_t = pid_s * G + t // B  # segment owning lane t
    start = tl.load(seg_ptr + seg_t, mask=seg_t < n_segs, other=0)
    end = tl.load(seg_ptr + seg_t + 1, mask=seg_t < n_segs, other=0)
    n_iter = 0  # the longest of the G block lists (scalar loads)
    for g in tl.static_range(G):
        s_g = pid_s * G + g
        len_g = tl.load(seg_ptr + s_g + 1, mask=s_g < n_segs, other=0) - \
            tl.load(seg_ptr + s_g, mask=s_g < n_segs, other=0)
        n_iter = tl.maximum(n_iter, len_g)
    diag = (t // B)[:, None] == (t // B)[None, :]
    for j in range(0, n_iter):
        pos = start + j
        ok = tl.max_constancy(pos < end, B)
        if HAS_PERM:
            k = tl.load(perm_ptr + pos, mask=ok, other=0)
        else:
            k = pos
        coord = tl.load(coord_ptr + k, mask=ok, other=0)
        a_cols = tl.max_contiguous(tl.multiple_of(coord * B + lane, B), B)
        a = tl.load(a_rows + a_cols[None, :], mask=n_ok[:, None] & ok[None, :], other=0.0)
        k64 = k.to(tl.int64) * (B * B)
        # Off-diagonal entries address real blocks too: load them unmasked by `diag` (so the
        # loads vectorise) and zero them in registers.
        if TRANS_V:  # tile[o, t] = values[k_t][o % B, t % B], contiguous along t; used transposed
            v_cols = tl.max_contiguous(tl.multiple_of(k64 + lane, B), B)
            v = tl.load(v_ptr + v_cols[None, :] + (lane * B)[:, None], mask=ok[None, :], other=0.0)
            v = tl.trans(tl.where(diag, v, 0.0))
        else:  # tile[t, i] = values[k_t][t % B, i % B]
            v = tl.load(v_ptr + (k64 + lane * B)[:, None] + lane[None, :], mask=ok[:, None], other=0.0)
            v = tl.where(diag, v, 0.0)
        acc += _dot(a, v.to(a.dtype), UPCAST, PRECISION)
    return acc


@triton.jit(do_not_specialize=["M_OUT", "K_IN", "NNZ_BUCKET"])
def _dsd_kernel(
    a_ptr, seg_ptr, perm_ptr, coord_ptr, v_ptr, bias_ptr, out_ptr,
    N, n_segs, stride_an, stride_on,
    M_OUT, K_IN, NNZ_BUCKET,  # autotuning key only
    B: tl.constexpr, G: tl.constexpr, BLOCK_N: tl.constexpr,
    TRANS_V: tl.constexpr, HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    a_rows = a_ptr + offs_n.to(tl.int64)[:, None] * stride_an  # [BLOCK_N, 1]
    acc = tl.zeros((BLOCK_N, G * B), dtype=tl.float32)
    if G == 1:
        acc = _dsd_single(acc, a_rows, n_ok, pid_s, seg_ptr, perm_ptr, coord_ptr, v_ptr,
                          B, TRANS_V, HAS_PERM, UPCAST, PRECISION)
    else:
        acc = _dsd_grouped(acc, a_rows, n_ok, pid_s, n_segs, seg_ptr, perm_ptr, coord_ptr, v_ptr,
                           B, G, TRANS_V, HAS_PERM, UPCAST, PRECISION)
    out_cols = pid_s * (G * B) + tl.arange(0, G * B)  # segments are consecutive
    col_ok = out_cols < n_segs * B
    if HAS_BIAS:
        bias = tl.load(bias_ptr + out_cols, mask=col_ok, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    out = out_ptr + offs_n.to(tl.int64)[:, None] * stride_on + out_cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=n_ok[:, None] & col_ok[None, :])


@triton.jit(do_not_specialize=["M_OUT", "K_IN", "NNZ_BUCKET"])
def _sdd_kernel(
    dy_ptr, x_ptr, rows_ptr, cols_ptr, out_ptr,
    N, nnz, tokens_per_split, stride_dn, stride_xn,
    M_OUT, K_IN, NNZ_BUCKET,  # autotuning key only
    B: tl.constexpr, G: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_g = tl.program_id(0)
    pid_s = tl.program_id(1)
    WT: tl.constexpr = G * B
    t = tl.arange(0, WT)
    lane = t % B
    if G == 1:  # scalar coordinates: contiguous, vectorised loads
        k_ok = tl.full((WT,), 1, tl.int1)
        dy_cols = tl.load(rows_ptr + pid_g) * B + lane
        x_cols = tl.load(cols_ptr + pid_g) * B + lane
    else:
        k_ok = tl.max_constancy(pid_g * G + t // B < nnz, B)
        r = tl.load(rows_ptr + pid_g * G + t // B, mask=k_ok, other=0)
        c = tl.load(cols_ptr + pid_g * G + t // B, mask=k_ok, other=0)
        dy_cols = tl.max_contiguous(tl.multiple_of(r * B + lane, B), B)
        x_cols = tl.max_contiguous(tl.multiple_of(c * B + lane, B), B)

    n_lo = pid_s * tokens_per_split
    n_hi = tl.minimum(n_lo + tokens_per_split, N)
    acc = tl.zeros((WT, WT), dtype=tl.float32)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        m = (offs_n < n_hi)[:, None] & k_ok[None, :]
        rows64 = offs_n.to(tl.int64)[:, None]
        dy = tl.load(dy_ptr + rows64 * stride_dn + dy_cols[None, :], mask=m, other=0.0)  # [BLOCK_N, WT]
        x = tl.load(x_ptr + rows64 * stride_xn + x_cols[None, :], mask=m, other=0.0)  # [BLOCK_N, WT]
        acc += _dot(tl.trans(dy), x, UPCAST, PRECISION)

    # Only the G diagonal B x B blocks of the WT x WT tile are wanted.
    diag = (t // B)[:, None] == (t // B)[None, :]
    kk = (pid_g * G + t // B).to(tl.int64)
    out = out_ptr + pid_s.to(tl.int64) * nnz * (B * B) + (kk * (B * B) + lane * B)[:, None] + lane[None, :]
    tl.store(out, acc, mask=diag & k_ok[:, None])
