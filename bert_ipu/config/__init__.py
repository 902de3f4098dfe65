"""The run configuration: one frozen, typed dataclass tree loaded from YAML.

Precedence is CLI > YAML > defaults:

    cfg = load_config("configs/demo.yaml", ["training.learning_rate=1e-3", "model.size=tiny"])

Every bad input (unknown key at any depth, wrong type, out-of-range value, invalid YAML,
bad `key=value` syntax) raises `ConfigError` naming the dotted path, the expectation and
the value. Sections validate themselves on construction and `Config` checks the
cross-section rules, so every `Config` that exists is valid. YAML files may use
`extends: PATH` (see `bert_ipu.schema`).

Resolution (done once, written into the saved config): `model.size` fills the model
shape fields left null (explicit fields win; FFN = 4H and head size 64 when not given);
`model.vocab_size` defaults to the size of `data.vocab_file` when one is given, else to
`data.vocab_size`; `data.seed` and `sparsity.seed` default
to `training.seed`; `output_dir` defaults to `runs/<name>` and
`checkpoint.checkpoint_output_dir` to `<output_dir>/checkpoints`.

Decisions: `sparsity.method: dense` requires `sparsity.sparsity: 0`, and `static` /
`dynamic` require 0 < sparsity < 1 (a contradictory pair is an error, never ignored);
`training.training_steps`, when set, overrides `training.epochs`; `training.lr_warmup`
is a step count (int) or a fraction of the run (float in [0, 1)); block-size
divisibility is only checked for sparse methods.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from bert_ipu.schema import (
    ConfigError, apply_overrides, coerce_fields, dump_yaml, fail, from_dict, need as _need,
    read_yaml_tree, tags, to_dict,
)
from bert_ipu.config.sections import (
    CheckpointConfig, LoggingConfig, ModelConfig, SparsityConfig, TrainingConfig,
)
from bert_ipu.data.config import SPECIAL_TOKENS, DataConfig, vocab_file_size

__all__ = [
    "Config", "ConfigError", "ModelConfig", "SparsityConfig", "DataConfig", "TrainingConfig",
    "CheckpointConfig", "LoggingConfig", "load_config", "config_from_dict", "config_to_dict",
    "save_config", "applied_config_dict",
]


@dataclass(frozen=True)
class Config:
    """A whole run; see the module docstring for resolution and precedence."""

    SECTION: ClassVar[str] = ""
    name: str = field(default="bert", metadata=tags("identity"))
    """Run name (used in the default output_dir)."""
    output_dir: str | None = field(default=None, metadata=tags("identity"))
    """Run folder: config.yaml, metrics.jsonl, eval.json, checkpoints (null: runs/<name>)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """BERT shape."""
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    """Sparse linears and DynSp."""
    data: DataConfig = field(default_factory=DataConfig)
    """Corpus, tokenizer, examples."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Optimisation and devices."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints and resume."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metrics and evaluation."""

    def __post_init__(self) -> None:
        coerce_fields(self, self.SECTION)
        _need(len(self.name.strip()) > 0, "name", "a non-empty string", self.name)
        self._resolve()
        self._check_cross_section()

    def _set(self, section: str, **changes: Any) -> None:
        object.__setattr__(self, section, dataclasses.replace(getattr(self, section), **changes))

    def _resolve(self) -> None:
        if self.output_dir is None:
            object.__setattr__(self, "output_dir", f"runs/{self.name}")
        if self.checkpoint.checkpoint_output_dir is None:
            self._set("checkpoint", checkpoint_output_dir=f"{self.output_dir}/checkpoints")
        if self.model.vocab_size is None:  # the given vocabulary's size, else the trained one's
            given = vocab_file_size(self.data.vocab_file)
            if given is not None and given <= len(SPECIAL_TOKENS):
                raise ConfigError(
                    f"data.vocab_file: {self.data.vocab_file}: expected word tokens besides "
                    f"{' '.join(SPECIAL_TOKENS)}, got only {given} token(s)", "data.vocab_file")
            self._set("model", vocab_size=self.data.vocab_size if given is None else given)
        for section in ("data", "sparsity"):
            if getattr(self, section).seed is None:
                self._set(section, seed=self.training.seed)

    def _check_cross_section(self) -> None:
        m, s, d, t = self.model, self.sparsity, self.data, self.training
        if s.method != "dense":
            for name in ("hidden_size", "intermediate_size"):
                size = getattr(m, name)
                _need(size % s.block_size == 0, "sparsity.block_size",
                      f"a divisor of model.{name}={size}", s.block_size)
        _need(d.sequence_length <= m.max_position_embeddings, "data.sequence_length",
              f"<= model.max_position_embeddings={m.max_position_embeddings}", d.sequence_length)
        given = vocab_file_size(d.vocab_file)
        if given is not None:  # checked here, before any data is prepared
            _need(m.vocab_size >= given, "model.vocab_size",
                  f">= the {given} tokens of data.vocab_file={d.vocab_file} (or null to use "
                  "its size)", m.vocab_size)
        elif d.vocab_file is None:
            _need(m.vocab_size >= d.vocab_size, "model.vocab_size",
                  f">= data.vocab_size={d.vocab_size} (the trained vocabulary)", m.vocab_size)
        _need(m.pad_token_id < m.vocab_size, "model.pad_token_id",
              f"< model.vocab_size={m.vocab_size}", m.pad_token_id)
        if t.device == "ipu" and s.method != "dense":
            # the PopTorch step runner (train/ipu_step.py) applies the optimizer on the device:
            # it has no hook for the freeze ablation nor for RigL's dense-gradient capture
            _need(s.freeze_fraction == 0, "sparsity.freeze_fraction",
                  "0 with training.device=ipu (the IPU runner has no freeze ablation)", s.freeze_fraction)
            _need(not s.needs_gradient, "sparsity.regrow",
                  "a regrowth without dense gradients with training.device=ipu (the IPU runner "
                  "does not capture them)", s.regrow)
        if t.pipeline_layers is not None:
            key = "layers_per_stage" if t.layers_per_stage is not None else "layers_per_ipu"
            _need(sum(t.pipeline_layers) == m.num_hidden_layers, f"training.{key}",
                  f"entries summing to model.num_hidden_layers={m.num_hidden_layers}",
                  list(t.pipeline_layers))


# ---------------------------------------------------------------- public API
def config_from_dict(raw: Mapping[str, Any], overrides: list[str] | None = None) -> Config:
    """Config from a raw (YAML-like) dict with optional `key=value` overrides on top."""
    if not isinstance(raw, Mapping):
        raise fail("config", "a mapping of config sections", raw)
    return from_dict(Config, apply_overrides(raw, [] if overrides is None else overrides))


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (with `extends:`), apply `key=value` overrides, validate.

    `path=None` starts from the defaults. Raises ConfigError on any bad input."""
    raw = {} if path is None else read_yaml_tree(path)
    return config_from_dict(raw, overrides)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain data (sections as dicts, tuples as lists)."""
    return to_dict(cfg)


def applied_config_dict(cfg: Config) -> dict[str, Any]:
    """`config_to_dict` as the run used it (what a run saves): a dense run has no pattern,
    so its sparsity section is only `method` and `sparsity` (no block size, no update
    count); a static run makes no pattern update (`n_updates: 0`)."""
    out = config_to_dict(cfg)
    method = cfg.sparsity.method
    if method == "dense":
        out["sparsity"] = {k: out["sparsity"][k] for k in ("method", "sparsity")}
    elif method == "static":
        out["sparsity"]["n_updates"] = 0
    return out


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML, less the sparsity fields the method does not use
    (`applied_config_dict`); `load_config(path)` gives back a Config that runs the same."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Resolved configuration (defaults < YAML < CLI); reload with load_config.\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + dump_yaml(applied_config_dict(cfg)), encoding="utf-8")
    tmp.replace(path)
    return path
