"""The README's block on the fine-tuning demo (`make finetune`), generated from its
results: `dynsp-finetune-report RESULTS.json [--pretrain-summary summary.json]
[--pages README.md]` rewrites the `finetune-demo` block (tools/pages.py), so that no
number of it is typed by hand."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from dynsp_tools.pages import replace_block

ARMS = (("pretrained", "pre-trained"), ("random_init", "random init"))


def markdown(results: dict[str, Any], pretrain: dict[str, Any] | None = None,
             machine: str | None = None) -> str:
    task, proc = results["task"], results["procedure"]
    lines = []
    if pretrain:
        first, final = pretrain["initial_eval"]["mlm_loss"], pretrain["final_eval"]["mlm_loss"]
        lines.append(f"Measured after the full `make pretrain` ({pretrain['steps']} steps, "
                     f"{pretrain['precision']}, held-out MLM loss {first:.2f} -> {final:.2f}"
                     + (f"; {machine}" if machine else "") + "):")
    lines.append(f"{task['train']} train / {task['dev']} dev paragraphs, {len(task['packages'])} "
                 f"classes, chance {task['chance']:.3f}; rates tried "
                 f"{', '.join(f'{r:g}' for r in proc['rates'])}, {proc['epochs']:g} epochs, "
                 f"seeds {', '.join(map(str, proc['seeds']))}.")
    lines += ["", "| arm | rate chosen on the validation part | validation accuracy per rate | "
              "dev accuracy per seed | mean | std | standard error |", "|---|---|---|---|---|---|---|"]
    for key, label in ARMS:
        r = results[key]
        se = r["std"] / math.sqrt(len(r["dev_accuracy"]))
        lines.append(f"| {label} | {r['rate']:g} | " + ", ".join(
            f"{k}: {v:.3f}" for k, v in r["validation_accuracy"].items()) + " | "
            + ", ".join(f"{a:.3f}" for a in r["dev_accuracy"])
            + f" | {r['mean']:.3f} | {r['std']:.3f} | {se:.3f} |")
    a, b = results["pretrained"], results["random_init"]
    diff = a["mean"] - b["mean"]
    se = math.sqrt(a["std"] ** 2 / len(a["dev_accuracy"]) + b["std"] ** 2 / len(b["dev_accuracy"]))
    lines += ["", f"Difference of means (pre-trained - random init): {diff:+.3f}, standard error "
              f"{se:.3f} ({abs(diff) / se:.1f} standard errors)." if se > 0 else
              f"Difference of means (pre-trained - random init): {diff:+.3f}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--pretrain-summary", type=Path)
    p.add_argument("--machine", help="the CPU the numbers were measured on")
    p.add_argument("--pages", nargs="*", type=Path, default=[])
    args = p.parse_args(argv)
    results = json.loads(args.results.read_text())
    pretrain = json.loads(args.pretrain_summary.read_text()) if args.pretrain_summary else None
    text = markdown(results, pretrain, args.machine)
    print(text)
    for page in args.pages:
        if not replace_block(page, "finetune-demo", text):
            p.error(f"--pages: {page} has no <!-- finetune-demo:begin/end --> block")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
