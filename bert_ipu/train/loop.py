"""The training loop, readable top to bottom.

    train(cfg)                       build components, maybe resume, loop, finish
      train_step(run)                one optimizer step t, on the device's step runner
        runner.step(run, t)            (step.py, torch devices) per micro-batch: forward
                                       under autocast, loss scaled, backward; then
                                       unscale, finite check, clip, optimizer.step(),
          controller.step(t)           <- DynSp pattern update, RIGHT AFTER optimizer.step()
        count_step(run, t, result)     counters, FLOPs, the step's metrics record; a pattern
                                       update's record to dynsp_updates.jsonl
      after_step(run, ...)           evaluation, periodic checkpoints, metrics.jsonl (losses
                                     averaged over the logging interval)
    finish(run)                      final evaluation, checkpoint, eval.json, summary.json

Resume is exact on CPU: a checkpoint holds every counter, every RNG state and the
data position, and (when a signal stopped the run between micro-batches) the
accumulated gradients; see `state.py` for the granularity.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from bert_ipu.config import Config, config_to_dict
from bert_ipu.schema import flatten_tree
from bert_ipu.devices import distributed as D
from bert_ipu.store import checkpoint as ck
from bert_ipu.train import outputs as run_io
from bert_ipu.train.build import Components, build_components
from bert_ipu.train.evaluate import EVAL_KEYS, eval_batches, evaluate
from bert_ipu.train.metrics import MetricsWriter, Progress, Throughput, format_summary
from bert_ipu.train.signals import StopRequest, TrainingInterrupted
from bert_ipu.train.state import TrainState
from bert_ipu.train.step import LOSS_KEYS, StepResult, poll_stop_hook
from bert_ipu.trackers import Tracker, TrackerRun, check_trackers, open_trackers
from bert_ipu.logs import Log


class NonFiniteLossError(RuntimeError):
    """The loss (or gradients) stayed NaN/Inf for more than training.max_nonfinite_steps."""


@dataclass
class TrainerHooks:
    """Test and tooling hooks; all optional, none used by a normal run."""

    loss_multiplier: Callable[[int], float] | None = None
    """Step -> factor applied to the loss (overflow / non-finite injection)."""
    stop_at: tuple[int, int] | None = None
    """(step, micro_step): request a stop once this position is reached (like SIGTERM)."""


@dataclass
class Run:
    """A run in progress: its components, counters and outputs."""

    c: Components
    state: TrainState
    out: run_io.RunOutputs
    stop: StopRequest
    hooks: TrainerHooks
    batches: Iterator[dict[str, torch.Tensor]]
    metrics: MetricsWriter
    progress: Progress
    timer: Throughput = field(default_factory=Throughput)
    last_saved: ck.CheckpointId | None = None
    last_eval: tuple[int, dict[str, float]] | None = None
    pending_losses: list[torch.Tensor] = field(default_factory=list)
    """Detached [loss, mlm_loss, nsp_loss] of this step's micro-batches, not yet on the host."""
    checkpoint_times: list[float] = field(default_factory=list)
    """Seconds each checkpoint of this process took (state capture + write; the summary's
    `checkpoint_write_s`)."""


# ------------------------------------------------------------------ entry point
def train(cfg: Config, hooks: TrainerHooks | None = None, log: Log = print,
          resume_command: str | None = None) -> dict[str, Any]:
    """Train per `cfg`; returns the summary. Raises TrainingInterrupted after a
    signal (checkpoint saved), NonFiniteLossError, and the config/data/checkpoint errors."""
    check_trackers(cfg.logging.trackers)  # a missing package, before any work
    out = run_io.prepare_outputs(cfg, resume_command)  # locks output_dir
    # Signals stop set-up (data preparation can take minutes) at once, the loop at the
    # next safe point: the handlers are installed before anything is prepared.
    with StopRequest(immediate=True) as stop:
        try:
            c = build_components(cfg, log)
            stop.immediate = False
            stop.raise_if_requested()
            return _train_loop(c, out, stop, hooks or TrainerHooks(), log)
        finally:
            out.release()


def _train_loop(c: Components, out: run_io.RunOutputs, stop: StopRequest,
                hooks: TrainerHooks, log: Log) -> dict[str, Any]:
    """Resume if asked, step until the end (or a stop), finish."""
    run = start_run(c, out, stop, hooks, log)
    try:
        initial_eval(run)
        while run.state.step < c.total_steps:
            stepped = train_step(run)
            if stepped:
                after_step(run, stepped)
            if D.any_rank(run.stop.requested, c.dist, c.device.torch_device):
                interrupt(run)
        summary = finish(run)
    finally:
        run.progress.close()
        run.metrics.close()
        if c.controller is not None:
            c.controller.close()
        # Leave the process group before exit: gloo's threads still running at
        # interpreter teardown abort the process ("terminate called ...", SIGABRT).
        D.shutdown()
    if c.dist.is_main:  # after the progress bar is closed, so it is not redrawn over
        print(format_summary(summary), flush=True)
    return summary


def start_run(c: Components, out: run_io.RunOutputs, stop: StopRequest, hooks: TrainerHooks,
              log: Log) -> Run:
    """Restore a checkpoint when asked, then open metrics and the progress bar."""
    state = TrainState()
    resumed = run_io.maybe_resume(c, state, out, log)
    run_io.write_config(c.cfg, out, c.tokenizer)
    main = c.dist.is_main
    if not state.tracker_run_id:  # a fresh start (or a checkpoint from before the field)
        state.tracker_run_id = uuid.uuid4().hex[:16]  # os.urandom: no RNG state touched
    metrics = MetricsWriter(out.output_dir, main,
                            open_run_trackers(c.cfg, out, state.tracker_run_id) if main else [])
    # Records past the resumed step come from the interrupted run and are logged again;
    # a fresh start keeps none of an earlier run's records.
    metrics.truncate_after(state.step if resumed is not None else -1)
    progress = Progress(c.total_steps, state.step, main and c.cfg.logging.progress_bar)
    run = Run(c, state, out, stop, hooks, c.train_loader.endless(), metrics,
              progress, last_saved=resumed)
    if resumed is not None and state.eval_pending:
        redo_pending_eval(run)
    return run


def open_run_trackers(cfg: Config, out: run_io.RunOutputs, run_id: str) -> list[Tracker]:
    """The trackers of logging.trackers for this run, its config as hyper-parameters."""
    lg = cfg.logging
    return open_trackers(lg.trackers, TrackerRun(
        output_dir=out.output_dir, name=cfg.name, project=lg.tracker_project,
        group=lg.tracker_group, directory=Path(lg.tracker_dir) if lg.tracker_dir else None,
        params=flatten_tree(config_to_dict(cfg)), run_id=run_id))


def redo_pending_eval(run: Run) -> None:
    """The evaluation a stop signal cut short at the checkpoint's step, now, into that
    step's metrics record (no hole in the curve)."""
    result = run_eval(run)
    if result:
        run.metrics.amend(run.state.step, {f"eval_{k}": v for k, v in result.items()})
        show_eval(run, result)
        run.state.eval_pending = False


# ------------------------------------------------------------------ one step
def train_step(run: Run) -> dict[str, Any] | None:
    """Step t on the device's step runner (bert_ipu/train/step.py: forward/backward per
    micro-batch, optimizer step, DynSp controller), then the counters; None when a stop
    was requested mid-accumulation (the caller checkpoints that position)."""
    t = run.state.step
    result = run.c.runner.step(run, t)
    return None if result is None else count_step(run, t, result)


def count_step(run: Run, t: int, result: StepResult) -> dict[str, Any]:
    """Advance the counters past step t; the metrics record of the step."""
    c, state = run.c, run.state
    lr, grad_norm, applied, update = result.lr, result.grad_norm, result.applied, result.update
    sums, state.step_sums = state.step_sums, {}
    sums = {k: D.all_reduce_mean(v, c.dist, c.device.torch_device) for k, v in sums.items()}
    state.step, state.micro_step = t + 1, 0
    state.sequences += c.sequences_per_step
    state.flops += c.flops.step_per_sequence * c.sequences_per_step
    record: dict[str, Any] = {"step": state.step, **{k: sums.get(k, math.nan) for k in LOSS_KEYS},
                              "lr": lr, "grad_norm": grad_norm}
    add_to_interval(state, record)
    if update is not None:
        state.flops += c.flops.rigl_extra_per_update_sequence * c.sequences_per_step
        state.pattern_updates += 1
        state.update_time_s += float(update["update_time_s"])
        state.last_update = {k: float(update[k]) for k in ("dof_mean", "removed_new_fraction")}
        run.metrics.log_update({**update, "step": state.step})
    _check_nonfinite(run, applied, record["loss"])
    return record


def add_to_interval(state: TrainState, record: dict[str, Any]) -> None:
    """Count step `record` into the logging interval (finite losses only: a skipped
    step's NaN would hide the interval's other steps)."""
    sums = state.interval_sums
    sums["steps"] = sums.get("steps", 0) + 1
    for key in LOSS_KEYS:
        if math.isfinite(record[key]):
            sums[key] = sums.get(key, 0.0) + record[key]
            sums[f"{key}_n"] = sums.get(f"{key}_n", 0) + 1


def interval_means(state: TrainState) -> dict[str, Any]:
    """The mean of each loss over the finite steps of the interval (NaN when none was),
    and `loss_steps`, the interval's length in steps; starts a new interval."""
    sums, state.interval_sums = state.interval_sums, {}
    means: dict[str, Any] = {k: sums[k] / sums[f"{k}_n"] if sums.get(f"{k}_n") else math.nan
                             for k in LOSS_KEYS}
    return {**means, "loss_steps": int(sums.get("steps", 0))}


def _check_nonfinite(run: Run, applied: bool, loss: float) -> None:
    """A non-finite loss (or non-finite gradients in fp32/bf16) counts toward
    training.max_nonfinite_steps; fp16 steps the loss scaler skipped (finite loss,
    overflowed gradients) toward training.max_skipped_steps: a scale that overflows on
    every step would otherwise skip the whole run and train nothing."""
    state, t = run.state, run.c.cfg.training
    if applied:
        state.nonfinite_streak = state.skipped_streak = 0
        return
    if run.c.precision == "fp16" and math.isfinite(loss):
        state.skipped_streak += 1
        if state.skipped_streak > t.max_skipped_steps:
            fix = ("a smaller training.loss_scaling" if t.auto_loss_scaling else
                   "training.auto_loss_scaling=true (dynamic scaling) or a smaller "
                   "training.loss_scaling")
            raise NonFiniteLossError(
                f"training stopped: the fp16 gradients overflowed and the step was skipped "
                f"{state.skipped_streak} times in a row (training.max_skipped_steps="
                f"{t.max_skipped_steps}, loss scale {run.c.scaler.scale:g}) at step "
                f"{state.step}{_last_saved(run)}; use {fix}")
        return
    state.nonfinite_streak += 1
    if state.nonfinite_streak > t.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"training stopped: the loss or gradients were NaN/Inf for {state.nonfinite_streak} "
            f"consecutive steps (training.max_nonfinite_steps={t.max_nonfinite_steps}) at step "
            f"{state.step}{_last_saved(run)}; try a lower training.learning_rate or another "
            "training.precision")


def _last_saved(run: Run) -> str:
    return f"; last checkpoint: {run.last_saved.name}" if run.last_saved else ""


# ------------------------------------------------------------------ after a step
def after_step(run: Run, record: dict[str, Any]) -> None:
    """Evaluate, checkpoint and log on their schedules (the time spent evaluating and
    checkpointing is not counted in sequences/s)."""
    c, state, lg = run.c, run.state, run.c.cfg.logging
    paused = time.perf_counter()
    at_end = state.step == c.total_steps
    due = bool(at_end or (lg.eval_steps and state.step % lg.eval_steps == 0))
    if due:
        result = run_eval(run)
        record.update({f"eval_{k}": v for k, v in result.items()})
        show_eval(run, result)
        # cut short by a stop signal: the checkpoint says so, and the resumed run redoes it
        state.eval_pending = not result and c.eval_dataset is not None
    logged = at_end or state.step % lg.log_steps == 0 or due
    step_loss = record["loss"]
    if logged:  # the interval ends here, before a checkpoint saves the state
        record.update(interval_means(state))
    every = c.cfg.checkpoint.checkpoint_steps
    if at_end or (every and state.step % every == 0):
        save(run)
    run.timer.pause(time.perf_counter() - paused)
    if logged:
        log_record(run, record, step_loss)
    else:
        run.progress.update(1, step_loss, run.timer.peek())
    poll_stop_hook(run)


def log_record(run: Run, record: dict[str, Any], step_loss: float) -> None:
    """One metrics.jsonl object (its losses already averaged over the logging interval,
    `interval_means`), with the throughput since the previous record; the progress bar
    shows `step_loss`, the step's own."""
    c, state = run.c, run.state
    rate = run.timer.rate()
    record.update(epoch=c.train_loader.epoch, sequences=state.sequences,
                  sequences_per_second=rate, flops=state.flops,
                  loss_scale=c.scaler.scale, skipped_steps=c.scaler.skipped_steps)
    run.metrics.log(record)
    run.progress.update(1, step_loss, rate)


def run_eval(run: Run) -> dict[str, float]:
    """Held-out evaluation now (empty when a stop signal cut it short); the one at step 0
    is kept in the state (the summary's initial_eval)."""
    c = run.c
    if c.eval_dataset is None:
        return {}
    batches = eval_batches(c.eval_dataset, c.cfg.training.micro_batch_size)
    through_stages = getattr(c.runner, "evaluate_held_out", None)  # pipelines: no gathering
    if through_stages is not None:
        result = through_stages(batches, c.cfg.logging.eval_batches, lambda: run.stop.requested)
    else:
        model, precision = c.runner.eval_model(c.core)  # IPU: an fp32 host copy
        result = evaluate(model, batches, precision, c.device.torch_device,
                          c.cfg.logging.eval_batches, should_stop=lambda: run.stop.requested)
    if result is None:  # a signal arrived: the stop checkpoint comes first
        return {}
    if run.state.step == 0:  # `initial_eval` of the summary: the untrained model only
        run.state.first_eval = dict(result)
    run.last_eval = (run.state.step, result)
    return result


def initial_eval(run: Run) -> None:
    """Evaluate the untrained model once (step 0), so the curve has its start."""
    if run.state.step == 0 and run.state.micro_step == 0 and run.c.cfg.logging.eval_steps:
        result = run_eval(run)
        if result:
            run.metrics.log({"step": 0, **{f"eval_{k}": v for k, v in result.items()}})
            show_eval(run, result)


def show_eval(run: Run, result: dict[str, float]) -> None:
    """An evaluation's result on screen, between progress-bar updates."""
    if result:
        run.progress.write(f"eval step {run.state.step}: " + " ".join(
            f"{k} {result[k]:.4f}" for k in EVAL_KEYS if k in result))


def save(run: Run) -> Path | None:
    """Checkpoint the current position (rank 0 writes, or every rank its shard in a
    pipelined run; the others wait)."""
    position = ck.CheckpointId(run.state.step, run.state.micro_step)
    if position == run.last_saved:
        return None
    started = time.perf_counter()
    content = run_io.checkpoint_files(run.c, run.state)  # collective: every rank's RNG
    path = run_io.save_checkpoint(run.c, run.out, position, content)  # a pipeline: every rank
    run.checkpoint_times.append(time.perf_counter() - started)
    run.last_saved = position
    if run.c.dist.enabled:
        torch.distributed.barrier()
    return path


def interrupt(run: Run) -> None:
    """Save where we are, tell the user how to resume, and leave with 128 + signal."""
    run.stop.request()  # other ranks may not have seen the signal themselves
    save(run)
    path = run.out.checkpoint_dir / run.last_saved.name
    raise TrainingInterrupted(run.stop.signum, str(path), run.out.resume_command)


# ------------------------------------------------------------------ the end
def finish(run: Run) -> dict[str, Any]:
    """Final evaluation, final checkpoint, eval.json and summary.json; NonFiniteLossError
    (exit 3) when no step of the run was applied (a run that trained nothing never ends
    as a success)."""
    state = run.state
    if state.step > 0 and max(state.skipped_streak, state.nonfinite_streak) >= state.step:
        raise NonFiniteLossError(
            f"training stopped: none of the {state.step} steps was applied (every one was "
            f"skipped: {'fp16 gradient overflow, loss scale ' + format(run.c.scaler.scale, 'g') if state.skipped_streak else 'non-finite loss or gradients'}), "
            "so nothing was trained; use training.auto_loss_scaling=true or a smaller "
            "training.loss_scaling, or another training.precision")
    final_eval = run.last_eval[1] if run.last_eval and run.last_eval[0] == run.state.step \
        else run_eval(run)
    save(run)
    summary = run_io.summary(run.c, run.state, run.timer, final_eval, run.checkpoint_times)
    if run.c.dist.is_main:
        run_io.write_final(run.out, final_eval, summary)
        if run.c.cfg.checkpoint.export_dir:  # the Hugging Face folder (bert_ipu/hub)
            from bert_ipu.hub.export import export_run_end
            export_run_end(run.out.checkpoint_dir / run.last_saved.name,
                           run.c.cfg.checkpoint.export_dir, print)
    return summary
