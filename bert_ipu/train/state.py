"""What the trainer counts (`TrainState`) and the process RNG states it saves.

Resume granularity: a checkpoint is taken after `step` optimizer steps plus
`micro_step` micro-batches of the next step. Periodic and final checkpoints have
micro_step = 0; a stop requested by a signal in the middle of gradient accumulation
is taken at the next micro-batch boundary, with the accumulated gradients and the
per-step loss sums, so that resuming continues bit for bit (see trainer.py).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

STATE_VERSION = 1


@dataclass
class TrainState:
    """Counters of a run; every field goes into `trainer.pt`."""

    step: int = 0
    """Optimizer steps completed (skipped overflow steps included)."""
    micro_step: int = 0
    """Micro-batches of step `step` already accumulated (0 at a step boundary)."""
    sequences: int = 0
    """Training sequences consumed (all ranks)."""
    flops: float = 0.0
    """Cumulative training FLOPs (docs/flops.md; actual nnz, RigL extra included)."""
    nonfinite_streak: int = 0
    """Consecutive steps whose loss or gradients were not finite (fp32/bf16)."""
    skipped_streak: int = 0
    """Consecutive fp16 steps skipped by the loss scaler (finite loss, overflowed gradients)."""
    pattern_updates: int = 0
    """DynSp pattern updates applied so far."""
    update_time_s: float = 0.0
    """Wall time spent in pattern updates (timing: differs between runs)."""
    last_update: dict[str, float] = field(default_factory=dict)
    """dof_mean / removed_new_fraction of the latest pattern update."""
    step_sums: dict[str, float] = field(default_factory=dict)
    """Sums over the micro-batches of the current step: loss, mlm_loss, nsp_loss."""
    interval_sums: dict[str, float] = field(default_factory=dict)
    """Sums of the finite step losses since the last metrics.jsonl row (and their count
    under `steps`): the logged loss is their mean over the logging interval."""
    first_eval: dict[str, float] = field(default_factory=dict)
    """The held-out evaluation of the untrained model (step 0; for the summary)."""
    tracker_run_id: str = ""
    """The run's id in the experiment trackers (drawn at a fresh start; see trackers.py)."""
    eval_pending: bool = False
    """The evaluation due at `step` was cut short by a stop signal: redone on resume."""

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **asdict(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"TrainState.load_state_dict: expected version {STATE_VERSION}, "
                f"got {state.get('version')!r}"
            )
        fresh = TrainState()
        for f in fields(self):  # a counter added since the checkpoint starts fresh
            setattr(self, f.name, state.get(f.name, getattr(fresh, f.name)))


def capture_rng() -> dict[str, Any]:
    """The host's RNG states: torch's CPU generator, numpy and python, picklable with
    `torch.load(weights_only=True)` (numpy's key array becomes a tensor). An accelerator's
    own generator is the device's to save (`Device.rng_state`, saved once per rank)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng` (a checkpoint written before the CUDA state moved to the
    device's entry also holds every CUDA generator: restored too)."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture_grads(params: list[torch.nn.Parameter]) -> list[torch.Tensor | None]:
    """Accumulated gradients (mid-accumulation checkpoints), CPU copies, param order."""
    return [None if p.grad is None else p.grad.detach().cpu().clone() for p in params]


def restore_grads(params: list[torch.nn.Parameter], grads: list[torch.Tensor | None]) -> None:
    if len(grads) != len(params):
        raise ValueError(
            f"restore_grads: checkpoint has gradients for {len(grads)} parameters, "
            f"the model has {len(params)}"
        )
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.to(device=p.device, dtype=p.dtype).clone()
