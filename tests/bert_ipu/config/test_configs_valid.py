"""Every shipped config (configs/**.yaml) and sweep loads, validates and round-trips."""
from __future__ import annotations

from pathlib import Path

import pytest

from bert_ipu.config import load_config, save_config
from bert_ipu.data import DataConfig
from bert_ipu.sweep.spec import expand_sweep

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if "sweeps" not in p.parts)
SWEEPS = sorted((CONFIGS / "sweeps").rglob("*.yaml"))
SIZES = ("tiny", "mini", "small", "medium", "base")
DENSE_LR = {"mini": 8e-4, "small": 4e-4, "medium": 2e-4, "base": 1e-4}


def test_the_expected_configs_exist():
    names = {p.name for p in FILES}
    expected = {"demo.yaml", "local_text_folder.yaml"}
    expected |= {f"{s}_{k}.yaml" for s in SIZES for k in ("dense", "static_s0.9", "dynsp_s0.9")}
    expected |= {f"medium_dynsp_s0.9_b{b}.yaml" for b in (4, 8, 16)}
    assert expected <= names
    assert SWEEPS, "configs/sweeps/ has no grid example"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert load_config(save_config(cfg, tmp_path / "config.yaml")) == cfg
    assert "shared" not in path.read_text(), "configs must not reference ../shared"
    if path.parent == CONFIGS and path.stem != "local_text_folder":
        assert cfg.name == path.stem


@pytest.mark.parametrize("size", SIZES)
def test_paper_configs(size):
    dense = load_config(CONFIGS / f"{size}_dense.yaml")
    static = load_config(CONFIGS / f"{size}_static_s0.9.yaml")
    dynsp = load_config(CONFIGS / f"{size}_dynsp_s0.9.yaml")
    for cfg in (dense, static, dynsp):
        assert cfg.model.size == size and cfg.training.epochs == 10
        assert cfg.training.training_steps is None and cfg.data.sequence_length == 128
        assert cfg.data.source == "hf" and len(cfg.data.hf_path) == 2
        assert any("wikipedia" in p for p in cfg.data.hf_path)
        assert any("bookcorpus" in p for p in cfg.data.hf_path)
        assert cfg.training.precision == "fp16" and cfg.training.loss_scaling == 512
    assert dense.sparsity.method == "dense"
    assert (static.sparsity.method, static.sparsity.sparsity) == ("static", 0.9)
    assert (dynsp.sparsity.method, dynsp.sparsity.sparsity) == ("dynamic", 0.9)
    assert (dynsp.sparsity.n_updates, dynsp.sparsity.prune_ratio) == (160, 0.5)
    assert dynsp.sparsity.prune_schedule == "cosine"
    if size in DENSE_LR:
        assert dense.training.learning_rate == DENSE_LR[size]
    ratio = dynsp.training.learning_rate / dense.training.learning_rate
    assert 6 <= ratio <= 10, f"sparse lr should be about 8x dense, got {ratio:.1f}x"
    if size == "medium":
        assert dynsp.training.learning_rate == 1.4e-3


@pytest.mark.parametrize("block", [4, 8, 16])
def test_medium_block_size_configs(block):
    cfg = load_config(CONFIGS / f"medium_dynsp_s0.9_b{block}.yaml")
    base = load_config(CONFIGS / "medium_dynsp_s0.9.yaml")
    assert cfg.sparsity.block_size == block and cfg.model.size == "medium"
    assert cfg.training == base.training and cfg.sparsity.sparsity == 0.9


def test_demo_is_a_small_builtin_dynsp_run():
    cfg = load_config(CONFIGS / "demo.yaml")
    assert cfg.data.source == "builtin" and cfg.model.size in ("tiny", "mini")
    assert (cfg.sparsity.method, cfg.sparsity.sparsity) == ("dynamic", 0.9)
    assert cfg.training.training_steps is not None and cfg.training.training_steps <= 1000
    assert 0 < cfg.sparsity.n_updates < cfg.training.training_steps


def test_local_text_folder_reads_files():
    cfg = load_config(CONFIGS / "local_text_folder.yaml")
    assert cfg.data.source == "files" and any("*" in f for f in cfg.data.input_files)


@pytest.mark.parametrize("name", ["demo.yaml", "local_text_folder.yaml"])
def test_single_source_configs_give_the_data_pipeline_its_config(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg.data, DataConfig) and cfg.data.seed == cfg.training.seed


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweeps_expand_to_valid_distinct_runs(path):
    runs = expand_sweep(path)
    assert len(runs) > 1
    configs = [r.config for r in runs]
    assert configs == [load_config(r.config_path, list(r.overrides)) for r in runs]
    assert len({c.output_dir for c in configs}) == len(configs)
    assert len({(r.point, r.seed) for r in runs}) == len(runs)


def test_bad_sweeps_fail_before_launch(tmp_path):
    from bert_ipu.config import ConfigError

    base = (CONFIGS / "tiny_dense.yaml").as_posix()
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text(f"config: {base}\ngrid:\n  training.learning_rate: [1.0e-3, -1]\n")
    with pytest.raises(ConfigError, match="training.learning_rate"):
        expand_sweep(bad_value)
    bad_shape = tmp_path / "bad_shape.yaml"
    bad_shape.write_text(f"config: {base}\ngrid: [1, 2]\n")
    with pytest.raises(ConfigError, match="grid"):
        expand_sweep(bad_shape)
    runs = tmp_path / "runs.yaml"
    runs.write_text(f"config: {base}\nruns:\n  - [model.size=mini]\n"
                    "  - [model.size=tiny, name=t]\n")
    first, second = (r.overrides for r in expand_sweep(runs))
    assert "name=runs_000" in first and "name=t" in second and "name=runs_001" not in second
