"""Issue 21 (silent defects): one owner per rule. The model's shape arithmetic has one owner
(bert_ipu.model.encoder_linear_shapes), read by the model, the FLOPs tool and the collector;
a size preset's every field is used; the CUDA generator is saved once; one masking width."""
from __future__ import annotations

import argparse

import pytest

from bert_ipu.config import ModelConfig, load_config
from bert_ipu.model import build_model, encoder_linear_shapes
from bert_ipu.model import sizes
from bert_ipu.sweep.collect import nonembedding_params
from dynsp_tools import flops
from tests.bert_ipu.tiny_run import one_thread, tiny_data  # noqa: F401


def _model_shapes(cfg) -> dict[str, tuple[int, int]]:
    model = build_model(cfg.model, cfg.sparsity, seed=0)
    return {name: tuple(m.weight.shape) if hasattr(m, "weight") else tuple(m.shape)
            for name, m in model.named_modules() if name in encoder_linear_shapes(cfg.model)}


def test_flops_tool_uses_the_configured_ffn_width() -> None:
    overrides = ["model.size=tiny", "model.intermediate_size=1024", "sparsity.method=dense",
                 "sparsity.sparsity=0", "training.training_steps=10"]
    args = flops.from_config(argparse.Namespace(config=None, overrides=overrides, json=True,
                                                training_steps=None))
    shapes = flops.encoder_shapes(args.model_cfg)
    assert (1024, 128) in shapes and (128, 1024) in shapes and (512, 128) not in shapes
    cfg = load_config(None, overrides)
    assert sorted(shapes) == sorted(_model_shapes(cfg).values())
    wide = flops.compute(args)["sparse_linears"]
    args.model_cfg = ModelConfig(size="tiny")
    assert wide > flops.compute(args)["sparse_linears"]          # FFN 1024 costs more than 512


def test_collector_counts_the_configured_ffn_width() -> None:
    narrow = {"model": {"size": "tiny"}, "sparsity": {"sparsity": 0.5}}
    wide = {"model": {"size": "tiny", "intermediate_size": 1024}, "sparsity": {"sparsity": 0.5}}
    h, layers = 128, 2
    assert nonembedding_params(narrow) == layers * (4 * h * h + 2 * h * 512) * 0.5
    assert nonembedding_params(wide) == layers * (4 * h * h + 2 * h * 1024) * 0.5
    assert nonembedding_params({"model": {"size": "nonsense"}}) == 0.0


def test_a_preset_with_its_own_heads_and_ffn_is_built_as_declared(monkeypatch) -> None:
    monkeypatch.setitem(sizes.MODEL_SIZES, "odd", sizes.ModelSize(2, 128, 8, 320))
    m = ModelConfig(size="odd")
    assert (m.num_attention_heads, m.intermediate_size) == (8, 320)
    # a different hidden size keeps the family's rule (H / 64 heads, FFN 4H)
    m = ModelConfig(size="odd", hidden_size=256)
    assert (m.num_attention_heads, m.intermediate_size) == (4, 1024)


@pytest.mark.parametrize("name", sorted(sizes.MODEL_SIZES))
def test_presets_carry_every_shape_field(name: str) -> None:
    preset = sizes.MODEL_SIZES[name]
    m = ModelConfig(size=name)
    assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads, m.intermediate_size) == (
        preset.num_hidden_layers, preset.hidden_size, preset.num_attention_heads, preset.intermediate_size)


def test_the_cuda_generator_is_saved_once_by_the_device(monkeypatch) -> None:
    """capture_rng saved every CUDA generator beside the device's own entry (twice)."""
    import torch

    from bert_ipu.train.state import capture_rng

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(8, dtype=torch.uint8)])
    assert set(capture_rng()) == {"torch", "numpy", "python"}


def test_the_masking_width_is_one_constant() -> None:
    """UNIFORMS_PER_TOKEN was defined while the literal 4 was used in two other files."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "bert_ipu" / "data"
    for name in ("dataset.py", "prepare.py"):
        text = (root / name).read_text()
        assert "UNIFORMS_PER_TOKEN" in text and not re.search(r"\b4 \* s\b|-1, 4, s", text), name


def test_pooled_dynsp_metrics_have_one_owner() -> None:
    """The pipeline merged stage metrics by parsing per-layer key strings and recomputing
    the pooled values on its own; both now come from sparse_ops.dynsp.metrics."""
    from bert_ipu.train.pipeline_step import merge_stage_metrics
    from sparse_ops.dynsp.metrics import layer_pattern_keys, layer_update_keys, merge_records, pooled

    a = {"step": 5, "update_index": 0, "prune_ratio": 0.5, "update_time_s": 0.2,
         **layer_update_keys("l0", 3, 1), **layer_pattern_keys("l0", 0.5, 0.1)}
    b = {"step": 5, "update_index": 0, "prune_ratio": 0.5, "update_time_s": 0.3,
         **layer_update_keys("l1", 7, 7), **layer_pattern_keys("l1", 0.25, 0.1)}
    whole = {**a, **b, "update_time_s": 0.3}
    whole.update(pooled(whole))
    assert whole["removed_new_fraction"] == 8 / 10 and whole["dof_mean"] == 0.375
    assert merge_records([a, b]) == whole == merge_stage_metrics([a, b])


def test_one_map_of_pipeline_schedules() -> None:
    """The schedule names were listed in devices/pipeline.py and again as the keys of a
    dict in train/pipeline_step.py."""
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

    from bert_ipu.devices.pipeline import PIPELINE_SCHEDULES, schedule_class
    from bert_ipu.train import pipeline_step

    assert [schedule_class(n) for n in PIPELINE_SCHEDULES] == [ScheduleGPipe, Schedule1F1B]
    assert not hasattr(pipeline_step, "SCHEDULES")
    with pytest.raises(ValueError, match="one of"):
        schedule_class("zigzag")


@pytest.mark.parametrize("override,key", [("sparsity.regrow=gradient", "sparsity.regrow"),
                                          ("sparsity.freeze_fraction=0.5", "sparsity.freeze_fraction")])
def test_the_config_refuses_what_the_ipu_runner_cannot_run(override, key) -> None:
    """The IPU runner skips the freeze ablation and RigL's gradient capture; such a run
    was accepted and silently trained something else."""
    from bert_ipu.config import ConfigError

    extra = ["sparsity.freeze_until_step=5"] if "freeze" in override else []
    with pytest.raises(ConfigError) as info:
        load_config(None, ["training.device=ipu", "sparsity.method=dynamic", "sparsity.sparsity=0.9",
                           override, *extra])
    assert str(info.value).startswith(key) and "ipu" in str(info.value)


def test_checkpoint_pieces_are_declared_once(tiny_data, tmp_path, monkeypatch, one_thread) -> None:
    """Save and restore both iterate outputs.PIECES: a new checkpointed piece is one entry
    (it was two hand-written lists of 11 pieces)."""
    from bert_ipu.train import outputs
    from tests.bert_ipu.tiny_run import run_tiny

    seen = []
    extra = outputs.Piece("trainer.pt", "extra", lambda c, s: {"step": s.step},
                          lambda c, s, v: seen.append(v))
    monkeypatch.setattr(outputs, "PIECES", outputs.PIECES + (extra,))
    corpus, cache = tiny_data
    run_tiny(corpus, tmp_path / "run", cache, **{"training.training_steps": 4,
                                                "checkpoint.checkpoint_steps": 2})
    run_tiny(corpus, tmp_path / "run", cache, **{"training.training_steps": 4,
                                                "checkpoint.checkpoint_steps": 2,
                                                "checkpoint.resume_training_from_checkpoint": "latest"})
    assert seen == [{"step": 4}]
    assert set(outputs.CHECKPOINT_FILES) == {"model.pt", "optimizer.pt", "controller.pt", "trainer.pt",
                                             "config.yaml"}


def test_every_step_runner_follows_the_protocol(tiny_data, tmp_path, one_thread) -> None:
    """The runner protocol was a docstring; it is a typing.Protocol now, and the built
    runner satisfies it (the pipeline and IPU runners' tests build theirs the same way)."""
    from bert_ipu.train.build import build_components
    from bert_ipu.train.step import StepRunner

    corpus, cache = tiny_data
    from tests.bert_ipu.tiny_run import tiny_overrides
    c = build_components(load_config(None, tiny_overrides(corpus, tmp_path / "run", cache)), log=lambda s: None)
    assert isinstance(c.runner, StepRunner)


def test_config_keys_say_what_they_are_in_their_own_metadata():
    """Issue 21: the structural keys (resume), the keys that never define a sweep point and
    the always-shown context were lists kept outside the config; they are field tags now."""
    from bert_ipu.config import Config
    from bert_ipu.schema import tagged
    from bert_ipu.sweep.collect import CONTEXT, IGNORED
    from bert_ipu.train.resume_check import structural_keys

    assert structural_keys() == {
        "model": ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "vocab_size", "max_position_embeddings", "type_vocab_size"),
        "sparsity": ("method", "sparsity", "block_size", "distribution", "inactive")}
    assert {"name", "output_dir", "training.seed", "data.seed", "sparsity.seed", "data.cache_dir",
            "data.num_workers", "data.num_proc", "logging.trackers",
            "checkpoint.checkpoint_steps"} <= set(IGNORED)
    assert not any(k.startswith(("model.", "training.learning_rate")) for k in IGNORED)
    assert CONTEXT["regrow"] == "sparsity.regrow"            # an inherited (DynSpSettings) field
    assert CONTEXT["size"] == "model.size" and len(CONTEXT) == 12
    assert set(tagged(Config, "identity")) == set(IGNORED)
