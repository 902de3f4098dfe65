"""The one logging style of the package: a run's messages go through an injected `Log`
(a function of one line: `print` on the command line, a list's `append` in tests, the
sweep's file writer), so that library code never decides where its lines go.
Third-party-style diagnostics that a user filters by module (kernel selection, the
TensorBoard fallback) use stdlib `logging.getLogger(__name__)` instead."""
from __future__ import annotations

from typing import Callable

Log = Callable[[str], None]
"""Receives one message line (no trailing newline)."""


def quiet(_: str) -> None:
    """A Log that drops every line."""
