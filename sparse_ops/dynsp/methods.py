"""DynSp methods: given block scores and the current pattern, return the new pattern.

One small class per method, in a registry that rejects duplicate names:

* ``static``   - never changes the pattern (n_updates = 0, or a static baseline);
* ``random``   - SET-like: prune the k smallest blocks, re-allocate k uniformly at random;
* ``gradient`` - RigL: prune the k smallest, re-allocate the k largest dense-gradient blocks.

Everything is expressed over linear block indices ``row * (I // B) + col``. A method
runs on whatever device its input tensors are on; random numbers come from a CPU
generator (see regrow.py), so the same inputs give the same pattern on any device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Optional

import torch
from torch import Tensor

from .prune import check_k, split_prune_keep
from .regrow import gradient_regrow, random_regrow

GradScores = Callable[[], Iterable[tuple[int, Tensor]]]


@dataclass
class LayerPattern:
    """The current pattern of one layer, as a method sees it.

    lin [nnz] int64 sorted active linear indices; scores [nnz] block L1 norms of the
    values (same order); n_positions = (O / B) * (I / B).
    """

    lin: Tensor
    scores: Tensor
    n_positions: int


@dataclass
class PatternUpdate:
    """Result of one update of one layer (all int64, on the input's device).

    lin [nnz]: new active linear indices, sorted (canonical order).
    source [nnz]: for slot i of the new pattern, the position in the *old* active list
    it comes from, or ``-1 - j`` when it is the j-th new block (j indexes ``grown``).
    pruned [k], grown [k]: sorted linear indices removed and added (disjoint unless
    ``regrow_pruned``).
    """

    lin: Tensor
    source: Tensor
    pruned: Tensor
    grown: Tensor

    @property
    def k(self) -> int:
        return int(self.pruned.numel())


def merge_pattern(kept_pos: Tensor, kept_lin: Tensor, grown: Tensor) -> tuple[Tensor, Tensor]:
    """Union of kept and grown blocks in canonical order: (lin [nnz], source [nnz]).

    >>> merge_pattern(torch.tensor([0, 2]), torch.tensor([3, 9]), torch.tensor([1, 5]))
    (tensor([1, 3, 5, 9]), tensor([-1,  0, -2,  2]))
    """
    lin = torch.cat([kept_lin, grown])
    new_ids = -1 - torch.arange(grown.numel(), device=grown.device)
    source = torch.cat([kept_pos, new_ids])
    order = torch.sort(lin, stable=True).indices
    return lin[order], source[order]


def max_prune(nnz: int, n_positions: int, regrow_pruned: bool) -> int:
    """Largest k an update can prune and re-allocate elsewhere while keeping nnz.

    Excluding just-pruned positions, only n_positions - nnz candidates exist; with
    ``regrow_pruned`` every block could be replaced.

    >>> max_prune(90, 100, False), max_prune(90, 100, True)
    (10, 90)
    """
    return nnz if regrow_pruned else min(nnz, n_positions - nnz)


class DynSpMethod:
    """Base class: prune the k smallest-score blocks, then ``grow`` k new positions.

    A new method is one subclass with ``@register_method``: its ``name`` becomes a valid
    ``regrow`` setting (settings.py), ``needs_gradient`` makes the controller capture X
    and dY at update steps and the FLOPs count the dense gradient (flops.py)."""

    name: ClassVar[str] = ""
    needs_gradient: ClassVar[bool] = False
    regrows: ClassVar[bool] = True
    """False for `static` (used for n_updates = 0; never a `regrow` choice)."""

    def __init__(self, regrow_pruned: bool = False) -> None:
        if not isinstance(regrow_pruned, bool):
            raise ValueError(f"{type(self).__name__}: argument 'regrow_pruned' must be a bool, "
                             f"got {regrow_pruned!r}")
        self.regrow_pruned = regrow_pruned

    def update(self, pattern: LayerPattern, k: int, generator: torch.Generator,
               grad_scores: Optional[GradScores] = None) -> PatternUpdate:
        """New pattern after pruning k blocks and re-allocating k (k <= max_prune(...))."""
        nnz = pattern.lin.numel()
        check_k(f"{type(self).__name__}.update", k, max_prune(nnz, pattern.n_positions, self.regrow_pruned))
        pruned_pos, kept_pos = split_prune_keep(pattern.scores, k)
        kept_lin, pruned_lin = pattern.lin[kept_pos], pattern.lin[pruned_pos]
        excluded = kept_lin if self.regrow_pruned else pattern.lin
        grown = self.grow(pattern.n_positions, excluded, k, generator, grad_scores)
        lin, source = merge_pattern(kept_pos, kept_lin, grown)
        return PatternUpdate(lin, source, pruned_lin, grown)

    def grow(self, n_positions: int, excluded: Tensor, k: int, generator: torch.Generator,
             grad_scores: Optional[GradScores]) -> Tensor:
        """k sorted new positions among [0, n_positions) minus ``excluded`` (sorted)."""
        raise NotImplementedError


METHODS: dict[str, type[DynSpMethod]] = {}


def register_method(cls: type[DynSpMethod]) -> type[DynSpMethod]:
    """Class decorator adding ``cls`` under ``cls.name``; a duplicate name is an error."""
    if not cls.name:
        raise ValueError(f"register_method: class {cls.__name__} must set a non-empty 'name'")
    if cls.name in METHODS:
        raise ValueError(f"register_method: name {cls.name!r} is already registered "
                         f"(by {METHODS[cls.name].__name__}); registered: {sorted(METHODS)}")
    METHODS[cls.name] = cls
    return cls


def regrowth_names() -> tuple[str, ...]:
    """Names valid as the ``regrow`` setting (every registered method that regrows).

    >>> regrowth_names()
    ('gradient', 'random')
    """
    return tuple(sorted(n for n, cls in METHODS.items() if cls.regrows))


def get_method(name: str, **kwargs: object) -> DynSpMethod:
    """Instantiate the method registered as ``name``.

    >>> type(get_method("random")).__name__
    'RandomRegrowth'
    """
    if name not in METHODS:
        raise ValueError(f"get_method: argument 'name' must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name](**kwargs)


@register_method
class StaticMethod(DynSpMethod):
    """Static sparsity: the pattern never changes (k is forced to 0)."""

    name = "static"
    regrows = False

    def update(self, pattern: LayerPattern, k: int, generator: torch.Generator,
               grad_scores: Optional[GradScores] = None) -> PatternUpdate:
        empty = pattern.lin[:0]
        source = torch.arange(pattern.lin.numel(), device=pattern.lin.device)
        return PatternUpdate(pattern.lin, source, empty, empty)


@register_method
class RandomRegrowth(DynSpMethod):
    """SET-like DynSp (the default): uniform random re-allocation."""

    name = "random"

    def grow(self, n_positions: int, excluded: Tensor, k: int, generator: torch.Generator,
             grad_scores: Optional[GradScores]) -> Tensor:
        return random_regrow(n_positions, excluded, k, generator)


@register_method
class GradientRegrowth(DynSpMethod):
    """RigL: re-allocate the k candidates with the largest dense-gradient block L1 norm."""

    name = "gradient"
    needs_gradient = True

    def grow(self, n_positions: int, excluded: Tensor, k: int, generator: torch.Generator,
             grad_scores: Optional[GradScores]) -> Tensor:
        if grad_scores is None:
            raise ValueError("GradientRegrowth.grow: argument 'grad_scores' must be given (the dense "
                             "gradient block norms of the current batch), got None")
        return gradient_regrow(grad_scores(), excluded, k)
