"""AdamW groups, LR schedules (pure functions of the step), clipping."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bert_ipu.train import optim as O


def test_linear_warmup_then_decay_to_zero():
    s = O.LRSchedule(base_lr=1e-3, total_steps=100, warmup_steps=10)
    lrs = [s(t) for t in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == 0.0 and lrs[99] > 0


def test_constant_and_cosine_schedules():
    const = O.LRSchedule(2.0, 10, 2, "constant")
    assert [const(t) for t in (0, 1, 5, 9)] == [1.0, 2.0, 2.0, 2.0]
    cos = O.LRSchedule(2.0, 12, 2, "cosine")
    assert cos(2) == pytest.approx(2.0) and cos(7) == pytest.approx(1.0)
    assert cos(12) == pytest.approx(0.0, abs=1e-12)


def test_schedule_is_a_pure_function_of_the_step():
    s = O.LRSchedule(1.0, 50, 5, "cosine")
    forward = [s(t) for t in range(50)]
    assert [s(t) for t in reversed(range(50))] == forward[::-1]


def test_warmup_as_fraction_or_steps():
    assert O.warmup_steps_from(0.25, 400) == 100
    assert O.warmup_steps_from(10000, 400) == 400
    assert O.warmup_steps_from(0, 400) == 0
    with pytest.raises(ValueError, match="lr_warmup.*-1"):
        O.warmup_steps_from(-1, 10)


def test_bad_schedule_is_named():
    with pytest.raises(ValueError, match="kind must be one of.*'step'"):
        O.LRSchedule(1.0, 10, 0, "step")
    with pytest.raises(ValueError, match="warmup_steps=20"):
        O.LRSchedule(1.0, 10, 20)


def test_schedule_state_mismatch_is_reported():
    s = O.LRSchedule(1.0, 10, 2)
    assert s.check_state_dict(s.state_dict()) == []
    assert O.LRSchedule(2.0, 10, 2).check_state_dict(s.state_dict()) == ["base_lr"]


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(4, 4)
        self.LayerNorm = nn.LayerNorm(4)


def test_default_groups_exclude_biases_and_layernorm_from_decay():
    model = _Tiny()
    decay, no_decay = O.parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(model.dense.weight)]
    assert {id(p) for p in no_decay["params"]} == {
        id(model.dense.bias), id(model.LayerNorm.weight), id(model.LayerNorm.bias)}


def test_adamw_uses_design_hyperparameters_and_decoupled_decay():
    model = _Tiny()
    opt = O.build_optimizer(O.parameter_groups(model, 0.01), lr=0.1)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-6
    before = model.LayerNorm.weight.detach().clone()
    w_before = model.dense.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # zero gradient: only decoupled weight decay moves the decayed weights
    torch.testing.assert_close(model.LayerNorm.weight, before, rtol=0, atol=0)
    torch.testing.assert_close(model.dense.weight, w_before * (1 - 0.1 * 0.01))


def test_set_lr_and_clip_gradients():
    model = _Tiny()
    opt = O.build_optimizer(O.parameter_groups(model, 0.01), lr=0.1)
    O.set_lr(opt, 0.5)
    assert {g["lr"] for g in opt.param_groups} == {0.5}
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    n_elems = sum(p.numel() for p in model.parameters())
    norm = O.clip_gradients(O.trainable_params(opt), 1.0)
    assert norm == pytest.approx(3.0 * math.sqrt(n_elems), rel=1e-6)
    total = torch.stack([p.grad.norm() for p in model.parameters()]).norm()
    assert float(total) == pytest.approx(1.0, rel=1e-5)
