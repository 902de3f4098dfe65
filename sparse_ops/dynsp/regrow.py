"""Re-allocation (regrowth) helpers over linear block indices (pure functions).

Candidates are the positions ``[0, n_positions)`` minus a sorted ``excluded`` set (the
blocks kept after pruning, plus the just-pruned ones unless ``regrow_pruned``). No
dense mask of positions is built:

* random: k distinct *ranks* are drawn in ``[0, m)`` (m = number of candidates) on a
  CPU ``torch.Generator`` by rejection, then the r-th candidate is found with one
  ``searchsorted`` over ``excluded``. The draws depend only on (m, k, generator), so
  the host-side and the device-side controllers pick identical positions and the
  device side needs no host round trip (only the k ranks travel host -> device).
* gradient (RigL): the k candidates with the largest score, scanned chunk by chunk
  (scores of all positions are never held at once), ties broken by lower index.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch import Tensor

from ..format import first_occurrences
from .prune import check_k


def sample_ranks(m: int, k: int, generator: torch.Generator) -> Tensor:
    """k distinct integers drawn uniformly from [0, m) on the CPU; int64 [k], sorted.

    Rejection: i.i.d. draws, first occurrences kept in draw order (a uniform k-subset).
    Work is O(k) expected for k <= m / 2; above that the m - k *left-out* ranks are drawn.

    >>> g = torch.Generator().manual_seed(0)
    >>> r = sample_ranks(10, 4, g)
    >>> r.numel(), r.unique().numel(), bool(((r >= 0) & (r < 10)).all())
    (4, 4, True)
    >>> sample_ranks(5, 5, g)
    tensor([0, 1, 2, 3, 4])
    """
    check_k("sample_ranks", k, m, "candidates")
    if 2 * k > m:
        left_out = sample_ranks(m, m - k, generator)
        everything = torch.arange(m, dtype=torch.int64)
        return everything[~torch.isin(everything, left_out)]
    taken = torch.empty(0, dtype=torch.int64)
    while taken.numel() < k:
        need = k - taken.numel()
        # Acceptance >= 1/2 here; draw ~1.3x what is missing so one round usually suffices.
        draws = torch.randint(m, (need + need // 3 + 8,), generator=generator)
        taken = first_occurrences(torch.cat([taken, draws]))[:k]
    return taken.sort().values


def sorted_isin(x: Tensor, sorted_set: Tensor) -> Tensor:
    """Boolean [len(x)]: x[i] in sorted_set (1-D, ascending), by binary search.

    >>> sorted_isin(torch.tensor([0, 3, 5]), torch.tensor([1, 3, 4]))
    tensor([False,  True, False])
    """
    if sorted_set.numel() == 0:
        return torch.zeros_like(x, dtype=torch.bool)
    pos = torch.searchsorted(sorted_set, x).clamp_(max=sorted_set.numel() - 1)
    return sorted_set[pos] == x


def ranks_to_positions(ranks: Tensor, excluded: Tensor) -> Tensor:
    """Map rank r to the r-th integer >= 0 that is not in ``excluded`` (sorted, unique).

    position = r + #(excluded elements at or before it), found with one searchsorted
    over ``excluded - arange`` (the number of free integers before each excluded one).

    >>> ranks_to_positions(torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 5]))
    tensor([0, 3, 4, 6])
    """
    free_before = excluded - torch.arange(excluded.numel(), device=excluded.device)
    return ranks + torch.searchsorted(free_before, ranks, right=True)


def n_candidates(n_positions: int, n_excluded: int) -> int:
    """Number of positions a regrowth may choose from."""
    return n_positions - n_excluded


def random_regrow(n_positions: int, excluded: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k positions uniformly among [0, n_positions) minus ``excluded``; sorted int64 [k].

    ``excluded`` [e] sorted unique linear indices on the working device; the result is
    on the same device. Random numbers come from the CPU ``generator`` only.

    >>> g = torch.Generator().manual_seed(1)
    >>> new = random_regrow(8, torch.tensor([0, 2, 3, 6]), 4, g)
    >>> new
    tensor([1, 4, 5, 7])
    """
    m = n_candidates(n_positions, excluded.numel())
    check_k("random_regrow", k, m, f"candidates = {n_positions} positions - {excluded.numel()} excluded")
    ranks = sample_ranks(m, k, generator).to(excluded.device, non_blocking=True)
    return ranks_to_positions(ranks, excluded)


def gradient_regrow(score_chunks: Iterable[tuple[int, Tensor]], excluded: Tensor, k: int) -> Tensor:
    """The k non-excluded positions with the largest score; sorted int64 [k].

    ``score_chunks`` yields (first linear index, scores [c]) covering consecutive
    positions in increasing order (e.g. block L1 norms of the dense gradient, one
    block-row range at a time). Ties go to the lower index; NaN counts as -inf. The
    caller guarantees at least k candidates. Device: that of the chunks.

    >>> chunks = [(0, torch.tensor([5., 1., 7.])), (3, torch.tensor([7., 2., 9.]))]
    >>> gradient_regrow(chunks, torch.tensor([5]), 3)
    tensor([0, 2, 3])
    """
    best_idx: Optional[Tensor] = None
    best_val: Optional[Tensor] = None
    for start, scores in score_chunks:
        idx = torch.arange(start, start + scores.numel(), device=scores.device)
        excl = sorted_isin(idx, excluded.to(scores.device))
        vals = torch.where(excl, torch.full_like(scores, -math.inf), scores.nan_to_num(nan=-math.inf))
        if best_idx is not None:  # earlier chunks have lower indices: concatenation stays sorted
            idx, vals = torch.cat([best_idx, idx]), torch.cat([best_val, vals])
        keep = torch.sort(vals, descending=True, stable=True).indices[:k].sort().values
        best_idx, best_val = idx[keep], vals[keep]
    if best_idx is None or best_idx.numel() != k:
        raise ValueError(f"gradient_regrow: argument 'k' must not exceed the number of scored "
                         f"positions, got k={k}")
    return best_idx


def new_block_values(k: int, block_size: int, init: str, generator: torch.Generator,
                     std: float = 0.02) -> Tensor:
    """Initial values of k new blocks, [k, B, B] fp32 on the CPU: zeros, or truncated normal.

    ``init``: "zero" (the default) or "normal" (truncated at +-2 std, drawn from the
    CPU ``generator`` so host and device controllers agree).

    >>> new_block_values(2, 1, "zero", torch.Generator()).shape
    torch.Size([2, 1, 1])
    """
    if init not in REGROW_INITS:
        raise ValueError(f"new_block_values: argument 'init' must be one of {REGROW_INITS}, got {init!r}")
    out = torch.zeros(k, block_size, block_size)
    if init == "normal" and k:
        torch.nn.init.trunc_normal_(out, std=std, a=-2 * std, b=2 * std, generator=generator)
    return out


REGROW_INITS = ("zero", "normal")
