"""Data-parallel agreement on patterns: every rank must end an update with identical patterns.

Modes (``DynSpController(sync=...)``):

* ``"verify"`` - every rank decides from the same seed stream and the same (all-reduced)
  values, then an all-gather of per-layer checksums proves the patterns agree; a
  mismatch raises RuntimeError naming the layers. Default when torch.distributed is
  initialised with more than one rank.
* ``"broadcast"`` - rank 0's decision (new pattern + permutation) is broadcast and used
  by every rank (the values are identical across ranks, so rank 0's permutation applies).
* ``"none"`` - no collective (single process). ``"auto"`` picks verify or none.

A custom ``verify_fn(patterns: dict[name, lin])`` can be given to the controller in
addition (e.g. for replicas managed outside torch.distributed).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from .methods import PatternUpdate

SYNC_MODES = ("auto", "none", "verify", "broadcast")


def world_size(group: object | None = None) -> int:
    """Number of ranks in `group` (None: all; 1 when torch.distributed is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def resolve_sync(sync: str, group: object | None = None) -> str:
    """Validate ``sync`` and resolve "auto" to "verify" (multi-rank) or "none"."""
    if sync not in SYNC_MODES:
        raise ValueError(f"DynSpController: argument 'sync' must be one of {SYNC_MODES}, got {sync!r}")
    if sync == "auto":
        return "verify" if world_size(group) > 1 else "none"
    return sync


def pattern_checksum(lin: Tensor) -> Tensor:
    """int64 [4] fingerprint of a sorted pattern: count, sum, sum of squares mod p, weighted sum.

    Not cryptographic; any realistic divergence between ranks changes it.

    >>> pattern_checksum(torch.tensor([1, 5, 9])).tolist()
    [3, 15, 107, 38]
    """
    lin = lin.to(torch.int64)
    pos = torch.arange(1, lin.numel() + 1, device=lin.device) % 1009
    return torch.stack([torch.tensor(lin.numel(), device=lin.device), lin.sum(),
                        ((lin % 1000003) ** 2 % 1000003).sum(), ((lin % 1000003) * pos).sum()])


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")


def verify_across_ranks(patterns: dict[str, Tensor], group: object | None = None) -> None:
    """All-gather per-layer checksums over `group` (None: all ranks); RuntimeError naming
    the layers where ranks differ."""
    if world_size(group) == 1:
        return
    dev = _collective_device()
    local = torch.stack([pattern_checksum(lin) for lin in patterns.values()]).to(dev)
    gathered = [torch.empty_like(local) for _ in range(world_size(group))]
    dist.all_gather(gathered, local, group=group)
    bad = [name for i, name in enumerate(patterns)
           if any(not torch.equal(g[i], gathered[0][i]) for g in gathered)]
    if bad:
        raise RuntimeError(f"DynSpController: data-parallel ranks disagree on the new pattern of "
                           f"{len(bad)} layer(s): {bad[:5]} (same seed and identical values expected)")


def broadcast_updates(updates: dict[str, "PatternUpdate"], group: object | None = None) -> None:
    """Overwrite every rank's updates with those of the first rank of `group` (None: rank 0),
    in place (shapes agree: nnz and k are global)."""
    if world_size(group) == 1:
        return
    dev = _collective_device()
    src = 0 if group is None else dist.get_global_rank(group, 0)
    for upd in updates.values():
        for field in ("lin", "source", "pruned", "grown"):
            t = getattr(upd, field)
            buf = t.to(dev).contiguous()
            dist.broadcast(buf, src=src, group=group)
            setattr(upd, field, buf.to(t.device))


def all_reduce_sum(tensor: Tensor, group: object | None = None) -> Tensor:
    """Sum ``tensor`` over the ranks of `group` (None: all; the dense gradient chunk of
    RigL regrowth); identity on 1 rank."""
    if world_size(group) == 1:
        return tensor
    dev = tensor.device
    buf = tensor.to(_collective_device())
    dist.all_reduce(buf, group=group)
    return buf.to(dev)
