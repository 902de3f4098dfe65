"""Fine-tuning metrics. Classification: accuracy, F1 (binary: class 1 positive; else macro)
and Matthews correlation (multi-class, Gorodkin's R_K) from integer predictions and labels;
regression: Pearson and Spearman correlation and the mean squared error."""
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


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (ties share the mean of their positions), float64."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.bincount(inverse, minlength=len(values)).double()
    return (sums / counts)[inverse]


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two [N] tensors (0 when either is constant)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else 0.0


def regression_metrics(pred: Tensor, gold: Tensor) -> dict[str, float]:
    """{"pearson", "spearman", "mse", "examples"} of predictions [N] against targets [N]."""
    pred, gold = pred.double().flatten(), gold.double().flatten()
    return {"pearson": pearson(pred, gold), "spearman": pearson(_ranks(pred), _ranks(gold)),
            "mse": float(((pred - gold) ** 2).mean()) if len(gold) else math.nan,
            "examples": len(gold)}
