"""Fine-tune an exported model on a classification or regression task with the
`transformers` Trainer (AutoTokenizer + AutoModelForSequenceClassification), dense (the
usual practice) or keeping the pre-trained block-sparsity of the encoder linears.

    results = finetune("exported/demo", load_task("glue_data/SST-2"), FinetuneSettings(),
                       save_dir="runs/sst2-model")

The Trainer runs the loop (linear warm-up and decay, AdamW, seeded shuffling, evaluation
every `eval_steps` or every epoch, a progress bar on a terminal); this module adds the
task's metrics, the step lines that name the model, the thread count, and
`keep_sparsity`: the exported pattern is applied with `sparse_ops.sparsify` (the public
API that replaces nn.Linear layers by compressed SparseLinear; only the active blocks and
their optimizer state exist) and densified back to nn.Linear for `save_pretrained`.
Loading drops the exported model's pre-training heads (MLM, NSP) and initialises a new
classifier head from `seed`; transformers' load report saying so is not shown.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from bert_ipu.finetune.data import Split, Task, TaskError
from bert_ipu.finetune.metrics import classification_metrics, regression_metrics
from bert_ipu.schema import check_ranges, coerce_fields, nonneg, pos, unit
from bert_ipu.logs import Log

SAVED_MARKER = ".dynsp-finetuned"
"""In a folder `finetune` saved a model to: a later --save may replace it (nothing else)."""


@dataclass(frozen=True)
class FinetuneSettings:
    """The fine-tuning settings (`--epochs` ... on the command line)."""

    SECTION: ClassVar[str] = "finetune"
    epochs: float = 3.0
    """Passes over the training split (fractions allowed)."""
    learning_rate: float = 5e-5
    """Peak AdamW learning rate (linear warm-up, then linear decay to 0)."""
    batch_size: int = 32
    max_length: int = 128
    """Tokens per example ([CLS] A [SEP] B [SEP], truncated)."""
    seed: int = 0
    """Seeds the classifier head, a random-init model and the shuffling."""
    warmup: float = 0.1
    """Fraction of the steps with a linear learning-rate warm-up."""
    weight_decay: float = 0.01
    eval_steps: int = 0
    """Evaluate every N steps (0: after every epoch); always at the end."""
    threads: int | None = None
    """torch CPU threads (null: torch's default)."""
    keep_sparsity: bool = False
    """Keep the pre-trained sparsity: only the active blocks train (needs the --sparse export)."""
    random_init: bool = False
    """Same architecture, randomly initialised (the baseline for the pre-trained weights)."""
    progress: bool = True
    """The Trainer's progress bar (on a terminal)."""

    def __post_init__(self) -> None:
        coerce_fields(self, self.SECTION)
        check_ranges(self, {
            "epochs": (lambda v: pos(v) and math.isfinite(v), "a finite number > 0"),
            "learning_rate": (lambda v: pos(v) and math.isfinite(v), "a finite number > 0"),
            "batch_size": (pos, "an integer > 0"), "max_length": (pos, "an integer > 0"),
            "seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32 - 1]"),
            "warmup": (unit, "a fraction in [0, 1]"),
            "weight_decay": (lambda v: nonneg(v) and math.isfinite(v), "a finite number >= 0"),
            "eval_steps": (nonneg, "an integer >= 0"), "threads": (pos, "an integer > 0 or null")})


def _block_patterns(model_dir: Path, hf_model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """HF module name -> (block rows, block cols, block size) of the exported pattern
    (sparse/model.safetensors of a --sparse export)."""
    from bert_ipu.hub.sparse import FILE
    from bert_ipu.userfiles import UserFileError, read_safetensors

    file = model_dir / "sparse" / FILE
    if not file.is_file():
        raise TaskError(f"--keep-sparsity: {file} is missing; export the model with --sparse")
    modules = dict(hf_model.named_modules())
    out = {}
    try:
        tensors, meta = read_safetensors(file, "compressed model")
        block = int(meta["block_size"])
        for key in tensors:
            if key.endswith(".rows"):
                name = key[:-len(".rows")]
                hf_name = name if name in modules else name.removeprefix("bert.")
                if not isinstance(modules.get(hf_name), nn.Linear):
                    raise KeyError(hf_name)
                out[hf_name] = (tensors[key].long(), tensors[name + ".cols"].long(), block)
    except UserFileError as exc:
        raise TaskError(f"--keep-sparsity: {exc}") from None
    except (KeyError, ValueError, IndexError, RuntimeError) as exc:
        raise TaskError(f"--keep-sparsity: {file} does not fit the model in --model: "
                        f"{type(exc).__name__} {str(exc)[:200]}") from None
    return out


def keep_pretrained_sparsity(model_dir: Path, model: nn.Module) -> list[str]:
    """Replace the encoder linears by compressed SparseLinear holding exactly the exported
    pattern (`sparse_ops.sparsify`, per layer, magnitude init: the inactive blocks are
    zero in the dense export, so the largest blocks are the active ones; checked)."""
    from sparse_ops import sparsify

    patterns = _block_patterns(model_dir, model)
    modules = dict(model.named_modules())
    for name, (rows, cols, block) in patterns.items():
        weight = modules[name].weight
        total = (weight.shape[0] // block) * (weight.shape[1] // block)
        sparsify(model, sparsity=1 - len(rows) / total, block_size=block, patterns=[name],
                 init="magnitude")
        layer = model.get_submodule(name)
        got = sorted(zip(layer.rows.tolist(), layer.cols.tolist()))
        if got != sorted(zip(rows.tolist(), cols.tolist())):
            raise TaskError(f"--keep-sparsity: layer {name}: the dense weights of --model do not "
                            "match its sparse pattern (an active block is all zero?)")
    return sorted(patterns)


def load_models(model_dir: Path, task: Task, s: FinetuneSettings) -> tuple[Any, nn.Module]:
    """(tokenizer, sequence-classification model) from an exported folder."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not (model_dir / "config.json").is_file():
        raise TaskError(f"--model {model_dir}: no config.json; expected an exported model "
                        "folder (python -m bert_ipu.export CHECKPOINT OUT_DIR)")
    regression = task.kind == "regression"
    try:
        config = AutoConfig.from_pretrained(
            str(model_dir), num_labels=1 if regression else len(task.label_names),
            problem_type="regression" if regression else "single_label_classification")
        limit = int(getattr(config, "max_position_embeddings", s.max_length))
        if s.max_length > limit:
            raise TaskError(f"--max-length: expected at most {limit} (the model's "
                            f"max_position_embeddings), got {s.max_length}")
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        torch.manual_seed(s.seed)  # the classifier head (and a random-init model) are seeded
        if s.random_init:
            return tok, AutoModelForSequenceClassification.from_config(config)
        # its load report lists the pre-training heads as unused and the classifier as
        # new: expected when fine-tuning, and said once in the module docstring instead
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return tok, AutoModelForSequenceClassification.from_pretrained(str(model_dir), config=config)
        finally:
            hf_logging.set_verbosity(verbosity)
    except TaskError:
        raise
    except Exception as exc:  # transformers / safetensors / tokenizers: an unusable folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TaskError(f"--model {model_dir}: cannot load the exported model: {first[:300]}") from None


class Examples(torch.utils.data.Dataset):
    """Tokenized examples ([CLS] A [SEP] B [SEP], truncated to max_length) with labels."""

    def __init__(self, tok: Any, split: Split, max_length: int) -> None:
        enc = tok(split.texts_a, split.texts_b, truncation=True, max_length=max_length)
        self.rows = [{**{k: enc[k][i] for k in enc.keys()}, "labels": split.labels[i]}
                     for i in range(len(split.labels))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def task_metrics(task: Task) -> Callable[[Any], dict[str, float]]:
    """The Trainer's `compute_metrics` for the task's kind."""
    def compute(prediction: Any) -> dict[str, float]:
        logits = torch.as_tensor(prediction.predictions)
        gold = torch.as_tensor(prediction.label_ids)
        if task.kind == "regression":
            return regression_metrics(logits.view(-1), gold.view(-1))
        return classification_metrics(logits.argmax(-1), gold, len(task.label_names))
    return compute


def _step_lines(name: str, log: Log) -> Any:
    """A TrainerCallback: one line per evaluation naming the model, kept for the results."""
    from transformers import TrainerCallback

    class StepLines(TrainerCallback):
        def __init__(self) -> None:
            self.evaluations: list[dict[str, Any]] = []
            self.train_loss: float | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            if logs and isinstance(logs.get("loss"), (int, float)):
                self.train_loss = float(logs["loss"])   # mean since the previous log

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None,
                        **kwargs: Any) -> None:
            row = {"step": int(state.global_step),
                   **({} if self.train_loss is None else {"train_loss": self.train_loss}),
                   **{k.removeprefix("eval_"): v for k, v in (metrics or {}).items()
                      if k.startswith("eval_") and isinstance(v, (int, float))}}
            self.evaluations.append(row)
            shown = " ".join(f"{k} {row[k]:.4f}" for k in (
                "train_loss", "loss", "accuracy", "f1", "mcc", "pearson", "spearman") if k in row)
            log(f"{time.strftime('%Y-%m-%d %H:%M:%S')} finetune [{name}]: step "
                f"{row['step']}/{state.max_steps} {shown}")

    return StepLines()


def quiet_log_dicts(trainer: Any, progress: bool) -> None:
    """The step lines above say what the Trainer's printed log dicts would: those go
    (its PrinterCallback, and the dicts its progress bar writes), the bar stays."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class Bar(ProgressCallback):
        def on_log(self, *args: Any, **kwargs: Any) -> None:
            """No log dict above the bar."""

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(Bar)


def _check_save_dir(save_dir: Path) -> None:
    """A new or empty folder, or one an earlier `finetune --save` wrote (never anything else)."""
    if save_dir.exists() and (not save_dir.is_dir() or (
            any(save_dir.iterdir()) and not (save_dir / SAVED_MARKER).is_file())):
        raise TaskError(f"--save {save_dir}: exists and is not a model folder saved by "
                        "finetune; it is never replaced; choose a new folder")


def save_model(trainer: Any, tok: Any, save_dir: Path, sparse_names: list[str]) -> None:
    """The fine-tuned model (dense nn.Linear form: loadable with from_pretrained anywhere)
    and its tokenizer, written to a temporary sibling and renamed into place."""
    from sparse_ops import densify

    if sparse_names:
        densify(trainer.model, sparse_names)
    tmp = save_dir.with_name(f".{save_dir.name}.tmp-{os.getpid()}")
    try:
        trainer.save_model(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / SAVED_MARKER).write_text("")
        if save_dir.exists():
            old = save_dir.with_name(f".{save_dir.name}.old-{os.getpid()}")
            os.replace(save_dir, old)
            os.replace(tmp, save_dir)
            shutil.rmtree(old)   # an earlier finetune --save (checked): ours to replace
        else:
            os.replace(tmp, save_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def finetune(model_dir: str | Path, task: Task, s: FinetuneSettings,
             log: Log = print, save_dir: str | Path | None = None
             ) -> dict[str, Any]:
    """Fine-tune with the Trainer and evaluate; returns the results (settings, every
    evaluation, final); the fine-tuned model goes to `save_dir` when given."""
    import tempfile

    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    start, model_dir = time.perf_counter(), Path(model_dir)
    save = Path(save_dir).expanduser() if save_dir else None
    if save is not None:
        _check_save_dir(save)
    if s.threads:
        torch.set_num_threads(s.threads)
    tok, model = load_models(model_dir, task, s)
    sparse_names = keep_pretrained_sparsity(model_dir, model) if s.keep_sparsity else []
    train, held_out = Examples(tok, task.train, s.max_length), Examples(tok, task.eval, s.max_length)
    per_epoch = math.ceil(len(train) / s.batch_size)
    total = max(1, math.ceil(s.epochs * per_epoch))
    name = f"{'random-init' if s.random_init else 'pre-trained'} {model_dir.name}"
    lines = _step_lines(name, log)
    with tempfile.TemporaryDirectory(prefix="finetune-") as scratch:
        args = TrainingArguments(
            output_dir=scratch, max_steps=total, learning_rate=s.learning_rate,
            per_device_train_batch_size=s.batch_size, per_device_eval_batch_size=s.batch_size,
            warmup_steps=int(s.warmup * total), weight_decay=s.weight_decay,
            lr_scheduler_type="linear", seed=s.seed, data_seed=s.seed,
            eval_strategy="steps", eval_steps=s.eval_steps or per_epoch,
            logging_strategy="steps", logging_steps=s.eval_steps or per_epoch,
            save_strategy="no", report_to=[], disable_tqdm=not s.progress,
            use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=held_out,
                          data_collator=DataCollatorWithPadding(tok),
                          compute_metrics=task_metrics(task), callbacks=[lines])
        quiet_log_dicts(trainer, s.progress)
        trainer.train()
        if not lines.evaluations or lines.evaluations[-1]["step"] != total:
            trainer.evaluate()
        if save is not None:
            save_model(trainer, tok, save, sparse_names)
    evals = lines.evaluations
    params = dict(trainer.model.named_parameters())
    key = "pearson" if task.kind == "regression" else "accuracy"
    return {"model": str(model_dir), "task": task.name, "kind": task.kind,
            "labels": task.label_names, "train_examples": len(train),
            "eval_examples": len(held_out), "steps": total, "settings": asdict(s),
            "evaluations": evals, "final": evals[-1], f"best_{key}": max(e[key] for e in evals),
            "sparse_layers": len(sparse_names), "saved": str(save) if save else None,
            "weights": sum(p.numel() for p in params.values()),
            "time_s": time.perf_counter() - start}


def settings_from(values: dict[str, Any]) -> FinetuneSettings:
    """FinetuneSettings of the given fields (ConfigError naming `finetune.FIELD`)."""
    names = {f.name for f in dataclasses.fields(FinetuneSettings)}
    return FinetuneSettings(**{k: v for k, v in values.items() if k in names})


__all__ = ["FinetuneSettings", "finetune", "settings_from"]
