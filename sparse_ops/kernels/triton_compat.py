"""Compatibility shim for Triton's CPU interpreter (``TRITON_INTERPRET=1``), tests only.

Triton 3.6.0's interpreter turns a scalar tensor into a Python int with
``int(handle.data)``, where ``data`` is a 1-element 1-D numpy array. NumPy >= 2.4 raises
``TypeError: only 0-dimensional arrays can be converted to Python scalars`` there, so any
kernel whose loop bound is loaded from memory (``for j in range(0, n)`` with ``n =
tl.load(...)``: exactly our CSR loops) fails under the interpreter. Upstream issue
triton-lang/triton#9171, fixed by PR #9172 (``int(self.handle.data.squeeze())``) after 3.6.0.

`patch_interpreter_index` applies that one-line fix by wrapping the interpreter's
``_patch_lang_tensor``; it is idempotent, touches nothing when the interpreter is not in
use, and leaves compiled (GPU) kernels unaffected. Drop it once triton > 3.6 is pinned.
"""
from __future__ import annotations

import numpy as np

_SENTINEL = "_sparse_ops_index_patch"


def _to_int(tensor: object) -> int:
    return int(np.asarray(tensor.handle.data).reshape(-1)[0])  # type: ignore[attr-defined]


def patch_interpreter_index() -> bool:
    """Make interpreted ``range(0, tensor)`` work with NumPy >= 2.4; True if (already) patched."""
    try:
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover - triton without the interpreter module
        return False
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None:
        return False
    if getattr(original, _SENTINEL, False):
        return True

    def _patch_lang_tensor(tensor, scope):  # type: ignore[no-untyped-def]
        original(tensor, scope)
        # Registered after the original, so the scope's LIFO restore undoes both.
        scope.set_attr(tensor, "__index__", lambda self: _to_int(self))

    setattr(_patch_lang_tensor, _SENTINEL, True)
    interpreter._patch_lang_tensor = _patch_lang_tensor
    return True
