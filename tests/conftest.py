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
