"""The CLI's other modes: `--dry-run` (build everything, take no step) and
`--prepare-only` (the prepared-data cache only, e.g. once on a shared disk before a
cluster job). Both stop at once on SIGINT/SIGTERM, like a run's set-up."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bert_ipu.config import Config
from bert_ipu.devices import distributed as D
from bert_ipu.train.build import build_components
from bert_ipu.train.signals import StopRequest
from bert_ipu.logs import Log



def dry_run(cfg: Config, log: Log = print) -> dict[str, Any]:
    """Check the output folder, prepare (or reuse) the data, build model, optimizer and
    controller; no step, and output_dir is neither created nor written (only checked).
    Returns what a run would do."""
    from bert_ipu.store.checkpoint import check_creatable
    from bert_ipu.trackers import check_trackers

    check_trackers(cfg.logging.trackers)
    check_creatable(Path(cfg.output_dir), "output_dir")
    check_creatable(Path(cfg.checkpoint.checkpoint_output_dir), "checkpoint.checkpoint_output_dir")
    with StopRequest(immediate=True):
        c = build_components(cfg, log)
    try:
        return {
            "steps": c.total_steps,
            "sequences_per_step": c.sequences_per_step,
            "parameters": sum(p.numel() for p in c.core.parameters()),
            "train_batches_per_epoch": len(c.train_loader),
            "held_out_sequences": 0 if c.eval_dataset is None else len(c.eval_dataset),
            "flops_per_sequence": c.flops.flops_per_sequence,
            "precision": c.precision,
            "device": c.device.kind,
            "pattern_updates": 0 if c.controller is None else len(
                cfg.sparsity.controller_settings().schedule(c.total_steps).steps),
        }
    finally:
        if c.controller is not None:
            c.controller.close()
        D.shutdown()


def prepare_only(cfg: Config, log: Log = print) -> dict[str, Any]:
    """Prepare (or reuse) the data cache of `cfg.data`; no model, no output folder."""
    from bert_ipu.data import build_datasets

    with StopRequest(immediate=True):
        train, held_out, tok = build_datasets(cfg.data, log)
    return {"train_sequences": len(train),
            "held_out_sequences": 0 if held_out is None else len(held_out),
            "vocab_size": tok.vocab_size}
