"""Shared pytest fixtures: the offline data folder; no network. The packages are
imported as installed (`pip install -e .`, which `make test` does)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline corpora folder `../shared/data`; tests needing it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _transformers_logs_to_this_tests_stderr():
    """transformers' logging handler keeps the stderr of the test that first used it (a
    capture pytest closes afterwards); point it at the current one before each test."""
    import sys

    module = sys.modules.get("transformers.utils.logging")
    handler = getattr(module, "_default_handler", None)
    if handler is not None:
        handler.stream = sys.stderr   # not setStream: it flushes the old, closed stream
    yield


@pytest.fixture(scope="module")
def ext():
    """The C++ CPU kernels extension (sparse_ops/kernels/cpp_bsr.cpp), built once; the test
    is skipped where it cannot be built. Leaves the instruction set to the CPU's own."""
    from sparse_ops.kernels import cpp_build

    module = cpp_build.load()
    if module is None:
        pytest.skip("the C++ kernels cannot be built on this machine (see the warning line); "
                    "the model then uses torch's dropout and the other backends")
    yield module
    module.force_isa(-1)
