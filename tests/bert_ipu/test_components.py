"""bert_ipu/train/build.py: the DynSp controller's argument errors name the config field."""
from __future__ import annotations

import doctest

import pytest

from bert_ipu.train import build as components
from bert_ipu.train.build import build_controller, controller_error_path
from bert_ipu.config import ConfigError, load_config
from bert_ipu.model import build_model

SPARSE = ["model.size=tiny", "data.vocab_size=512", "sparsity.method=dynamic",
          "sparsity.sparsity=0.5", "sparsity.block_size=16"]
_MODELS: dict = {}


def _controller_error(overrides: list[str], total_steps: int) -> ConfigError:
    cfg = load_config(None, SPARSE + overrides)
    if "tiny" not in _MODELS:  # the same shape for every case: build it once
        _MODELS["tiny"] = build_model(cfg.model, cfg.sparsity, seed=0)
    with pytest.raises(ConfigError) as info:
        build_controller(cfg, _MODELS["tiny"], None, total_steps)
    return info.value


def test_too_many_updates_for_the_run_names_n_updates():
    err = _controller_error(["sparsity.n_updates=20"], total_steps=10)
    assert err.path == "sparsity.n_updates"
    assert str(err).startswith("sparsity.n_updates: ") and "training steps: 10" in str(err)


def test_a_short_end_fraction_is_reported_through_n_updates_with_t_end():
    err = _controller_error(["sparsity.n_updates=3", "sparsity.end_fraction=0.1"], 10)
    assert err.path == "sparsity.n_updates" and "T_end = 1.0" in str(err)


@pytest.mark.parametrize("argument,path", [
    ("prune_ratio", "sparsity.prune_ratio"), ("prune_schedule", "sparsity.prune_schedule"),
    ("end_fraction", "sparsity.end_fraction"), ("regrow", "sparsity.regrow"),
    ("regrow_init", "sparsity.regrow_init"), ("regrow_pruned", "sparsity.regrow_pruned"),
    ("seed", "sparsity.seed"), ("placement", "sparsity.placement"),
    ("total_steps", "training.training_steps"), ("something_new", "sparsity"),
])
def test_each_controller_argument_maps_to_its_config_field(monkeypatch, argument, path):
    class Refusing:
        def __init__(self, *args, **kwargs):
            raise ValueError(f"DynSpController: argument '{argument}' must be better, got 1")

    import sparse_ops.dynsp.controller as ctrl

    monkeypatch.setattr(ctrl, "DynSpController", Refusing)
    err = _controller_error([], total_steps=100)
    assert err.path == path and str(err).startswith(f"{path}: DynSpController: argument")


def test_unnamed_messages_fall_back_to_the_section():
    assert controller_error_path("something odd happened") == "sparsity"
    assert doctest.testmod(components).failed == 0
