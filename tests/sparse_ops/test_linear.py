"""SparseLinear: construction, forward, set_pattern, serialisation, from_dense."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse_ops.format import SparseFormatError, random_pattern
from sparse_ops.linear import SparseLinear


def test_construction_counts_and_init() -> None:
    m = SparseLinear(768, 3072, sparsity=0.9, block_size=16, seed=0)
    assert m.nnz == round(0.1 * 192 * 48) and m.values.shape == (m.nnz, 16, 16)
    assert (m.n_block_rows, m.n_block_cols) == (192, 48)
    assert abs(m.density - m.nnz / (192 * 48)) < 1e-12
    assert m.values.dtype == torch.float32 and m.rows.dtype == m.cols.dtype == torch.int32
    assert float(m.values.detach().abs().max()) <= 0.04 and 0.015 < float(m.values.detach().std()) < 0.02
    assert torch.equal(m.bias, torch.zeros(768 * 4))
    assert [n for n, _ in m.named_parameters()] == ["values", "bias"]
    assert set(dict(m.named_buffers())) == {"rows", "cols"}
    assert SparseLinear(64, 64, density=0.25, block_size=4, sparsity=0.9).nnz == 64  # density wins


def test_seed_is_deterministic_and_generator_equivalent() -> None:
    a, b = SparseLinear(64, 32, block_size=4, seed=3), SparseLinear(64, 32, block_size=4, seed=3)
    c = SparseLinear(64, 32, block_size=4, generator=torch.Generator().manual_seed(3))
    for m in (b, c):
        assert torch.equal(a.rows, m.rows) and torch.equal(a.cols, m.cols) and torch.equal(a.values, m.values)
    d = SparseLinear(64, 32, block_size=4, seed=4)
    assert not torch.equal(a.values, d.values)


@pytest.mark.parametrize("kw,argument", [
    (dict(in_features=62), "shape"), (dict(block_size=2), "block_size"), (dict(sparsity=1.0), "sparsity"),
    (dict(density=0.0), "density"), (dict(backend="fastest"), "backend"), (dict(inactive="ones"), "inactive"),
    (dict(seed="x"), "seed"),
])
def test_constructor_errors_name_argument(kw: dict, argument: str) -> None:
    args = dict(in_features=64, out_features=32, block_size=4)
    args.update(kw)
    with pytest.raises(ValueError, match=rf"^SparseLinear: .*'{argument}'"):
        SparseLinear(**args)


def test_forward_equals_dense_linear_with_batch_dims() -> None:
    m = SparseLinear(48, 32, sparsity=0.6, block_size=8, seed=1)
    with torch.no_grad():
        m.bias.normal_()
    x = torch.randn(3, 4, 48)
    torch.testing.assert_close(m(x), F.linear(x, m.to_dense_weight(), m.bias))
    dense = m.to_dense_weight()
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[m.rows, m.cols] = True
    assert torch.all(dense[~mask.repeat_interleave(8, 0).repeat_interleave(8, 1)] == 0)
    with pytest.raises(SparseFormatError, match="SparseLinear.forward: argument 'x'"):
        m(torch.randn(2, 47))


def test_set_pattern_in_place_sorted_and_used_by_forward() -> None:
    m = SparseLinear(64, 64, sparsity=0.75, block_size=4, seed=0)
    x = torch.randn(5, 64)
    m(x).sum().backward()  # populate kernel caches with the old pattern
    param, rows_buf = m.values, m.rows
    r, c = random_pattern(16, 16, m.nnz, torch.Generator().manual_seed(9))
    perm = torch.randperm(m.nnz)
    new_vals = torch.randn(m.nnz, 4, 4)
    order = m.set_pattern(r[perm], c[perm], new_vals)
    assert m.values is param and m.rows is rows_buf
    assert torch.equal(m.rows, r) and torch.equal(m.cols, c)
    torch.testing.assert_close(m.values.detach(), new_vals[order])
    torch.testing.assert_close(m(x), F.linear(x, m.to_dense_weight(), m.bias))


@pytest.mark.parametrize("backend", ["reference", "dense", "bsr", "gather_bmm"])
@pytest.mark.parametrize("B", [1, 4])
def test_set_pattern_invalidates_kernel_caches(backend: str, B: int) -> None:
    m = SparseLinear(32, 16, sparsity=0.5, block_size=B, seed=0, backend=backend).double()
    x = torch.randn(5, 32, dtype=torch.float64, requires_grad=True)
    for seed in (1, 2):  # the first call fills the caches, the second must not reuse them
        m(x).sum().backward()
        r, c = random_pattern(16 // B, 32 // B, m.nnz, torch.Generator().manual_seed(seed))
        m.set_pattern(r, c, torch.randn(m.nnz, B, B, dtype=torch.float64))
    m.zero_grad()
    x.grad = None
    y = m(x)
    y.square().sum().backward()
    w = m.to_dense_weight().requires_grad_(True)
    xd = x.detach().clone().requires_grad_(True)
    yd = F.linear(xd, w, m.bias)
    yd.square().sum().backward()
    torch.testing.assert_close(y, yd)
    torch.testing.assert_close(x.grad, xd.grad)
    mask = torch.zeros(16 // B, 32 // B, dtype=torch.bool)
    mask[m.rows, m.cols] = True
    blocks = w.grad.reshape(16 // B, B, 32 // B, B).transpose(1, 2)
    torch.testing.assert_close(m.values.grad, blocks[m.rows, m.cols])


def test_set_pattern_errors() -> None:
    m = SparseLinear(32, 32, sparsity=0.5, block_size=8, seed=0)
    with pytest.raises(SparseFormatError, match=r"set_pattern: argument 'rows' must have shape \(8,\)"):
        m.set_pattern(m.rows[:-1], m.cols[:-1], m.values[:-1])
    with pytest.raises(SparseFormatError, match=r"set_pattern: arguments 'rows'/'cols' must not contain duplicate"):
        m.set_pattern(torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long), m.values.detach())
    with pytest.raises(SparseFormatError, match=r"set_pattern: argument 'cols' must lie in \[0, 4\)"):
        m.set_pattern(m.rows, m.cols + 4, m.values.detach())


def test_state_dict_round_trip_with_different_pattern() -> None:
    src = SparseLinear(64, 32, sparsity=0.5, block_size=4, seed=1)
    dst = SparseLinear(64, 32, sparsity=0.5, block_size=4, seed=2)
    assert not torch.equal(src.rows * 16 + src.cols, dst.rows * 16 + dst.cols)
    x = torch.randn(3, 64)
    dst(x)  # warm caches for the old pattern
    param = dst.values
    dst.load_state_dict(src.state_dict())
    assert dst.values is param
    for key, val in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], val), key
    torch.testing.assert_close(dst(x), src(x))


def test_load_state_dict_rejects_bad_pattern_and_nnz() -> None:
    m = SparseLinear(64, 32, sparsity=0.5, block_size=4, seed=1)
    sd = m.state_dict()
    sd["rows"], sd["cols"] = sd["rows"].flip(0), sd["cols"].flip(0)
    with pytest.raises(RuntimeError, match="canonical order"):
        m.load_state_dict(sd)
    other = SparseLinear(64, 32, sparsity=0.25, block_size=4, seed=1)
    with pytest.raises(RuntimeError, match="size mismatch"):
        m.load_state_dict(other.state_dict())


def test_pickle_and_deepcopy() -> None:
    m = SparseLinear(32, 16, sparsity=0.5, block_size=4, seed=1, backend="reference")
    x = torch.randn(2, 32)
    y = m(x)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    for clone in (torch.load(buf, weights_only=False), copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert clone.backend == "reference" and clone._kernel_cache == {}
        torch.testing.assert_close(clone(x), y)


def test_from_dense_top_blocks_and_nonzero_blocks() -> None:
    lin = nn.Linear(16, 8)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(128.0).reshape(8, 16) / 128)
    m = SparseLinear.from_dense(lin, block_size=4, sparsity=0.75)
    # Largest-L1 blocks are the two bottom-right ones (block row 1, block cols 2 and 3).
    assert m.rows.tolist() == [1, 1] and m.cols.tolist() == [2, 3]
    torch.testing.assert_close(m.bias, lin.bias)
    kept = m.to_dense_weight()
    torch.testing.assert_close(kept[4:, 8:], lin.weight[4:, 8:])
    assert float(kept[:4].abs().sum()) == 0.0
    w = torch.zeros(8, 8)
    w[0, 5] = 1.0
    m2 = SparseLinear.from_dense(w, block_size=4)
    assert m2.nnz == 1 and m2.bias is None and (m2.rows.item(), m2.cols.item()) == (0, 1)
    with pytest.raises(SparseFormatError, match="from_dense: argument 'linear_or_weight'"):
        SparseLinear.from_dense(torch.zeros(8, 8), block_size=4)


def test_extra_repr_mentions_pattern() -> None:
    text = repr(SparseLinear(32, 16, sparsity=0.5, block_size=4, seed=0))
    assert "block_size=4" in text and "nnz=16" in text and "density=0.5000" in text


def test_set_pattern_validate_flag_skips_only_the_syncing_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    import sparse_ops.linear as linear_mod

    m = SparseLinear(32, 32, sparsity=0.5, block_size=8, seed=0)
    calls = []
    real = linear_mod.validate_pattern
    monkeypatch.setattr(linear_mod, "validate_pattern", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    r, c = random_pattern(4, 4, m.nnz, torch.Generator().manual_seed(1))
    m.set_pattern(r.long(), c.long(), torch.ones(m.nnz, 8, 8))  # int64 in: stored as int32
    assert calls == ["SparseLinear.set_pattern"] and m.rows.dtype == m.cols.dtype == torch.int32
    assert torch.equal(m.rows, r) and torch.equal(m.cols, c)
    m.set_pattern(c, r, torch.ones(m.nnz, 8, 8), validate=False)
    assert len(calls) == 1 and torch.equal(m.rows * 4 + m.cols, (m.rows * 4 + m.cols).sort().values)
    with pytest.raises(SparseFormatError, match=r"set_pattern: argument 'values' must have shape"):
        m.set_pattern(r, c, torch.ones(m.nnz, 4, 4), validate=False)
    with pytest.raises(SparseFormatError, match=r"set_pattern: argument 'rows' must be an int32 or int64"):
        m.set_pattern(r.float(), c, torch.ones(m.nnz, 8, 8), validate=False)


def test_int64_checkpoint_pattern_loads_into_int32_buffers() -> None:
    src = SparseLinear(64, 32, sparsity=0.5, block_size=4, seed=1)
    sd = {k: (v.long() if k in ("rows", "cols") else v) for k, v in src.state_dict().items()}
    dst = SparseLinear(64, 32, sparsity=0.5, block_size=4, seed=2)
    dst.load_state_dict(sd)
    assert dst.rows.dtype == torch.int32 and torch.equal(dst.rows, src.rows) and torch.equal(dst.cols, src.cols)


def test_reset_parameters_redraws_values_like_nn_linear() -> None:
    """The nn.Linear drop-in contract: `reset_parameters()` (called e.g. when a module
    built on the meta device is materialised) re-draws the values, keeps the pattern."""
    layer = SparseLinear(64, 32, block_size=8, sparsity=0.5, seed=0)
    rows, cols = layer.rows.clone(), layer.cols.clone()
    with torch.no_grad():
        layer.bias.fill_(1.0)
        layer.reset_parameters(torch.Generator().manual_seed(1))
    again = SparseLinear(64, 32, block_size=8, sparsity=0.5, seed=0)
    with torch.no_grad():
        again.reset_parameters(torch.Generator().manual_seed(1))
    assert torch.equal(layer.rows, rows) and torch.equal(layer.cols, cols)
    assert torch.equal(layer.values, again.values) and bool((layer.bias == 0).all())
    assert float(layer.values.detach().abs().max()) <= 0.04 and float(layer.values.detach().std()) > 0.005
