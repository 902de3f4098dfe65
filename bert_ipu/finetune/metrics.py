"""Classification metrics: accuracy, F1 (binary: class 1 positive; else macro) and
Matthews correlation (multi-class, Gorodkin's R_K), from integer predictions and labels."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def confusion(pred: Tensor, gold: Tensor, k: int) -> Tensor:
    """[k, k] int64 counts, rows = gold class, columns = predicted class."""
    return torch.bincount(gold.long() * k + pred.long(), minlength=k * k).view(k, k)


def f1_score(c: Tensor) -> float:
    """Binary F1 of class 1, or the macro F1 over classes when k > 2."""
    tp = c.diag().double()
    precision = tp / c.sum(0).double().clamp_min(1)
    recall = tp / c.sum(1).double().clamp_min(1)
    f1 = torch.where(tp > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                     torch.zeros_like(tp))
    return float(f1[1]) if c.shape[0] == 2 else float(f1.mean())


def matthews(c: Tensor) -> float:
    """Matthews correlation coefficient of a k x k confusion matrix (0 when undefined)."""
    c = c.double()
    t, p, n = c.sum(1), c.sum(0), c.sum()
    correct = c.diag().sum()
    cov = correct * n - (t * p).sum()
    denom = math.sqrt(float(n * n - (p * p).sum())) * math.sqrt(float(n * n - (t * t).sum()))
    return float(cov) / denom if denom > 0 else 0.0


def classification_metrics(pred: Tensor, gold: Tensor, k: int) -> dict[str, float]:
    """{"accuracy", "f1", "mcc", "examples"} of predictions [N] against labels [N]."""
    c = confusion(pred, gold, k)
    return {"accuracy": float(c.diag().sum()) / max(int(c.sum()), 1), "f1": f1_score(c),
            "mcc": matthews(c), "examples": int(c.sum())}
