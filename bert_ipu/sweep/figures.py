"""Figures of a collected sweep (PNG, matplotlib): each titled and labelled so that it
reads without the code. Which figures are drawn depends on what the sweep varies:

* `pareto.png` (when the cost varies): held-out MLM loss against non-embedding training
  FLOPs and against active non-embedding (encoder) weights, log x; dense as a line
  through its points (model sizes), static and DynSp as points (drawn 3 % apart);
  error bars = std over seeds;
* `n_updates.png` / `prune_ratio.png` (when that setting varies): MLM loss, final DOF
  and the removed-new fraction against it;
* `learning_rate.png` (when the rate varies within a method and size; then instead of
  `pareto.png`): MLM loss against the learning rate, one line per method and size;
* `block_size.png` (when the block size varies): MLM loss per block size (equal FLOPs);
* curves.py: `curves.png`, `dof_curves.png`, `pattern.png`.

Points are the rows of `collect.aggregate`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bert_ipu.sweep import curves
from bert_ipu.sweep.plotting import pyplot, save_figure

__all__ = ["draw_all", "pareto", "against_setting", "block_sizes", "learning_rates"]

MARKERS = {"dense": "o", "static": "s", "dynamic": "^"}


def _line_name(point: dict[str, Any], x: str) -> str:
    """The method and every other varying setting than `x`: points on one line differ in x only."""
    others = [part for part in str(point.get("label", "")).split(", ")
              if part and part != "base" and not part.startswith(f"{x}=")
              and not part.startswith(("method=", "sparsity="))]
    head = str(point.get("method")) + ("" if point.get("method") == "dense"
                                      else f" s={point.get('sparsity')}")
    return ", ".join([head] + others)


def _series(points: list[dict[str, Any]], x: str, by_method: bool = False
            ) -> dict[str, list[dict[str, Any]]]:
    """Finished points with a loss and an `x`, one line per method (by_method) or per
    `_line_name`, each sorted by `x`."""
    out: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        if p.get("mlm_loss") is not None and p.get(x) is not None:
            name = str(p.get("method")) if by_method else _line_name(p, x)
            out.setdefault(name, []).append(p)
    return {m: sorted(ps, key=lambda p: p[x]) for m, ps in sorted(out.items())}


# Settings the pareto legend or axes already tell (method, sparsity) or that follow the
# method (its learning rate, a static run's n = 0): left out of the point notes.
_TOLD = ("method=", "sparsity=", "learning_rate=", "n_updates=", "hidden_size=")


def _point_note(point: dict[str, Any]) -> str:
    """Short note beside a pareto point: its width and whatever else varies."""
    others = [part for part in str(point.get("label", "")).split(", ")
              if part and part != "base" and not part.startswith(_TOLD)]
    head = [f"H={point.get('hidden_size')}"]
    if point.get("method") != "dense" and point.get("sparsity") is not None:
        head.append(f"s={point.get('sparsity')}")
    return ", ".join(head + others)


# Points of different methods at the same x (static and DynSp at one sparsity) are drawn
# this factor apart on the log axis so that neither hides the other.
DODGE = {"dense": 1.0, "static": 0.97, "dynamic": 1.03}


def _pareto_panel(ax: Any, points: list[dict[str, Any]], x: str, xlabel: str) -> None:
    for method, ps in _series(points, x, by_method=True).items():
        style = "-" if method == "dense" else ""
        ax.errorbar([p[x] * DODGE.get(method, 1.0) for p in ps], [p["mlm_loss"] for p in ps],
                    yerr=[p.get("mlm_loss_std") or 0.0 for p in ps], fmt=MARKERS.get(method, "x") + style,
                    capsize=3, label=method)
        for p in ps:
            text = ax.annotate(_point_note(p), (p[x] * DODGE.get(method, 1.0), p["mlm_loss"]), fontsize=7,
                               xytext=(4, 3), textcoords="offset points")
            text.set_in_layout(False)  # a long note must not squeeze the axes
    ax.set_xscale("log")
    ax.margins(x=0.12)  # room for the notes of the outermost points
    ax.xaxis.set_minor_formatter(pyplot().NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out MLM loss (final)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def pareto(points: list[dict[str, Any]], out: Path) -> Path:
    """pareto.png: MLM loss vs training FLOPs | vs active non-embedding weights."""
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.5))
    _pareto_panel(axes[0], points, "total_flops",
                  "non-embedding training FLOPs (encoder linears + attention; log)")
    _pareto_panel(axes[1], points, "nonembedding_params",
                  "active non-embedding (encoder FC) weights (log)")
    fig.suptitle("Held-out MLM loss at equal cost (embeddings and MLM head not counted: "
                 "docs/flops.md); error bars: std over seeds; static / DynSp drawn 3 % apart",
                 fontsize=9)
    return save_figure(fig, out / "pareto.png")


def against_setting(points: list[dict[str, Any]], setting: str, xlabel: str, out: Path) -> Path:
    """`<setting>.png`: MLM loss (left), final DOF and removed-new fraction (right) vs
    a DynSp setting; one line per combination of the other varying settings."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4.5))
    for name, ps in _series(points, setting).items():
        xs = [p[setting] for p in ps]
        left.errorbar(xs, [p["mlm_loss"] for p in ps], yerr=[p.get("mlm_loss_std") or 0 for p in ps],
                      fmt="o-", capsize=3, label=name)
        if any(p.get("dof") is not None for p in ps):
            right.errorbar(xs, [p.get("dof") for p in ps], yerr=[p.get("dof_std") or 0 for p in ps],
                           fmt="^-", capsize=3, label=f"DOF, {name}")
            right.plot(xs, [p.get("removed_new_fraction") for p in ps], "s--",
                       label=f"removed-new fraction, {name}")
    left.set(xlabel=xlabel, ylabel="held-out MLM loss (final)", title="loss")
    right.set(xlabel=xlabel, ylabel="fraction",
              title="DOF (final), removed-new fraction (mean over updates)")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"DynSp against {xlabel}; error bars: std over seeds")
    return save_figure(fig, out / f"{setting}.png")


def block_sizes(points: list[dict[str, Any]], out: Path) -> Path:
    """block_size.png: MLM loss per block size, one line per method, FLOPs in the legend."""
    fig, ax = pyplot().subplots(figsize=(6.5, 4.5))
    for method, ps in _series(points, "block_size").items():
        flops = ", ".join(sorted({f"{p['total_flops']:.2g}" for p in ps if p.get("total_flops")}))
        ax.errorbar([str(p["block_size"]) for p in ps], [p["mlm_loss"] for p in ps],
                    yerr=[p.get("mlm_loss_std") or 0 for p in ps], fmt="o-", capsize=3,
                    label=f"{method} (FLOPs {flops})")
    ax.set(xlabel="block size B (B x B blocks)", ylabel="held-out MLM loss (final)",
           title="Block size at equal FLOPs; error bars: std over seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out / "block_size.png")


def learning_rates(points: list[dict[str, Any]], out: Path) -> Path:
    """learning_rate.png: MLM loss against the learning rate (log x), one line per method,
    sparsity and model width; the best rate of each line is circled."""
    fig, ax = pyplot().subplots(figsize=(6.5, 4.5))
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        if p.get("mlm_loss") is not None and p.get("learning_rate") is not None:
            sparse = "" if p.get("method") == "dense" else f" s={p.get('sparsity')}"
            groups.setdefault(f"{p.get('method')}{sparse}, H={p.get('hidden_size')}", []).append(p)
    for name, ps in sorted(groups.items()):
        ps = sorted(ps, key=lambda p: p["learning_rate"])
        line = ax.errorbar([p["learning_rate"] for p in ps], [p["mlm_loss"] for p in ps],
                           yerr=[p.get("mlm_loss_std") or 0 for p in ps], fmt="o-", capsize=3,
                           label=name)
        best = min(ps, key=lambda p: p["mlm_loss"])
        ax.plot(best["learning_rate"], best["mlm_loss"], "o", ms=12, mfc="none",
                color=line[0].get_color())
    ax.set_xscale("log")
    ax.set(xlabel="peak learning rate (log)", ylabel="held-out MLM loss (final)",
           title="Learning rate per method and size (circled: lowest loss)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out / "learning_rate.png")


def _varies(points: list[dict[str, Any]], key: str) -> bool:
    return len({str(p.get(key)) for p in points if p.get(key) is not None}) > 1


def _rate_sweep(points: list[dict[str, Any]]) -> bool:
    """True when some method, sparsity and width was run at several learning rates (arms
    that differ in sparsity may each have their own rate: that is no rate sweep)."""
    rates: dict[tuple, set] = {}
    for p in points:
        rates.setdefault((p.get("method"), p.get("sparsity"), p.get("hidden_size")), set()).add(p.get("learning_rate"))
    return any(len(r) > 1 for r in rates.values())


def draw_all(rows: list[dict[str, Any]], points: list[dict[str, Any]], out: Path) -> list[Path]:
    """Every figure that this sweep's variation supports, written to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    # a pareto panel needs at least two costs on its x axis (one x value says nothing)
    cost_varies = _varies(points, "total_flops") or _varies(points, "nonembedding_params")
    paths = [learning_rates(points, out) if _rate_sweep(points) else
             (pareto(points, out) if cost_varies else None),
             curves.training_curves(rows, points, out)]
    dynamic = [p for p in points if p.get("method") == "dynamic"]  # static runs: n = 0
    for setting, label in (("n_updates", "number of pattern updates n"),
                           ("prune_ratio", "initial pruning ratio")):
        if _varies(dynamic, setting):
            paths.append(against_setting(dynamic, setting, label, out))
    if _varies(points, "block_size"):
        paths.append(block_sizes(points, out))
    if _varies(points, "regrow"):
        paths += [curves.dof_curves(rows, out), curves.patterns(points, out)]
    return [p for p in paths if p is not None]
