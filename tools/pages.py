"""Generated sections of hand-written pages (README.md, docs/results/*.md): the text
between `<!-- NAME:begin -->` and `<!-- NAME:end -->` is rewritten by the tool that owns
NAME (claims: dynsp_tools.claims; kernels: dynsp_tools.kernel_report), so that no number
in them is typed by hand."""
from __future__ import annotations

from pathlib import Path


def replace_block(path: Path, name: str, text: str) -> bool:
    """Rewrite the text between `<!-- name:begin -->` and `<!-- name:end -->` in `path`
    (generated sections of hand-written pages); False when the markers are missing."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    try:
        page = path.read_text(encoding="utf-8")
    except OSError:
        return False
    if begin not in page or end not in page:
        return False
    head, rest = page.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text.strip()}\n{end}{tail}", encoding="utf-8")
    return True
