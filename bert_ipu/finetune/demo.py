"""The offline downstream demo (`make finetune`): which standard-library package does a
documentation paragraph come from?

The task is derived from the same source as the built-in pre-training corpus (the
installed Python's docstrings), so it needs no download: every paragraph of 5 to 80
words from the docstrings of `PACKAGES` (their submodules' classes, functions and
methods), labelled with its package, classes balanced, split 80/20 at random (seeded).
The paragraphs were part of the pre-training text (without labels): the demo shows what
the pre-trained weights bring over random ones on a small task, not a clean benchmark.

The settings procedure, the same for both arms (pre-trained, random init), fixed before
any result was seen: for each learning rate of `RATES`, fine-tune `EPOCHS` epochs on 80 %
of the training split and measure accuracy on the other 20 % (seed 0); take the rate with
the best accuracy there (the dev split is not looked at); then fine-tune on the whole
training split with that rate for each seed of `SEEDS` and report dev accuracy (mean,
standard deviation over seeds). Everything lands in `--out/results.json`.

    python -m bert_ipu.finetune.demo --run runs/demo --out runs/demo/finetune
"""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import random
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

from bert_ipu.data.stdlib_docs import _member_docs, paragraphs
from bert_ipu.logs import Log

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


RATES = (1e-4, 3e-4, 1e-3, 3e-3)
EPOCHS = 4.0
SEEDS = (0, 1, 2)
ARMS = {"pretrained": False, "random_init": True}


def choose_rate(model: Path, task: Any, random_init: bool, settings: dict[str, Any],
                log: Log) -> tuple[float, dict[str, float]]:
    """The rate of RATES with the best accuracy on a 20 % validation part of the training
    split (seed 0), and every rate's accuracy there."""
    from bert_ipu.finetune import FinetuneSettings, finetune

    inner = validation_task(task)
    scores = {}
    for rate in RATES:
        s = FinetuneSettings(learning_rate=rate, random_init=random_init, seed=0, **settings)
        scores[str(rate)] = finetune(model, inner, s, log=log)["final"]["accuracy"]
    best = max(RATES, key=lambda r: scores[str(r)])   # the first of equal ones: the lowest
    return best, scores


def validation_task(task: Any, fraction: float = 0.2, seed: int = 0) -> Any:
    """The task with its training split cut in two: 80 % train, 20 % evaluation (seeded)."""
    from dataclasses import replace

    from bert_ipu.finetune.data import Split

    order = list(range(len(task.train.labels)))
    random.Random(seed).shuffle(order)
    cut = int(len(order) * (1 - fraction))

    def part(index: list[int]) -> Split:
        t = task.train
        return Split([t.texts_a[i] for i in index],
                     None if t.texts_b is None else [t.texts_b[i] for i in index],
                     [t.labels[i] for i in index])

    return replace(task, train=part(order[:cut]), eval=part(order[cut:]))


def main(argv: Sequence[str] | None = None) -> int:
    """Export the run, build the task, choose each arm's rate, fine-tune over seeds."""
    from bert_ipu.finetune import FinetuneSettings, TaskError, finetune, load_task
    from bert_ipu.hub import HubError, load_pretrained
    from bert_ipu.hub.export import export_folder

    p = argparse.ArgumentParser(prog="python -m bert_ipu.finetune.demo", description=__doc__)
    p.add_argument("--run", default="runs/demo", help="pre-training run folder")
    p.add_argument("--out", default=None, help="results folder (default: RUN/finetune)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    out = Path(args.out or Path(args.run) / "finetune")
    settings = dict(epochs=EPOCHS, max_length=96, threads=args.threads, progress=False)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    try:
        src = load_pretrained(args.run)
        export_folder(src, out / "model", src.cfg.sparsity.method != "dense", overwrite=True)
        counts = write_demo_task(out / "task")
        task = load_task(str(out / "task"))
        results: dict[str, Any] = {"procedure": {"rates": RATES, "epochs": EPOCHS, "seeds": SEEDS,
                                                 "validation_fraction": 0.2}}
        for arm, random_init in ARMS.items():
            rate, scores = choose_rate(out / "model", task, random_init, settings, log)
            runs = [finetune(out / "model", task, FinetuneSettings(
                learning_rate=rate, random_init=random_init, seed=seed, **settings), log=log)
                for seed in SEEDS]
            accuracy = [r["final"]["accuracy"] for r in runs]
            results[arm] = {"rate": rate, "validation_accuracy": scores, "dev_accuracy": accuracy,
                            "mean": statistics.mean(accuracy), "std": statistics.stdev(accuracy),
                            "mcc": [r["final"]["mcc"] for r in runs],
                            "time_s": sum(r["time_s"] for r in runs)}
    except (HubError, TaskError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results["task"] = {"packages": counts, "train": len(task.train.labels),
                       "dev": len(task.eval.labels), "chance": 1 / len(PACKAGES)}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(summary(results))
    return 0


def summary(results: dict[str, Any]) -> str:
    """The demo's result lines (also what the README shows)."""
    t = results["task"]
    out = [f"demo task: {len(t['packages'])} packages, {t['train']} train / {t['dev']} dev "
           f"paragraphs, chance {t['chance']:.3f}"]
    for arm in ARMS:
        r = results[arm]
        out.append(f"  {arm:12s} rate {r['rate']:g} (validation accuracy by rate: "
                   + ", ".join(f"{k}: {v:.3f}" for k, v in r["validation_accuracy"].items())
                   + f"); dev accuracy {r['mean']:.3f} +- {r['std']:.3f} over seeds "
                   f"{', '.join(map(str, results['procedure']['seeds']))}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
