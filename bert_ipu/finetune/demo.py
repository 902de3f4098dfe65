"""The offline downstream demo (`make finetune`): which standard-library package does a
documentation paragraph come from?

The task is derived from the same source as the built-in pre-training corpus (the
installed Python's docstrings), so it needs no download: every paragraph of 5 to 80
words from the docstrings of `PACKAGES` (their submodules' classes, functions and
methods), labelled with its package, classes balanced, split 80/20 at random (seeded).
The paragraphs were part of the pre-training text (without labels): the demo shows what
the pre-trained weights bring over random ones on a small task, not a clean benchmark.

    python -m bert_ipu.finetune.demo --run runs/demo --out runs/demo/finetune
"""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import random
import sys
from pathlib import Path
from typing import Sequence

from bert_ipu.data.stdlib_docs import _member_docs, paragraphs

PACKAGES = ("asyncio", "email", "http", "xml", "unittest", "multiprocessing")


def package_paragraphs(package: str) -> list[str]:
    """Distinct paragraphs (5..80 words) of a stdlib package's docstrings, in module order."""
    root = importlib.import_module(package)
    names = [package] + sorted(m.name for m in pkgutil.walk_packages(root.__path__, package + ".")
                               if ".test" not in m.name and "__main__" not in m.name)
    found: dict[str, None] = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a platform-specific submodule; skip it
            continue
        for p in paragraphs(module.__doc__) + _member_docs(module):
            if 5 <= len(p.split()) <= 80:
                found.setdefault(p.replace("\t", " "))
    return list(found)


def write_demo_task(folder: Path, seed: int = 0, per_class: int = 250) -> dict[str, int]:
    """folder/train.tsv and dev.tsv (sentence, label); returns examples per package."""
    rng = random.Random(seed)
    texts = {p: package_paragraphs(p) for p in PACKAGES}
    n = min(per_class, *(len(v) for v in texts.values()))
    rows = [(t, p) for p, v in texts.items() for t in rng.sample(v, n)]
    rng.shuffle(rows)
    cut = int(0.8 * len(rows))
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:cut]), ("dev", rows[cut:])):
        lines = ["sentence\tlabel"] + [f"{t}\t{p}" for t, p in part]
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {p: n for p in PACKAGES}


def main(argv: Sequence[str] | None = None) -> int:
    """Export the run, build the task, fine-tune pre-trained and random-init models."""
    from bert_ipu.finetune import FinetuneSettings, TaskError, finetune, load_task
    from bert_ipu.hub import HubError, load_pretrained
    from bert_ipu.hub.export import export_folder

    p = argparse.ArgumentParser(prog="python -m bert_ipu.finetune.demo", description=__doc__)
    p.add_argument("--run", default="runs/demo", help="pre-training run folder")
    p.add_argument("--out", default="runs/demo/finetune", help="results folder")
    p.add_argument("--epochs", type=float, default=4.0)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        src = load_pretrained(args.run)
        export_folder(src, out / "model", src.cfg.sparsity.method != "dense", overwrite=True)
        counts = write_demo_task(out / "task")
        task = load_task(str(out / "task"))
        s = dict(epochs=args.epochs, learning_rate=args.learning_rate, max_length=96)
        results = {name: finetune(out / "model", task, FinetuneSettings(random_init=rnd, **s))
                   for name, rnd in (("pretrained", False), ("random_init", True))}
    except (HubError, TaskError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results["task"] = {"packages": counts, "train": len(task.train.labels),
                       "dev": len(task.eval.labels), "chance": 1 / len(PACKAGES)}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"demo task: {len(PACKAGES)} packages, {len(task.train.labels)} train / "
          f"{len(task.eval.labels)} dev paragraphs, chance {1 / len(PACKAGES):.3f}")
    for name in ("pretrained", "random_init"):
        f = results[name]["final"]
        print(f"  {name:12s} accuracy {f['accuracy']:.3f}  macro-F1 {f['f1']:.3f}  "
              f"MCC {f['mcc']:.3f}  ({results[name]['time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
