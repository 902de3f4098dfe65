"""Ablations: frozen random inactive weights; freezing a random subset for a step range."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse_ops.dynsp.freeze import FrozenSubset
from sparse_ops.format import SparseFormatError, random_pattern
from sparse_ops.linear import SparseLinear


def _inactive_mask(m: SparseLinear) -> torch.Tensor:
    active = torch.zeros(m.n_block_rows, m.n_block_cols, dtype=torch.bool)
    active[m.rows, m.cols] = True
    B = m.block_size
    return ~active.repeat_interleave(B, 0).repeat_interleave(B, 1)


def test_frozen_inactive_forward_and_gradients() -> None:
    m = SparseLinear(32, 16, sparsity=0.75, block_size=4, seed=0, inactive="frozen", inactive_seed=5)
    frozen0 = m.frozen_weight.clone()
    assert float(frozen0.std()) > 0.01 and float(frozen0.abs().max()) <= 0.04
    x = torch.randn(6, 32, requires_grad=True)
    w_eff = m.to_dense_weight(include_frozen=False) + frozen0 * _inactive_mask(m)
    y = m(x)
    torch.testing.assert_close(y, F.linear(x, w_eff, m.bias))
    plain = SparseLinear(32, 16, sparsity=0.75, block_size=4, seed=0)
    assert not torch.allclose(y, plain(x))  # the frozen values do contribute
    y.square().sum().backward()
    xd = x.detach().clone().requires_grad_(True)
    F.linear(xd, w_eff, m.bias).square().sum().backward()
    torch.testing.assert_close(x.grad, xd.grad)
    assert m.frozen_weight.grad is None and not m.frozen_weight.requires_grad
    assert [n for n, _ in m.named_parameters()] == ["values", "bias"]


def test_frozen_inactive_values_never_change_and_follow_pattern() -> None:
    m = SparseLinear(32, 32, sparsity=0.5, block_size=8, seed=0, inactive="frozen")
    frozen0 = m.frozen_weight.clone()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(4, 32)).sum().backward()
        opt.step()
    assert torch.equal(m.frozen_weight, frozen0)
    r, c = random_pattern(4, 4, m.nnz, torch.Generator().manual_seed(3))
    m.set_pattern(r, c, torch.zeros(m.nnz, 8, 8))
    x = torch.randn(3, 32)
    torch.testing.assert_close(m(x), F.linear(x, frozen0 * _inactive_mask(m), m.bias))
    torch.testing.assert_close(m.to_dense_weight(), frozen0 * _inactive_mask(m))
    sd = m.state_dict()
    assert torch.equal(sd["frozen_weight"], frozen0)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, frozen: FrozenSubset, step: int) -> None:
    opt.zero_grad()
    model(torch.randn(8, 32)).square().sum().backward()
    frozen.apply(step)
    opt.step()
    frozen.after_optimizer_step()


def test_frozen_subset_until_step_then_trainable() -> None:
    model = nn.Sequential(SparseLinear(32, 32, sparsity=0.5, block_size=4, seed=0), nn.GELU(),
                          SparseLinear(32, 32, sparsity=0.5, block_size=4, seed=1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    frozen = FrozenSubset(model, fraction=0.3, step=3, mode="until", seed=0)
    before = [m.values.detach().clone() for m in frozen.layers]
    for step in range(3):
        _train_step(model, opt, frozen, step)
    assert frozen.n_frozen() == sum(round(0.3 * m.values.numel()) for m in frozen.layers)
    for m, v0, mask in zip(frozen.layers, before, frozen.masks):
        assert torch.equal(m.values.detach()[mask], v0[mask])      # frozen: bit-identical
        assert bool((m.values.detach()[~mask] != v0[~mask]).all())  # others trained
    _train_step(model, opt, frozen, 3)  # unfreeze event
    for m, v0, mask in zip(frozen.layers, before, frozen.masks):
        assert bool((m.values.detach()[mask] != v0[mask]).all())


def test_frozen_subset_from_step_and_follows_pattern_change() -> None:
    m = SparseLinear(32, 32, sparsity=0.5, block_size=4, seed=0)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.5)
    frozen = FrozenSubset([m], fraction=0.5, step=1, mode="from", seed=1)
    assert not frozen.apply(0) and frozen.masks is None
    _train_step(m, opt, frozen, 0)
    _train_step(m, opt, frozen, 1)  # frozen from here
    # Move half the blocks: kept blocks stay frozen at their positions, new ones are free.
    keep = torch.arange(0, m.nnz, 2)
    lin_keep = (m.rows * 8 + m.cols)[keep]
    free = torch.tensor([i for i in range(64) if i not in set((m.rows * 8 + m.cols).tolist())])[: m.nnz - keep.numel()]
    lin_new = torch.cat([lin_keep, free])
    vals = torch.cat([m.values.detach()[keep], torch.zeros(free.numel(), 4, 4)])
    order = m.set_pattern(lin_new // 8, lin_new % 8, vals)
    old_mask = frozen.masks[0].clone()
    v_before = m.values.detach().clone()
    _train_step(m, opt, frozen, 2)
    is_kept = (order < keep.numel())
    expected = torch.zeros_like(old_mask)
    expected[is_kept] = old_mask[keep][order[is_kept]]
    assert torch.equal(frozen.masks[0], expected)
    assert torch.equal(m.values.detach()[expected], v_before[expected])
    assert bool((m.values.detach()[~is_kept] != 0).any())


def test_frozen_subset_argument_errors() -> None:
    m = SparseLinear(32, 32, block_size=4, seed=0)
    for kw, arg in ((dict(fraction=1.5), "fraction"), (dict(mode="later"), "mode"), (dict(step=-1), "step")):
        args = dict(modules=m, fraction=0.1, step=1)
        args.update(kw)
        with pytest.raises(SparseFormatError, match=rf"^FrozenSubset: argument '{arg}'"):
            FrozenSubset(**args)
    with pytest.raises(SparseFormatError, match="FrozenSubset: argument 'modules'"):
        FrozenSubset(nn.Linear(2, 2), 0.1, 1)
