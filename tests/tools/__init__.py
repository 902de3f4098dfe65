"""Tests of the tools (installed as the package ``dynsp_tools``)."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def tool_path(name: str) -> Path:
    """tools/<name>.py (for running a tool as a script)."""
    return TOOLS / f"{name}.py"


def load_tool(name: str) -> ModuleType:
    """The tool's module, ``dynsp_tools.<name>``."""
    return importlib.import_module(f"dynsp_tools.{name}")
