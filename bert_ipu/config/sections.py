"""The sections of the run configuration (`bert_ipu.config` assembles them into `Config`).

Each section is a frozen dataclass with a one-line docstring under every field; it
checks its own types and ranges on construction (cross-section rules live in
`Config`). Field names mirror Graphcore's PopTorch BERT where those exist and Hugging
Face's BertConfig for the model (docs/config_reference.md lists every key).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from bert_ipu.schema import (
    ConfigError, check_ranges as _check_ranges, choices, coerce_fields, fail, need as _need,
    nonneg as _nonneg, pos as _pos, tags, unit_open as _unit_open,
)
from bert_ipu.devices import device_kinds
from bert_ipu.devices.pipeline import PIPELINE_SCHEDULES
from bert_ipu.model.sizes import MODEL_SIZES
from bert_ipu.devices.base import PRECISIONS
from bert_ipu.trackers import TRACKERS
from sparse_ops.dynsp.distribution import DISTRIBUTIONS
from sparse_ops.dynsp.settings import DynSpSettings, SettingsError
from sparse_ops.format import VALID_BLOCK_SIZES
from sparse_ops.kernels import AUTO, backend_names
from sparse_ops.linear import INACTIVE_MODES

__all__ = ["ModelConfig", "SparsityConfig", "TrainingConfig",
           "CheckpointConfig", "LoggingConfig"]


LR_SCHEDULES = ("linear", "constant", "cosine")
"""training.lr_schedule (bert_ipu/train/optim.py: lr_at implements each)."""


def _seed(v: int) -> bool:
    return 0 <= v < 2**63


def default_heads(hidden_size: int) -> int:
    """Attention heads when model.num_attention_heads is null: head size 64."""
    return max(hidden_size // 64, 1)


def default_intermediate(hidden_size: int) -> int:
    """FFN width when model.intermediate_size is null: 4H."""
    return 4 * hidden_size


@dataclass(frozen=True)
class ModelConfig:
    """BERT shape (Hugging Face BertConfig names) and regularisation."""

    SECTION: ClassVar[str] = "model"
    size: str | None = field(default="base", metadata={**choices(lambda: tuple(MODEL_SIZES)),
                                                      **tags("context", label="size")})
    """Size preset (bert_ipu/model/sizes.py: tiny..base) filling the shape fields left null."""
    hidden_size: int | None = field(default=None, metadata=tags("structural", "context",
                                                               label="hidden_size"))
    """Hidden width H (null: from `size`)."""
    num_hidden_layers: int | None = field(default=None, metadata=tags("structural"))
    """Encoder layers L (null: from `size`)."""
    num_attention_heads: int | None = field(default=None, metadata=tags("structural"))
    """Attention heads (null: H / 64); must divide hidden_size."""
    intermediate_size: int | None = field(default=None, metadata=tags("structural"))
    """FFN width (null: 4H)."""
    vocab_size: int | None = field(default=None, metadata=tags("structural"))
    """Embedding rows (null: the size of data.vocab_file, else data.vocab_size); >= the vocabulary."""
    max_position_embeddings: int = field(default=512, metadata=tags("structural"))
    """Position embedding rows; must be >= data.sequence_length."""
    type_vocab_size: int = field(default=2, metadata=tags("structural"))
    """Segment ids (2 for NSP pairs)."""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings and sub-layer outputs."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on attention probabilities."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon."""
    initializer_range: float = 0.02
    """Std of the truncated-normal init (cut at 2 std)."""
    pad_token_id: int = 0
    """Id of [PAD] (its embedding row starts at zero and gets no gradient)."""

    def __post_init__(self) -> None:
        coerce_fields(self, self.SECTION)
        for name in ("hidden_size", "num_hidden_layers"):
            if getattr(self, name) is None:
                _need(self.size is not None, f"model.{name}", "an integer when model.size "
                      "is null", None)
                object.__setattr__(self, name, getattr(MODEL_SIZES[self.size], name))
        # heads and FFN width left null: the preset's own when its hidden size is kept, else
        # the family's rule for the given H (H / 64 heads, FFN 4H)
        preset = MODEL_SIZES[self.size] if self.size is not None else None
        own = preset is not None and preset.hidden_size == self.hidden_size
        if self.num_attention_heads is None:
            object.__setattr__(self, "num_attention_heads", preset.num_attention_heads if own
                               else default_heads(self.hidden_size))
        if self.intermediate_size is None:
            object.__setattr__(self, "intermediate_size", preset.intermediate_size if own
                               else default_intermediate(self.hidden_size))
        _check_ranges(self, {
            "hidden_size": (_pos, "an integer > 0"),
            "num_hidden_layers": (_pos, "an integer > 0"),
            "num_attention_heads": (_pos, "an integer > 0"),
            "intermediate_size": (_pos, "an integer > 0"),
            "vocab_size": (lambda v: v >= 8, "an integer >= 8"),
            "max_position_embeddings": (_pos, "an integer > 0"),
            "type_vocab_size": (lambda v: v >= 2, "an integer >= 2 (NSP segments)"),
            "hidden_dropout_prob": (_unit_open, "a probability in [0, 1)"),
            "attention_probs_dropout_prob": (_unit_open, "a probability in [0, 1)"),
            "layer_norm_eps": (_pos, "a number > 0"),
            "initializer_range": (_pos, "a number > 0"),
            "pad_token_id": (_nonneg, "an integer >= 0"),
        })
        _need(self.hidden_size % self.num_attention_heads == 0, "model.num_attention_heads",
              f"a divisor of model.hidden_size={self.hidden_size}", self.num_attention_heads)


@dataclass(frozen=True)
class SparsityConfig(DynSpSettings):
    """Sparse encoder linears and their DynSp pattern updates.

    The pattern-update fields (regrow, n_updates, prune_ratio, prune_schedule,
    end_fraction, regrow_init, regrow_pruned, placement, seed) are declared once, by
    `sparse_ops.dynsp.DynSpSettings`, and this section *is* those settings: the run
    hands it to the DynSp controller as is."""

    SECTION: ClassVar[str] = "sparsity"
    TAGS: ClassVar[dict] = {  # fields declared by DynSpSettings
        "regrow": tags("context", label="regrow"), "n_updates": tags("context", label="n_updates"),
        "prune_ratio": tags("context", label="prune_ratio")}
    method: Literal["dense", "static", "dynamic"] = field(
        default="dense", metadata=tags("structural", "context", label="method"))
    """dense baseline, static random pattern, or dynamic (DynSp) pattern updates."""
    sparsity: float = field(default=0.0, metadata=tags("structural", "context", label="sparsity"))
    """Fraction of inactive blocks in every sparse layer, in [0, 1); 0 iff dense."""
    block_size: int = field(default=16, metadata={**choices(lambda: VALID_BLOCK_SIZES),
                                                  **tags("structural", "context", label="block_size")})
    """B x B blocks (1 = unstructured); must divide hidden and intermediate sizes."""
    distribution: str = field(default="uniform", metadata={**choices(lambda: DISTRIBUTIONS),
                                                           **tags("structural")})
    """Per-layer densities: the same everywhere (uniform), or erdos_renyi (same total)."""
    inactive: str = field(default="zero", metadata={**choices(lambda: INACTIVE_MODES),
                                                    **tags("structural", "context", label="inactive")})
    """Inactive weights are zeros, or frozen random values (mask-based ablation)."""
    freeze_fraction: float = 0.0
    """Fraction of weights frozen at random (ablation; 0 = off)."""
    freeze_until_step: int | None = field(default=None, metadata=tags("context", label="freeze_until_step"))
    """Frozen weights unfreeze at this step (first-half ablation)."""
    freeze_from_step: int | None = field(default=None, metadata=tags("context", label="freeze_from_step"))
    """Weights freeze from this step on (second-half ablation)."""
    backend: str = field(default="auto", metadata=choices(lambda: [AUTO] + backend_names()))
    """Sparse matmul kernel backend of SparseLinear (auto: each product timed once per problem on the CPU, cached on disk; fixed rules on other devices)."""
    seed: int | None = field(default=None, metadata=tags("identity"))
    """Seed of the initial patterns and of the pattern updates (null: training.seed)."""

    def __post_init__(self) -> None:
        coerce_fields(self, self.SECTION)
        try:
            self.check()  # the DynSpSettings fields, named by their config path
        except SettingsError as err:
            raise ConfigError(str(err), err.path, err.expected, err.value) from None
        _check_ranges(self, {
            "sparsity": (_unit_open, "a number in [0, 1)"),
            "freeze_fraction": (_unit_open, "a number in [0, 1)"),
            "freeze_until_step": (_nonneg, "an integer >= 0 or null"),
            "freeze_from_step": (_nonneg, "an integer >= 0 or null"),
        })
        if self.method == "dense":
            _need(self.sparsity == 0, "sparsity.sparsity", "0 with sparsity.method='dense' "
                  "(use method static or dynamic for a sparse model)", self.sparsity)
        else:
            _need(self.sparsity > 0, "sparsity.sparsity", f"a number in (0, 1) with "
                  f"sparsity.method={self.method!r} (use method dense for 0)", self.sparsity)
        _need(self.freeze_until_step is None or self.freeze_from_step is None,
              "sparsity.freeze_from_step", "null when sparsity.freeze_until_step is set",
              self.freeze_from_step)
        if self.freeze_fraction > 0:
            _need(self.freeze_until_step is not None or self.freeze_from_step is not None,
                  "sparsity.freeze_fraction", "0 unless freeze_until_step or "
                  "freeze_from_step is set", self.freeze_fraction)

    @property
    def needs_gradient(self) -> bool:
        """RigL-style updates happen in this run (dynamic method, gradient regrowth)."""
        return self.method == "dynamic" and super().needs_gradient

    def controller_settings(self) -> "SparsityConfig":
        """The settings the run's controller uses: as configured for `dynamic`, with no
        updates for `static` (a fixed random pattern)."""
        return self if self.method == "dynamic" else dataclasses.replace(self, n_updates=0)


# Beyond these a step's arithmetic overflows fp32 (AdamW's update, the scaled loss):
# no run can use them, so they are refused as input rather than found as a traceback.
MAX_LEARNING_RATE = 1e3
MAX_LOSS_SCALE = 2.0 ** 32


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation (AdamW, docs/algorithm.md), precision and devices."""

    SECTION: ClassVar[str] = "training"
    micro_batch_size: int = 32
    """Sequences per forward/backward pass (per replica)."""
    gradient_accumulation: int = 1
    """Micro-batches accumulated per optimizer step."""
    replication_factor: int = 1
    """Data-parallel replicas (torchrun ranks or IPU replicas)."""
    training_steps: int | None = None
    """Optimizer steps; overrides epochs when set."""
    epochs: float = 1.0
    """Passes over the training examples (used when training_steps is null)."""
    learning_rate: float = field(default=1e-4, metadata=tags("context", label="learning_rate"))
    """Peak learning rate."""
    lr_warmup: int | float = 10000
    """Warmup: steps (int) or a fraction of the run (float in [0, 1))."""
    lr_schedule: str = field(default="linear", metadata=choices(lambda: LR_SCHEDULES))
    """Decay after warmup."""
    weight_decay: float = 0.01
    """AdamW weight decay (never on biases and LayerNorm)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    adam_eps: float = 1e-6
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    precision: str = field(default="fp32", metadata=choices(lambda: PRECISIONS))
    """Matmul precision (auto: bf16 on CUDA and on CPUs with native bf16 matmuls, AMX or AVX512-BF16; else fp32); masters stay fp32."""
    loss_scaling: float = 512.0
    """fp16 static loss scale (the initial scale when auto_loss_scaling)."""
    auto_loss_scaling: bool = False
    """fp16 dynamic loss scaling: overflowing steps are skipped, the scale backs off."""
    loss_scaling_growth_interval: int = 2000
    """Dynamic loss scaling: the scale doubles after this many consecutive good steps."""
    max_nonfinite_steps: int = 10
    """Consecutive non-finite losses tolerated before the run stops."""
    max_skipped_steps: int = 100
    """fp16: consecutive overflow-skipped steps tolerated before the run stops (diverged)."""
    num_threads: int | None = None
    """CPU threads of torch (null: torch's default, one per core; 1 is often fastest on a busy machine)."""
    seed: int = field(default=42, metadata=tags("identity"))
    """Seed of weight init (and of data/sparsity when theirs are null)."""
    device: str = field(default="auto", metadata=choices(device_kinds))
    """Where to train (auto: cuda if available, else cpu)."""
    layers_per_ipu: tuple[int, ...] | None = None
    """Pipeline: encoder layers per stage (IPUs; on CPU/CUDA torchrun ranks running
    torch.distributed.pipelining); must sum to model.num_hidden_layers."""
    layers_per_stage: tuple[int, ...] | None = None
    """Device-neutral alias of layers_per_ipu (set one of them, or both equal)."""
    pipeline_schedule: str = field(default="gpipe", metadata=choices(lambda: PIPELINE_SCHEDULES))
    """CPU/CUDA pipeline schedule over the gradient_accumulation micro-batches."""
    compile: bool = False
    """Wrap the model in torch.compile."""

    def __post_init__(self) -> None:
        coerce_fields(self, self.SECTION)
        _check_ranges(self, {
            "micro_batch_size": (_pos, "an integer > 0"),
            "gradient_accumulation": (_pos, "an integer > 0"),
            "replication_factor": (_pos, "an integer > 0"),
            "training_steps": (_pos, "an integer > 0 or null"),
            "epochs": (_pos, "a number > 0"),
            "learning_rate": (lambda v: 0 < v <= MAX_LEARNING_RATE,
                              f"a number in (0, {MAX_LEARNING_RATE:g}]"),
            "lr_warmup": (lambda v: v >= 0 and (isinstance(v, int) or v < 1),
                          "a step count (integer >= 0) or a fraction (number in [0, 1))"),
            "weight_decay": (_nonneg, "a number >= 0"),
            "adam_betas": (lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
            "adam_eps": (_pos, "a number > 0"),
            "max_grad_norm": (_nonneg, "a number >= 0"),
            "loss_scaling": (lambda v: 0 < v <= MAX_LOSS_SCALE, "a number in (0, 2**32]"),
            "loss_scaling_growth_interval": (_pos, "an integer > 0"),
            "max_nonfinite_steps": (_nonneg, "an integer >= 0"),
            "max_skipped_steps": (_pos, "an integer > 0"),
            "num_threads": (_pos, "an integer > 0 or null"),
            "seed": (_seed, "an integer in [0, 2**63 - 1]"),
            "layers_per_ipu": (lambda v: len(v) > 0 and all(n >= 0 for n in v),
                               "a non-empty list of integers >= 0, or null"),
            "layers_per_stage": (lambda v: len(v) > 0 and all(n >= 0 for n in v),
                                 "a non-empty list of integers >= 0, or null"),
        })
        if None not in (self.layers_per_ipu, self.layers_per_stage) and \
                tuple(self.layers_per_ipu) != tuple(self.layers_per_stage):
            raise fail("training.layers_per_stage", "null or equal to training.layers_per_ipu "
                       f"{list(self.layers_per_ipu)} (an alias)", list(self.layers_per_stage))

    @property
    def pipeline_layers(self) -> tuple[int, ...] | None:
        """Encoder layers per pipeline stage (layers_per_stage or layers_per_ipu)."""
        return self.layers_per_stage or self.layers_per_ipu


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoint location, frequency, retention and resume (PopTorch BERT names)."""

    SECTION: ClassVar[str] = "checkpoint"
    SECTION_TAGS: ClassVar[tuple] = ("identity",)
    checkpoint_output_dir: str | None = None
    """Checkpoint folder (null: <output_dir>/checkpoints)."""
    checkpoint_steps: int = 1000
    """Save every N optimizer steps (0: only at the end)."""
    keep_last: int = 3
    """Checkpoints kept on disk (older ones are deleted)."""
    resume_training_from_checkpoint: str | None = None
    """null, `latest` (newest valid one in checkpoint_output_dir) or a checkpoint PATH."""
    init_from: str | None = None
    """Start from pre-trained weights and sparsity patterns: a checkpoint folder, a run folder
    or an exported folder (fresh optimizer, schedule and data; e.g. phase 2 at sequence
    length 512). Ignored when the run resumes from its own checkpoint."""
    export_dir: str | None = None
    """At the end of the run, export a Hugging Face folder here (python -m bert_ipu.export;
    sparse runs also get the compressed form)."""
    sharded: bool = True
    """Pipelined runs (training.layers_per_stage): every rank writes its own shard of a
    checkpoint, in parallel (torch.distributed.checkpoint), or, false, rank 0 gathers
    every stage's state and writes the single-process files (rank 0 then holds the
    whole model's state while it writes). Either kind resumes with any split."""

    def __post_init__(self) -> None:
        coerce_fields(self, self.SECTION)
        _check_ranges(self, {"checkpoint_steps": (_nonneg, "an integer >= 0"),
                             "keep_last": (_pos, "an integer > 0")})


@dataclass(frozen=True)
class LoggingConfig:
    """Metrics, evaluation and console output."""

    SECTION: ClassVar[str] = "logging"
    SECTION_TAGS: ClassVar[tuple] = ("identity",)
    RENAMED: ClassVar[dict] = {"tensorboard": lambda on: {"trackers": ["tensorboard"] if on else []}}
    log_steps: int = 10
    """Write a metrics.jsonl line every N optimizer steps."""
    eval_steps: int = 1000
    """Evaluate on the held-out split every N steps (0: only at the end)."""
    eval_batches: int | None = None
    """Held-out batches per evaluation (null: the whole split)."""
    trackers: tuple[str, ...] = field(default=("tensorboard",), metadata=choices(lambda: TRACKERS))
    """Experiment trackers that get every metric and the config: tensorboard (events in
    <output_dir>/tensorboard), wandb (offline unless WANDB_MODE is set), mlflow (a file
    store unless MLFLOW_TRACKING_URI is set), csv (<output_dir>/metrics.csv); [] for none."""
    tracker_project: str = "dynsp-bert"
    """wandb project; the MLflow experiment when tracker_group is null."""
    tracker_group: str | None = None
    """Runs reported together: the wandb group and the MLflow experiment (a sweep sets its name)."""
    tracker_dir: str | None = None
    """Where wandb's offline files and MLflow's file store go (null: the output folder; a
    sweep sets its output_root, so its runs share one store)."""
    progress_bar: bool = True
    """Show a progress bar with loss, sequences/s and ETA."""

    def __post_init__(self) -> None:
        coerce_fields(self, self.SECTION)
        _check_ranges(self, {"log_steps": (_pos, "an integer > 0"),
                             "eval_steps": (_nonneg, "an integer >= 0"),
                             "eval_batches": (_pos, "an integer > 0 or null")})
