"""The `triton` backend through the registry, ops, SparseLinear, and the fused QKV helpers."""
from __future__ import annotations

import pytest
import torch

from sparse_ops.format import BlockSparseMatrix
from sparse_ops.kernels import get_backend

pytestmark = pytest.mark.kernels

DEVICES = [pytest.param("cpu", id="interp"), pytest.param("cuda", marks=pytest.mark.gpu, id="cuda")]


def test_backend_is_registered_under_its_name(tb):
    backend = get_backend("triton")
    assert isinstance(backend, tb.TritonBackend)
    assert backend.supports(torch.device("cuda"), torch.bfloat16, 16)
    assert not backend.supports(torch.device("cuda"), torch.float64, 16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", [16, 8])
def test_ops_with_triton_backend_match_dense_references(kernel_device, device, B):
    from sparse_ops import ops

    dev = kernel_device
    g = torch.Generator().manual_seed(B)
    w = BlockSparseMatrix.random((3 * B, 5 * B), B, 0.4, generator=g, device=dev)
    w.cache = {}
    x, dy = torch.randn(2, 9, 5 * B, device=dev), torch.randn(2, 9, 3 * B, device=dev)
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ops.sparse_forward(x, w, "triton"), ops.dense_forward_reference(x, w), **tol)
    torch.testing.assert_close(ops.sparse_grad_input(dy, w, "triton"),
                               ops.dense_grad_input_reference(dy, w), **tol)
    torch.testing.assert_close(ops.sparse_grad_values(dy, x, w, "triton"),
                               ops.dense_grad_values_reference(dy, x, w), **tol)
    assert "triton_bsr_index" in w.cache  # index built once per pattern, kept in the caller's cache


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_linear_triton_backend_matches_reference_backend(kernel_device, device):
    from sparse_ops.linear import SparseLinear

    dev = kernel_device
    ref = SparseLinear(64, 48, sparsity=0.5, block_size=16, backend="reference", seed=0, device=dev)
    tri = SparseLinear(64, 48, sparsity=0.5, block_size=16, backend="triton", seed=0, device=dev)
    with torch.no_grad():
        ref.bias.normal_()
        tri.bias.copy_(ref.bias)
    x = torch.randn(3, 7, 64, device=dev)
    xr, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref(xr).square().sum().backward()
    tri(xt).square().sum().backward()
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xt.grad, xr.grad, **tol)
    torch.testing.assert_close(tri.values.grad, ref.values.grad, **tol)
    torch.testing.assert_close(tri.bias.grad, ref.bias.grad, **tol)


def test_interpreter_index_patch_is_idempotent(tb):
    from sparse_ops.kernels.triton_compat import patch_interpreter_index

    assert patch_interpreter_index() and patch_interpreter_index()


@pytest.mark.gpu
def test_pattern_change_neither_recompiles_nor_retunes(tb):
    if tb.INTERPRET or not torch.cuda.is_available():
        pytest.skip("needs a GPU and compiled kernels")
    dev = torch.device("cuda")
    w = BlockSparseMatrix.random((256, 128), 16, 0.2, generator=torch.Generator().manual_seed(0), device=dev)
    x = torch.randn(512, 128, device=dev, dtype=torch.bfloat16)
    dy = torch.randn(512, 256, device=dev, dtype=torch.bfloat16)

    def step() -> None:
        v = w.values.to(torch.bfloat16)
        tb.forward(x, v, w.rows, w.cols, w.shape)
        tb.grad_input(dy, v, w.rows, w.cols, w.shape)
        tb.grad_values(dy, x, w.rows, w.cols, w.shape, 16)

    step()
    tuned = (len(tb._dsd_tuned.cache), len(tb._sdd_tuned.cache))
    kernels = (tb._dsd_kernel, tb._sdd_kernel)
    compiled = [sum(len(c[0]) for c in k.device_caches.values()) for k in kernels]
    other = BlockSparseMatrix.random((256, 128), 16, 0.2, generator=torch.Generator().manual_seed(1),
                                     device=dev)
    w.rows.copy_(other.rows)
    w.cols.copy_(other.cols)
    step()
    torch.cuda.synchronize()
    assert (len(tb._dsd_tuned.cache), len(tb._sdd_tuned.cache)) == tuned
    assert [sum(len(c[0]) for c in k.device_caches.values()) for k in kernels] == compiled


@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_values_grad_is_fp32_not_rounded(kernel_device, device):
    """Under autocast the values' gradient leaves the kernel as its fp32 accumulator."""
    from sparse_ops.linear import SparseLinear

    dev = kernel_device
    m = SparseLinear(64, 32, sparsity=0.5, block_size=16, backend="triton", seed=0, device=dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 64, generator=g).to(dev)
    w = m.matrix()
    dv = get_backend("triton").grad_values(torch.randn(96, 32, generator=g).to(dev, torch.bfloat16),
                                           x.bfloat16(), w)
    assert dv.dtype == torch.float32
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        y = m(x)
    gy = torch.randn(y.shape, generator=g).to(dev, torch.bfloat16)
    y.backward(gy)
    xb = x.bfloat16().double()
    want = BlockSparseMatrix.from_dense((gy.double().t() @ xb), 16, w.rows, w.cols).values
    # Rounding to bf16 first would leave relative errors of ~4e-3.
    torch.testing.assert_close(m.values.grad.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.bias.grad.double(), gy.double().sum(0), rtol=1e-5, atol=1e-5)
