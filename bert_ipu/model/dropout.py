"""Dropout for the model: on the CPU a counter-based mask from the C++ extension, else torch's.

torch's CPU dropout draws its mask one element at a time from one Mersenne Twister
(single-threaded): in a BERT-Base training step at 2 threads it was the largest single
operator once the sparse kernels had made the linears cheap (about a fifth of the step).
Here, on the CPU, each element's keep/drop draw is a hash of (seed, element index)
(``sparse_ops/kernels/cpp_bsr.cpp: dropout``): parallel, the same mask for any thread count,
and not stored for the backward (regenerated from the seed). The seed is drawn from torch's
default CPU generator, so runs stay reproducible from ``torch.manual_seed`` and resume
bit-exactly from a checkpoint's RNG state. The masks differ from torch's (same
distribution: each element kept with probability 1 - p, scaled by 1 / (1 - p)).

Where the extension cannot be built, and on other devices, ``F.dropout`` is used.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _extension(x: Tensor) -> Optional[ModuleType]:
    if x.device.type != "cpu":
        return None
    from sparse_ops.kernels import cpp_build

    return cpp_build.load()


class _CounterDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, p: float, seed: int, ext: ModuleType) -> Tensor:  # type: ignore[override]
        ctx.p, ctx.seed, ctx.ext = p, seed, ext
        return ext.dropout(x, p, seed)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        # the same seed regenerates the same mask: d(x m / (1 - p)) = dy m / (1 - p)
        return ctx.ext.dropout(dy, ctx.p, ctx.seed), None, None, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)`` with the counter-based CPU mask where available."""
    if not training or p == 0.0:
        return x
    ext = _extension(x)
    if ext is None or p >= 1.0 or not x.is_floating_point():
        return F.dropout(x, p, training)
    seed = int(torch.randint(-2 ** 63, 2 ** 63 - 1, (), dtype=torch.int64))
    return _CounterDropout.apply(x, p, seed, ext)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], dropout_p: float) -> Tensor:
    """softmax(q k^T / sqrt(d), keys masked where ``mask`` is False) with dropout, @ v.

    ``F.scaled_dot_product_attention`` unless dropout is on and the counter-based CPU mask
    is available: then the same product written out (torch's CPU path with dropout runs
    the same matmuls and softmax), with the dropout above on the probabilities.
    """
    if dropout_p == 0.0 or _extension(q) is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    scores = torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(dropout(probs, dropout_p), v)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same constructor, no parameters or buffers) using ``dropout`` above."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)
