"""matplotlib set-up shared by the sweep figures (file-only Agg backend, no display)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["pyplot", "save_figure"]


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported on first use: an optional extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write `path` as a 120-dpi PNG (bounding box grown to every label, so none is
    clipped), close the figure; returns `path`."""
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path
