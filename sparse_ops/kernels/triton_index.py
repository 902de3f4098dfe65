"""Run-time index structures of the Triton BSR kernels, built once per pattern and cached.

A block pattern is given as block coordinates ``rows``/``cols`` ([nnz] int32 or int64, canonical order
= sorted by the linear index ``row * n_block_cols + col``). The kernels need

* CSR row pointers ``row_ptr`` [n_block_rows + 1] and ``col_idx`` [nnz]: the forward
  ``Y = X W^T`` walks the active blocks of one block-row of W (they are contiguous in
  canonical order, so no permutation is needed);
* the transposed (CSC) order ``col_ptr`` [n_block_cols + 1], ``csc_perm`` [nnz] (position of
  each block in canonical order, sorted by column then row) and ``row_idx`` [nnz]: the
  grad-input ``dX = dY W`` walks the active blocks of one block-column of W.

Everything is int32 (fewer bytes, cheaper address arithmetic) and built on the pattern's
device without a host synchronisation (``searchsorted`` over the sorted coordinates instead
of ``bincount``). These are ordinary tensor arguments of the kernels: a new pattern means new
tensor *contents*, never a new compiled kernel or a new autotuning run.

The cache key is (device, storage pointer and in-place version counter of ``rows`` and
``cols``, grid shape). The entry holds a reference to ``rows``/``cols`` so their storage
cannot be freed and reused by another tensor while the entry lives; an in-place rewrite
(``SparseLinear.set_pattern`` copies into the buffers) bumps ``Tensor._version`` and so
misses the cache.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

_CACHE_SIZE = 64
# key -> (index, rows, cols); holding rows/cols keeps their storage pointers unique.
_cache: OrderedDict[tuple, tuple] = OrderedDict()


@dataclass(frozen=True)
class BsrIndex:
    """CSR and CSC index arrays of one block pattern (all int32, on the pattern's device)."""

    n_block_rows: int
    n_block_cols: int
    nnz: int
    row_ptr: torch.Tensor  # [n_block_rows + 1]
    col_idx: torch.Tensor  # [nnz] block column of each block, canonical order
    row_idx: torch.Tensor  # [nnz] block row of each block, canonical order
    col_ptr: torch.Tensor  # [n_block_cols + 1]
    csc_perm: torch.Tensor  # [nnz] canonical positions sorted by (col, row)


def _check_coords(rows: torch.Tensor, cols: torch.Tensor, n_block_rows: int, n_block_cols: int) -> None:
    fn = "build_index"
    for name, t in (("rows", rows), ("cols", cols)):
        if t.dim() != 1 or t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{fn}: `{name}` must be a 1-D int32/int64 tensor, got shape "
                             f"{tuple(t.shape)} dtype {t.dtype}")
    if rows.shape != cols.shape or rows.device != cols.device:
        raise ValueError(f"{fn}: `rows` and `cols` must have the same shape and device, got "
                         f"{tuple(rows.shape)} on {rows.device} and {tuple(cols.shape)} on {cols.device}")
    if n_block_rows <= 0 or n_block_cols <= 0:
        raise ValueError(f"{fn}: block grid must be positive, got n_block_rows={n_block_rows} "
                         f"n_block_cols={n_block_cols}")


def build_index(rows: torch.Tensor, cols: torch.Tensor, n_block_rows: int, n_block_cols: int) -> BsrIndex:
    """CSR/CSC index of a pattern given in canonical order (see module docstring).

    Example: rows=[0, 0, 2], cols=[1, 3, 0] on a 3 x 4 block grid gives
    row_ptr=[0, 2, 2, 3], col_ptr=[0, 1, 2, 2, 3], csc_perm=[2, 0, 1].
    """
    _check_coords(rows, cols, n_block_rows, n_block_cols)
    dev = rows.device
    rows64, cols64 = rows.long(), cols.long()
    row_ptr = torch.searchsorted(rows64, torch.arange(n_block_rows + 1, device=dev))
    # Stable sort by (col, row): canonical order is already sorted by row within equal cols.
    csc_perm = torch.argsort(cols64, stable=True)
    col_ptr = torch.searchsorted(cols64[csc_perm], torch.arange(n_block_cols + 1, device=dev))
    i32 = torch.int32
    return BsrIndex(
        n_block_rows=n_block_rows, n_block_cols=n_block_cols, nnz=int(rows.shape[0]),
        row_ptr=row_ptr.to(i32), col_idx=cols64.to(i32), row_idx=rows64.to(i32),
        col_ptr=col_ptr.to(i32), csc_perm=csc_perm.to(i32),
    )


def _key(rows: torch.Tensor, cols: torch.Tensor, n_block_rows: int, n_block_cols: int) -> tuple:
    return (str(rows.device), rows.data_ptr(), rows._version, tuple(rows.shape), rows.dtype,
            cols.data_ptr(), cols._version, n_block_rows, n_block_cols)


def get_index(rows: torch.Tensor, cols: torch.Tensor, n_block_rows: int, n_block_cols: int) -> BsrIndex:
    """`build_index`, memoised on the pattern version (storage pointer + in-place version)."""
    key = _key(rows, cols, n_block_rows, n_block_cols)
    hit = _cache.get(key)
    if hit is not None:
        _cache.move_to_end(key)
        return hit[0]
    index = build_index(rows, cols, n_block_rows, n_block_cols)
    _cache[key] = (index, rows, cols)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return index
