"""The trainer's interface to the file system and to checkpoints.

Output folder (`output_dir`):

    config.yaml      resolved config (defaults < YAML < CLI)
    vocab.txt        the run's vocabulary (token id = line; also in every checkpoint)
    metrics.jsonl    one JSON object per logged step (and one at step 0 with the
                     initial evaluation)
    eval.json        the final held-out evaluation
    summary.json     final eval, throughput, total FLOPs, DOF, pattern-update time
    checkpoints/     step_XXXXXXXX[_mYYYY]/ (see checkpoint.py)
"""
from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bert_ipu.store import checkpoint as ck
from bert_ipu.store.sharded import SHARDED_FILES
from bert_ipu.devices import distributed as D
from bert_ipu.train.build import Components
from bert_ipu.config import Config, applied_config_dict, save_config
from bert_ipu.fsutil import EXPORT_MARKERS, UnsafeTargetError, check_replaceable
from bert_ipu.schema import dump_yaml
from bert_ipu.train.metrics import Throughput, write_json
from bert_ipu.train.resume_check import first_line, structural_differences
from bert_ipu.store.jsonl import LAYER_FILE, METRICS_FILE, UPDATES_FILE
from bert_ipu.store.runlock import RunLock
from bert_ipu.train.state import TrainState, capture_grads, capture_rng, restore_grads, restore_rng
from bert_ipu.store.vocab import VOCAB, check_same_vocab, vocab_text, vocab_tokens, write_run_vocab
from bert_ipu.trackers import CSV_FILE, TENSORBOARD_DIR
from bert_ipu.logs import Log

log = logging.getLogger(__name__)


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


class _Locks:
    """Two locks released together (output folder and a checkpoint folder outside it)."""

    def __init__(self, *locks: RunLock) -> None:
        self.locks = locks

    def release(self) -> None:
        for lock in self.locks:
            lock.release()


@dataclass(frozen=True)
class RunOutputs:
    """Where a run writes, and the command that resumes it."""

    output_dir: Path
    checkpoint_dir: Path
    resume_command: str
    lock: RunLock | _Locks | None = field(default=None, compare=False)
    """Held by rank 0 for the whole run: one run per output folder."""

    def release(self) -> None:
        """Unlock the output folder (the end of the run, in any way)."""
        if self.lock is not None:
            self.lock.release()


def prepare_outputs(cfg: Config, resume_command: str | None = None) -> RunOutputs:
    """Check that the output and checkpoint folders are writable and lock the output
    folder against a second run, before any work is done (rank 0 only). Nothing else is
    written yet: a run that then stops on bad input (data, vocabulary, checkpoint) leaves
    an earlier run's files as they were; `write_config` writes config.yaml once the run
    is set up. The caller releases the lock (`RunOutputs.release`)."""
    out = Path(cfg.output_dir)
    ckpt = Path(cfg.checkpoint.checkpoint_output_dir)
    lock = None
    if int(os.environ.get("RANK", 0)) == 0:
        ck.check_writable(out, "output_dir")
        ck.check_writable(ckpt, "checkpoint.checkpoint_output_dir")
        if cfg.checkpoint.export_dir:
            try:  # the end-of-run export may only replace an earlier export, never the run
                check_replaceable(cfg.checkpoint.export_dir, "checkpoint.export_dir", EXPORT_MARKERS,
                                  (out, ckpt))
            except UnsafeTargetError as exc:
                raise ck.CheckpointError(str(exc)) from None
        lock = RunLock(out).acquire("output_dir")
        if not _inside(ckpt, out):  # a checkpoint folder elsewhere (maybe shared): its own lock
            try:
                ckpt.mkdir(parents=True, exist_ok=True)
                lock = _Locks(lock, RunLock(ckpt).acquire("checkpoint.checkpoint_output_dir"))
            except BaseException:
                lock.release()
                raise
    if resume_command is None:  # the saved config.yaml is self-contained
        resume_command = shlex.join([
            sys.executable or "python", "-m", "bert_ipu.pretrain", "--config", str(out / "config.yaml"),
            "checkpoint.resume_training_from_checkpoint=latest"])
    return RunOutputs(out, ckpt, resume_command, lock)


def write_config(cfg: Config, out: RunOutputs, tok: Any = None) -> None:
    """The resolved config.yaml and vocab.txt of this run (rank 0), written after set-up
    and resume (`tok`: the run's TokenizerInfo, None without data)."""
    if int(os.environ.get("RANK", 0)) == 0:
        save_config(cfg, out.output_dir / "config.yaml")
        if tok is not None:
            write_run_vocab(tok, out.output_dir)


# ------------------------------------------------------------------ checkpoints
@dataclass(frozen=True)
class Piece:
    """One stateful piece of a checkpoint: where it lives (`file`, and `key` inside that
    file's dict; None: the whole file), how to capture it and how to put it back. Saving
    and restoring both iterate PIECES: a new piece is one entry here."""

    file: str
    key: str | None
    save: Callable[[Components, TrainState], Any]
    restore: Callable[[Components, TrainState, Any], None]


def _per_rank(c: Components, saved: list[Any], what: str) -> Any:
    """This rank's entry of a per-rank list; a checkpoint of another process count
    (another number of pipeline stages or replicas) gives rank r entry r mod its length."""
    if len(saved) != c.dist.world_size and c.dist.is_main:
        log.warning("the checkpoint was written by %d process(es), this run has %d: each "
                    "process continues %s of process (rank mod %d)", len(saved),
                    c.dist.world_size, what, len(saved))
    return saved[c.dist.rank % len(saved)]


def _restore_schedule(c: Components, saved: dict[str, Any]) -> None:
    changed = c.schedule.check_state_dict(saved)
    if changed:
        log.warning("the learning-rate schedule differs from the checkpoint's in %s; "
                    "continuing with this run's", ", ".join(changed))


def _maybe(obj: Any, method: str, value: Any) -> None:
    if obj is not None and value is not None:
        getattr(obj, method)(value)


# In restore order: the weights, then the counters and streams (a pipeline stage restores
# its weights, optimizer and controller itself, from its part of the shards).
PIECES: tuple[Piece, ...] = (
    Piece("model.pt", None, lambda c, s: c.core.state_dict(), lambda c, s, v: c.core.load_state_dict(v)),
    Piece("optimizer.pt", None, lambda c, s: c.optimizer.state_dict(),
          lambda c, s, v: c.optimizer.load_state_dict(v)),
    Piece("controller.pt", "controller", lambda c, s: None if c.controller is None else c.controller.state_dict(),
          lambda c, s, v: c.controller.load_state_dict(v) if c.controller is not None else None),
    Piece("controller.pt", "frozen", lambda c, s: None if c.frozen is None else c.frozen.state_dict(),
          lambda c, s, v: _maybe(c.frozen, "load_state_dict", v)),
    Piece("trainer.pt", "state", lambda c, s: s.state_dict(), lambda c, s, v: s.load_state_dict(v)),
    Piece("trainer.pt", "scaler", lambda c, s: c.scaler.state_dict(), lambda c, s, v: c.scaler.load_state_dict(v)),
    Piece("trainer.pt", "schedule", lambda c, s: c.schedule.state_dict(), lambda c, s, v: _restore_schedule(c, v)),
    Piece("trainer.pt", "data", lambda c, s: c.train_loader.state_dict(),
          lambda c, s, v: c.train_loader.load_state_dict(v)),
    Piece("trainer.pt", "rng", lambda c, s: D.gather_objects(capture_rng(), c.dist),   # one entry per rank
          lambda c, s, v: restore_rng(_per_rank(c, v, "the RNG streams (dropout)"))),
    Piece("trainer.pt", "device_rng", lambda c, s: D.gather_objects(c.device.rng_state(), c.dist),
          lambda c, s, v: c.device.set_rng_state(_per_rank(c, v, "the device RNG"))),
    Piece("trainer.pt", "grads", lambda c, s: capture_grads(c.params) if s.micro_step > 0 else None,
          lambda c, s, v: restore_grads(c.params, v) if v is not None else None),
)


CHECKPOINT_FILES = tuple(dict.fromkeys([p.file for p in PIECES] + ["config.yaml"]))
"""What every trainer checkpoint holds; one whose manifest lacks any is not resumed."""


@dataclass
class CheckpointContent:
    """What one checkpoint holds: the files rank 0 writes, and this rank's shard (None
    unless the run is pipelined: then the model, optimizer and controller are in the
    shards, see store/sharded.py)."""

    files: dict[str, Any]
    shard: dict[str, Any] | None = None


def checkpoint_files(c: Components, state: TrainState) -> CheckpointContent:
    """Everything needed to continue bit for bit (see store/checkpoint.py for the layout):
    the PIECES, the run's config and vocabulary, a pipeline's shard and common files.
    Collective."""
    c.runner.sync_to_host()  # IPU: the device holds the trained weights
    files: dict[str, Any] = dict(c.runner.checkpoint_files(c.controller, c.scaler))  # collective
    shard = c.runner.checkpoint_shard(c.controller)
    if c.tokenizer is not None:
        files[VOCAB] = vocab_text(c.tokenizer)
    for piece in PIECES:
        if c.runner.sharded and piece.file in SHARDED_FILES:  # the runner's files or shard
            continue
        value = piece.save(c, state)
        if piece.key is None:
            files[piece.file] = value
        else:
            files.setdefault(piece.file, {})[piece.key] = value
    files["config.yaml"] = dump_yaml(applied_config_dict(c.cfg))
    return CheckpointContent(files, shard)


def save_checkpoint(c: Components, out: RunOutputs, position: ck.CheckpointId,
                    content: CheckpointContent) -> Path | None:
    """Write one checkpoint atomically and prune to checkpoint.keep_last: rank 0 alone,
    or every rank its shard (collective); returns the path (None on ranks that did not
    write)."""
    keep = c.cfg.checkpoint.keep_last
    if content.shard is not None:
        return ck.save_sharded_checkpoint(out.checkpoint_dir, position, content.files,
                                          content.shard, keep)
    if not c.dist.is_main:
        return None
    return ck.save_checkpoint(out.checkpoint_dir, position, content.files, keep)


def maybe_resume(c: Components, state: TrainState, out: RunOutputs,
                 say: Log) -> ck.CheckpointId | None:
    """Apply checkpoint.resume_training_from_checkpoint; returns the position resumed."""
    spec = c.cfg.checkpoint.resume_training_from_checkpoint
    path = ck.resolve_resume(spec, out.checkpoint_dir, CHECKPOINT_FILES)
    if path is None:
        if spec == "latest":
            say(f"resume: no checkpoint in {out.checkpoint_dir} yet; starting from scratch")
        elif c.dist.is_main:
            archive_earlier_run(out)
        return None
    # a sharded runner (pipeline stage) reads its own part of the shards (checkpoint_view)
    loaded = ck.load_checkpoint(path, map_location=c.device.torch_device,
                                consolidate=not c.runner.sharded)
    differ = structural_differences(loaded.get("config.yaml", ""), c.cfg)
    if differ:
        raise ck.CheckpointError(
            f"checkpoint {str(path)!r} does not fit this run: " + "; ".join(differ)
            + " (resume with the checkpoint's settings, or start in another output_dir)")
    try:
        restore(c, state, loaded)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ck.CheckpointError(
            f"checkpoint {str(path)!r} does not fit this run: {first_line(exc)}") from None
    if c.dist.is_main:
        micro = f", micro-batch {state.micro_step}" if state.micro_step else ""
        say(f"resume: continuing from {path} (step {state.step}{micro})")
    return ck.CheckpointId(state.step, state.micro_step)


RUN_FILES = (METRICS_FILE, UPDATES_FILE, LAYER_FILE, CSV_FILE, TENSORBOARD_DIR, "config.yaml",
             "eval.json", "summary.json", VOCAB)
"""What a run leaves in its output folder (moved away by a fresh start over it)."""


def archive_earlier_run(out: RunOutputs) -> Path | None:
    """A fresh start in a folder that holds an earlier run's checkpoints or metrics
    moves them (with the other RUN_FILES: update records, CSV and TensorBoard metrics,
    config.yaml, eval.json, summary.json, vocab.txt) to
    `checkpoints/previous-<time>/`, so `latest` can never mix the two runs and nothing
    saved is lost or overwritten."""
    found = ck.list_checkpoints(out.checkpoint_dir)
    files = [out.output_dir / name for name in RUN_FILES]
    if not found and not files[0].exists():
        return None
    stamp = time.strftime("previous-%Y%m%d-%H%M%S")
    archive, n = out.checkpoint_dir / stamp, 0
    while archive.exists():  # two fresh starts within one second
        n += 1
        archive = out.checkpoint_dir / f"{stamp}-{n}"
    archive.mkdir(parents=True)
    for path in [p for _, p in found] + [f for f in files if f.exists()]:
        path.rename(archive / path.name)
    log.warning("%s held checkpoints of an earlier run; this run starts from scratch and "
                "moved them to %s (to continue that run instead, use checkpoint."
                "resume_training_from_checkpoint=latest)", out.checkpoint_dir, archive)
    return archive


def restore(c: Components, state: TrainState, loaded: dict[str, Any]) -> None:
    """Load every piece of a checkpoint into the built components."""
    if VOCAB in loaded and c.tokenizer is not None:
        check_same_vocab(vocab_tokens(loaded[VOCAB]), c.tokenizer, "the checkpoint")
    # a pipeline stage restores its model, optimizer and controller here, from the shards
    loaded = c.runner.checkpoint_view(loaded, c.controller)
    for piece in PIECES:
        if piece.file not in loaded:  # restored by the runner
            continue
        value = loaded[piece.file] if piece.key is None else loaded[piece.file].get(piece.key)
        piece.restore(c, state, value)


# ------------------------------------------------------------------ the end
def summary(c: Components, state: TrainState, timer: Throughput,
            final_eval: dict[str, float], checkpoint_times: list[float] | None = None
            ) -> dict[str, Any]:
    """The end-of-run numbers (also printed)."""
    out: dict[str, Any] = {
        "steps": state.step,
        "sequences": state.sequences,
        "sequences_per_second": timer.total_sequences / max(timer.total_time, 1e-9),
        "total_flops": state.flops,
        "flops_per_sequence": c.flops.flops_per_sequence,
        "skipped_steps": c.scaler.skipped_steps,
        "precision": c.precision,
        "device": c.device.kind,
        "initial_eval": state.first_eval or None,  # null: no evaluation at step 0
        "num_threads": torch.get_num_threads(),
        "final_eval": final_eval,
    }
    if c.controller is not None:
        out["dof_mean"] = c.controller.pattern_metrics()["dof_mean"]
        out["pattern_updates"] = state.pattern_updates
        out["pattern_update_time_s"] = state.update_time_s
    out["peak_memory_mib"] = D.gather_objects(peak_memory_mib(c.device.torch_device), c.dist)
    out["model_state_mib"] = D.gather_objects(model_state_mib(c.core, c.optimizer), c.dist)
    out["checkpoint_write_s"] = [round(t, 4) for t in checkpoint_times or []]
    return out


def model_state_mib(model: torch.nn.Module, optimizer: Any) -> dict[str, float]:
    """What this process holds of the model (MiB), the encoder layers apart from the
    rest (embeddings, pooler, heads): weights, buffers (sparse patterns), gradients and
    optimizer state; a pipeline stage's own (its meta-device rest counts nothing)."""
    sizes = {"encoder": 0, "rest": 0}
    state = getattr(optimizer, "state", {})
    named = [*model.named_parameters(), *model.named_buffers()]
    for name, t in named:
        if t.is_meta:
            continue
        held = [t, getattr(t, "grad", None), *state.get(t, {}).values()]
        part = "encoder" if name.startswith("bert.encoder.") else "rest"
        sizes[part] += sum(x.numel() * x.element_size() for x in held if torch.is_tensor(x))
    return {k: round(v / 2**20, 3) for k, v in sizes.items()}


def peak_memory_mib(device: torch.device) -> dict[str, float]:
    """This process's peak resident memory (RSS, MiB) and, on CUDA, the peak memory torch
    allocated on its GPU: one entry per rank in the summary (`peak_memory_mib`)."""
    import resource

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out = {"rss": round(rss_kib / 1024, 1)}
    if device.type == "cuda":
        out["cuda_allocated"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def write_final(out: RunOutputs, final_eval: dict[str, float], summary: dict[str, Any]) -> None:
    write_json(out.output_dir / "eval.json", final_eval)
    write_json(out.output_dir / "summary.json", summary)
