"""Dynamic sparsity (DynSp): schedules, prune/regrow helpers, methods, the controller.

Pure parts (schedules, prune, regrow, methods, distribution) import no SparseLinear;
``DynSpController`` is imported lazily so ``sparse_ops.dynsp.distribution`` can be used
while building the layers.
"""
from __future__ import annotations

from .distribution import DISTRIBUTIONS, layer_block_counts, layer_densities
from .methods import METHODS, DynSpMethod, regrowth_names, LayerPattern, PatternUpdate, get_method, register_method
from .schedules import PRUNE_SCHEDULES, UpdateSchedule, prune_ratio, update_steps
from .settings import DynSpSettings, SettingsError

__all__ = ["DISTRIBUTIONS", "layer_block_counts", "layer_densities", "METHODS", "DynSpMethod",
           "regrowth_names",
           "LayerPattern", "PatternUpdate", "get_method", "register_method", "PRUNE_SCHEDULES",
           "UpdateSchedule", "prune_ratio", "update_steps", "DynSpSettings", "SettingsError",
           "DynSpController"]


def __getattr__(name: str):
    if name == "DynSpController":
        from .controller import DynSpController
        return DynSpController
    raise AttributeError(f"module 'sparse_ops.dynsp' has no attribute {name!r}")
