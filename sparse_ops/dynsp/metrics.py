"""Pattern metrics of one layer: explored degrees of freedom and "removed new weights".

The only dense-sized structure is the ever-active bitmap: 1 byte per block position in
memory (a bool tensor), 1 bit per position in checkpoints (packed). All other state is
over linear block indices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .regrow import sorted_isin

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: Tensor) -> Tensor:
    """bool [n] -> uint8 [ceil(n / 8)] (big-endian bit order within a byte), on the CPU.

    >>> pack_bits(torch.tensor([True, False, False, False, False, False, False, True, True]))
    tensor([129, 128], dtype=torch.uint8)
    """
    mask = mask.detach().to("cpu", torch.uint8)
    pad = (-mask.numel()) % 8
    padded = torch.cat([mask, mask.new_zeros(pad)]).view(-1, 8)
    return (padded * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """Inverse of ``pack_bits``: uint8 [ceil(n / 8)] -> bool [n] on the CPU.

    >>> unpack_bits(torch.tensor([129, 128], dtype=torch.uint8), 9).nonzero().flatten()
    tensor([0, 7, 8])
    """
    if packed.dtype != torch.uint8 or packed.numel() != (n + 7) // 8:
        raise ValueError(f"unpack_bits: argument 'packed' must be uint8 of {(n + 7) // 8} bytes for "
                         f"n={n}, got {packed.dtype} of {packed.numel()}")
    bits = packed.to("cpu").view(-1, 1).bitwise_and(_BIT_WEIGHTS) != 0
    return bits.view(-1)[:n]


@dataclass
class LayerTracker:
    """Ever-active bitmap and the blocks allocated at the previous update, for one layer.

    ever_active: bool [n_positions]; ever_count: int64 [] number of True entries;
    prev_grown: int64 [k_prev] sorted linear indices grown at the previous update.
    All on one device (the controller's working device).
    """

    ever_active: Tensor
    ever_count: Tensor
    prev_grown: Tensor

    @classmethod
    def start(cls, lin: Tensor, n_positions: int) -> "LayerTracker":
        """Tracker for a layer whose initial active set is ``lin`` [nnz]."""
        ever = torch.zeros(n_positions, dtype=torch.bool, device=lin.device)
        ever[lin] = True
        count = torch.tensor(lin.numel(), dtype=torch.int64, device=lin.device)
        return cls(ever, count, lin.new_empty(0))

    @property
    def n_positions(self) -> int:
        return int(self.ever_active.numel())

    def record(self, pruned: Tensor, grown: Tensor) -> dict[str, Tensor]:
        """Account for one update; returns 0-dim tensors (no device sync).

        ``removed_new``: how many of ``pruned`` were grown at the previous update.
        """
        pruned, grown = pruned.to(self.ever_active.device), grown.to(self.ever_active.device)
        removed_new = sorted_isin(pruned, self.prev_grown).sum()
        self.ever_count += (~self.ever_active[grown]).sum()
        self.ever_active[grown] = True
        self.prev_grown = grown.clone()
        return {"removed_new": removed_new, "n_pruned": torch.tensor(pruned.numel()),
                "ever_count": self.ever_count.clone()}

    def dof(self) -> Tensor:
        """Explored degrees of freedom: ever-active positions / all positions (0-dim fp64).

        Blocks are B x B, so this equals ever-active weights / dense weights.
        """
        return self.ever_count.double() / self.n_positions

    def state_dict(self) -> dict:
        return {"ever_active_bits": pack_bits(self.ever_active), "n_positions": self.n_positions,
                "prev_grown": self.prev_grown.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict, device: Optional[torch.device] = None) -> "LayerTracker":
        ever = unpack_bits(state["ever_active_bits"], int(state["n_positions"])).to(device)
        count = ever.sum().to(torch.int64)
        return cls(ever, count, state["prev_grown"].to(device=device, dtype=torch.int64))


# ---------------------------------------------------------------- pooled metrics
# The per-layer keys of an update record are `KEY/NAME`; the pooled keys are computed from
# them here only (by the controller, and over pipeline stages by `merge_records`).

def layer_update_keys(name: str, n_pruned: int, n_removed: int) -> dict:
    """The per-layer "removed new weights" keys of one pattern update."""
    return {f"removed_new_fraction/{name}": n_removed / n_pruned if n_pruned else 0.0,
            f"pruned_blocks/{name}": int(n_pruned), f"removed_new_blocks/{name}": int(n_removed)}


def layer_pattern_keys(name: str, dof: float, density: float) -> dict:
    """The per-layer pattern keys (any time): explored degrees of freedom, density."""
    return {f"dof/{name}": float(dof), f"density/{name}": float(density)}


def _per_layer(record: dict, key: str) -> list:
    return [v for k, v in record.items() if k.startswith(key + "/")]


def pooled(record: dict) -> dict:
    """The pooled keys of a record from its per-layer keys: `dof_mean` (mean over layers)
    and, for an update, `removed_new_fraction` (removed new blocks / pruned blocks over
    all layers)."""
    out: dict = {}
    dofs = _per_layer(record, "dof")
    if dofs:
        out["dof_mean"] = sum(dofs) / len(dofs)
    pruned = _per_layer(record, "pruned_blocks")
    if pruned:
        total = sum(pruned)
        out["removed_new_fraction"] = sum(_per_layer(record, "removed_new_blocks")) / total if total else 0.0
    return out


def merge_records(parts: list) -> dict:
    """Records of disjoint sets of layers (pipeline stages, in order) -> the record of the
    whole model: shared keys from the first part (the update's step, index, prune ratio),
    the slowest part's update time, per-layer keys joined, pooled keys recomputed."""
    out = {k: v for k, v in parts[0].items() if "/" not in k}
    for part in parts:
        out.update({k: v for k, v in part.items() if "/" in k})
    if "update_time_s" in out:
        out["update_time_s"] = max(p["update_time_s"] for p in parts)
    out.update(pooled(out))
    return out
