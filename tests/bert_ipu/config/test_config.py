"""The config tree: every error path names path/expectation/value; precedence; round trip."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bert_ipu.config import (
    Config, ConfigError, DataConfig, ModelConfig, SparsityConfig, config_from_dict,
    config_to_dict, load_config, save_config,
)
from bert_ipu.schema import dump_yaml, parse_yaml_value

SPARSE = ["sparsity.method=dynamic", "sparsity.sparsity=0.9"]


def error_of(overrides: list[str], raw: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw or {}, overrides)
    return info.value


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- defaults and resolution
def test_defaults_are_valid_and_resolved():
    cfg = Config()
    assert (cfg.model.hidden_size, cfg.model.num_hidden_layers) == (768, 12)
    assert (cfg.model.num_attention_heads, cfg.model.intermediate_size) == (12, 3072)
    assert cfg.model.vocab_size == cfg.data.vocab_size == 30522
    assert cfg.output_dir == "runs/bert"
    assert cfg.checkpoint.checkpoint_output_dir == "runs/bert/checkpoints"
    assert cfg.data.seed == cfg.sparsity.seed == cfg.training.seed
    assert cfg.training.adam_betas == (0.9, 0.999) and cfg.training.adam_eps == 1e-6
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("size,shape", [("tiny", (2, 128, 2, 512)), ("mini", (4, 256, 4, 1024)),
                                        ("small", (4, 512, 8, 2048)),
                                        ("medium", (8, 512, 8, 2048))])
def test_size_presets_fill_the_shape(size, shape):
    m = load_config(None, [f"model.size={size}"]).model
    assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads,
            m.intermediate_size) == shape


def test_explicit_model_fields_win_over_the_preset():
    m = load_config(None, ["model.size=mini", "model.hidden_size=512"]).model
    assert (m.hidden_size, m.num_hidden_layers, m.num_attention_heads) == (512, 4, 8)
    assert m.intermediate_size == 2048
    m = load_config(None, ["model.size=null", "model.hidden_size=64", "model.num_hidden_layers=1",
                           "model.num_attention_heads=4"]).model
    assert (m.hidden_size, m.num_attention_heads, m.intermediate_size) == (64, 4, 256)


def test_resolution_follows_name_output_dir_and_seed():
    cfg = load_config(None, ["name=x", "training.seed=7", "data.seed=3"])
    assert cfg.output_dir == "runs/x"
    assert cfg.checkpoint.checkpoint_output_dir == "runs/x/checkpoints"
    assert (cfg.data.seed, cfg.sparsity.seed) == (3, 7)
    cfg = load_config(None, ["output_dir=/tmp/o", "checkpoint.checkpoint_output_dir=/tmp/c"])
    assert cfg.checkpoint.checkpoint_output_dir == "/tmp/c"


# ---------------------------------------------------------------- error paths
@pytest.mark.parametrize("overrides,path", [
    (["bogus=1"], "bogus"),
    (["model.hiden_size=3"], "model.hiden_size"),
    (["sparsity.spasity=0.5"], "sparsity.spasity"),
    (["checkpoint.keep=1"], "checkpoint.keep"),
])
def test_unknown_keys_name_the_dotted_path_and_valid_keys(overrides, path):
    err = error_of(overrides)
    assert err.path == path and str(err).startswith(f"'{path}': unknown config key")
    assert "valid keys" in str(err)


def test_unknown_key_suggests_the_close_match():
    assert "did you mean 'hidden_size'" in str(error_of(["model.hiden_size=3"]))


def test_unknown_key_below_a_scalar_field_is_a_type_error():
    err = error_of(["model.size.extra=1"])
    assert err.path == "model.size" and "one of 'tiny'" in str(err)


def test_non_string_keys_are_rejected():
    err = error_of([], {"model": {1: 2}})
    assert "unknown config key" in str(err) and err.path == "model.1"


@pytest.mark.parametrize("override,path,words", [
    ("training.micro_batch_size='32'", "training.micro_batch_size", "an integer"),
    ("training.micro_batch_size=2.5", "training.micro_batch_size", "an integer"),
    ("training.micro_batch_size=true", "training.micro_batch_size", "an integer"),
    ("training.learning_rate=fast", "training.learning_rate", "a number"),
    ("training.learning_rate=false", "training.learning_rate", "a number"),
    ("data.lowercase=1", "data.lowercase", "true or false"),
    ("name=[a]", "name", "a string"),
    ("model=3", "model", "a mapping of model settings"),
    ("training.adam_betas=[0.9]", "training.adam_betas", "a list of 2 items"),
    ("training.layers_per_ipu=[1, x]", "training.layers_per_ipu[1]", "an integer"),
])
def test_wrong_types(override, path, words):
    err = error_of([override])
    assert err.path == path and words in str(err)


@pytest.mark.parametrize("override,path", [
    ("training.learning_rate=-1e-4", "training.learning_rate"),
    ("training.learning_rate=0", "training.learning_rate"),
    ("training.learning_rate=.nan", "training.learning_rate"),
    ("training.learning_rate=.inf", "training.learning_rate"),
    ("training.micro_batch_size=0", "training.micro_batch_size"),
    ("training.lr_warmup=-1", "training.lr_warmup"),
    ("training.lr_warmup=1.5", "training.lr_warmup"),
    ("training.adam_betas=[0.9, 1.0]", "training.adam_betas"),
    ("training.seed=-1", "training.seed"),
    ("model.hidden_dropout_prob=1.0", "model.hidden_dropout_prob"),
    ("model.hidden_size=0", "model.hidden_size"),
    ("data.mask_tokens=127", "data.mask_tokens"),
    ("data.masked_lm_prob=0", "data.masked_lm_prob"),
    ("data.sequence_length=1024", "data.sequence_length"),
    ("sparsity.prune_ratio=1.5", "sparsity.prune_ratio"),
    ("sparsity.end_fraction=0", "sparsity.end_fraction"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last"),
    ("logging.log_steps=0", "logging.log_steps"),
    ("training.loss_scaling_growth_interval=0", "training.loss_scaling_growth_interval"),
])
def test_out_of_range_values(override, path):
    err = error_of([override])
    assert err.path == path and str(err).startswith(f"{path}: expected")


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_sparsity_outside_unit_interval(value):
    err = error_of([*SPARSE[:1], f"sparsity.sparsity={value}"])
    assert err.path == "sparsity.sparsity" and "[0, 1)" in str(err)


def test_method_and_sparsity_must_agree():
    assert "method='dense'" in str(error_of(["sparsity.sparsity=0.5"]))
    err = error_of(["sparsity.method=static"])
    assert err.path == "sparsity.sparsity" and "use method dense" in str(err)


def test_bad_enum_lists_every_choice():
    err = error_of(["sparsity.backend=cusparse"])
    for choice in ("auto", "reference", "dense", "bsr", "gather_bmm", "triton"):
        assert repr(choice) in str(err)
    assert "'cusparse'" in str(err)
    assert "1, 4, 8, 16" in str(error_of(["sparsity.block_size=2"]))


def test_layers_per_ipu_must_sum_to_the_layers():
    err = error_of(["model.size=mini", "training.layers_per_ipu=[1, 2]"])
    assert err.path == "training.layers_per_ipu" and "num_hidden_layers=4" in str(err)
    cfg = load_config(None, ["model.size=mini", "training.layers_per_ipu=[0, 2, 2]"])
    assert cfg.training.layers_per_ipu == (0, 2, 2)


def test_block_size_must_divide_hidden_and_intermediate_sizes():
    shape = ["model.hidden_size=200", "model.num_attention_heads=4"]
    err = error_of([*SPARSE, *shape, "sparsity.block_size=16"])
    assert err.path == "sparsity.block_size" and "model.hidden_size=200" in str(err)
    err = error_of([*SPARSE, "model.size=mini", "model.intermediate_size=1000"])
    assert "model.intermediate_size=1000" in str(err)
    load_config(None, [*SPARSE, *shape, "sparsity.block_size=8"])  # 8 divides 200 and 800
    load_config(None, [*shape, "sparsity.block_size=16"])  # dense: block size unused


def test_heads_must_divide_hidden():
    err = error_of(["model.size=mini", "model.num_attention_heads=3"])
    assert err.path == "model.num_attention_heads" and "hidden_size=256" in str(err)


def test_freeze_ablation_needs_exactly_one_event_step():
    assert error_of(["sparsity.freeze_fraction=0.5"]).path == "sparsity.freeze_fraction"
    err = error_of(["sparsity.freeze_until_step=5", "sparsity.freeze_from_step=9"])
    assert err.path == "sparsity.freeze_from_step"
    load_config(None, ["sparsity.freeze_fraction=0.5", "sparsity.freeze_until_step=100"])


def test_data_source_needs_its_inputs():
    assert error_of(["data.source=files"]).path == "data.input_files"
    assert error_of(["data.source=hf"]).path == "data.hf_path"
    err = error_of(["data.source=hf", "data.hf_path=[a, b]", "data.hf_name=[x]"])
    assert err.path == "data.hf_name"
    for key, value in (("hf_split", "[train, test, dev]"), ("hf_text_column", "[]"),
                       ("hf_data_files", "[x.json]")):
        err = error_of(["data.source=hf", "data.hf_path=[a, b]", f"data.{key}={value}"])
        assert err.path == f"data.{key}" and "data.hf_path" in str(err)
    cfg = load_config(None, ["data.source=files", "data.input_files=corpus/*.txt"])
    assert cfg.data.input_files == ("corpus/*.txt",)


def test_sections_validate_when_built_directly():
    with pytest.raises(ConfigError, match="model.hidden_size"):
        ModelConfig(hidden_size=-1)
    with pytest.raises(ConfigError, match="sparsity.block_size"):
        SparsityConfig(block_size=3)
    with pytest.raises(ConfigError, match="data.vocab_size: expected an integer, got '5'"):
        DataConfig(vocab_size="5")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="sparsity.block_size"):
        dataclasses.replace(Config(), sparsity=SparsityConfig(method="static", sparsity=0.5),
                            model=ModelConfig(hidden_size=100, num_attention_heads=4))


# ---------------------------------------------------------------- YAML files and overrides
def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "model:\n  size: mini\n  hidden_size: [1, 2\ntraining: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}:4:" in str(info.value) and "invalid YAML" in str(info.value)


def test_duplicate_yaml_keys_are_errors(tmp_path):
    path = write(tmp_path, "dup.yaml", "model:\n  size: mini\n  size: tiny\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:3:.*duplicate key 'size'"):
        load_config(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "3\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    with pytest.raises(ConfigError, match="a mapping of config sections"):
        load_config(write(tmp_path, "top.yaml", text))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; expected the config file"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", [
    "training:\n  seed: 2020-13-45\n",                   # invalid date: ValueError in PyYAML
    "training: {layers_per_ipu: &x [1, *x]}\n",         # a list that contains itself
    "model: !!python/object:os.system {}\n",            # unsafe tags are refused
    "base: &b {size: tiny}\nmodel: {<<: *b, hidden_size: [1]}\n",
    "model: {? [a, b] : 1}\n",                           # a non-scalar key
])
def test_tricky_yaml_only_raises_config_error(tmp_path, text):
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "tricky.yaml", text))


def test_yaml_dialect_floats_and_booleans(tmp_path):
    path = write(tmp_path, "c.yaml", "name: no\ntraining:\n  learning_rate: 1e-4\n"
                 "  compile: true\n")
    cfg = load_config(path)
    assert cfg.name == "no" and cfg.training.learning_rate == 1e-4 and cfg.training.compile


def test_dumped_strings_that_look_like_numbers_or_bools_read_back_as_strings():
    data = {"a": ["0E0", "1e5", "true", "007", ".5", "yes", "on"], "b": 1e-05, "c": True}
    text = dump_yaml(data)
    assert parse_yaml_value(text, "dump") == data and "'0E0'" in text and "- yes" in text


@pytest.mark.parametrize("override,words", [
    ("training.learning_rate", "KEY=VALUE"),
    ("=3", "not a dotted key"),
    ("a..b=1", "not a dotted key"),
    ("model.size mini", "KEY=VALUE"),
    ("training.layers_per_ipu=[1,", "invalid YAML"),
])
def test_bad_override_syntax(override, words):
    err = error_of([override])
    assert words in str(err) and override.partition("=")[0] in str(err)


def test_overrides_must_be_a_list():
    with pytest.raises(ConfigError, match="overrides"):
        load_config(None, "model.size=tiny")  # type: ignore[arg-type]


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    path = write(tmp_path, "c.yaml", "model: {size: tiny}\ntraining:\n  learning_rate: 3.0e-4\n"
                 "  micro_batch_size: 8\n")
    cfg = load_config(path, ["training.learning_rate=1e-3", "training.learning_rate=2e-3"])
    assert cfg.training.learning_rate == 2e-3          # CLI (the last one wins)
    assert cfg.training.micro_batch_size == 8          # YAML
    assert cfg.training.weight_decay == 0.01           # default
    assert cfg.model.hidden_size == 128                # YAML's preset
    assert load_config(path, ["model.size=mini"]).model.hidden_size == 256


def test_extends_merges_parents_and_detects_cycles(tmp_path):
    write(tmp_path, "parent.yaml", "model: {size: mini, hidden_dropout_prob: 0.0}\n"
          "training: {learning_rate: 1.0e-3}\n")
    child = write(tmp_path, "child.yaml", "extends: parent.yaml\nmodel: {size: tiny}\n")
    cfg = load_config(child)
    assert cfg.model.size == "tiny" and cfg.model.hidden_dropout_prob == 0.0
    assert cfg.training.learning_rate == 1e-3
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(write(tmp_path, "orphan.yaml", "extends: missing.yaml\n"))


def test_save_load_round_trip(tmp_path):
    cfg = load_config(None, [*SPARSE, "model.size=tiny", "training.lr_warmup=0.1",
                             "training.layers_per_ipu=[1, 1]", "data.source=hf",
                             "data.hf_path=[a, b]", "data.hf_name=[x, null]",
                             "model.layer_norm_eps=1e-12"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert again == cfg and isinstance(again.training.lr_warmup, float)
    assert config_to_dict(again)["data"]["hf_name"] == ["x", None]


def test_the_data_section_is_the_data_pipelines_config():
    cfg = load_config(None, ["data.source=files", "data.input_files=[a.txt, b/*.txt]",
                             "data.vocab_size=1000", "data.seed=5", "data.mask_tokens=7"])
    spec = cfg.data
    assert spec.input_files == ("a.txt", "b/*.txt") and spec.vocab_size == 1000
    assert (spec.seed, spec.mask_tokens, spec.source) == (5, 7, "files")
    one = load_config(None, ["data.source=hf", "data.hf_path=wikitext",
                             "data.hf_name=wikitext-2-raw-v1"]).data
    assert (one.hf_path, one.hf_name) == (("wikitext",), ("wikitext-2-raw-v1",))
    two = load_config(None, ["data.source=hf", "data.hf_path=[a, b]", "data.hf_name=[x, null]",
                             "data.hf_text_column=[text, body]"]).data
    assert [(s.path, s.name, s.split, s.text_column) for s in two.hf_sources()] == [
        ("a", "x", "train", "text"), ("b", None, "train", "body")]


# ---------------------------------------------------------------- property: only ConfigError
_FIELDS = sorted({f.name for cls in (Config, *[type(getattr(Config(), s)) for s in
                                              ("model", "sparsity", "data", "training",
                                               "checkpoint", "logging")])
                  for f in dataclasses.fields(cls)})
_CHOICES = ["tiny", "mini", "base", "dense", "static", "dynamic", "erdos_renyi", "frozen",
            "fp16", "auto", "hf", "files", "latest", "1e-4", ""]
keys = st.one_of(st.sampled_from(_FIELDS), st.sampled_from(["bogus", "Model", "extends", ""]),
                 st.integers(-2, 2))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.sampled_from([128, 512, 1024, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1), st.text(max_size=6),
    st.sampled_from(_CHOICES))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3)
                      | st.dictionaries(keys, c, max_size=3), max_leaves=8)


@st.composite
def raw_configs(draw: st.DrawFn) -> dict:
    raw: dict = {}
    for section in ("model", "sparsity", "data", "training", "checkpoint", "logging"):
        if draw(st.booleans()):
            names = [f.name for f in dataclasses.fields(type(getattr(Config(), section)))]
            section_keys = st.sampled_from(names) if draw(st.integers(0, 5)) else keys
            raw[section] = draw(st.dictionaries(section_keys, values, max_size=4)
                                if draw(st.integers(0, 9)) else values)
    if draw(st.integers(0, 3)) == 0:
        raw.update(draw(st.dictionaries(keys, values, max_size=2)))
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_configs())
def test_random_config_dicts_only_raise_config_error(raw):
    try:
        cfg = config_from_dict(raw)
    except ConfigError as err:
        assert str(err)
        return
    # Whatever validates is a real, finite, round-trippable config.
    assert config_from_dict(parse_yaml_value(dump_yaml(config_to_dict(cfg)), "dump")) == cfg
    assert all(math.isfinite(v) for v in (cfg.training.learning_rate, cfg.sparsity.sparsity))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=24), max_size=3), st.text(max_size=60))
def test_random_overrides_and_yaml_text_only_raise_config_error(overrides, text):
    for attempt in (lambda: load_config(None, overrides),
                    lambda: config_from_dict(parse_yaml_value(text, "random.yaml"))):
        try:
            attempt()
        except ConfigError:
            pass


def test_one_data_schema_for_the_run_and_the_pipeline():
    """The run config's `data` section is the data package's own DataConfig (one
    declaration of every field), and its errors name `data.<field>` directly."""
    from bert_ipu.config import Config
    from bert_ipu.data import DataConfig

    assert Config.__dataclass_fields__["data"].default_factory is DataConfig
    with pytest.raises(ConfigError, match=r"^data\.mask_tokens: expected"):
        DataConfig(mask_tokens=0)
    with pytest.raises(ConfigError, match=r"^data\.vocab_size: expected an integer > 5"):
        load_config(None, ["data.vocab_size=5"])