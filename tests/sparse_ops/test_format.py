"""BlockSparseMatrix: conversions, canonical order, random patterns, validate() errors."""
from __future__ import annotations

import pytest
import torch

from sparse_ops.format import (INDEX_DTYPE, VALID_BLOCK_SIZES, BlockSparseMatrix, SparseFormatError,
                               nnz_for_density, random_pattern, sample_linear_indices)


def _random_blocky(O: int, I: int, B: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(O // B, I // B, generator=g) < density
    dense = torch.randn(O, I, generator=g, dtype=torch.float64)
    return dense * keep.repeat_interleave(B, 0).repeat_interleave(B, 1)


@pytest.mark.parametrize("B", VALID_BLOCK_SIZES)
def test_dense_round_trip_and_canonical_order(B: int) -> None:
    dense = _random_blocky(4 * B, 6 * B, B, 0.4, seed=B)
    mat = BlockSparseMatrix.from_dense(dense, B).validate()
    torch.testing.assert_close(mat.to_dense(), dense, rtol=0, atol=0)
    lin = mat.linear_index()
    assert bool((lin[1:] > lin[:-1]).all())
    r, c = int(mat.rows[0]), int(mat.cols[0])
    torch.testing.assert_close(mat.values[0], dense[r * B:(r + 1) * B, c * B:(c + 1) * B])


def test_from_dense_with_explicit_unsorted_pattern_sorts_it() -> None:
    dense = torch.arange(64.0).reshape(8, 8)
    mat = BlockSparseMatrix.from_dense(dense, 4, torch.tensor([1, 0]), torch.tensor([0, 1]))
    assert mat.rows.tolist() == [0, 1] and mat.cols.tolist() == [1, 0]
    torch.testing.assert_close(mat.values[0], dense[0:4, 4:8])


@pytest.mark.parametrize("nbr,nbc,nnz", [(8, 8, 6), (8, 8, 58), (1, 5, 5), (16, 4, 0)])
def test_random_pattern_exact_unique_sorted(nbr: int, nbc: int, nnz: int) -> None:
    rows, cols = random_pattern(nbr, nbc, nnz, torch.Generator().manual_seed(3))
    lin = rows * nbc + cols
    assert rows.dtype == cols.dtype == INDEX_DTYPE == torch.int32 and lin.numel() == nnz
    assert lin.unique().numel() == nnz and bool((lin[1:] > lin[:-1]).all())
    assert nnz == 0 or (int(rows.max()) < nbr and int(cols.max()) < nbc and int(lin.min()) >= 0)


def test_random_pattern_seeded_and_uniform() -> None:
    a = random_pattern(10, 10, 30, torch.Generator().manual_seed(7))
    b = random_pattern(10, 10, 30, torch.Generator().manual_seed(7))
    c = random_pattern(10, 10, 30, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))
    # All 6 two-subsets of 4 positions, low and high density paths alike.
    g = torch.Generator().manual_seed(0)
    for nnz in (2, 3):
        counts: dict = {}
        for _ in range(1200):
            r, cc = random_pattern(2, 2, nnz, g)
            key = tuple((r * 2 + cc).tolist())
            counts[key] = counts.get(key, 0) + 1
        assert len(counts) == (6 if nnz == 2 else 4)
        expected = 1200 / len(counts)
        assert all(abs(v - expected) < 0.25 * expected for v in counts.values()), counts


def test_sample_linear_indices_respects_exclude() -> None:
    exclude = torch.arange(0, 100, 2)
    idx = sample_linear_indices(100, 50, torch.Generator().manual_seed(0), exclude=exclude)
    assert idx.tolist() == list(range(1, 100, 2))
    with pytest.raises(SparseFormatError, match=r"sample_linear_indices: argument 'k'"):
        sample_linear_indices(100, 51, exclude=exclude)


def test_nnz_for_density_rounds() -> None:
    assert nnz_for_density(2304, 0.1) == 230
    assert nnz_for_density(10, 0.25) == 2  # round half to even, as Python's round
    with pytest.raises(SparseFormatError, match="argument 'density'"):
        nnz_for_density(10, 0.0)


def _mat(**kw) -> BlockSparseMatrix:
    base = dict(values=torch.zeros(2, 4, 4), rows=torch.tensor([0, 1]), cols=torch.tensor([1, 0]),
                shape=(8, 8), block_size=4)
    base.update(kw)
    return BlockSparseMatrix(**base)


@pytest.mark.parametrize("kw,argument,expect", [
    (dict(rows=torch.tensor([0, 0]), cols=torch.tensor([1, 1])), "rows'/'cols", "duplicate"),
    (dict(rows=torch.tensor([0, 2])), "rows", r"\[0, 2\)"),
    (dict(cols=torch.tensor([1, -1])), "cols", r"\[0, 2\)"),
    (dict(rows=torch.tensor([1, 0])), "rows'/'cols", "canonical order"),
    (dict(rows=torch.tensor([0, 1], dtype=torch.int16)), "rows", "int32 or int64"),
    (dict(rows=torch.tensor([0, 1], dtype=torch.int32)), "cols", "dtype"),  # int64 cols: mixed
    (dict(cols=torch.tensor([1])), "cols", "length"),
    (dict(shape=(8, 6)), "shape", "divisible by block_size=4"),
    (dict(block_size=3), "block_size", r"\(1, 4, 8, 16\)"),
    (dict(values=torch.zeros(2, 4, 2)), "values", r"\(2, 4, 4\)"),
    (dict(values=torch.zeros(2, 4, 4, dtype=torch.int64)), "values", "floating-point"),
])
def test_validate_errors_name_argument(kw: dict, argument: str, expect: str) -> None:
    with pytest.raises(SparseFormatError, match=rf"^BlockSparseMatrix\.validate: .*'{argument}'.*{expect}"):
        _mat(**kw).validate()


def test_validate_accepts_valid_and_from_dense_errors() -> None:
    assert _mat().validate().nnz == 2
    with pytest.raises(SparseFormatError, match="from_dense: argument 'dense' must be a 2-D"):
        BlockSparseMatrix.from_dense(torch.zeros(8), 4)
    with pytest.raises(SparseFormatError, match="from_dense: argument 'shape'"):
        BlockSparseMatrix.from_dense(torch.zeros(8, 6), 4)
    with pytest.raises(ValueError):  # SparseFormatError is a ValueError
        BlockSparseMatrix.from_dense(torch.zeros(8, 8), 4, torch.tensor([0, 0]), torch.tensor([0, 0]))


def test_random_matrix_density_and_init() -> None:
    mat = BlockSparseMatrix.random((64, 128), 8, 0.25, torch.Generator().manual_seed(0)).validate()
    assert mat.nnz == round(0.25 * 8 * 16) and abs(mat.density - 0.25) < 1e-9
    assert float(mat.values.abs().max()) <= 0.04


def test_int32_and_int64_patterns_validate_and_convert_alike() -> None:
    i32 = dict(rows=torch.tensor([0, 1], dtype=torch.int32), cols=torch.tensor([1, 0], dtype=torch.int32))
    a, b = _mat(**i32).validate(), _mat().validate()  # the default _mat() holds int64 indices
    assert a.linear_index().dtype == torch.int64 and torch.equal(a.linear_index(), b.linear_index())
    dense = torch.arange(64.0).reshape(8, 8)
    m = BlockSparseMatrix.from_dense(dense, 4, torch.tensor([1, 0]), torch.tensor([0, 1]))
    assert m.rows.dtype == m.cols.dtype == INDEX_DTYPE
    # Linear indices are formed in int64: a 2^16 x 2^16 block grid overflows int32.
    big = BlockSparseMatrix(torch.zeros(1, 1, 1), torch.tensor([65535], dtype=torch.int32),
                            torch.tensor([65535], dtype=torch.int32), (65536, 65536), 1)
    assert int(big.linear_index()) == 65536 ** 2 - 1
