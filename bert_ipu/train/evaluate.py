"""Held-out evaluation (fixed masks): MLM loss/accuracy and NSP loss/accuracy.

Losses are averaged over predictions (MLM, weighted by `masked_lm_weights`) and over
sequences (NSP) across the whole split, not per batch. Evaluation uses no random
numbers (dropout is off, masks are fixed), so it never disturbs an exact resume.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from bert_ipu.train.precision import autocast

EVAL_KEYS = ("mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch dict to `device` (non-tensors pass through)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def eval_batches(dataset: Any, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """The held-out split in order, in batches of `batch_size` (the last may be short).

    `dataset.batch(indices)` collates (PretrainingDataset); the masks are fixed."""
    for start in range(0, len(dataset), batch_size):
        yield dataset.batch(range(start, min(start + batch_size, len(dataset))))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    precision: str,
    device: torch.device,
    max_batches: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, float] | None:
    """Mean held-out MLM loss and accuracy, NSP loss and accuracy, and the counts.

    `should_stop` is polled before every batch; when it turns true the evaluation is
    abandoned and None returned (a SIGTERM must not wait for a whole evaluation:
    pre-emption grace periods are seconds)."""
    was_training = model.training
    model.eval()
    sums = dict.fromkeys(("mlm_loss", "mlm_correct", "mlm_count",
                          "nsp_loss", "nsp_correct", "nsp_count"), 0.0)
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            if should_stop is not None and should_stop():
                return None
            with autocast(precision, device):
                out = model(**to_device(batch, device))
            accumulate_eval(sums, out)
    finally:
        model.train(was_training)
    return eval_means(sums)


def accumulate_eval(sums: dict[str, float], out: Any) -> None:
    """Add one batch's output (its losses, correct and counts) to the running sums."""
    mlm_count, nsp_count = float(out.mlm_count), float(out.nsp_count)
    sums["mlm_loss"] += float(out.mlm_loss) * mlm_count
    sums["mlm_correct"] += float(out.mlm_correct)
    sums["mlm_count"] += mlm_count
    sums["nsp_loss"] += float(out.nsp_loss) * nsp_count
    sums["nsp_correct"] += float(out.nsp_correct)
    sums["nsp_count"] += nsp_count


def eval_means(sums: dict[str, float]) -> dict[str, float]:
    """The split's means from the sums (averaged over predictions and sequences)."""
    mlm, nsp = max(sums["mlm_count"], 1e-9), max(sums["nsp_count"], 1e-9)
    return {
        "mlm_loss": sums["mlm_loss"] / mlm,
        "mlm_accuracy": sums["mlm_correct"] / mlm,
        "nsp_loss": sums["nsp_loss"] / nsp,
        "nsp_accuracy": sums["nsp_correct"] / nsp,
        "mlm_predictions": sums["mlm_count"],
        "sequences": sums["nsp_count"],
    }
