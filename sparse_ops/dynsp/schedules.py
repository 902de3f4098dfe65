"""DynSp schedules as pure functions of the training step (docs/algorithm.md).

Steps are 0-based indices of optimizer steps: the loop ``for t in range(T)`` runs
``optimizer.step()`` then ``controller.step(t)``. An update at step ``t`` happens
right after the ``t``-th optimizer step.

Update steps:  t_k = floor(k * T_end / (n + 1)),  k = 1..n,  T_end = end_fraction * T.
Prune ratio:   pr(t) = pr_max * 0.5 * (1 + cos(pi * t / T_end))   ("cosine", default),
               pr(t) = pr_max                                     ("constant"),
               pr(t) = pr_max * (1 - t / T_end)                   ("linear").
``t`` is clamped to [0, T_end] so a ratio is never negative or rising again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

PRUNE_SCHEDULES: dict[str, Callable[[float, float, float], float]] = {}


def _register(name: str) -> Callable:
    def deco(fn: Callable[[float, float, float], float]) -> Callable:
        if name in PRUNE_SCHEDULES:
            raise ValueError(f"prune schedule {name!r} is already registered")
        PRUNE_SCHEDULES[name] = fn
        return fn
    return deco


def _check_number(fn: str, arg: str, value: object, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{fn}: argument '{arg}' must be a number, got {value!r}")
    v = float(value)
    if not (lo < v <= hi if lo_open else lo <= v <= hi):
        bracket = "(" if lo_open else "["
        raise ValueError(f"{fn}: argument '{arg}' must be in {bracket}{lo}, {hi}], got {value!r}")
    return v


def _check_int(fn: str, arg: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{fn}: argument '{arg}' must be an int >= {lo}, got {value!r}")
    return value


def end_step(total_steps: int, end_fraction: float = 1.0) -> Fraction:
    """T_end = end_fraction * total_steps as an exact fraction (end_fraction read as its decimal).

    >>> end_step(1000, 0.75)
    Fraction(750, 1)
    """
    _check_int("end_step", "total_steps", total_steps, 1)
    _check_number("end_step", "end_fraction", end_fraction, 0.0, 1.0, lo_open=True)
    # Fraction(repr(x)) reads 0.1 as 1/10, so 0.1 * 1000 is exactly 100.
    return Fraction(repr(float(end_fraction))) * total_steps


def update_steps(total_steps: int, n_updates: int, end_fraction: float = 1.0) -> list[int]:
    """The n update steps t_k = floor(k * T_end / (n + 1)), k = 1..n; [] when n = 0 (static).

    Raises ValueError when two updates would fall on the same step.

    >>> update_steps(100, 3)
    [25, 50, 75]
    >>> update_steps(1000, 4, end_fraction=0.5)
    [100, 200, 300, 400]
    >>> update_steps(10, 0)
    []
    """
    fn = "update_steps"
    _check_int(fn, "n_updates", n_updates, 0)
    t_end = end_step(total_steps, end_fraction)
    steps = [math.floor(k * t_end / (n_updates + 1)) for k in range(1, n_updates + 1)]
    if len(set(steps)) != len(steps):
        raise ValueError(f"{fn}: argument 'n_updates' must leave at least one step between updates "
                         f"(T_end = {float(t_end)} steps), got {n_updates}")
    return steps


def _clamped_fraction(step: float, t_end: float) -> float:
    return min(max(float(step), 0.0), float(t_end)) / float(t_end)


@_register("cosine")
def cosine_prune_ratio(step: float, pr_max: float, t_end: float) -> float:
    """pr_max * 0.5 * (1 + cos(pi * t / T_end)) (Evci et al.).

    >>> cosine_prune_ratio(0, 0.5, 100), cosine_prune_ratio(50, 0.5, 100), cosine_prune_ratio(100, 0.5, 100)
    (0.5, 0.25, 0.0)
    """
    return pr_max * 0.5 * (1.0 + math.cos(math.pi * _clamped_fraction(step, t_end)))


@_register("constant")
def constant_prune_ratio(step: float, pr_max: float, t_end: float) -> float:
    """pr_max at every step.

    >>> constant_prune_ratio(70, 0.3, 100)
    0.3
    """
    return float(pr_max)


@_register("linear")
def linear_prune_ratio(step: float, pr_max: float, t_end: float) -> float:
    """pr_max * (1 - t / T_end).

    >>> linear_prune_ratio(25, 0.5, 100)
    0.375
    """
    return pr_max * (1.0 - _clamped_fraction(step, t_end))


def prune_ratio(step: float, pr_max: float, t_end: float, schedule: str = "cosine") -> float:
    """Prune ratio at ``step`` for the schedule named ``schedule`` (see PRUNE_SCHEDULES).

    >>> prune_ratio(0, 0.5, 100, "linear")
    0.5
    """
    fn = "prune_ratio"
    if schedule not in PRUNE_SCHEDULES:
        raise ValueError(f"{fn}: argument 'schedule' must be one of {sorted(PRUNE_SCHEDULES)}, "
                         f"got {schedule!r}")
    _check_number(fn, "pr_max", pr_max, 0.0, 1.0)
    _check_number(fn, "t_end", t_end, 0.0, math.inf, lo_open=True)
    return PRUNE_SCHEDULES[schedule](step, float(pr_max), float(t_end))


@dataclass(frozen=True)
class UpdateSchedule:
    """When to update the pattern and how much to prune; ``compute(step)`` is the prune ratio.

    >>> s = UpdateSchedule(total_steps=100, n_updates=3, prune_ratio=0.5)
    >>> s.steps, s.is_update(50), s.compute(50)
    ((25, 50, 75), True, 0.25)
    """

    total_steps: int
    n_updates: int = 160
    prune_ratio: float = 0.5
    prune_schedule: str = "cosine"
    end_fraction: float = 1.0
    steps: tuple[int, ...] = field(init=False)
    t_end: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(update_steps(self.total_steps, self.n_updates,
                                                             self.end_fraction)))
        object.__setattr__(self, "t_end", float(end_step(self.total_steps, self.end_fraction)))
        fn = "UpdateSchedule"
        if self.prune_schedule not in PRUNE_SCHEDULES:
            raise ValueError(f"{fn}: argument 'prune_schedule' must be one of {sorted(PRUNE_SCHEDULES)}, "
                             f"got {self.prune_schedule!r}")
        _check_number(fn, "prune_ratio", self.prune_ratio, 0.0, 1.0)

    def is_update(self, step: int) -> bool:
        """True when ``step`` is one of the update steps t_k."""
        return step in self.steps

    def update_index(self, step: int) -> int:
        """k - 1 for step t_k (0-based position in ``steps``); ValueError otherwise."""
        try:
            return self.steps.index(step)
        except ValueError:
            raise ValueError(f"UpdateSchedule.update_index: argument 'step' must be an update step, "
                             f"got {step!r}") from None

    def compute(self, step: float) -> float:
        """Prune ratio pr(step)."""
        return prune_ratio(step, self.prune_ratio, self.t_end, self.prune_schedule)
