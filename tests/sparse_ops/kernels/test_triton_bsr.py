"""Triton BSR kernels against the dense masked reference (interpreter on CPU, CUDA when lent)."""
from __future__ import annotations

import pytest
import torch

from sparse_ops.format import random_pattern

pytestmark = pytest.mark.kernels

DEVICES = [pytest.param("cpu", id="interp"), pytest.param("cuda", marks=pytest.mark.gpu, id="cuda")]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (block size, block rows of W, block cols of W, tokens N): non-power-of-two N, N < BLOCK_N,
# odd block grids (the B = 8 kernels pair block-rows/columns: the last pair is half empty).
CASES = [(16, 3, 5, 45), (16, 4, 2, 7), (8, 5, 3, 70), (8, 2, 7, 33), (32, 2, 3, 40)]


def tolerances(dtype: torch.dtype) -> dict:
    """Output rounded once from fp32: about one unit in the last place of ``dtype``."""
    return {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.float16: dict(rtol=2e-3, atol=2e-3),
            torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}[dtype]


def make_pattern(nbr: int, nbc: int, kind: str, seed: int, device: torch.device):
    """rows, cols (canonical order): random, with empty block rows + columns, empty, or full."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return random_pattern(nbr, nbc, max(1, nbr * nbc // 3), g, device)
    if kind == "holes":  # block-row 0 and block-column 1 (and more) stay empty
        lin = torch.arange(nbr * nbc)
        r, c = lin // nbc, lin % nbc
        keep = (r != 0) & (c != 1) & (torch.rand(lin.shape, generator=g) < 0.6)
        return r[keep].to(device), c[keep].to(device)
    if kind == "empty":
        none = torch.zeros(0, dtype=torch.long, device=device)
        return none, none.clone()
    lin = torch.arange(nbr * nbc, device=device)
    return lin // nbc, lin % nbc


def dense_weight(values: torch.Tensor, rows, cols, shape, B: int) -> torch.Tensor:
    """The masked dense W [O, I] (fp32) of a block pattern."""
    w = torch.zeros(shape[0] // B, shape[1] // B, B, B, dtype=torch.float32, device=values.device)
    w[rows, cols] = values.float()
    return w.transpose(1, 2).reshape(shape)


def operands(case, kind: str, dtype: torch.dtype, device: torch.device, seed: int = 0):
    B, nbr, nbc, N = case
    shape = (nbr * B, nbc * B)
    rows, cols = make_pattern(nbr, nbc, kind, seed, device)
    g = torch.Generator().manual_seed(seed + 1)
    values = torch.randn(rows.numel(), B, B, generator=g).to(dtype).to(device)
    x = torch.randn(N, shape[1], generator=g).to(dtype).to(device)
    dy = torch.randn(N, shape[0], generator=g).to(dtype).to(device)
    return values, rows, cols, shape, x, dy


def check_products(tb, values, rows, cols, shape, x, dy, dtype) -> None:
    """All three products (forward with bias) against the dense masked fp32 reference."""
    B = values.shape[1]
    w = dense_weight(values, rows, cols, shape, B)
    bias = torch.randn(shape[0], device=x.device).to(dtype)
    torch.testing.assert_close(tb.forward(x, values, rows, cols, shape, bias=bias),
                               (x.float() @ w.t() + bias.float()).to(dtype), **tolerances(dtype))
    torch.testing.assert_close(tb.grad_input(dy, values, rows, cols, shape),
                               (dy.float() @ w).to(dtype), **tolerances(dtype))
    dense_grad = (dy.float().t() @ x.float()).reshape(shape[0] // B, B, shape[1] // B, B)
    torch.testing.assert_close(tb.grad_values(dy, x, rows, cols, shape, B),
                               dense_grad.transpose(1, 2)[rows, cols], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-{}x{}-N{}".format(*c))
def test_three_products_match_dense_reference(tb, kernel_device, device, dtype, case):
    values, rows, cols, shape, x, dy = operands(case, "random", dtype, kernel_device)
    check_products(tb, values, rows, cols, shape, x, dy, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(8))
def test_random_shapes_densities_and_dtypes(tb, kernel_device, device, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    B, dtype = (8, 16)[seed % 2], DTYPES[seed % 3]
    nbr, nbc, N = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((1, 7), (1, 7), (1, 130)))
    nnz = int(torch.randint(0, nbr * nbc + 1, (), generator=g))
    rows, cols = random_pattern(nbr, nbc, nnz, g, kernel_device)
    shape = (nbr * B, nbc * B)
    values = torch.randn(nnz, B, B, generator=g).to(dtype).to(kernel_device)
    x = torch.randn(N, shape[1], generator=g).to(dtype).to(kernel_device)
    dy = torch.randn(N, shape[0], generator=g).to(dtype).to(kernel_device)
    check_products(tb, values, rows, cols, shape, x, dy, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["holes", "empty", "full"])
@pytest.mark.parametrize("B", [16, 8])
def test_patterns_with_empty_rows_columns_and_extremes(tb, kernel_device, device, kind, B):
    values, rows, cols, shape, x, dy = operands((B, 3, 4, 37), kind, torch.float32, kernel_device, seed=3)
    if kind == "holes":  # block-row 0 and block-column 1 are empty
        assert rows.numel() and 0 not in rows.tolist() and 1 not in cols.tolist()
    check_products(tb, values, rows, cols, shape, x, dy, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_splits", [1, 3, 100])
def test_grad_values_token_splits_agree(tb, kernel_device, device, n_splits):
    values, rows, cols, shape, x, dy = operands((16, 2, 3, 150), "random", torch.float32, kernel_device)
    one = tb.grad_values(dy, x, rows, cols, shape, 16, n_splits=1)
    torch.testing.assert_close(tb.grad_values(dy, x, rows, cols, shape, 16, n_splits=n_splits), one,
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_leading_dims_strided_input_and_values_cast(tb, kernel_device, device):
    dev = kernel_device
    values, rows, cols, shape, _, _ = operands((16, 2, 2, 8), "random", torch.float32, dev)
    x = torch.randn(3, 5, 2 * shape[1], device=dev)[..., ::2]  # [3, 5, I], non-unit last stride
    y = tb.forward(x.to(torch.float16), values, rows, cols, shape)  # fp32 values -> fp16 compute
    assert y.shape == (3, 5, shape[0]) and y.dtype == torch.float16
    ref = x.to(torch.float16).float() @ dense_weight(values.half(), rows, cols, shape, 16).t()
    torch.testing.assert_close(y.float(), ref, **tolerances(torch.float16))


@pytest.mark.parametrize("device", DEVICES)
def test_pattern_change_in_place_invalidates_index_cache(tb, kernel_device, device):
    dev = kernel_device
    values, rows, cols, shape, x, _ = operands((16, 4, 4, 20), "random", torch.float32, dev)
    first = tb.get_index(rows, cols, 4, 4)
    assert tb.get_index(rows, cols, 4, 4) is first  # same pattern version: cached
    new_rows, new_cols = make_pattern(4, 4, "random", seed=9, device=dev)  # same nnz
    rows.copy_(new_rows)
    cols.copy_(new_cols)  # in place, as SparseLinear.set_pattern does
    assert tb.get_index(rows, cols, 4, 4) is not first
    w = dense_weight(values, rows, cols, shape, 16)
    torch.testing.assert_close(tb.forward(x, values, rows, cols, shape), x @ w.t(), rtol=1e-5, atol=1e-4)


def test_build_index_docstring_example():
    from sparse_ops.kernels.triton_index import build_index

    idx = build_index(torch.tensor([0, 0, 2]), torch.tensor([1, 3, 0]), 3, 4)
    assert idx.row_ptr.tolist() == [0, 2, 2, 3]
    assert idx.col_ptr.tolist() == [0, 1, 2, 2, 3]
    assert idx.csc_perm.tolist() == [2, 0, 1]
    assert idx.row_idx.dtype == torch.int32


@pytest.mark.parametrize("B", [1, 4, 64])
def test_unsupported_block_size_is_rejected_by_name(tb, B):
    values = torch.zeros(1, B, B)
    idx = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="triton_bsr.forward: argument 'block_size'"):
        tb.forward(torch.zeros(2, 2 * B), values, idx, idx, (2 * B, 2 * B))
    with pytest.raises(ValueError, match="triton_bsr.grad_values: argument 'block_size'"):
        tb.grad_values(torch.zeros(2, 2 * B), torch.zeros(2, 2 * B), idx, idx, (2 * B, 2 * B), B)
    assert not tb.TritonBackend().supports(torch.device("cpu"), torch.float32, B)


def test_bad_arguments_name_function_and_argument(tb):
    values = torch.zeros(1, 16, 16)
    idx = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="argument 'x' must have last dimension 32"):
        tb.forward(torch.zeros(2, 48), values, idx, idx, (32, 32))
    with pytest.raises(ValueError, match="argument 'shape' must be positive multiples"):
        tb.forward(torch.zeros(2, 40), values, idx, idx, (32, 40))
    with pytest.raises(ValueError, match="argument 'x' must have dtype"):
        tb.forward(torch.zeros(2, 32, dtype=torch.float64), values, idx, idx, (32, 32))
    with pytest.raises(ValueError, match="arguments 'dy' and 'x' must have the same token count"):
        tb.grad_values(torch.zeros(3, 32), torch.zeros(2, 32), idx, idx, (32, 32), 16)


def test_cpu_tensors_rejected_without_interpreter(tb, monkeypatch):
    monkeypatch.setattr(tb, "INTERPRET", False)
    idx = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        tb.forward(torch.zeros(2, 32), torch.zeros(1, 16, 16), idx, idx, (32, 32))
    assert not tb.TritonBackend().supports(torch.device("cpu"), torch.float32, 16)
