"""Pruning helpers over the active blocks of one layer (pure functions, any device).

Everything works on the ``nnz`` active blocks in canonical order (sorted by linear
block index), so "ties broken by block index" is simply a *stable* sort of the scores.
No dense O x I mask is ever built.
"""
from __future__ import annotations

import torch
from torch import Tensor


def block_l1_norms(values: Tensor) -> Tensor:
    """L1 norm of each block: values [nnz, B, B] -> [nnz] (float32 or wider; B = 1: |w|).

    Accumulates in at least fp32 so fp16/bf16 values rank like their fp32 masters.

    >>> block_l1_norms(torch.tensor([[[1., -2.], [0., 3.]], [[0.5, 0.], [0., 0.]]]))
    tensor([6.0000, 0.5000])
    """
    if values.dim() != 3 or values.shape[1] != values.shape[2]:
        raise ValueError(f"block_l1_norms: argument 'values' must have shape [nnz, B, B], "
                         f"got {tuple(values.shape)}")
    dtype = torch.promote_types(values.dtype, torch.float32)
    return values.detach().abs().sum(dim=(1, 2), dtype=dtype)


def check_k(fn: str, k: int, n: int, what: str = "active blocks") -> int:
    """Return ``k`` if 0 <= k <= n, else raise naming ``fn`` and argument 'k'."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"{fn}: argument 'k' must be an int in [0, {n}] ({what}), got {k!r}")
    return k


def prune_order(scores: Tensor) -> Tensor:
    """Positions 0..nnz-1 sorted by ascending score, ties by position (stable sort).

    NaN scores sort last (never pruned); there is no NaN check because it would force a
    device sync in the device-side controller.

    >>> prune_order(torch.tensor([3., 1., 2., 1.]))
    tensor([1, 3, 2, 0])
    """
    if scores.dim() != 1:
        raise ValueError(f"prune_order: argument 'scores' must be 1-D [nnz], got {tuple(scores.shape)}")
    return torch.sort(scores, stable=True).indices


def split_prune_keep(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Split the nnz active positions into the k to prune and the nnz - k to keep.

    ``scores`` [nnz] (block L1 norms, active blocks in canonical order). Returns
    (pruned [k], kept [nnz - k]) positions into the active list, each ascending, with
    pruned = the k smallest scores, ties broken by lower position = lower block index.

    >>> split_prune_keep(torch.tensor([3., 1., 2., 1.]), 2)
    (tensor([1, 3]), tensor([0, 2]))
    """
    check_k("split_prune_keep", k, scores.numel())
    order = prune_order(scores)
    return torch.sort(order[:k]).values, torch.sort(order[k:]).values


def prune_smallest(lin: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Linear indices after pruning the k active blocks with smallest score.

    ``lin`` [nnz] sorted active linear indices, ``scores`` [nnz]. Returns
    (kept_lin [nnz - k], pruned_lin [k]), both sorted.

    >>> prune_smallest(torch.tensor([2, 5, 7, 9]), torch.tensor([0.5, 0.1, 0.1, 4.0]), 2)
    (tensor([2, 9]), tensor([5, 7]))
    """
    if lin.shape != scores.shape:
        raise ValueError(f"prune_smallest: argument 'scores' must match 'lin' in shape {tuple(lin.shape)}, "
                         f"got {tuple(scores.shape)}")
    pruned, kept = split_prune_keep(scores, k)
    return lin[kept], lin[pruned]
