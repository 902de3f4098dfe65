"""What a pipeline stage holds and how long its checkpoints take, for P = 1, 2, 4 stages.

    dynsp-bench-stages --config RUN.yaml [--stages 1 2 4] [--repeats 3] [--steps 20]
        [--every 5] [--json out.json] [key=value ...]

Every case trains the same config through the real CLI (`bert_ipu.pretrain`; P > 1
under `bert_ipu.launch`, one thread per process), with the encoder layers split evenly
over P stages, and checkpoints every --every steps:

* ``P=1``: one process (the single-process state and the single-file checkpoint);
* ``P=n sharded``: n stages, every rank writing its shard (checkpoint.sharded=true);
* ``P=n gathered``: n stages, rank 0 gathering every stage's state and writing the
  single-process files (checkpoint.sharded=false: how pipelined checkpoints were
  written before the sharded ones).

The cases run interleaved (one of each per repeat). Per rank it reports the model
state the process holds (the summary's `model_state_mib`: encoder layers apart from
embeddings and heads; weights, patterns, gradients, AdamW moments) and its peak RSS; per
case the checkpoint time (capture + write, every checkpoint of every repeat: min and
median). The encoder fraction is the rank's encoder state over the single process's.

Equality (with 1 and 2 among --stages): the first repeat's 2-stage checkpoint at step
--steps / 2 is resumed by one process and, with 4 among --stages, by 4 stages; each is
compared with the first repeat's uninterrupted single-process run (`resume_differences`:
the largest relative difference of any logged metric past the resumed step, and
||w - w_single|| / ||w_single|| over every floating-point weight; the sparse patterns
must be identical). Use a config without dropout (the stages draw their own dropout
masks). `--pages README.md` rewrites the page's `pipeline-stages` block from the result
(`--render JSON`: from an earlier measurement, without running anything).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from bert_ipu.config import load_config
from dynsp_tools.bench_pipeline import even_split, run_case
from dynsp_tools.benchlib.layers import machine_info
from dynsp_tools.pages import replace_block


def cases(stages: list[int], layers: int) -> list[tuple[str, int, list[str]]]:
    """(name, processes, overrides) of every case."""
    out: list[tuple[str, int, list[str]]] = []
    for p in stages:
        if p == 1:
            out.append(("P=1", 1, []))
            continue
        split = f"training.layers_per_stage={json.dumps(even_split(layers, p))}"
        out += [(f"P={p} sharded", p, [split, "checkpoint.sharded=true"]),
                (f"P={p} gathered", p, [split, "checkpoint.sharded=false"])]
    return out


def resume_differences(want: Path, got: Path, after: int) -> dict[str, Any]:
    """How far run `got` (resumed at step `after`) is from the uninterrupted run `want`:
    the largest relative difference of any numeric metric logged past `after` (timing
    fields apart), the relative difference of all final floating-point weights, and
    whether the steps logged and the final sparse patterns are identical."""
    from bert_ipu.store import checkpoint as ck
    from bert_ipu.train.metrics import TIMING_FIELDS

    def records(run: Path) -> dict[int, dict[str, Any]]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r for r in rows if r["step"] > after}

    a, b = records(want), records(got)
    worst = 0.0
    for step in set(a) & set(b):
        for k, v in a[step].items():
            if k in TIMING_FIELDS or k.endswith("update_time_s") or not isinstance(v, float):
                continue
            if isinstance(b[step].get(k), float):
                worst = max(worst, abs(b[step][k] - v) / max(abs(v), 1e-12))
    wa = ck.load_checkpoint(ck.find_latest(want / "checkpoints"))["model.pt"]
    wb = ck.load_checkpoint(ck.find_latest(got / "checkpoints"))["model.pt"]
    floats = [k for k in wa if wa[k].is_floating_point()]
    diff = torch.cat([(wb[k].float() - wa[k].float()).flatten() for k in floats]).norm()
    norm = torch.cat([wa[k].float().flatten() for k in floats]).norm()
    patterns = [k for k in wa if k.endswith((".rows", ".cols"))]
    return {"steps_equal": sorted(a) == sorted(b) and bool(a),
            "metrics_max_rel": worst, "weights_rel": float(diff / norm),
            "patterns_equal": all(torch.equal(wa[k], wb[k]) for k in patterns),
            "max_abs_weight_diff": max(float((wb[k] - wa[k]).abs().max()) for k in floats)}


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per case: the first repeat's memory per rank, the checkpoint times of
    every repeat."""
    single = next((r for r in rows if r["case"] == "P=1"), None)
    base = single["model_state_mib"][0]["encoder"] if single else None
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        runs = [r for r in rows if r["case"] == case]
        times = [t for r in runs for t in r["checkpoint_write_s"]]
        first = runs[0]
        out.append({
            "case": case, "procs": first["procs"],
            "encoder_mib": [m["encoder"] for m in first["model_state_mib"]],
            "rest_mib": [m["rest"] for m in first["model_state_mib"]],
            "encoder_fraction": [m["encoder"] / base if base else None
                                 for m in first["model_state_mib"]],
            "peak_rss_mib": [m["rss"] for m in first["peak_memory_mib"]],
            "checkpoints": len(times),
            "checkpoint_s_min": min(times) if times else None,
            "checkpoint_s_median": statistics.median(times) if times else None,
        })
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="the run's YAML (corpus, model, sparsity)")
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--every", type=int, default=5, help="checkpoint every N steps")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--render", type=Path, help="a JSON of an earlier measurement")
    ap.add_argument("--pages", nargs="*", type=Path, default=[])
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    common = [f"training.training_steps={args.steps}", "logging.eval_steps=0",
              f"checkpoint.checkpoint_steps={args.every}", "logging.progress_bar=false",
              "logging.trackers=[]", "logging.log_steps=1",
              f"checkpoint.keep_last={args.steps}", *args.overrides]
    layers = load_config(args.config, common).model.num_hidden_layers
    if args.render:
        data = json.loads(args.render.read_text())
    else:
        data = measure(args, common, layers)
    print(text_table(data))
    for page in args.pages:
        if not replace_block(page, "pipeline-stages", markdown(data)):
            ap.error(f"--pages: {page} has no <!-- pipeline-stages:begin/end --> block")
    if args.json and not args.render:
        args.json.write_text(json.dumps(data, indent=1))
    return 0


def folder_of(tmp: str, name: str, repeat: int) -> Path:
    return Path(tmp) / f"{name.replace(' ', '_').replace('=', '')}_{repeat}"


def measure(args: argparse.Namespace, common: list[str], layers: int) -> dict[str, Any]:
    """Run every case (interleaved, --repeats times), then the equality resumes."""
    plan = cases(args.stages, layers)
    rows, equality = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, procs, extra in plan:
                summary = run_case(Path(args.config), procs, common + extra,
                                   folder_of(tmp, name, repeat))
                rows.append({"case": name, "procs": procs, "repeat": repeat,
                             "model_state_mib": summary["model_state_mib"],
                             "peak_memory_mib": summary["peak_memory_mib"],
                             "checkpoint_write_s": summary["checkpoint_write_s"]})
        half = args.steps // 2
        source = folder_of(tmp, "P=2 sharded", 0) / "checkpoints" / f"step_{half:08d}"
        if 1 in args.stages and source.is_dir():
            for name, procs, extra in plan:
                if name not in ("P=1", "P=4 sharded"):
                    continue
                target = Path(tmp) / f"resumed_{procs}"
                run_case(Path(args.config), procs, common + extra + [
                    f"checkpoint.resume_training_from_checkpoint={source}"], target)
                equality[f"P=2 -> P={procs}"] = resume_differences(
                    folder_of(tmp, "P=1", 0), target, half)
    return {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": machine_info(torch.device("cpu")), "table": table(rows),
            "equality": equality, "resumed_at": args.steps // 2, "runs": rows}


def text_table(data: dict[str, Any]) -> str:
    machine, lines = data["machine"], data["table"]
    out = [f"CPU: {machine['cpu']} ({flags(machine)}); {data['args']['repeats']} repeats; "
           "memory of the first repeat",
           f"{'case':13} {'encoder MiB/rank':>22} {'enc/single':>18} {'rest MiB/rank':>22} "
           f"{'peak RSS MiB/rank':>20} {'ckpt s min/med':>15}"]
    for r in lines:
        enc = "/".join(f"{v:.2f}" for v in r["encoder_mib"])
        frac = "/".join(f"{v:.2f}" for v in r["encoder_fraction"] if v is not None)
        rest = "/".join(f"{v:.1f}" for v in r["rest_mib"])
        rss = "/".join(f"{v:.0f}" for v in r["peak_rss_mib"])
        ckpt = f"{r['checkpoint_s_min']:.3f}/{r['checkpoint_s_median']:.3f}" \
            if r["checkpoints"] else "-"
        out.append(f"{r['case']:13} {enc:>22} {frac:>18} {rest:>22} {rss:>20} {ckpt:>15}")
    for name, e in data["equality"].items():
        out.append(f"{name}: {json.dumps(e)}")
    return "\n".join(out)


def flags(machine: dict[str, Any]) -> str:
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if machine.get(f))


def markdown(data: dict[str, Any]) -> str:
    """The `pipeline-stages` page block: memory and checkpoint table, equality lines."""
    m, a = data["machine"], data["args"]
    extra = " ".join(f"`{o}`" for o in a["overrides"])
    lines = [f"Measured by `dynsp-bench-stages --config {Path(a['config']).name}` {extra} "
             f"({a['steps']} steps, a checkpoint every {a['every']}, {a['repeats']} interleaved "
             f"repeats, one thread per process) on CPU {m['cpu']} ({m['cpus']} cores; "
             f"{flags(m)}), torch {m['torch']}. Memory per rank (stage order) from the first "
             "repeat: the model state the process holds (weights, patterns, gradients, AdamW "
             "moments) of the encoder layers, its fraction of the single process's, the rest "
             "(embeddings on the first stage, pooler and heads with the tied word embedding "
             "on the last), and the peak RSS; checkpoint time (state capture and write) over "
             "every checkpoint of every repeat.", "",
             "| case | encoder MiB / rank | of single | rest MiB / rank | peak RSS MiB / rank "
             "| checkpoints | s min | s median |", "|---|---|---|---|---|---|---|---|"]
    for r in data["table"]:
        lines.append(
            f"| {r['case']} | {' / '.join(f'{v:.2f}' for v in r['encoder_mib'])} | "
            f"{' / '.join(f'{v:.2f}' for v in r['encoder_fraction'] if v is not None)} | "
            f"{' / '.join(f'{v:.1f}' for v in r['rest_mib'])} | "
            f"{' / '.join(f'{v:.0f}' for v in r['peak_rss_mib'])} | {r['checkpoints']} | "
            f"{r['checkpoint_s_min']:.3f} | {r['checkpoint_s_median']:.3f} |")
    if data["equality"]:
        lines += ["", f"Resumed from the 2-stage run's checkpoint at step {data['resumed_at']} "
                  "and compared with the uninterrupted single-process run:", ""]
        for name, e in data["equality"].items():
            lines.append(f"- {name}: largest relative metric difference "
                         f"{e['metrics_max_rel']:.1e}, weights ||dw|| / ||w|| "
                         f"{e['weights_rel']:.1e} (largest |dw| {e['max_abs_weight_diff']:.1e}), "
                         f"patterns {'identical' if e['patterns_equal'] else 'DIFFERENT'}, "
                         f"steps {'the same' if e['steps_equal'] else 'DIFFERENT'}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
