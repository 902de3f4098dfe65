"""Fixtures for the tools tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_threads():
    """Tools' --threads calls torch.set_num_threads: undo it for the other tests."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
