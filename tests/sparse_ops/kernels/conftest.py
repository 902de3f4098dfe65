"""Kernel tests: without CUDA the Triton kernels run in Triton's CPU interpreter.

TRITON_INTERPRET must be set before `triton` itself is imported (triton decides at
decoration time whether its JIT functions are interpreted), so it is set here, when pytest
imports this conftest during collection. The backend module is imported lazily by the `tb`
fixture, so `make test` (kernels deselected) neither loads triton nor registers `triton`.
On a GPU machine leave TRITON_INTERPRET unset to run the `gpu` tests on compiled kernels:
``pytest -m "kernels and gpu" tests/sparse_ops/kernels``.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tb() -> ModuleType:
    """sparse_ops.kernels.triton_bsr (interpreted when there is no CUDA device)."""
    pytest.importorskip("triton")
    return importlib.import_module("sparse_ops.kernels.triton_bsr")


@pytest.fixture
def kernel_device(tb: ModuleType, device: str) -> torch.device:
    """The device of a test parametrised by `device`, or a skip: CPU needs the interpreter,
    CUDA compiled kernels."""
    if device == "cpu" and not tb.INTERPRET:
        pytest.skip("CPU kernel tests need TRITON_INTERPRET=1 before triton is imported")
    if device == "cuda" and (tb.INTERPRET or not torch.cuda.is_available()):
        pytest.skip("CUDA kernel tests need a GPU and compiled (non-interpreted) kernels")
    return torch.device(device)
