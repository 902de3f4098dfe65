"""Carry values, gradients and optimizer state across a pattern update, bit for bit.

A pattern update is described by ``source`` [nnz] (see methods.PatternUpdate): slot i of
the new canonical order takes old block ``source[i]`` when ``source[i] >= 0`` and is
the new block ``-1 - source[i]`` otherwise. Survivors are gathered (an exact copy),
new blocks get their initial values (state: zeros), pruned blocks simply disappear.
Everything is written in place, so Parameter objects and optimizer state keys stay.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


def gather_blocks(old: Tensor, source: Tensor, new_blocks: Optional[Tensor] = None) -> Tensor:
    """New [nnz, ...] tensor: old[source[i]] for survivors, new_blocks[-1 - source[i]] (or 0).

    ``torch.where`` selects whole elements, so survivors are copied bit for bit; no
    boolean indexing, hence no device sync.

    >>> gather_blocks(torch.tensor([10., 20., 30.]), torch.tensor([-1, 0, 2]))
    tensor([ 0., 10., 30.])
    >>> gather_blocks(torch.tensor([10., 20., 30.]), torch.tensor([1, -2, -1]), torch.tensor([7., 8.]))
    tensor([20.,  8.,  7.])
    """
    if source.numel() != old.shape[0]:
        raise ValueError(f"gather_blocks: argument 'source' must have {old.shape[0]} entries (nnz), "
                         f"got {source.numel()}")
    kept = (source >= 0).view(-1, *([1] * (old.dim() - 1)))
    survivors = old[source.clamp(min=0)]
    if new_blocks is None or new_blocks.numel() == 0:
        fill = torch.zeros((), dtype=old.dtype, device=old.device)
    else:
        fill = new_blocks.to(device=old.device, dtype=old.dtype)[(-1 - source).clamp(min=0)]
    return torch.where(kept, survivors, fill)


def optimizer_state_of(optimizer: Optional[torch.optim.Optimizer], param: nn.Parameter) -> dict:
    """The optimizer's per-parameter state dict for ``param`` (empty before the first step)."""
    if optimizer is None:
        return {}
    return optimizer.state.get(param, {})


def check_optimizer_covers(optimizer: torch.optim.Optimizer, params: dict[str, nn.Parameter]) -> None:
    """Raise ValueError unless every parameter in ``params`` is in one of the optimizer's groups."""
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in params.items() if id(p) not in known]
    if missing:
        raise ValueError(f"DynSpController: argument 'optimizer' must hold the 'values' of every sparse "
                         f"layer, missing: {missing[:5]}{' ...' if len(missing) > 5 else ''}")


@torch.no_grad()
def remap_param_state(optimizer: Optional[torch.optim.Optimizer], param: nn.Parameter,
                      source: Tensor) -> list[str]:
    """Permute every state tensor shaped like ``param`` with ``source`` (zeros for new blocks).

    Scalar state (e.g. AdamW's ``step``) is kept. Also remaps ``param.grad`` if present.
    Returns the remapped state keys. A tensor of any other shape (e.g. factored
    second moments) cannot be carried block-wise: TypeError naming the key.
    """
    remapped = []
    for key, value in optimizer_state_of(optimizer, param).items():
        if not isinstance(value, Tensor) or value.dim() == 0:
            continue
        if value.shape != param.shape:
            raise TypeError(f"remap_param_state: optimizer state {key!r} must be a scalar or shaped like "
                            f"the values {tuple(param.shape)}, got {tuple(value.shape)} "
                            f"(optimizer {type(optimizer).__name__} is not supported)")
        value.copy_(gather_blocks(value, source.to(value.device)))
        remapped.append(key)
    if param.grad is not None:
        param.grad.copy_(gather_blocks(param.grad, source.to(param.grad.device)))
    return remapped
