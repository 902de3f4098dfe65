"""Extract the built-in corpus: the installed Python standard library's documentation.

Documents (deterministic order):
  * one per public stdlib module: its docstring, then the docstrings of the public
    classes and functions it defines (sorted by name), each class followed by the
    docstrings of its public methods (sorted by name);
  * one per `pydoc` topic (`pydoc_data.topics.topics`, sorted by topic name).

Every docstring is cleaned (`inspect.cleandoc`) and cut into paragraphs at blank lines;
each paragraph becomes one line (hard wraps joined), so a document is a list of
paragraph lines, ready for sentence splitting. A paragraph seen before anywhere in the
corpus (inherited docstrings such as "Return self==value.") is dropped.

This file runs standalone (`python -I stdlib_docs.py`, stdlib only) so that importing
hundreds of modules happens in a throw-away subprocess: no side effect of an import
(signal handlers, readline, warnings filters) reaches the training process, and a
module that crashes the interpreter cannot take it down. The result is JSON on stdout:
{"documents": [[line, ...], ...], "imported": int, "failed": [name, ...]}.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import io
import json
import pkgutil
import re
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout

# Top-level modules never imported: side effects on import (this prints, antigravity
# opens a browser), GUI toolkits, IDE and test code, or docstring-free shims.
SKIP_TOP = frozenset({
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test",
    "lib2to3", "ensurepip", "venv", "pydoc_data", "msilib", "msvcrt", "winreg",
    "winsound", "nt", "ntpath", "nturl2path", "encodings", "distutils", "xxsubtype",
})
# A dotted name with any of these parts is skipped (test suites, demos, platform glue).
SKIP_PARTS = frozenset({"test", "tests", "idle_test", "demo", "__main__"})
_BLANK = re.compile(r"\n\s*\n")
_SPACES = re.compile(r"\s+")


def paragraphs(doc: str | None) -> list[str]:
    """Cleaned docstring -> paragraphs, each with its hard line wraps joined into one line."""
    if not doc or not isinstance(doc, str):
        return []
    text = inspect.cleandoc(doc)
    return [_SPACES.sub(" ", p).strip() for p in _BLANK.split(text) if p.strip()]


def module_names() -> list[str]:
    """Public stdlib module names, top-level and submodules, sorted; nothing imported."""
    names = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIP_TOP:
            continue
        names.append(top)
        spec = importlib.util.find_spec(top) if _findable(top) else None
        if spec is None or not spec.submodule_search_locations:
            continue
        for info in pkgutil.walk_packages(list(spec.submodule_search_locations), top + "."):
            parts = info.name.split(".")
            if any(p.startswith("_") or p in SKIP_PARTS for p in parts[1:]):
                continue
            names.append(info.name)
    return sorted(set(names))


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _public(name: str) -> bool:
    return not name.startswith("_")


_DESCRIPTORS = (property, classmethod, staticmethod)


def _owners(module_name: str) -> set[str]:
    """Module names whose objects count as defined here (C accelerators: heapq <- _heapq)."""
    last = module_name.rpartition(".")[2]
    return {module_name, "_" + module_name, "_" + last}


def _member_docs(module) -> list[str]:
    """Docstrings of the public classes/functions defined in `module` (and their methods)."""
    out: list[str] = []
    owners = _owners(module.__name__)
    for name in sorted(vars(module)):
        obj = vars(module)[name]
        if not _public(name) or getattr(obj, "__module__", None) not in owners:
            continue
        if inspect.isclass(obj):
            out.extend(paragraphs(obj.__doc__))
            for mname in sorted(vars(obj)):
                member = vars(obj)[mname]
                if _public(mname) and (callable(member) or isinstance(member, _DESCRIPTORS)):
                    out.extend(paragraphs(getattr(member, "__doc__", None)))
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            out.extend(paragraphs(obj.__doc__))
    return out


def extract() -> dict:
    """Import every public stdlib module quietly; return documents and import counts."""
    documents: list[list[str]] = []
    failed: list[str] = []
    imported = 0
    sink = io.StringIO()
    for name in module_names():
        try:
            with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
                documents.append(paragraphs(module.__doc__) + _member_docs(module))
            imported += 1
        except BaseException:  # noqa: BLE001 - any import failure is counted, not fatal
            failed.append(name)
    try:
        from pydoc_data.topics import topics
        documents.extend(paragraphs(topics[key]) for key in sorted(topics))
    except ImportError:
        failed.append("pydoc_data.topics")
    return {"documents": _dedupe(documents), "imported": imported, "failed": failed}


def _dedupe(documents: list[list[str]]) -> list[list[str]]:
    """Drop paragraphs already seen earlier in the corpus, then empty documents."""
    seen: set[str] = set()
    out = []
    for doc in documents:
        kept = [p for p in doc if not (p in seen or seen.add(p))]
        if kept:
            out.append(kept)
    return out


if __name__ == "__main__":
    json.dump(extract(), sys.stdout, ensure_ascii=False)
