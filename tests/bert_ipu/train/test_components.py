"""The DynSp settings are one schema: the `sparsity` section *is* the controller's
DynSpSettings, so every error names its config field without any mapping."""
from __future__ import annotations

import dataclasses

import pytest

from bert_ipu.config import ConfigError, SparsityConfig, load_config
from bert_ipu.model import build_model
from bert_ipu.train.build import build_controller
from sparse_ops.dynsp import DynSpSettings, SettingsError

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
    assert str(err).startswith("sparsity.n_updates: expected at most 10 pattern updates in a run of "
                               "10 training steps") and str(err).endswith("got 20")


def test_a_short_end_fraction_is_reported_through_n_updates_with_t_end():
    err = _controller_error(["sparsity.n_updates=3", "sparsity.end_fraction=0.1"], 10)
    assert err.path == "sparsity.n_updates"
    assert "at most 1 pattern updates in a run of 10 training steps" in str(err)
    assert "before end_fraction=0.1 of the run" in str(err)


@pytest.mark.parametrize("override,path", [
    ("prune_ratio=1.5", "sparsity.prune_ratio"), ("prune_schedule=exp", "sparsity.prune_schedule"),
    ("end_fraction=0", "sparsity.end_fraction"), ("regrow=magic", "sparsity.regrow"),
    ("regrow_init=ones", "sparsity.regrow_init"), ("placement=gpu", "sparsity.placement"),
    ("n_updates=-1", "sparsity.n_updates"), ("seed=-3", "sparsity.seed"),
])
def test_every_dynsp_setting_names_its_config_field(override, path):
    with pytest.raises(ConfigError) as info:
        load_config(None, SPARSE + [f"sparsity.{override}"])
    assert info.value.path == path and str(info.value).startswith(f"{path}: expected")


def test_the_sparsity_section_is_the_controllers_settings():
    """One declaration: the section subclasses DynSpSettings and adds only layer fields."""
    assert issubclass(SparsityConfig, DynSpSettings)
    own = {f.name for f in dataclasses.fields(DynSpSettings)}
    added = {f.name for f in dataclasses.fields(SparsityConfig)} - own
    assert added == {"method", "sparsity", "block_size", "distribution", "inactive",
                     "freeze_fraction", "freeze_until_step", "freeze_from_step", "backend"}
    cfg = load_config(None, SPARSE + ["sparsity.n_updates=3"])
    controller = build_controller(cfg, build_model(cfg.model, cfg.sparsity, seed=0), None, 40)
    assert controller.settings is cfg.sparsity and controller.schedule.steps == (10, 20, 30)
    static = load_config(None, SPARSE + ["sparsity.method=static"])
    assert static.sparsity.controller_settings().n_updates == 0


def test_library_users_get_the_settings_class_name():
    with pytest.raises(SettingsError, match=r"^DynSpSettings\.prune_ratio: expected a number"):
        DynSpSettings(prune_ratio=2.0)
