"""Triton block-sparse backend ``triton``: the three products of a block-sparse linear.

With W the dense (O, I) matrix of a pattern (values [nnz, B, B], block coordinates
rows/cols in canonical order), for 2-D inputs:

    forward(x [N, I], ...)         -> y  [N, O]        y  = x @ W^T (+ bias)
    grad_input(dy [N, O], ...)     -> dx [N, I]        dx = dy @ W
    grad_values(dy, x, ...)        -> dv [nnz, B, B]   dv = (dy^T @ x) at the active blocks

bf16 / fp16 / fp32 operands, fp32 accumulation. Block sizes 8, 16 and 32 (others raise a
``ValueError`` naming ``block_size``, so ``auto`` dispatch falls back). Tensors must be
on CUDA, or on the CPU when Triton's interpreter is active (``TRITON_INTERPRET=1`` set
before this module is imported). Importing this module registers the backend ``triton``.
Kernel design, autotuning and caching: ``sparse_ops/kernels/README.md``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
from torch import Tensor

from sparse_ops.format import BlockSparseMatrix
from sparse_ops.kernels.registry import Backend, cached, is_registered, register_backend
from sparse_ops.kernels.triton_compat import patch_interpreter_index
from sparse_ops.kernels.triton_index import BsrIndex, build_index, get_index
from sparse_ops.kernels.triton_kernels import _dsd_kernel, _sdd_kernel, dsd_configs, sdd_configs

SUPPORTED_BLOCK_SIZES = (8, 16, 32)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# True when the kernels were decorated under TRITON_INTERPRET=1: they then run on CPU tensors.
INTERPRET = type(_dsd_kernel).__name__ == "InterpretedFunction"
if INTERPRET != (type(triton.language.zeros).__name__ == "InterpretedFunction"):
    raise ImportError(f"{__name__}: TRITON_INTERPRET must be set (or unset) before `triton` is first "
                      f"imported; it changed in between (kernels interpreted: {INTERPRET})")
if INTERPRET:
    patch_interpreter_index()  # Triton 3.6 interpreter + NumPy >= 2.4 (see triton_compat)
# Fixed tile height under the interpreter (autotuning there would only cost time).
INTERPRETER_BLOCK_N = 32
_SPLIT_UNIT = 256  # token-split granularity of grad_values; a multiple of every tuned BLOCK_N

# Tuned once per key and process; `cache_results` also keeps the winners in Triton's disk
# cache (keyed by GPU architecture, kernel source and key), so a restarted run does not re-tune.
_KEY = ["N", "M_OUT", "K_IN", "NNZ_BUCKET", "B"]
_dsd_tuned = triton.autotune(dsd_configs(), key=_KEY + ["TRANS_V", "HAS_BIAS"],
                             cache_results=True)(_dsd_kernel)
_sdd_tuned = triton.autotune(sdd_configs(), key=_KEY, cache_results=True)(_sdd_kernel)


def group_size(block_size: int) -> int:
    """Blocks processed in lock-step per tile: tl.dot needs tiles >= 16 wide."""
    return max(1, 16 // block_size)


def nnz_bucket(nnz: int, n_segments: int) -> int:
    """Autotuning bucket of the mean active blocks per block-row: floor(log2(1 + mean)).

    Constant under DynSp (nnz never changes), so pattern updates never re-tune.
    >>> nnz_bucket(922, 192)
    2
    """
    return int(math.log2(1 + nnz / max(1, n_segments)))


# ---------------------------------------------------------------------------- checks


def _check_device(fn: str, name: str, t: Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{fn}: argument '{name}' must be on {device} (the device of the other "
                         f"operands), got {t.device}")
    if t.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"{fn}: argument '{name}' must be a CUDA tensor (or set TRITON_INTERPRET=1 "
                         f"before importing {__name__} to run the kernels on the CPU), got {t.device}")


def _check_block_size(fn: str, B: int) -> int:
    if B not in SUPPORTED_BLOCK_SIZES:
        raise ValueError(f"{fn}: argument 'block_size' must be one of {SUPPORTED_BLOCK_SIZES} for the "
                         f"Triton backend, got {B}")
    return B


def _check_block(fn: str, values: Tensor) -> int:
    if values.dim() != 3 or values.shape[1] != values.shape[2]:
        raise ValueError(f"{fn}: argument 'values' must have shape [nnz, B, B], got {tuple(values.shape)}")
    return _check_block_size(fn, int(values.shape[1]))


def _check_operand(fn: str, name: str, t: Tensor, width: int) -> Tensor:
    """[N, width] view of ``t`` [..., width] with unit stride along the last dimension."""
    if t.dim() < 1 or t.shape[-1] != width:
        raise ValueError(f"{fn}: argument '{name}' must have last dimension {width}, got shape "
                         f"{tuple(t.shape)}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{fn}: argument '{name}' must have dtype in {SUPPORTED_DTYPES}, got {t.dtype}")
    t2 = t.reshape(-1, width)
    return t2 if t2.stride(1) == 1 else t2.contiguous()


def _check_shape(fn: str, shape: tuple[int, int], B: int, nnz: int, rows: Tensor, cols: Tensor) -> None:
    O, I = shape
    if O <= 0 or I <= 0 or O % B or I % B:
        raise ValueError(f"{fn}: argument 'shape' must be positive multiples of block_size={B}, got {shape}")
    if rows.shape != (nnz,) or cols.shape != (nnz,):
        raise ValueError(f"{fn}: arguments 'rows'/'cols' must have shape [{nnz}] (nnz of 'values'), got "
                         f"{tuple(rows.shape)} and {tuple(cols.shape)}")


def _precision(dtype: torch.dtype) -> tuple[bool, str]:
    """(UPCAST, PRECISION) constexprs: fp32 follows torch's TF32 switch, like nn.Linear."""
    upcast = INTERPRET and dtype == torch.bfloat16
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return upcast, "ieee"
    return upcast, "ieee" if upcast else "tf32"


def _index(rows: Tensor, cols: Tensor, shape: tuple[int, int], B: int, index: Optional[BsrIndex]) -> BsrIndex:
    return index if index is not None else get_index(rows, cols, shape[0] // B, shape[1] // B)


# ---------------------------------------------------------------------------- launches


def _launch_dsd(a: Tensor, seg_ptr: Tensor, perm: Optional[Tensor], coord: Tensor, values: Tensor,
                bias: Optional[Tensor], out: Tensor, n_segs: int, trans_v: bool, nnz: int) -> None:
    """out[:, seg] = sum over seg's blocks of a[:, coord] @ op(values); see triton_kernels."""
    B = int(values.shape[1])
    G = group_size(B)
    N = a.shape[0]
    upcast, precision = _precision(a.dtype)
    args = (a, seg_ptr, perm if perm is not None else seg_ptr, coord, values,
            bias if bias is not None else out, out, N, n_segs, a.stride(0), out.stride(0),
            out.shape[1], a.shape[1], nnz_bucket(nnz, n_segs))
    meta = dict(B=B, G=G, TRANS_V=trans_v, HAS_PERM=perm is not None, HAS_BIAS=bias is not None,
                UPCAST=upcast, PRECISION=precision)
    if INTERPRET:
        grid = (triton.cdiv(n_segs, G), triton.cdiv(N, INTERPRETER_BLOCK_N))
        _dsd_kernel[grid](*args, BLOCK_N=INTERPRETER_BLOCK_N, **meta)
    else:
        grid = lambda m: (triton.cdiv(n_segs, G), triton.cdiv(N, m["BLOCK_N"]))  # noqa: E731
        _dsd_tuned[grid](*args, **meta)


def forward(x: Tensor, values: Tensor, rows: Tensor, cols: Tensor, shape: tuple[int, int],
            bias: Optional[Tensor] = None, index: Optional[BsrIndex] = None) -> Tensor:
    """y [..., O] = x [..., I] @ W^T (+ bias [O]); equivalent to ``x @ W.t() + bias``.

    ``values`` is cast to x's dtype (the compute dtype); ``index`` (a `BsrIndex`) skips the
    cached index lookup. Output dtype = x's dtype.
    """
    fn = "triton_bsr.forward"
    B = _check_block(fn, values)
    _check_shape(fn, shape, B, values.shape[0], rows, cols)
    x2 = _check_operand(fn, "x", x, shape[1])
    for name, t in (("x", x2), ("values", values), ("rows", rows), ("cols", cols)):
        _check_device(fn, name, t, x.device)
    if bias is not None and (bias.shape != (shape[0],) or bias.device != x.device):
        raise ValueError(f"{fn}: argument 'bias' must have shape [{shape[0]}] on {x.device}, got "
                         f"{tuple(bias.shape)} on {bias.device}")
    y = x2.new_empty(x2.shape[0], shape[0])
    if x2.shape[0]:
        idx = _index(rows, cols, shape, B, index)
        _launch_dsd(x2, idx.row_ptr, None, idx.col_idx, values.to(x2.dtype).contiguous(), bias, y,
                    idx.n_block_rows, True, idx.nnz)
    return y.reshape(*x.shape[:-1], shape[0])


def grad_input(dy: Tensor, values: Tensor, rows: Tensor, cols: Tensor, shape: tuple[int, int],
               index: Optional[BsrIndex] = None) -> Tensor:
    """dx [..., I] = dy [..., O] @ W; equivalent to ``dy @ W``. Output dtype = dy's dtype."""
    fn = "triton_bsr.grad_input"
    B = _check_block(fn, values)
    _check_shape(fn, shape, B, values.shape[0], rows, cols)
    dy2 = _check_operand(fn, "dy", dy, shape[0])
    for name, t in (("dy", dy2), ("values", values), ("rows", rows), ("cols", cols)):
        _check_device(fn, name, t, dy.device)
    dx = dy2.new_empty(dy2.shape[0], shape[1])
    if dy2.shape[0]:
        idx = _index(rows, cols, shape, B, index)
        _launch_dsd(dy2, idx.col_ptr, idx.csc_perm, idx.row_idx, values.to(dy2.dtype).contiguous(),
                    None, dx, idx.n_block_cols, False, idx.nnz)
    return dx.reshape(*dy.shape[:-1], shape[1])


def _splits(n_groups: int, N: int, device: torch.device, n_splits: Optional[int]) -> tuple[int, int]:
    """(n_splits, tokens_per_split) of grad_values: about 4 programs per SM when N is long."""
    unit = INTERPRETER_BLOCK_N if INTERPRET else _SPLIT_UNIT
    units = triton.cdiv(N, unit)
    if n_splits is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        n_splits = triton.cdiv(4 * sms, max(1, n_groups))
    if n_splits < 1:
        raise ValueError(f"triton_bsr.grad_values: argument 'n_splits' must be >= 1, got {n_splits}")
    per_split = unit * triton.cdiv(units, min(n_splits, units))
    return triton.cdiv(N, per_split), per_split


def grad_values(dy: Tensor, x: Tensor, rows: Tensor, cols: Tensor, shape: tuple[int, int],
                block_size: int, out_dtype: torch.dtype = torch.float32,
                n_splits: Optional[int] = None, index: Optional[BsrIndex] = None) -> Tensor:
    """dv [nnz, B, B] = (dy^T @ x) at the active blocks, fp32-accumulated, cast to ``out_dtype``.

    Equivalent to ``(dy.T @ x).reshape(O/B, B, I/B, B).transpose(1, 2)[rows, cols]``. The
    token dimension is cut into ``n_splits`` slabs (default: from the SM count) whose fp32
    partial sums are added with ``torch.sum`` (deterministic, no atomics).
    """
    fn = "triton_bsr.grad_values"
    B = _check_block_size(fn, block_size)
    _check_shape(fn, shape, B, rows.shape[0], rows, cols)
    dy2, x2 = _check_operand(fn, "dy", dy, shape[0]), _check_operand(fn, "x", x, shape[1])
    if dy2.shape[0] != x2.shape[0] or dy2.dtype != x2.dtype:
        raise ValueError(f"{fn}: arguments 'dy' and 'x' must have the same token count and dtype, got "
                         f"{dy2.shape[0]} {dy2.dtype} and {x2.shape[0]} {x2.dtype}")
    for name, t in (("dy", dy2), ("x", x2), ("rows", rows), ("cols", cols)):
        _check_device(fn, name, t, x.device)
    nnz, N, G = int(rows.shape[0]), dy2.shape[0], group_size(B)
    if nnz == 0 or N == 0:
        return x2.new_zeros(nnz, B, B, dtype=out_dtype)
    S, per_split = _splits(triton.cdiv(nnz, G), N, x.device, n_splits)
    part = torch.empty(S, nnz, B, B, device=x.device, dtype=torch.float32)
    upcast, precision = _precision(x2.dtype)
    idx = _index(rows, cols, shape, B, index)
    args = (dy2, x2, idx.row_idx, idx.col_idx, part, N, nnz, per_split,
            dy2.stride(0), x2.stride(0), shape[0], shape[1], nnz_bucket(nnz, shape[0] // B))
    meta = dict(B=B, G=G, UPCAST=upcast, PRECISION=precision)
    if INTERPRET:
        _sdd_kernel[(triton.cdiv(nnz, G), S)](*args, BLOCK_N=INTERPRETER_BLOCK_N, **meta)
    else:
        _sdd_tuned[(triton.cdiv(nnz, G), S)](*args, **meta)
    dv = part[0] if S == 1 else part.sum(0)
    return dv.to(out_dtype)


# ---------------------------------------------------------------------------- registry


class TritonBackend(Backend):
    """The three products through the Triton kernels (CUDA; CPU only under the interpreter)."""

    name = "triton"

    def supports(self, device: torch.device, dtype: torch.dtype, block_size: int) -> bool:
        on_device = device.type == "cuda" or (INTERPRET and device.type == "cpu")
        return on_device and dtype in SUPPORTED_DTYPES and block_size in SUPPORTED_BLOCK_SIZES

    def _index(self, w: BlockSparseMatrix) -> BsrIndex:
        build = lambda: build_index(w.rows, w.cols, w.n_block_rows, w.n_block_cols)  # noqa: E731
        if w.cache is None:
            return get_index(w.rows, w.cols, w.n_block_rows, w.n_block_cols)
        return cached(w, "triton_bsr_index", build)

    def forward(self, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        return forward(x, w.values, w.rows, w.cols, w.shape, index=self._index(w))

    def forward_with_bias(self, x: Tensor, w: BlockSparseMatrix, bias: Tensor) -> Tensor:
        """``forward(x, w) + bias`` with the bias added in the kernel's fp32 epilogue."""
        return forward(x, w.values, w.rows, w.cols, w.shape, bias=bias, index=self._index(w))

    def grad_input(self, dy: Tensor, w: BlockSparseMatrix) -> Tensor:
        return grad_input(dy, w.values, w.rows, w.cols, w.shape, index=self._index(w))

    def grad_values(self, dy: Tensor, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        """fp32 [nnz, B, B] whatever the compute dtype: the fp32 accumulator is returned
        unrounded, since the values' gradient goes to fp32 master weights anyway."""
        return grad_values(dy, x, w.rows, w.cols, w.shape, w.block_size, out_dtype=torch.float32,
                           index=self._index(w))


if not is_registered("triton"):
    register_backend(TritonBackend())
