"""Fine-tune an exported model on a classification task with `transformers`
(AutoTokenizer + AutoModelForSequenceClassification), dense (the usual practice) or
keeping the pre-trained block-sparsity pattern of the encoder linears.

    results = finetune("exported/demo", load_task("glue_data/SST-2"), FinetuneSettings())
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from bert_ipu.finetune.data import Split, Task, TaskError
from bert_ipu.finetune.metrics import classification_metrics


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: float = 3.0
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    seed: int = 0
    warmup: float = 0.1
    """Fraction of the steps with a linear learning-rate warm-up (then linear decay)."""
    weight_decay: float = 0.01
    eval_steps: int = 0
    """Evaluate every N steps (0: after every epoch); always at the end."""
    keep_sparsity: bool = False
    """Keep the pre-trained sparsity: inactive blocks stay zero (needs the --sparse export)."""
    random_init: bool = False
    """Same architecture, randomly initialised (the baseline for the pre-trained weights)."""


def sparsity_masks(model_dir: Path, hf_model: nn.Module) -> dict[str, Tensor]:
    """HF weight name -> [O, I] 0/1 mask of the active blocks, from sparse/model.safetensors."""
    from bert_ipu.hub.sparse import FILE
    from bert_ipu.userfiles import UserFileError, read_safetensors

    file = model_dir / "sparse" / FILE
    if not file.is_file():
        raise TaskError(f"--keep-sparsity: {file} is missing; export the model with --sparse")
    params = dict(hf_model.named_parameters())
    masks = {}
    try:
        tensors, meta = read_safetensors(file, "compressed model")
        B = int(meta["block_size"])
        for key in tensors:
            if key.endswith(".rows"):
                name = key[:-len(".rows")]
                rows, cols = tensors[key].long(), tensors[name + ".cols"].long()
                weight = params[_hf_name(name, params) + ".weight"]
                blocks = torch.zeros(weight.shape[0] // B, weight.shape[1] // B)
                blocks[rows, cols] = 1.0
                masks[_hf_name(name, params) + ".weight"] = blocks.repeat_interleave(
                    B, 0).repeat_interleave(B, 1)
    except UserFileError as exc:
        raise TaskError(f"--keep-sparsity: {exc}") from None
    except (KeyError, ValueError, IndexError, RuntimeError) as exc:
        raise TaskError(f"--keep-sparsity: {file} does not fit the model in --model: "
                        f"{type(exc).__name__} {str(exc)[:200]}") from None
    return masks


def _hf_name(name: str, params: dict[str, nn.Parameter]) -> str:
    """Our module name in the sequence-classification model (no `cls.` head there)."""
    return name if name + ".weight" in params else name.removeprefix("bert.")


def load_models(model_dir: Path, k: int, s: FinetuneSettings) -> tuple[Any, nn.Module]:
    """(tokenizer, sequence-classification model) from an exported folder."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise TaskError(f"--model {model_dir}: no config.json; expected an exported model "
                        "folder (python -m bert_ipu.export CHECKPOINT OUT_DIR)")
    try:
        config = AutoConfig.from_pretrained(str(model_dir), num_labels=k)
        limit = int(getattr(config, "max_position_embeddings", s.max_length))
        if s.max_length > limit:
            raise TaskError(f"--max-length: expected at most {limit} (the model's "
                            f"max_position_embeddings), got {s.max_length}")
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        torch.manual_seed(s.seed)  # the classifier head (and a random-init model) are seeded
        if s.random_init:
            return tok, AutoModelForSequenceClassification.from_config(config)
        return tok, AutoModelForSequenceClassification.from_pretrained(str(model_dir), config=config)
    except TaskError:
        raise
    except Exception as exc:  # transformers / safetensors / tokenizers: an unusable folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TaskError(f"--model {model_dir}: cannot load the exported model: {first[:300]}") from None


def encode(tok: Any, split: Split, max_length: int) -> list[dict[str, list[int]]]:
    """Tokenized examples (with [CLS]/[SEP], truncated to max_length), label attached."""
    enc = tok(split.texts_a, split.texts_b, truncation=True, max_length=max_length)
    return [{**{k: enc[k][i] for k in enc.keys()}, "labels": split.labels[i]}
            for i in range(len(split.labels))]


def batches(tok: Any, examples: list[dict], size: int, order: list[int]):
    for start in range(0, len(order), size):
        yield tok.pad([examples[i] for i in order[start:start + size]], return_tensors="pt")


@torch.no_grad()
def evaluate(model: nn.Module, tok: Any, examples: list[dict], k: int, size: int) -> dict[str, float]:
    """Loss and metrics on `examples` (model in eval mode, restored to train mode)."""
    model.eval()
    preds, golds, loss = [], [], 0.0
    for batch in batches(tok, examples, size, list(range(len(examples)))):
        out = model(**batch)
        loss += float(out.loss) * len(batch["labels"])
        preds.append(out.logits.argmax(-1))
        golds.append(batch["labels"])
    model.train()
    result = classification_metrics(torch.cat(preds), torch.cat(golds), k)
    return {"loss": loss / len(examples), **result}


def finetune(model_dir: str | Path, task: Task, s: FinetuneSettings,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune and evaluate; returns the results (settings, every evaluation, final)."""
    from transformers import get_linear_schedule_with_warmup

    start, model_dir, k = time.perf_counter(), Path(model_dir), len(task.label_names)
    tok, model = load_models(model_dir, k, s)
    masks = sparsity_masks(model_dir, model) if s.keep_sparsity else {}
    params = dict(model.named_parameters())
    train, held_out = encode(tok, task.train, s.max_length), encode(tok, task.eval, s.max_length)
    per_epoch = math.ceil(len(train) / s.batch_size)
    total = max(1, math.ceil(s.epochs * per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.learning_rate,
                                  weight_decay=s.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(s.warmup * total), total)
    gen, step, evals = torch.Generator().manual_seed(s.seed), 0, []
    _apply_masks(params, masks)
    model.train()
    while step < total:
        order = torch.randperm(len(train), generator=gen).tolist()
        for batch in batches(tok, train, s.batch_size, order):
            model(**batch).loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            _apply_masks(params, masks)
            step += 1
            every = s.eval_steps or per_epoch
            if step % every == 0 or step == total:
                evals.append({"step": step, **evaluate(model, tok, held_out, k, s.batch_size)})
                log(f"finetune: step {step}/{total} " + " ".join(
                    f"{m} {evals[-1][m]:.4f}" for m in ("loss", "accuracy", "f1", "mcc")))
            if step == total:
                break
    return {"model": str(model_dir), "task": task.name, "labels": task.label_names,
            "train_examples": len(train), "eval_examples": len(held_out), "steps": total,
            "settings": asdict(s), "evaluations": evals, "final": evals[-1],
            "best_accuracy": max(e["accuracy"] for e in evals),
            "inactive_nonzero": sum(int((params[n] * (1 - m)).count_nonzero()) for n, m in masks.items()),
            "time_s": time.perf_counter() - start}


@torch.no_grad()
def _apply_masks(params: dict[str, nn.Parameter], masks: dict[str, Tensor]) -> None:
    """Inactive blocks back to zero after every update (AdamW moves them otherwise)."""
    for name, mask in masks.items():
        params[name].mul_(mask)
