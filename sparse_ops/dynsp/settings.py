"""`DynSpSettings`: how a DynSpController updates patterns, one frozen dataclass.

Every field validates itself on construction and a bad value raises `SettingsError`
naming the field (``<SECTION>.<field>: expected ..., got ...``). Choices come from the
registries (regrowth methods: methods.py; prune schedules: schedules.py; new-block
inits: regrow.py), so registering a method makes it a valid ``regrow`` here.

>>> DynSpSettings(n_updates=4, regrow="gradient").needs_gradient
True
>>> try:
...     DynSpSettings(prune_ratio=1.5)
... except SettingsError as err:
...     print(err)
DynSpSettings.prune_ratio: expected a number in [0, 1], got 1.5

A caller embedding these settings in its own config (``bert_ipu``'s ``sparsity:``
section subclasses this class) sets ``SECTION`` so that messages name its key path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .methods import METHODS, regrowth_names
from .regrow import REGROW_INITS
from .schedules import PRUNE_SCHEDULES, UpdateSchedule

PLACEMENTS = ("host", "device")
"""Where the controller decides: on the host CPU (the original IPU design) or on the device."""


def max_updates(total_steps: int, end_fraction: float = 1.0) -> int:
    """The most pattern updates that fit in a run of `total_steps` (one step apart)."""
    from sparse_ops.dynsp.schedules import update_steps

    lo, hi = 0, max(0, int(total_steps))          # n = 0 always fits; n > T never does
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            update_steps(total_steps, mid, end_fraction)
            lo = mid
        except ValueError:
            hi = mid - 1
    return lo


class SettingsError(ValueError):
    """A bad DynSp setting: `path` (SECTION.field), what was `expected`, the `value`."""

    def __init__(self, path: str, expected: str, value: Any) -> None:
        super().__init__(f"{path}: expected {expected}, got {value!r}")
        self.path, self.expected, self.value = path, expected, value


def _choices(names: Any) -> dict[str, Any]:
    return {"choices": names}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class DynSpSettings:
    """Pattern updates of dynamic sparsity (the DynSp part of a ``sparsity:`` section)."""

    SECTION: ClassVar[str] = "DynSpSettings"
    regrow: str = field(default="random", metadata=_choices(regrowth_names))
    """Where pruned blocks go: random (uniform among inactive positions) or gradient
    (RigL: largest block L1 norm of the dense gradient of the current batch)."""
    n_updates: int = 160
    """Pattern updates over the run (0 = static sparsity)."""
    prune_ratio: float = 0.5
    """pr_max: fraction of active blocks pruned at the first update."""
    prune_schedule: str = field(default="cosine", metadata=_choices(lambda: tuple(PRUNE_SCHEDULES)))
    """Decay of the pruning ratio over the run: cosine, constant or linear."""
    end_fraction: float = 1.0
    """Updates happen within the first end_fraction of the training steps."""
    regrow_init: str = field(default="zero", metadata=_choices(lambda: REGROW_INITS))
    """Values of newly allocated blocks: zero or normal (truncated normal, std 0.02)."""
    regrow_pruned: bool = False
    """Allow re-allocating the positions pruned in the same update (default: excluded)."""
    placement: str = field(default="host", metadata=_choices(lambda: PLACEMENTS))
    """Where the controller decides: host (CPU, as on IPUs) or device; same patterns."""
    seed: int | None = 0
    """Seed of the pattern updates (with the update index and layer index)."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise SettingsError naming the first field that is out of range."""
        rules = {
            "n_updates": (_is_int, lambda v: v >= 0, "an integer >= 0"),
            "prune_ratio": (_is_number, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
            "end_fraction": (_is_number, lambda v: 0 < v <= 1, "a number in (0, 1]"),
            "regrow_pruned": (lambda v: isinstance(v, bool), lambda v: True, "true or false"),
            "seed": (lambda v: v is None or _is_int(v), lambda v: v is None or 0 <= v < 2**63,
                     "an integer in [0, 2**63 - 1]"),
        }
        for name, (typed, ok, words) in rules.items():
            value = getattr(self, name)
            if not (typed(value) and ok(value)):
                raise SettingsError(self.path(name), words, value)
        for f in fields(DynSpSettings):
            names = f.metadata.get("choices")
            if names is not None and getattr(self, f.name) not in tuple(names()):
                valid = ", ".join(repr(n) for n in names())
                raise SettingsError(self.path(f.name), f"one of {valid}", getattr(self, f.name))

    @classmethod
    def path(cls, name: str) -> str:
        """The dotted name of a field in error messages (`SECTION.name`)."""
        return f"{cls.SECTION}.{name}"

    @property
    def needs_gradient(self) -> bool:
        """True when updates need the dense gradient (RigL): FLOPs and capture hooks."""
        return self.n_updates > 0 and METHODS[self.regrow].needs_gradient

    def dynsp_fields(self) -> dict[str, Any]:
        """The DynSpSettings fields only (a subclass's extra fields left out)."""
        return {f.name: getattr(self, f.name) for f in fields(DynSpSettings)}

    def schedule(self, total_steps: int) -> UpdateSchedule:
        """The update schedule over `total_steps` optimizer steps; SettingsError naming
        n_updates (or end_fraction) when the updates do not fit in the run."""
        try:
            return UpdateSchedule(total_steps, self.n_updates, self.prune_ratio,
                                  self.prune_schedule, self.end_fraction)
        except ValueError as exc:
            if "'n_updates'" not in str(exc):   # not the spacing of the updates (a bad step count)
                raise SettingsError(self.path("n_updates"), f"a schedule over the run's {total_steps} "
                                    f"training steps ({exc})", self.n_updates) from None
            most = max_updates(total_steps, self.end_fraction)
            raise SettingsError(self.path("n_updates"), f"at most {most} pattern updates in a run of "
                                f"{total_steps} training steps (one step apart, before "
                                f"end_fraction={self.end_fraction:g} of the run): lower "
                                f"{self.path('n_updates')} or raise the run's training steps",
                                self.n_updates) from None
