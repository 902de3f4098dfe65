"""DynSpController: pattern invariants, optimizer state, dense-masked equivalence, metrics.

The small helpers at the top are shared with test_dynsp_controller_state.py.
"""
from __future__ import annotations

from typing import Optional

import pytest
import torch
from torch import nn

from sparse_ops.dynsp.controller import DynSpController
from sparse_ops.dynsp.prune import block_l1_norms
from sparse_ops.dynsp.remap import remap_param_state
from sparse_ops.linear import SparseLinear


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """Two SparseLinear layers (block 4 and block 1) around a GELU; ~1k positions in total."""
    return nn.Sequential(
        SparseLinear(32, 64, sparsity=0.75, block_size=4, seed=seed, dtype=dtype, device=device),
        nn.GELU(),
        SparseLinear(64, 16, sparsity=0.8, block_size=1, seed=seed + 1, dtype=dtype, device=device))


def batch(step: int, micro: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(10_000 + 97 * step + micro)
    return torch.randn(8, 32, generator=g, dtype=dtype).to(device)


def patterns(model: nn.Module) -> list[torch.Tensor]:
    """Sorted linear block indices of every SparseLinear (CPU)."""
    return [(m.rows * m.n_block_cols + m.cols).cpu() for m in model.modules() if isinstance(m, SparseLinear)]


def train(model: nn.Module, opt: torch.optim.Optimizer, ctrl: DynSpController, start: int, stop: int,
          micro_batches: int = 1, log: Optional[list] = None) -> list[list[torch.Tensor]]:
    """Run steps [start, stop): forward/backward, AdamW, controller; patterns after each update."""
    seen = []
    dtype, device = next(model.parameters()).dtype, next(model.parameters()).device
    for t in range(start, stop):
        ctrl.before_step(t)
        for mb in range(micro_batches):
            (model(batch(t, mb, dtype, device)).pow(2).mean() / micro_batches).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        metrics = ctrl.step(t)
        if metrics is not None:
            seen.append(patterns(model))
            if log is not None:
                log.append(metrics)
    return seen


def make_run(seed: int = 0, ctrl_seed: int = 0, total_steps: int = 40, n_updates: int = 8,
          dtype: torch.dtype = torch.float32, device: str = "cpu", **ctrl_kwargs):
    model = tiny_model(seed, dtype, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    ctrl = DynSpController(model, opt, total_steps=total_steps, n_updates=n_updates, seed=ctrl_seed,
                           **ctrl_kwargs)
    return model, opt, ctrl


def _lin(m: SparseLinear) -> torch.Tensor:
    return m.rows * m.n_block_cols + m.cols


# ---- pattern invariants ----------------------------------------------------------------
def test_100_updates_keep_nnz_prune_smallest_and_grow_disjoint():
    layer = SparseLinear(64, 64, sparsity=0.8, block_size=1, seed=3)
    ctrl = DynSpController({"fc": layer}, None, total_steps=101, n_updates=100, seed=1)
    nnz, n_pos = layer.nnz, 64 * 64
    g = torch.Generator().manual_seed(0)
    assert ctrl.schedule.steps == tuple(range(1, 101))
    for t in range(101):
        with torch.no_grad():  # stand-in for training: new blocks get nonzero values too
            layer.values.add_(0.01 * torch.randn(layer.values.shape, generator=g))
        old_lin, old_norms = _lin(layer).clone(), block_l1_norms(layer.values)
        metrics = ctrl.step(t)
        if t == 0:
            assert metrics is None
            continue
        new_lin = _lin(layer)
        pruned = old_lin[~torch.isin(old_lin, new_lin)]
        grown = new_lin[~torch.isin(new_lin, old_lin)]
        k = round(ctrl.schedule.compute(t) * nnz)
        assert layer.nnz == nnz and metrics["density/fc"] == nnz / n_pos
        assert pruned.numel() == grown.numel() == k == metrics["pruned_blocks/fc"]
        # Drop and grow disjoint; grown were inactive (not just pruned) before the update.
        assert not bool(torch.isin(grown, old_lin).any())
        # The pruned blocks are exactly the k smallest (ties by index: stable order).
        expected = old_lin[torch.sort(old_norms, stable=True).indices[:k]].sort().values
        assert torch.equal(pruned, expected)
        assert torch.equal(new_lin, new_lin.unique())  # canonical order, no duplicates


def test_static_when_no_updates():
    model, opt, ctrl = make_run(n_updates=0)
    before = patterns(model)
    assert train(model, opt, ctrl, 0, 20) == []
    assert all(torch.equal(a, b) for a, b in zip(before, patterns(model)))


# ---- optimizer state -------------------------------------------------------------------
@pytest.mark.parametrize("regrow_init", ["zero", "normal"])
def test_adamw_state_of_survivors_bit_for_bit_new_blocks_zero(regrow_init):
    model, opt, ctrl = make_run(total_steps=10, n_updates=1, regrow_init=regrow_init)  # update at step 5
    train(model, opt, ctrl, 0, 5)
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    old = [(_lin(m).clone(), m.values.detach().clone(), {k: v.clone() for k, v in opt.state[m.values].items()})
           for m in layers]
    params_before = [id(m.values) for m in layers]
    train(model, opt, ctrl, 5, 6)  # step 5: optimizer step, then the update
    assert ctrl.last_update_step == 5
    for m, (old_lin, old_values, old_state) in zip(layers, old):
        new_lin, state = _lin(m), opt.state[m.values]
        assert id(m.values) in params_before and set(state) == set(old_state)
        assert torch.equal(state["step"], old_state["step"] + 1)
        kept_new = torch.isin(new_lin, old_lin)
        assert 0 < int((~kept_new).sum()) < new_lin.numel()
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.all(state[key][~kept_new] == 0)
        new_vals = m.values.detach()[~kept_new]
        assert torch.all(new_vals == 0) if regrow_init == "zero" else bool((new_vals != 0).all())


def test_survivor_state_and_values_are_carried_exactly():
    # Update without an optimizer step in between: survivors must match the snapshot bit for bit.
    model, opt, ctrl = make_run(total_steps=10, n_updates=1)
    train(model, opt, ctrl, 0, 5)
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    snap = [(_lin(m).clone(), m.values.detach().clone(),
             {k: v.clone() for k, v in opt.state[m.values].items()}) for m in layers]
    assert ctrl.step(5) is not None
    for m, (old_lin, old_values, old_state) in zip(layers, snap):
        new_lin, state = _lin(m), opt.state[m.values]
        survivors = torch.isin(new_lin, old_lin)
        src = torch.searchsorted(old_lin, new_lin[survivors])
        assert torch.equal(m.values.detach()[survivors], old_values[src])
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key][survivors], old_state[key][src])
            assert torch.all(state[key][~survivors] == 0)
        assert torch.equal(state["step"], old_state["step"])


def _scatter_dense(m: SparseLinear, blocks: torch.Tensor) -> torch.Tensor:
    B = m.block_size
    dense = blocks.new_zeros(m.n_block_rows, m.n_block_cols, B, B)
    dense[m.rows, m.cols] = blocks
    return dense.transpose(1, 2).reshape(m.out_features, m.in_features)


def _block_mask(m: SparseLinear) -> torch.Tensor:
    return _scatter_dense(m, torch.ones_like(m.values.detach()))


def test_training_step_after_update_equals_dense_masked_model():
    torch.manual_seed(0)
    layer = SparseLinear(16, 24, sparsity=0.5, block_size=4, seed=5, dtype=torch.float64)
    opt = torch.optim.AdamW([layer.values, layer.bias], lr=1e-2, weight_decay=0.1)
    ctrl = DynSpController({"fc": layer}, opt, total_steps=6, n_updates=1, seed=2)  # update at step 3
    x = [torch.randn(10, 16, dtype=torch.float64) for _ in range(5)]
    for t in range(3):
        layer(x[t]).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    # Dense masked twin built from the *pre-update* state.
    mask_old = _block_mask(layer)
    dense = nn.Linear(16, 24).double()
    st = opt.state[layer.values]
    dense_state = {k: _scatter_dense(layer, st[k]) for k in ("exp_avg", "exp_avg_sq")}
    layer(x[3]).pow(2).sum().backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():  # the twin takes the same step 3 before the update
        dense.weight.copy_(_scatter_dense(layer, layer.values.detach()))
        dense.bias.copy_(layer.bias)
    dense_state = {k: _scatter_dense(layer, opt.state[layer.values][k]) for k in ("exp_avg", "exp_avg_sq")}
    step_count = opt.state[layer.values]["step"].clone()
    ctrl.step(3)
    mask = _block_mask(layer)
    assert not torch.equal(mask, mask_old)
    dopt = torch.optim.AdamW([dense.weight, dense.bias], lr=1e-2, weight_decay=0.1)
    with torch.no_grad():  # prune / regrow in the dense world: multiply by the new mask
        dense.weight.mul_(mask)
    dopt.state[dense.weight] = {"step": step_count.clone(), **{k: v * mask for k, v in dense_state.items()}}
    dopt.state[dense.bias] = {k: v.clone() for k, v in opt.state[layer.bias].items()}
    torch.testing.assert_close(layer.to_dense_weight(), dense.weight.detach(), rtol=0, atol=0)
    for model, o in ((layer, opt), (dense, dopt)):
        model(x[4]).pow(2).sum().backward()
        if model is dense:
            dense.weight.grad.mul_(mask)  # the masked model's gradient
        o.step()
    torch.testing.assert_close(layer.to_dense_weight(), dense.weight.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(layer.bias, dense.bias, rtol=1e-12, atol=1e-14)
    for k in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(_scatter_dense(layer, opt.state[layer.values][k]),
                                   dopt.state[dense.weight][k], rtol=1e-12, atol=1e-14)


def test_unsupported_optimizer_state_names_the_key():
    p = nn.Parameter(torch.zeros(3, 2, 2))
    opt = torch.optim.SGD([p], lr=0.1)
    opt.state[p] = {"factored_row": torch.zeros(3, 2), "step": torch.tensor(1.0)}
    with pytest.raises(TypeError, match="'factored_row'"):
        remap_param_state(opt, p, torch.tensor([0, 1, -1]))


# ---- metrics ---------------------------------------------------------------------------
def test_dof_never_decreases_and_approaches_one():
    layer = SparseLinear(16, 16, sparsity=0.5, block_size=1, seed=0)
    ctrl = DynSpController({"fc": layer}, None, total_steps=201, n_updates=200, prune_ratio=0.5,
                           prune_schedule="constant", seed=0)
    g = torch.Generator().manual_seed(1)
    dofs = [ctrl.pattern_metrics()["dof/fc"]]
    assert dofs[0] == 0.5
    for t in range(201):
        with torch.no_grad():
            layer.values.add_(torch.randn(layer.values.shape, generator=g))
        metrics = ctrl.step(t)
        if metrics:
            dofs.append(metrics["dof/fc"])
            assert metrics["dof_mean"] == metrics["dof/fc"]
    assert len(dofs) == 201 and all(b >= a for a, b in zip(dofs, dofs[1:]))
    assert dofs[-1] == 1.0 and dofs[5] < 1.0


def test_dof_and_removed_new_fraction_match_recomputation():
    model, opt, ctrl = make_run(total_steps=60, n_updates=6)
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    ever = [set(_lin(m).tolist()) for m in layers]
    prev_new: list[set] = [set() for _ in layers]
    n_updates, fractions = 0, []
    for t in range(60):
        before = [set(_lin(m).tolist()) for m in layers]
        log: list = []
        train(model, opt, ctrl, t, t + 1, log=log)
        if not log:
            continue
        n_updates += 1
        fractions.append(log[0]["removed_new_fraction"])
        for i, (m, name) in enumerate(zip(layers, ctrl.layers)):
            after = set(_lin(m).tolist())
            pruned, grown = before[i] - after, after - before[i]
            ever[i] |= after
            n_pos = m.n_block_rows * m.n_block_cols
            assert log[0][f"dof/{name}"] == len(ever[i]) / n_pos
            assert log[0][f"removed_new_fraction/{name}"] == len(pruned & prev_new[i]) / len(pruned)
            prev_new[i] = grown
        assert log[0]["dof_mean"] == pytest.approx(sum(log[0][f"dof/{n}"] for n in ctrl.layers) / 2)
        assert log[0]["update_time_s"] > 0 and log[0]["step"] == t
    assert n_updates == 6
    assert fractions[0] == 0.0 and 0 < max(fractions) <= 1  # zero-initialised new blocks get re-pruned


def test_controller_skips_set_pattern_validation_and_keeps_int32_canonical(monkeypatch):
    # The controller's patterns are canonical by construction, so it must not pay
    # set_pattern's host-syncing checks (min / max / unique) at every update.
    import sparse_ops.linear as linear_mod

    def no_validation(fn, *args, **kwargs):
        raise AssertionError(f"{fn} validated a controller pattern")
    monkeypatch.setattr(linear_mod, "validate_pattern", no_validation)
    model, opt, ctrl = make_run(total_steps=20, n_updates=4)
    assert len(train(model, opt, ctrl, 0, 20)) == 4
    monkeypatch.undo()
    for m in model.modules():
        if isinstance(m, SparseLinear):
            assert m.rows.dtype == m.cols.dtype == torch.int32
            m.matrix().validate()  # still canonical, unique and in range


def test_k_is_capped_by_the_candidates_left_at_low_sparsity():
    # 16 positions, 12 active: pr = 0.5 asks for 6, but only the 4 inactive positions
    # may be re-allocated (just-pruned ones are excluded), so k = 4 and they all fill up.
    layer = SparseLinear(16, 16, sparsity=0.25, block_size=4, seed=0)
    ctrl = DynSpController({"fc": layer}, None, total_steps=4, n_updates=1, prune_ratio=0.5,
                           prune_schedule="constant")
    inactive = sorted(set(range(16)) - set(_lin(layer).tolist()))
    with torch.no_grad():
        layer.values.copy_(torch.arange(12.0).view(12, 1, 1).expand(12, 4, 4))  # distinct norms
    old = _lin(layer).clone()
    metrics = ctrl.step(2)
    assert metrics["pruned_blocks/fc"] == 4 and layer.nnz == 12
    assert sorted(set(_lin(layer).tolist()) - set(old.tolist())) == inactive
    assert sorted(set(old.tolist()) - set(_lin(layer).tolist())) == old[:4].tolist()  # 4 smallest


@pytest.mark.parametrize("make_opt, keys", [
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), ("momentum_buffer",)),
    (lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True), ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
])
def test_any_optimizer_with_values_shaped_state_is_carried(make_opt, keys):
    layer = SparseLinear(32, 32, sparsity=0.75, block_size=4, seed=0)
    opt = make_opt(layer.parameters())
    ctrl = DynSpController({"fc": layer}, opt, total_steps=4, n_updates=1)  # update at step 2
    for t in range(3):
        layer(batch(t)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    old_lin, snap = _lin(layer).clone(), {k: opt.state[layer.values][k].clone() for k in keys}
    assert ctrl.step(2) is not None
    new_lin = _lin(layer)
    survivors = torch.isin(new_lin, old_lin)
    src = torch.searchsorted(old_lin, new_lin[survivors])
    assert 0 < int((~survivors).sum()) < new_lin.numel()
    for k in keys:
        assert torch.equal(opt.state[layer.values][k][survivors], snap[k][src])
        assert bool((opt.state[layer.values][k][~survivors] == 0).all())
