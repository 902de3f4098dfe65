"""Always-sparse block-sparse layers and dynamic sparsity (DynSp) for PyTorch.

    from sparse_ops import sparsify, densify, DynSpController   # see sparse_ops/convert.py

The names are loaded on first use, so that `import sparse_ops.format` stays light.
"""
from __future__ import annotations

from typing import Any

_LAZY = {"sparsify": "sparse_ops.convert", "densify": "sparse_ops.convert",
         "SparsifyError": "sparse_ops.convert", "SparseLinear": "sparse_ops.linear",
         "DynSpController": "sparse_ops.dynsp.controller", "DynSpSettings": "sparse_ops.dynsp.settings"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparse_ops' has no attribute {name!r}")


__all__ = sorted(_LAZY)
