"""The kernel-backend registry: one place that knows every backend name.

A backend implements, for 2-D inputs already cast to the compute dtype:

    forward(x [N, I], w)           -> y  [N, O]        y  = x @ W^T
    grad_input(dy [N, O], w)       -> dx [N, I]        dx = dy @ W
    grad_values(dy [N, O], x, w)   -> dv [nnz, B, B]   dv = (dy^T @ x) at w's blocks

where ``w`` is a BlockSparseMatrix whose values are in the compute dtype, ``x`` and
``dy`` are contiguous, and results are fresh tensors (callers may modify them in
place). Results are in the compute dtype, except that ``grad_values`` may return fp32
(a backend accumulating in fp32 hands back the accumulator unrounded; autograd casts it
to the fp32 master dtype anyway). ``forward_with_bias(x, w, bias)`` defaults to
``forward(x, w) + bias``.

Two kinds of entries:

* ``register_backend(instance)``: a backend that is importable everywhere (reference,
  dense, bsr, gather_bmm register themselves when ``sparse_ops.kernels`` is imported);
* ``declare_backend(name, module, devices, requires)``: a backend whose module is
  imported only when a tensor on one of ``devices`` asks for it and the optional
  package ``requires`` is installed (triton: CUDA only). Its name is valid in configs
  everywhere; loading failures are reported once and the name falls back to ``auto``'s
  other choices.

``backend_names()`` lists every name (registered or declared): configs validate
against it. ``backend_names(device)`` lists those usable on ``device`` (loading the
declared ones that apply).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from sparse_ops.format import BlockSparseMatrix

log = logging.getLogger("sparse_ops.kernels")

AUTO = "auto"
OPS = ("forward", "grad_input", "grad_values")


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

    def grad_bias(self, dy: Tensor) -> Tensor:
        """Column sums of dy [N, O], accumulated and returned in at least fp32."""
        return dy.sum(0, dtype=torch.promote_types(dy.dtype, torch.float32))


class BackendError(ValueError):
    """Unknown, duplicate or unsupported kernel backend."""


@dataclass
class _Declared:
    """A backend imported on first use: its module registers it."""

    module: str
    devices: tuple[str, ...]
    requires: Optional[str] = None
    error: Optional[str] = None
    tried: bool = field(default=False)


_REGISTRY: dict[str, Backend] = {}
_DECLARED: dict[str, _Declared] = {}


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


def declare_backend(name: str, module: str, devices: tuple[str, ...],
                    requires: Optional[str] = None) -> None:
    """Declare a lazily imported backend (see the module docstring)."""
    if name in _DECLARED or name in _REGISTRY or name == AUTO:
        raise BackendError(f"declare_backend: backend name {name!r} is already known")
    _DECLARED[name] = _Declared(module, tuple(devices), requires)


def is_registered(name: str) -> bool:
    """True once a backend instance is registered under ``name`` (declared ones: once loaded)."""
    return name in _REGISTRY


def _load(name: str, device: torch.device) -> None:
    """Import a declared backend's module once, when ``device`` is one of its devices."""
    entry = _DECLARED.get(name)
    if entry is None or name in _REGISTRY or entry.tried or device.type not in entry.devices:
        return
    entry.tried = True
    if entry.requires and importlib.util.find_spec(entry.requires) is None:
        entry.error = f"the {entry.requires!r} package is not installed"
        return
    try:
        importlib.import_module(entry.module)
    except Exception as exc:  # an optional backend must never break the others
        entry.error = f"importing {entry.module} failed: {exc!r}"
        log.warning("sparse_ops.kernels: %s backend unavailable (%s)", name, entry.error)


def _load_all(device: torch.device) -> None:
    for name in list(_DECLARED):
        _load(name, device)


def backend_names(device: torch.device | str | None = None) -> list[str]:
    """Every known name (``device=None``), or the names usable on ``device``."""
    if device is None:
        return sorted(set(_REGISTRY) | set(_DECLARED))
    dev = torch.device(device)
    _load_all(dev)
    return sorted(n for n in _REGISTRY if n not in _DECLARED or dev.type in _DECLARED[n].devices)


def get_backend(name: str, device: torch.device | str | None = None) -> Backend:
    """The backend registered as ``name`` (not ``auto``); unknown names list the valid ones."""
    if device is not None:
        _load(name, torch.device(device))
    if name not in _REGISTRY:
        hint = ""
        if name in _DECLARED:
            entry = _DECLARED[name]
            hint = f" ({name}: {entry.error or 'loaded only for ' + '/'.join(entry.devices) + ' devices'})"
        raise BackendError(f"get_backend: argument 'name' must be one of {sorted(_REGISTRY)} or "
                           f"'auto', got {name!r}{hint}")
    return _REGISTRY[name]


def loaded_backend(name: str) -> Optional[Backend]:
    """The registered backend ``name`` or None (never imports anything)."""
    return _REGISTRY.get(name)


def check_backend_name(fn: str, name: str) -> str:
    """Validate a configured backend name early (before any device is known)."""
    if name != AUTO and name not in backend_names():
        raise BackendError(f"{fn}: argument 'backend' must be one of "
                           f"{[AUTO] + backend_names()}, got {name!r}")
    return name


def ensure_loaded(device: torch.device) -> None:
    """Load the declared backends that apply to ``device`` (for ``auto``)."""
    _load_all(device)


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
