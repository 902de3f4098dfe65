"""AdamW (docs/algorithm.md) and learning-rate schedules as pure functions of the step.

The schedule is a pure function, so its "state" in a checkpoint is only the step the
trainer already stores; `LRSchedule.state_dict()` records the parameters so that a
resume with a different schedule is detected.

Step numbering: optimizer step t = 0, 1, ..., T-1 uses lr(t). Warmup is linear from
lr/W at t = 0 to lr at t = W-1 (never a wasted zero-lr step), then the decay reaches 0
at t = T.

>>> s = LRSchedule(base_lr=1.0, total_steps=10, warmup_steps=2, kind="linear")
>>> [round(s(t), 3) for t in (0, 1, 2, 6, 9)]
[0.5, 1.0, 1.0, 0.5, 0.125]
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from bert_ipu.config.sections import LR_SCHEDULES

SCHEDULES = LR_SCHEDULES  # the config's names (bert_ipu/config/sections.py)
BETAS = (0.9, 0.999)
EPS = 1e-6


def warmup_steps_from(lr_warmup: float, total_steps: int) -> int:
    """Warmup length in steps: an int >= 1 is a step count, a float in [0, 1) a fraction.

    >>> warmup_steps_from(0.1, 1000), warmup_steps_from(500, 1000), warmup_steps_from(5000, 10)
    (100, 500, 10)
    """
    if lr_warmup < 0:
        raise ValueError(f"warmup_steps_from: lr_warmup must be >= 0, got {lr_warmup!r}")
    if isinstance(lr_warmup, float) and lr_warmup < 1.0:
        return int(round(lr_warmup * total_steps))
    return min(int(lr_warmup), total_steps)


def lr_at(step: int, base_lr: float, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Learning rate of optimizer step `step` (0-based); see the module docstring."""
    if kind not in SCHEDULES:
        raise ValueError(f"lr_at: kind must be one of {SCHEDULES}, got {kind!r}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return base_lr
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
    if kind == "linear":
        return base_lr * (1.0 - progress)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LRSchedule:
    """Warmup then `kind` decay; call with the 0-based optimizer step."""

    base_lr: float
    total_steps: int
    warmup_steps: int
    kind: str = "linear"

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"LRSchedule: kind must be one of {SCHEDULES}, got {self.kind!r}")
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                "LRSchedule: need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got "
                f"total_steps={self.total_steps!r}, warmup_steps={self.warmup_steps!r}"
            )

    def __call__(self, step: int) -> float:
        return lr_at(step, self.base_lr, self.total_steps, self.warmup_steps, self.kind)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_state_dict(self, state: dict[str, Any]) -> list[str]:
        """Names of the schedule fields that differ from a checkpoint's (for a warning)."""
        return [k for k, v in asdict(self).items() if state.get(k) != v]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices, embeddings and SparseLinear `values`
    (they are weights, like the dense ones); none on biases and LayerNorm parameters.
    Tied parameters appear once; frozen (requires_grad=False) ones are left out."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            plain = isinstance(module, nn.LayerNorm) or pname == "bias" or param.ndim == 1
            (no_decay if plain else decay).append(param)
    return [{"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    groups: Sequence[dict[str, Any]],
    lr: float,
    betas: tuple[float, float] = BETAS,
    eps: float = EPS,
) -> torch.optim.AdamW:
    """AdamW over parameter groups (each with its own `weight_decay`); moments fp32.

    The fused implementation (one vectorised pass per tensor; CPU and CUDA) where torch
    has it for these parameters: on a BERT-Base DynSp step its update took 37 ms against
    180 ms for the per-tensor loop (1 thread, Xeon AVX-512; docs/results/kernels.md), the
    dense 30,522 x 768 word embedding being most of it. Element by element it is
    independent of grouping and order, so it stays bitwise repeatable on one machine;
    elsewhere the per-tensor loop (`foreach=False`), with the same property."""
    if not lr > 0:
        raise ValueError(f"build_optimizer: lr must be > 0, got {lr!r}")
    groups = [g for g in groups if len(list(g["params"])) > 0]
    devices = {p.device.type for g in groups for p in g["params"]}
    if devices <= {"cpu", "cuda"}:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
        except (RuntimeError, ValueError):  # a dtype or device fused AdamW does not take
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=False)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every group (schedules are applied before each step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def trainable_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """Every parameter the optimizer updates, in group order."""
    return [p for g in optimizer.param_groups for p in g["params"]]


def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient L2 norm to `max_norm` (<= 0 disables); returns the norm
    before clipping."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    if max_norm <= 0:
        norms = torch.stack([p.grad.detach().float().norm() for p in params])
        return float(norms.norm())
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False))
