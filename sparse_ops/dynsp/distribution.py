"""Per-layer densities for a target total sparsity: uniform or Erdos-Renyi.

* uniform: every layer has density 1 - s (nnz = round((1 - s) * n_blocks) per layer).
* erdos_renyi (Mocanu et al. / Evci et al.): density_l = eps * (O_l + I_l) / (O_l * I_l),
  capped at 1 (such layers become dense and eps is re-solved), with eps chosen so the
  total number of active weights is (1 - s) * sum_l O_l * I_l. Integer block counts are
  distributed by largest remainder so that total is met exactly (to one block), and the
  returned density is nnz_l / n_blocks_l, so ``round(density * n_blocks)`` gives back nnz_l.
"""
from __future__ import annotations

import math
from typing import Sequence

DISTRIBUTIONS = ("uniform", "erdos_renyi")


def _check(fn: str, shapes: Sequence[tuple[int, int]], sparsity: float, distribution: str,
           block_size: int) -> list[tuple[int, int]]:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"{fn}: argument 'distribution' must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{fn}: argument 'sparsity' must be a number in [0, 1), got {sparsity!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{fn}: argument 'block_size' must be a positive int, got {block_size!r}")
    out = []
    for i, shape in enumerate(shapes):
        try:
            o, n_in = (int(d) for d in shape)
        except (TypeError, ValueError):
            raise ValueError(f"{fn}: argument 'shapes' must hold (O, I) pairs, got {shape!r} at {i}") from None
        if o <= 0 or n_in <= 0 or o % block_size or n_in % block_size:
            raise ValueError(f"{fn}: argument 'shapes' must hold positive multiples of block_size="
                             f"{block_size}, got {(o, n_in)} at index {i}")
        out.append((o, n_in))
    if not out:
        raise ValueError(f"{fn}: argument 'shapes' must not be empty")
    return out


def erdos_renyi_densities(shapes: Sequence[tuple[int, int]], sparsity: float) -> list[float]:
    """Real-valued ER densities (before rounding to blocks); weighted mean is 1 - sparsity.

    >>> [round(d, 4) for d in erdos_renyi_densities([(100, 100), (400, 100)], 0.9)]
    [0.1429, 0.0893]
    """
    shapes = _check("erdos_renyi_densities", shapes, sparsity, "erdos_renyi", 1)
    sizes = [o * i for o, i in shapes]
    raw = [(o + i) / (o * i) for o, i in shapes]
    dense: set[int] = set()
    while True:
        rhs = (1.0 - sparsity) * sum(sizes) - sum(sizes[j] for j in dense)
        divisor = sum(raw[j] * sizes[j] for j in range(len(sizes)) if j not in dense)
        eps = rhs / divisor if divisor > 0 else 0.0
        # Making a layer dense only raises eps, so all layers over 1 can be capped at once.
        over = {j for j in range(len(sizes)) if j not in dense and eps * raw[j] > 1.0}
        if not over:
            return [1.0 if j in dense else eps * raw[j] for j in range(len(sizes))]
        dense |= over


def layer_block_counts(shapes: Sequence[tuple[int, int]], sparsity: float,
                       distribution: str = "uniform", block_size: int = 1) -> list[int]:
    """Active blocks per layer for (O, I) ``shapes`` at total ``sparsity``.

    uniform: round((1 - s) * n_blocks) per layer (at least 1). erdos_renyi: largest
    remainder rounding of the ER densities so sum(nnz) = round((1 - s) * sum(n_blocks)).

    >>> layer_block_counts([(8, 8), (16, 8)], 0.5, "uniform", 4)
    [2, 4]
    >>> sum(layer_block_counts([(64, 64), (256, 64)], 0.9, "erdos_renyi"))
    2048
    """
    fn = "layer_block_counts"
    shapes = _check(fn, shapes, sparsity, distribution, block_size)
    n_blocks = [(o // block_size) * (i // block_size) for o, i in shapes]
    if distribution == "uniform":
        return [max(1, int(round((1.0 - sparsity) * n))) for n in n_blocks]
    ideal = [d * n for d, n in zip(erdos_renyi_densities(shapes, sparsity), n_blocks)]
    counts = [min(n, max(1, math.floor(x))) for x, n in zip(ideal, n_blocks)]
    missing = int(round((1.0 - sparsity) * sum(n_blocks))) - sum(counts)
    by_remainder = sorted(range(len(ideal)), key=lambda j: (-(ideal[j] - math.floor(ideal[j])), j))
    for j in by_remainder:  # one extra block to the largest remainders, never above dense
        if missing <= 0:
            break
        if counts[j] < n_blocks[j]:
            counts[j] += 1
            missing -= 1
    return counts


def layer_densities(shapes: Sequence[tuple[int, int]], sparsity: float,
                    distribution: str = "uniform", block_size: int = 1) -> list[float]:
    """Per-layer density for (O, I) ``shapes``; SparseLinear builds round(d * n_blocks) blocks.

    uniform gives exactly 1 - sparsity for every layer; erdos_renyi gives nnz_l / n_blocks_l
    of ``layer_block_counts`` (total active weights preserved).

    >>> layer_densities([(768, 768), (3072, 768)], 0.9)
    [0.09999999999999998, 0.09999999999999998]
    >>> [round(d, 3) for d in layer_densities([(768, 768), (3072, 768)], 0.9, "erdos_renyi", 16)]
    [0.143, 0.089]
    """
    if distribution == "uniform":
        _check("layer_densities", shapes, sparsity, distribution, block_size)
        return [1.0 - float(sparsity)] * len(shapes)
    counts = layer_block_counts(shapes, sparsity, distribution, block_size)
    return [c / ((o // block_size) * (i // block_size)) for c, (o, i) in zip(counts, shapes)]
