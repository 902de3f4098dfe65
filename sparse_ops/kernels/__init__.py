"""Kernel backends for the three block-sparse products, behind one registry.

    registry.py    Backend base class, register/declare, names, lookup (see there for the
                   backend contract)
    reference.py   ``reference``: pure torch gather/scatter, any device (the test oracle)
    cpu.py         ``dense`` (dense scratch GEMM), ``bsr`` (MKL through torch.sparse),
                   ``gather_bmm``; and the fixed ``auto`` rule (other devices, DYNSP_AUTO=rule)
    cpp.py         ``cpp``: C++ SIMD kernels (cpp_bsr.cpp, built on first use by cpp_build.py)
    autotune.py    ``auto`` on the CPU: each product's backend measured once per problem
    triton_*.py    ``triton`` (CUDA; declared here, imported on first CUDA use when the
                   ``triton`` package is installed)

``auto`` is not a backend but a rule (``auto_backend_name``), applied per product.
"""
from __future__ import annotations

import torch

from sparse_ops.kernels import cpp, cpu, reference  # noqa: F401  (register their backends)
from sparse_ops.kernels import autotune
from sparse_ops.kernels.cpu import auto_backend_name
from sparse_ops.kernels.registry import (
    AUTO, OPS, Backend, BackendError, backend_names, cached, check_backend_name, declare_backend,
    ensure_loaded, get_backend, is_registered, loaded_backend, register_backend,
)

declare_backend("triton", "sparse_ops.kernels.triton_bsr", devices=("cuda",), requires="triton")

__all__ = ["AUTO", "OPS", "Backend", "BackendError", "backend_names", "cached",
           "check_backend_name", "declare_backend", "get_backend", "is_registered",
           "loaded_backend", "register_backend", "select_backend", "auto_backend_name"]


def select_backend(name: str, device: torch.device, dtype: torch.dtype, block_size: int,
                   shape: tuple[int, int], nnz: int, n_tokens: int, op: str = "forward") -> Backend:
    """Resolve ``name`` (a backend name or ``auto``) for one product ``op`` (one of OPS).

    Explicit names are honoured (an error if unsupported); ``auto`` measures on the CPU
    (:func:`autotune.choose`) and applies :func:`auto_backend_name` elsewhere; either
    may pick a different backend per product.
    """
    if name != AUTO:
        backend = get_backend(name, device)
        if not backend.supports(device, dtype, block_size):
            raise BackendError(f"select_backend: backend {name!r} does not support device="
                               f"{device.type}, dtype={dtype}, block_size={block_size}")
        return backend
    ensure_loaded(device)
    measured = autotune.choose(op, device, dtype, block_size, tuple(shape), nnz, n_tokens)
    return get_backend(measured or auto_backend_name(device, dtype, block_size, shape, nnz, n_tokens, op))
