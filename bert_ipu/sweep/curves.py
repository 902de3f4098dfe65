"""Figures over training time, from each run's `metrics.jsonl` and checkpoint:

* `curves.png`: training loss and held-out MLM loss against the step, one colour per
  point (its seeds share it), freeze / unfreeze events as dotted vertical lines;
* `dof_curves.png`: explored DOF (mean over layers) against the step, one colour per
  regrowth method;
* `pattern.png`: the accumulated pattern of one layer (every block that was ever active,
  from the controller state of the run's newest checkpoint), one image per regrowth method.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bert_ipu.sweep.collect import read_metrics, read_updates
from bert_ipu.sweep.plotting import pyplot, save_figure

__all__ = ["training_curves", "dof_curves", "patterns", "ever_active"]


def _xy(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["step"], r[key]) for r in records if r.get(key) is not None and "step" in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def training_curves(rows: list[dict[str, Any]], points: list[dict[str, Any]], out: Path) -> Path:
    """curves.png: training loss | held-out MLM loss vs step, one colour per point."""
    plt = pyplot()
    fig, (train_ax, eval_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(points) > len(colours):
        colours = [plt.get_cmap("tab20")(i) for i in range(20)]
    for i, point in enumerate(points):
        colour = colours[i % len(colours)]
        for j, run in enumerate(point["runs"]):
            records = read_metrics(Path(run))
            label = point["label"] if j == 0 else None
            train_ax.plot(*_xy(records, "loss"), color=colour, alpha=0.7, lw=1, label=label)
            steps, losses = _xy([r for r in records if r.get("step")], "eval_mlm_loss")
            eval_ax.plot(steps, losses, "o-", color=colour, ms=3, label=label)
        for key in ("freeze_until_step", "freeze_from_step"):
            if point.get(key) is not None:
                for ax in (train_ax, eval_ax):
                    ax.axvline(point[key], color=colour, ls=":",
                               label=f"{key.replace('_', ' ')} ({point['label']})")
    train_ax.set(xlabel="optimizer step", ylabel="training loss (MLM + NSP)", title="training")
    eval_ax.set(xlabel="optimizer step", ylabel="held-out MLM loss",
                title="evaluation (the step-0 value, about ln(vocabulary size), left out)")
    for ax in (train_ax, eval_ax):
        ax.grid(True, alpha=0.3)
    eval_ax.legend(fontsize=6, loc="best")
    fig.suptitle("Runs side by side (one colour per setting; its seeds share the colour)")
    return save_figure(fig, out / "curves.png")


def dof_curves(rows: list[dict[str, Any]], out: Path) -> Path:
    """dof_curves.png: mean explored DOF vs step, one colour per regrowth method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    seen: set[str] = set()
    colours = dict(zip(sorted({str(r.get("regrow")) for r in rows}),
                       plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r in rows:
        if r.get("method") != "dynamic":
            continue
        regrow = str(r.get("regrow"))
        label = None if regrow in seen else f"regrow={regrow}"
        seen.add(regrow)
        ax.plot(*_xy(read_updates(Path(r["run"])), "dof_mean"), color=colours[regrow],
                alpha=0.8, label=label)
    ax.set(xlabel="optimizer step", ylabel="explored DOF (ever-active / all weights)",
           title="DOF over training: random vs gradient (RigL) regrowth")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out / "dof_curves.png")


def ever_active(run_dir: Path, layer: str | None = None) -> tuple[str, Any] | None:
    """(layer name, bool [block rows, block cols]) of the newest checkpoint's controller
    state; the first FFN-up layer when `layer` is None; None without a DynSp checkpoint."""
    from sparse_ops.dynsp.metrics import unpack_bits
    from bert_ipu.store.checkpoint import find_latest, load_checkpoint

    path = find_latest(run_dir / "checkpoints")
    files = load_checkpoint(path) if path is not None else {}
    state = (files.get("controller.pt") or {}).get("controller")
    if not state or not state.get("trackers"):
        return None
    names = sorted(state["trackers"])
    name = layer or next((n for n in names if "intermediate" in n), names[0])
    info, tracker = state["layers"][name], state["trackers"][name]
    rows_, cols_ = (s // info["block_size"] for s in info["shape"])
    bits = unpack_bits(tracker["ever_active_bits"], int(tracker["n_positions"]))
    return name, bits.view(rows_, cols_).numpy()


def patterns(points: list[dict[str, Any]], out: Path) -> Path | None:
    """pattern.png: ever-active blocks of one layer, first seed of each DynSp point."""
    images = []
    for p in points:
        if p.get("method") == "dynamic" and p["runs"]:
            found = ever_active(Path(p["runs"][0]))
            if found is not None:
                images.append((p, *found))
    if not images:
        return None
    fig, axes = pyplot().subplots(1, len(images), figsize=(4.5 * len(images), 4.8), squeeze=False)
    for ax, (p, name, image) in zip(axes[0], images):
        ax.imshow(image, cmap="Greys", interpolation="nearest", aspect="auto")
        ax.set_title(f"{p['label']}: {image.mean():.1%} ever active",
                     fontsize=8)
        ax.set(xlabel="input block", ylabel="output block")
    fig.suptitle(f"Accumulated pattern (black: ever active) of {images[0][1]}", fontsize=9)
    return save_figure(fig, out / "pattern.png")
