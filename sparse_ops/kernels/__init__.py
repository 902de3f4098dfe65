"""Kernel backends for the three block-sparse products, behind one registry.

A backend implements, for 2-D inputs already cast to the compute dtype:

    forward(x [N, I], w)           -> y  [N, O]        y  = x @ W^T
    grad_input(dy [N, O], w)       -> dx [N, I]        dx = dy @ W
    grad_values(dy [N, O], x, w)   -> dv [nnz, B, B]   dv = (dy^T @ x) at w's blocks

where ``w`` is a BlockSparseMatrix whose values are in the compute dtype, ``x`` and
``dy`` are contiguous, and results are fresh tensors (callers may modify them in
place). Results are in the compute dtype, except that ``grad_values`` may return fp32
(a backend accumulating in fp32 hands back the accumulator unrounded; autograd casts it
to the fp32 master dtype anyway). ``forward_with_bias(x, w, bias)`` defaults to
``forward(x, w) + bias``; autograd.py calls it whenever the layer has a bias.

Registered here: ``reference`` (kernels/reference.py), ``dense``, ``bsr``,
``gather_bmm`` (kernels/cpu.py). ``triton`` (kernels/triton_bsr.py) registers
itself when imported; that module is imported lazily, only for CUDA devices and only
when the ``triton`` package is installed, so triton is never imported otherwise.
``auto`` is not a backend but a rule, see :func:`auto_backend_name`.
"""
from __future__ import annotations

import importlib
import importlib.util
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from sparse_ops.format import BlockSparseMatrix


class Backend:
    """Base class of a kernel backend; subclasses set ``name`` and the three products."""

    name: str = ""

    def supports(self, device: torch.device, dtype: torch.dtype, block_size: int) -> bool:
        """Whether this backend can run on ``device`` with ``dtype`` and ``block_size``."""
        return True

    def forward(self, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        raise NotImplementedError

    def forward_with_bias(self, x: Tensor, w: BlockSparseMatrix, bias: Tensor) -> Tensor:
        """``forward(x, w) + bias`` (bias [O]); backends override it to fuse the bias."""
        return self.forward(x, w).add_(bias)

    def grad_input(self, dy: Tensor, w: BlockSparseMatrix) -> Tensor:
        raise NotImplementedError

    def grad_values(self, dy: Tensor, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        raise NotImplementedError


_REGISTRY: dict[str, Backend] = {}
_TRITON_STATE: dict[str, Optional[str]] = {"error": None, "tried": None}
AUTO = "auto"
KNOWN_NAMES = ("reference", "dense", "bsr", "gather_bmm", "triton")


class BackendError(ValueError):
    """Unknown, duplicate or unsupported kernel backend."""


def register_backend(backend: Backend) -> Backend:
    """Add ``backend`` under ``backend.name``; a second backend with the same name is an error."""
    name = getattr(backend, "name", "")
    if not isinstance(name, str) or not name or name == AUTO:
        raise BackendError(f"register_backend: argument 'backend' must have a non-empty name other "
                           f"than 'auto', got {name!r}")
    if name in _REGISTRY:
        raise BackendError(f"register_backend: backend name {name!r} is already registered "
                           f"(by {type(_REGISTRY[name]).__name__}); registered: {sorted(_REGISTRY)}")
    _REGISTRY[name] = backend
    return backend


def _maybe_load_triton(device: torch.device) -> None:
    """Import kernels/triton_bsr.py once, if the device is CUDA and triton is installed."""
    if device.type != "cuda" or "triton" in _REGISTRY or _TRITON_STATE["tried"]:
        return
    _TRITON_STATE["tried"] = "yes"
    if importlib.util.find_spec("triton") is None:
        _TRITON_STATE["error"] = "the 'triton' package is not installed"
        return
    try:
        importlib.import_module("sparse_ops.kernels.triton_bsr")
    except Exception as exc:  # optional extra: fall back to the other backends
        _TRITON_STATE["error"] = f"importing sparse_ops.kernels.triton_bsr failed: {exc!r}"
        warnings.warn(f"sparse_ops.kernels: triton backend unavailable ({_TRITON_STATE['error']})")


def backend_names(device: torch.device | str | None = None) -> list[str]:
    """Registered backend names (for ``device``: including the lazily loaded ones)."""
    if device is not None:
        _maybe_load_triton(torch.device(device))
    return sorted(_REGISTRY)


def get_backend(name: str, device: torch.device | str | None = None) -> Backend:
    """The backend registered as ``name`` (not ``auto``); unknown names list the valid ones."""
    if device is not None:
        _maybe_load_triton(torch.device(device))
    if name not in _REGISTRY:
        hint = ""
        if name == "triton":
            hint = f" (triton: {_TRITON_STATE['error'] or 'only loaded for CUDA devices'})"
        raise BackendError(f"get_backend: argument 'name' must be one of {sorted(_REGISTRY)} or "
                           f"'auto', got {name!r}{hint}")
    return _REGISTRY[name]


def check_backend_name(fn: str, name: str) -> str:
    """Validate a configured backend name early (before any device is known)."""
    if name != AUTO and name not in KNOWN_NAMES and name not in _REGISTRY:
        raise BackendError(f"{fn}: argument 'backend' must be one of "
                           f"{sorted(set(KNOWN_NAMES) | set(_REGISTRY) | {AUTO})}, got {name!r}")
    return name


OPS = ("forward", "grad_input", "grad_values")


def select_backend(name: str, device: torch.device, dtype: torch.dtype, block_size: int,
                   shape: tuple[int, int], nnz: int, n_tokens: int, op: str = "forward") -> Backend:
    """Resolve ``name`` (a backend name or ``auto``) for one product ``op`` (one of OPS).

    Explicit names are honoured (an error if unsupported); ``auto`` applies
    :func:`auto_backend_name`, which may pick a different backend per product.
    """
    if name != AUTO:
        backend = get_backend(name, device)
        if not backend.supports(device, dtype, block_size):
            raise BackendError(f"select_backend: backend {name!r} does not support device="
                               f"{device.type}, dtype={dtype}, block_size={block_size}")
        return backend
    _maybe_load_triton(device)
    return _REGISTRY[auto_backend_name(device, dtype, block_size, shape, nnz, n_tokens, op)]


def cached(w: BlockSparseMatrix, key: str, build: Callable[[], object]) -> object:
    """Pattern-derived data (index tensors) memoised in ``w.cache`` until rows/cols change.

    The key includes the version counters and storage of ``rows``/``cols``, which
    ``set_pattern``, ``load_state_dict`` and ``.to(device)`` all change.
    """
    if w.cache is None:
        return build()
    stamp = (w.rows.data_ptr(), w.rows._version, w.cols.data_ptr(), w.cols._version, w.rows.device)
    hit = w.cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = build()
    w.cache[key] = (stamp, value)
    return value


from sparse_ops.kernels import reference as _reference  # noqa: E402,F401  (registers "reference")
from sparse_ops.kernels import cpu as _cpu  # noqa: E402,F401  (registers "dense", "bsr", "gather_bmm")
from sparse_ops.kernels.cpu import auto_backend_name  # noqa: E402
