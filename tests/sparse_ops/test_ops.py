"""The three products and the autograd Function against a dense masked reference."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparse_ops import kernels
from sparse_ops.autograd import sparse_linear
from sparse_ops.format import VALID_BLOCK_SIZES, BlockSparseMatrix, SparseFormatError
from sparse_ops.ops import (dense_forward_reference, dense_grad_input_reference, dense_grad_values_reference,
                            sparse_forward, sparse_grad_input, sparse_grad_values)

CPU = torch.device("cpu")
# triton (CPU interpreter) has its own tests under tests/sparse_ops/kernels.
BACKENDS = [n for n in kernels.backend_names(CPU) if n != "triton"] + ["auto"]


def _case(B: int, seed: int, dtype: torch.dtype = torch.float64):
    """A random shape (multiples of B), random pattern and inputs with leading batch dims."""
    g = torch.Generator().manual_seed(seed)
    O = B * int(torch.randint(1, 7, (1,), generator=g))
    I = B * int(torch.randint(1, 7, (1,), generator=g))
    density = float(torch.empty(1).uniform_(0.15, 1.0, generator=g))
    w = BlockSparseMatrix.random((O, I), B, density, g, dtype=dtype)
    w.values.normal_(generator=g)
    x = torch.randn(2, 5, I, generator=g, dtype=dtype)
    dy = torch.randn(2, 5, O, generator=g, dtype=dtype)
    return w, x, dy


def _supported(backend: str, dtype: torch.dtype, B: int) -> bool:
    return backend == "auto" or kernels.get_backend(backend).supports(CPU, dtype, B)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", VALID_BLOCK_SIZES)
def test_products_match_dense_reference(backend: str, B: int) -> None:
    if not _supported(backend, torch.float64, B):
        pytest.skip(f"{backend} does not run float64")
    for seed in range(3):
        w, x, dy = _case(B, seed)
        torch.testing.assert_close(sparse_forward(x, w, backend), dense_forward_reference(x, w))
        torch.testing.assert_close(sparse_grad_input(dy, w, backend), dense_grad_input_reference(dy, w))
        torch.testing.assert_close(sparse_grad_values(dy, x, w, backend), dense_grad_values_reference(dy, x, w))


def _autograd_vs_dense(w: BlockSparseMatrix, x: torch.Tensor, backend: str, autocast: bool):
    values = w.values.float().clone().requires_grad_(True)
    bias = torch.randn(w.shape[0], generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    xs = x.float().clone().requires_grad_(True)
    dense = BlockSparseMatrix(values, w.rows, w.cols, w.shape, w.block_size).to_dense()
    xd = xs.detach().clone().requires_grad_(True)
    bd = bias.detach().clone().requires_grad_(True)
    dense_leaf = dense.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = sparse_linear(xs, values, bias, w.rows, w.cols, w.shape, w.block_size, backend)
        yd = F.linear(xd, dense_leaf, bd)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    y.backward(gy.to(y.dtype))
    yd.backward(gy.to(yd.dtype))
    dv_ref = BlockSparseMatrix.from_dense(dense_leaf.grad, w.block_size, w.rows, w.cols).values
    return (y, yd), (xs.grad, xd.grad), (values.grad, dv_ref), (bias.grad, bd.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", VALID_BLOCK_SIZES)
def test_autograd_fp32_matches_dense_masked(backend: str, B: int) -> None:
    if not _supported(backend, torch.float32, B):
        pytest.skip(f"{backend} does not run float32 with block size {B}")
    w, x, _ = _case(B, seed=10 + B)
    pairs = _autograd_vs_dense(w, x, backend, autocast=False)
    for got, want in pairs:
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", VALID_BLOCK_SIZES)
def test_autograd_bf16_autocast_matches_dense(backend: str, B: int) -> None:
    if not _supported(backend, torch.bfloat16, B):
        pytest.skip(f"{backend} does not run bfloat16")
    w, x, _ = _case(B, seed=20 + B)
    (y, yd), *grads = _autograd_vs_dense(w, x, backend, autocast=True)
    assert y.dtype == yd.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), yd.float(), rtol=3e-2, atol=3e-2 * float(yd.detach().abs().max()))
    for got, want in grads:  # master weights: gradients come back in fp32
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want.float(), rtol=3e-2, atol=3e-2 * float(want.abs().max()))


@pytest.mark.parametrize("backend", ["reference", "gather_bmm"])
def test_token_chunking_matches_reference(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sparse_ops.kernels import cpu, reference

    monkeypatch.setattr(reference, "_CHUNK_ELEMS", 64)
    monkeypatch.setattr(cpu, "GATHER_CHUNK_ELEMS", 64)
    w, _, _ = _case(4, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(37, w.shape[1], generator=g, dtype=torch.float64)
    dy = torch.randn(37, w.shape[0], generator=g, dtype=torch.float64)
    assert 37 > max(16, 64 // (w.nnz * 4))  # several chunks in both backends
    torch.testing.assert_close(sparse_forward(x, w, backend), dense_forward_reference(x, w))
    torch.testing.assert_close(sparse_grad_input(dy, w, backend), dense_grad_input_reference(dy, w))
    torch.testing.assert_close(sparse_grad_values(dy, x, w, backend), dense_grad_values_reference(dy, x, w))


def test_gradcheck_reference_float64() -> None:
    w, x, _ = _case(4, seed=5)
    values = w.values.clone().requires_grad_(True)
    xs = x[:1, :2].clone().requires_grad_(True)
    bias = torch.randn(w.shape[0], dtype=torch.float64, requires_grad=True)
    fn = lambda a, v, b: sparse_linear(a, v, b, w.rows, w.cols, w.shape, 4, "reference")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (xs, values, bias))


def test_product_argument_errors() -> None:
    w, x, dy = _case(4, seed=1)
    with pytest.raises(SparseFormatError, match=r"^sparse_forward: argument 'x' must have last dimension"):
        sparse_forward(x[..., :-1], w)
    with pytest.raises(SparseFormatError, match=r"^sparse_grad_input: argument 'dy' must have dtype"):
        sparse_grad_input(dy.float(), w)
    with pytest.raises(SparseFormatError, match=r"^sparse_grad_values: arguments 'dy' and 'x'"):
        sparse_grad_values(dy[:1], x, w)


class _Dummy(kernels.Backend):
    name = "reference"


def test_registry_rejects_duplicates_and_lists_names() -> None:
    with pytest.raises(kernels.BackendError, match=r"register_backend: backend name 'reference' is already"):
        kernels.register_backend(_Dummy())
    with pytest.raises(kernels.BackendError, match=r"get_backend: argument 'name' must be one of .*'reference'"):
        kernels.get_backend("nope")
    assert "triton" in kernels.backend_names()  # declared: a valid name everywhere
    with pytest.raises(kernels.BackendError, match="triton: .*cuda"):
        kernels.get_backend("triton", CPU)
    with pytest.raises(kernels.BackendError, match="argument 'backend'"):
        kernels.check_backend_name("SparseLinear", "fast")


def test_auto_resolves_to_a_supporting_cpu_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNSP_AUTO", "rule")  # the fixed rule (measuring: test_cpp_kernels.py)
    for B in VALID_BLOCK_SIZES:
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            for op in kernels.OPS:
                for shape, nnz in (((768, 768), 1), ((768, 3072), (768 * 3072) // B ** 2)):
                    be = kernels.select_backend("auto", CPU, dtype, B, shape, nnz, 4096, op)
                    assert be.name in ("dense", "bsr", "gather_bmm") and be.supports(CPU, dtype, B)


def test_cpu_use_never_imports_triton() -> None:
    code = ("import sys, torch; from sparse_ops.linear import SparseLinear; "
            "m = SparseLinear(32, 32, block_size=16, sparsity=0.5); m(torch.randn(2, 32)).sum().backward(); "
            "from sparse_ops import kernels; print(kernels.backend_names('cpu')); "
            "assert 'triton' not in sys.modules, 'triton imported'")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def _auto(dtype: torch.dtype, B: int, s: float, op: str, shape=(768, 768)) -> str:
    nnz = round((1 - s) * (shape[0] // B) * (shape[1] // B))
    return kernels.select_backend("auto", CPU, dtype, B, shape, nnz, 4096, op).name


def test_auto_rule_pins_measured_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNSP_AUTO", "rule")  # the fixed rule (measuring: test_cpp_kernels.py)
    for B in VALID_BLOCK_SIZES:  # the spec's sparsities: the dense scratch GEMM wins on CPU
        for s in (0.5, 0.75, 0.9):
            for dtype in (torch.float32, torch.bfloat16):
                assert {_auto(dtype, B, s, op) for op in kernels.OPS} == {"dense"}
    assert _auto(torch.float32, 16, 0.99, "forward") == "gather_bmm"
    assert _auto(torch.float32, 1, 0.995, "grad_values") == "bsr"
    assert _auto(torch.bfloat16, 16, 0.99, "grad_values") == "gather_bmm"
    assert _auto(torch.bfloat16, 16, 0.99, "forward") == "dense"


def test_forced_backend_is_used_and_unsupported_one_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    from sparse_ops.linear import SparseLinear

    calls = []
    gb = kernels.get_backend("gather_bmm")
    monkeypatch.setattr(type(gb), "grad_values", lambda self, dy, x, w: calls.append("gv") or
                        kernels.get_backend("reference").grad_values(dy, x, w))
    m = SparseLinear(32, 32, sparsity=0.5, block_size=4, backend="gather_bmm", seed=0)
    m(torch.randn(3, 32)).sum().backward()
    assert calls == ["gv"]
    m.backend = "bsr"
    with pytest.raises(kernels.BackendError, match="select_backend: backend 'bsr' does not support"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(torch.randn(3, 32))


@pytest.mark.parametrize("backend", ["reference", "dense", "gather_bmm"])
def test_bf16_autocast_bias_grad_is_accumulated_in_fp32(backend: str) -> None:
    from sparse_ops.linear import SparseLinear

    m = SparseLinear(32, 16, sparsity=0.5, block_size=4, seed=0, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.randn(64, 32, generator=torch.Generator().manual_seed(0)))
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    y.backward(gy)
    assert m.bias.grad.dtype == torch.float32
    # A sum rounded to bf16 (8 bits) would be off by up to ~1e-2 here.
    torch.testing.assert_close(m.bias.grad.double(), gy.double().sum(0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", [1, 4])
def test_int32_and_int64_patterns_give_identical_products(backend: str, B: int) -> None:
    if not _supported(backend, torch.float64, B):
        pytest.skip(f"{backend} does not run float64")
    w, x, dy = _case(B, seed=30 + B)
    assert w.rows.dtype == torch.int32  # what SparseLinear stores
    w64 = BlockSparseMatrix(w.values, w.rows.long(), w.cols.long(), w.shape, B).validate()
    for m in (w, w64):
        m.cache = {}  # exercise the cached pattern-derived indices (CSR pointers) too
    torch.testing.assert_close(sparse_forward(x, w, backend), sparse_forward(x, w64, backend), rtol=0, atol=0)
    torch.testing.assert_close(sparse_grad_input(dy, w, backend), sparse_grad_input(dy, w64, backend),
                               rtol=0, atol=0)
    torch.testing.assert_close(sparse_grad_values(dy, x, w, backend), sparse_grad_values(dy, x, w64, backend),
                               rtol=0, atol=0)
