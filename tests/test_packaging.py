"""pyproject.toml lists every package and its console commands resolve (`pip install -e .`
is what `make` runs; these checks keep a new subpackage from being left out)."""
from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _installed_name(folder: Path) -> str:
    rel = folder.relative_to(ROOT).parts
    return ".".join(("dynsp_tools",) + rel[1:] if rel[0] == "tools" else rel)


def test_every_package_folder_is_listed():
    listed = set(PROJECT["tool"]["setuptools"]["packages"])
    folders = {_installed_name(p.parent) for top in ("bert_ipu", "sparse_ops", "tools")
               for p in (ROOT / top).rglob("__init__.py")}
    assert folders == listed


def test_console_commands_resolve():
    for command, target in PROJECT["project"]["scripts"].items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command


def test_tools_import_as_the_installed_package():
    import dynsp_tools.flops

    assert Path(dynsp_tools.flops.__file__).resolve() == ROOT / "tools" / "flops.py"
