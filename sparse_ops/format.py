"""Block-sparse matrix container (values + block coordinates) and pattern helpers.

A weight W of shape (O, I) is cut into (O/B) x (I/B) blocks of B x B. Only the
``nnz`` active blocks are stored:

    values [nnz, B, B]   block contents, values[k] == W[rows[k]*B:(rows[k]+1)*B,
                                                      cols[k]*B:(cols[k]+1)*B]
    rows   [nnz] int32   block-row coordinates
    cols   [nnz] int32   block-column coordinates

Canonical order: blocks sorted by linear block index ``rows * (I // B) + cols``,
without duplicates. Every kernel may rely on it (CSR row pointers come for free).

Index dtype: patterns are built and stored as ``INDEX_DTYPE`` = int32 (8 bytes of
indices per block instead of 16: at B = 1 that is the difference between a layer's
state being below or above the dense layer's at s = 0.5). ``validate()`` also accepts
int64 (both tensors of one dtype), and every kernel takes either. Linear block indices
(``linear_index()``, the DynSp helpers) are int64, so ``(O/B) * (I/B)`` may exceed 2^31.

Pattern sampling works on linear block indices (rejection sampling with ``isin``),
never on a dense boolean mask of block positions (docs/algorithm.md, one update).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

VALID_BLOCK_SIZES = (1, 4, 8, 16)
INDEX_DTYPE = torch.int32
INDEX_DTYPES = (torch.int32, torch.int64)  # accepted by validate() and the kernels


class SparseFormatError(ValueError):
    """A block-sparse matrix or one of its arguments is malformed."""


def check_block_size(fn: str, block_size: Any) -> int:
    """Return ``block_size`` if it is one of VALID_BLOCK_SIZES, else raise naming ``fn``."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size not in VALID_BLOCK_SIZES:
        raise SparseFormatError(
            f"{fn}: argument 'block_size' must be one of {VALID_BLOCK_SIZES}, got {block_size!r}")
    return block_size


def check_shape(fn: str, shape: Any, block_size: int) -> tuple[int, int]:
    """Return ``shape`` as (O, I) if both are positive multiples of ``block_size``."""
    try:
        out_f, in_f = (int(d) for d in shape)
    except (TypeError, ValueError):
        raise SparseFormatError(f"{fn}: argument 'shape' must be a pair (O, I) of ints, got {shape!r}") from None
    if out_f <= 0 or in_f <= 0 or out_f % block_size or in_f % block_size:
        raise SparseFormatError(
            f"{fn}: argument 'shape' must be positive and divisible by block_size={block_size}, "
            f"got {(out_f, in_f)}")
    return out_f, in_f


def nnz_for_density(n_blocks: int, density: float, fn: str = "nnz_for_density") -> int:
    """Number of active blocks: ``round(density * n_blocks)``, at least 1.

    >>> nnz_for_density(48 * 48, 0.1)
    230
    """
    if not 0.0 < float(density) <= 1.0:
        raise SparseFormatError(f"{fn}: argument 'density' must be in (0, 1], got {density!r}")
    return max(1, int(round(float(density) * n_blocks)))


def sample_linear_indices(total: int, k: int, generator: Optional[torch.Generator] = None,
                          exclude: Optional[Tensor] = None) -> Tensor:
    """Draw ``k`` distinct integers uniformly from ``[0, total)`` minus ``exclude``; sorted.

    Sequential rejection sampling over linear indices: candidates are drawn i.i.d.,
    those already taken or excluded are rejected, first occurrences are kept in draw
    order; this yields a uniformly random k-subset. Memory is O(k + |exclude|), not
    O(total). Runs on the CPU (``generator`` must be a CPU generator).

    >>> g = torch.Generator().manual_seed(0)
    >>> idx = sample_linear_indices(10, 3, g, exclude=torch.tensor([0, 1]))
    >>> len(idx), bool((idx >= 2).all())
    (3, True)
    """
    exclude = torch.empty(0, dtype=torch.int64) if exclude is None else exclude.detach().cpu().long().unique()
    free = total - exclude.numel()
    if k < 0 or k > free:
        raise SparseFormatError(
            f"sample_linear_indices: argument 'k' must be in [0, {free}] (total={total} minus "
            f"{exclude.numel()} excluded), got {k}")
    taken = torch.empty(0, dtype=torch.int64)
    while taken.numel() < k:
        need = k - taken.numel()
        # Expected acceptance is (free - taken) / total; oversample accordingly.
        accept = max((free - taken.numel()) / total, 1e-3)
        cand = torch.randint(total, (int(need / accept * 1.1) + 16,), generator=generator)
        cand = cand[~torch.isin(cand, exclude) & ~torch.isin(cand, taken)]
        taken = torch.cat([taken, first_occurrences(cand)[:need]])
    return taken.sort().values


def first_occurrences(x: Tensor) -> Tensor:
    """Distinct values of the 1-D tensor ``x`` in order of first occurrence.

    >>> first_occurrences(torch.tensor([4, 1, 4, 2, 1]))
    tensor([4, 1, 2])
    """
    if x.numel() == 0:
        return x
    uniq, inverse = torch.unique(x, return_inverse=True)
    first = torch.full((uniq.numel(),), x.numel(), dtype=torch.int64, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(x.numel(), device=x.device), reduce="amin")
    return uniq[first.argsort()]


def random_pattern(n_block_rows: int, n_block_cols: int, nnz: int,
                   generator: Optional[torch.Generator] = None,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Uniformly random pattern of exactly ``nnz`` blocks; (rows, cols) INDEX_DTYPE, canonical order.

    Above half density the *inactive* set is sampled instead, so the work stays
    O(min(nnz, n_blocks - nnz)) draws plus one O(n_blocks) index list.
    """
    total = n_block_rows * n_block_cols
    if not 0 <= nnz <= total:
        raise SparseFormatError(f"random_pattern: argument 'nnz' must be in [0, {total}], got {nnz}")
    if nnz <= total // 2:
        lin = sample_linear_indices(total, nnz, generator)
    else:
        inactive = sample_linear_indices(total, total - nnz, generator)
        everything = torch.arange(total, dtype=torch.int64)
        lin = everything[~torch.isin(everything, inactive)]
    lin = lin.to(device)
    return (lin // n_block_cols).to(INDEX_DTYPE), (lin % n_block_cols).to(INDEX_DTYPE)


@dataclass
class BlockSparseMatrix:
    """A (O, I) matrix stored as ``nnz`` B x B blocks (see the module docstring).

    ``cache`` is an optional dict owned by the caller (e.g. a SparseLinear) in which
    kernels keep pattern-derived index tensors; entries are keyed by the version
    counters of ``rows``/``cols`` so they go stale when the pattern changes.
    """

    values: Tensor
    rows: Tensor
    cols: Tensor
    shape: tuple[int, int]
    block_size: int
    cache: Optional[dict] = field(default=None, repr=False, compare=False)

    @property
    def nnz(self) -> int:
        return int(self.rows.numel())

    @property
    def n_block_rows(self) -> int:
        return self.shape[0] // self.block_size

    @property
    def n_block_cols(self) -> int:
        return self.shape[1] // self.block_size

    @property
    def density(self) -> float:
        return self.nnz / (self.n_block_rows * self.n_block_cols)

    def linear_index(self) -> Tensor:
        """[nnz] int64 linear block index ``rows * (I // B) + cols``."""
        return self.rows.long() * self.n_block_cols + self.cols

    def validate(self) -> "BlockSparseMatrix":
        """Check dtypes, shapes, ranges, uniqueness and canonical order; return self."""
        fn = "BlockSparseMatrix.validate"
        B = check_block_size(fn, self.block_size)
        check_shape(fn, self.shape, B)
        validate_pattern(fn, self.rows, self.cols, self.shape, B)
        v = self.values
        if not isinstance(v, Tensor) or not v.is_floating_point():
            raise SparseFormatError(f"{fn}: argument 'values' must be a floating-point tensor, got "
                                    f"{getattr(v, 'dtype', type(v).__name__)}")
        if tuple(v.shape) != (self.nnz, B, B):
            raise SparseFormatError(f"{fn}: argument 'values' must have shape {(self.nnz, B, B)} "
                                    f"(nnz, B, B), got {tuple(v.shape)}")
        if v.device != self.rows.device:
            raise SparseFormatError(f"{fn}: argument 'values' must be on the device of 'rows' "
                                    f"({self.rows.device}), got {v.device}")
        return self

    @classmethod
    def from_dense(cls, dense: Tensor, block_size: int, rows: Optional[Tensor] = None,
                   cols: Optional[Tensor] = None) -> "BlockSparseMatrix":
        """Compress ``dense`` [O, I]: blocks at (rows, cols), or every block with a nonzero.

        Equivalent to ``values[k] = dense[r*B:(r+1)*B, c*B:(c+1)*B]``. For tests and export.
        """
        fn = "BlockSparseMatrix.from_dense"
        B = check_block_size(fn, block_size)
        if not isinstance(dense, Tensor) or dense.dim() != 2:
            raise SparseFormatError(f"{fn}: argument 'dense' must be a 2-D tensor, got "
                                    f"{getattr(dense, 'shape', type(dense).__name__)}")
        O, I = check_shape(fn, dense.shape, B)
        blocks = dense.reshape(O // B, B, I // B, B).transpose(1, 2)  # (O/B, I/B, B, B)
        if rows is None or cols is None:
            if rows is not None or cols is not None:
                raise SparseFormatError(f"{fn}: arguments 'rows' and 'cols' must be given together")
            rows, cols = (blocks != 0).any(dim=(2, 3)).nonzero(as_tuple=True)
        rows, cols = canonical_order(rows.to(INDEX_DTYPE), cols.to(INDEX_DTYPE), I // B)[:2]
        validate_pattern(fn, rows, cols, (O, I), B)
        return cls(blocks[rows, cols].contiguous(), rows, cols, (O, I), B)

    def to_dense(self) -> Tensor:
        """Dense [O, I] matrix with zeros outside the active blocks (tests/export only)."""
        O, I = self.shape
        B = self.block_size
        dense = self.values.new_zeros(O // B, I // B, B, B)
        dense[self.rows, self.cols] = self.values
        return dense.transpose(1, 2).reshape(O, I)

    @classmethod
    def random(cls, shape: tuple[int, int], block_size: int, density: float,
               generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None, std: float = 0.02) -> "BlockSparseMatrix":
        """Uniformly random pattern with round(density * n_blocks) blocks, trunc-normal values."""
        fn = "BlockSparseMatrix.random"
        B = check_block_size(fn, block_size)
        O, I = check_shape(fn, shape, B)
        nnz = nnz_for_density((O // B) * (I // B), density, fn)
        rows, cols = random_pattern(O // B, I // B, nnz, generator, device)
        values = torch.empty(nnz, B, B, dtype=dtype)
        torch.nn.init.trunc_normal_(values, std=std, a=-2 * std, b=2 * std, generator=generator)
        return cls(values.to(device), rows, cols, (O, I), B)


def canonical_order(rows: Tensor, cols: Tensor, n_block_cols: int,
                    values: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Sort (rows, cols[, values]) by linear index ``rows * n_block_cols + cols`` (int64)."""
    order = (rows.long() * n_block_cols + cols).argsort()
    return rows[order], cols[order], None if values is None else values[order]


def validate_pattern(fn: str, rows: Any, cols: Any, shape: tuple[int, int], block_size: int,
                     require_sorted: bool = True) -> None:
    """Raise SparseFormatError (message starts with ``fn``) unless rows/cols form a valid pattern.

    Valid: 1-D tensors of one dtype in INDEX_DTYPES (int32 / int64), of equal length on
    one device, in range, no duplicates, and (if ``require_sorted``) in canonical order.
    Costs host syncs (min / max / unique); trusted callers skip it.
    """
    nbr, nbc = shape[0] // block_size, shape[1] // block_size
    for name, t, hi in (("rows", rows, nbr), ("cols", cols, nbc)):
        if not isinstance(t, Tensor) or t.dtype not in INDEX_DTYPES or t.dim() != 1:
            raise SparseFormatError(f"{fn}: argument '{name}' must be a 1-D int32 or int64 tensor, got "
                                    f"{getattr(t, 'dtype', type(t).__name__)} of shape "
                                    f"{tuple(getattr(t, 'shape', ()))}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= hi):
            raise SparseFormatError(f"{fn}: argument '{name}' must lie in [0, {hi}) for shape {tuple(shape)} "
                                    f"and block_size {block_size}, got values in "
                                    f"[{int(t.min())}, {int(t.max())}]")
    if rows.numel() != cols.numel() or rows.device != cols.device or rows.dtype != cols.dtype:
        raise SparseFormatError(f"{fn}: argument 'cols' must match 'rows' in length, device and dtype, got "
                                f"{cols.numel()} {cols.dtype} on {cols.device} vs {rows.numel()} "
                                f"{rows.dtype} on {rows.device}")
    lin = rows.long() * nbc + cols
    n_dup = lin.numel() - lin.unique().numel()
    if n_dup:
        raise SparseFormatError(f"{fn}: arguments 'rows'/'cols' must not contain duplicate blocks, "
                                f"got {n_dup} duplicate(s)")
    if require_sorted and lin.numel() > 1 and bool((lin[1:] < lin[:-1]).any()):
        raise SparseFormatError(f"{fn}: arguments 'rows'/'cols' must be in canonical order "
                                f"(sorted by rows * (I // B) + cols), got an unsorted pattern")
