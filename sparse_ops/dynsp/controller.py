"""DynSpController: applies a DynSp method to every SparseLinear right after optimizer.step().

Loop contract (0-based steps, see schedules.py)::

    for t in range(total_steps):
        controller.before_step(t)      # only needed for regrow="gradient" (arms X/dY capture)
        loss = model(batch).loss; loss.backward()
        optimizer.step(); optimizer.zero_grad()
        metrics = controller.step(t)   # dict at update steps, else None

At an update step, for every layer: prune the k = round(pr(t) * nnz) blocks with the
smallest L1 norm, re-allocate k (random or gradient), write the new pattern in place
(``set_pattern``), and carry values and optimizer state bit for bit (remap.py).

Placement: "host" copies the block norms (nnz floats) and indices to the CPU, decides
there and streams the pattern back (the original IPU design; we ship the norms, not
the values, so both placements rank identical numbers); "device" decides on the values'
device. Random numbers are always drawn on CPU generators seeded from
(seed, update index, layer index), and every selection is a stable sort or a binary
search, so both placements produce identical patterns and a resumed run continues
the same sequence (the "RNG state" is the seed plus the update counter).
"""
from __future__ import annotations

import time
from dataclasses import fields, replace
from functools import partial
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from ..linear import SparseLinear
from .capture import GradientCapture
from .methods import DynSpMethod, LayerPattern, PatternUpdate, get_method, max_prune
from .metrics import LayerTracker, layer_pattern_keys, layer_update_keys, pooled
from .prune import block_l1_norms
from .regrow import new_block_values
from .remap import check_optimizer_covers, gather_blocks, remap_param_state
from .settings import DynSpSettings, SettingsError
from .sync import all_reduce_sum, broadcast_updates, resolve_sync, verify_across_ranks

_STATE_VERSION = 1


def derive_seed(seed: int, *counters: int) -> int:
    """64-bit seed for (seed, counters...) by splitmix64 mixing; stable across runs and devices.

    >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    True
    """
    x = seed & 0xFFFFFFFFFFFFFFFF
    for c in counters:
        x = (x ^ (c + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x


def find_sparse_layers(modules: Union[nn.Module, dict]) -> dict[str, SparseLinear]:
    """Name -> SparseLinear: every SparseLinear inside an nn.Module, or a checked dict."""
    if isinstance(modules, nn.Module):
        found = {n: m for n, m in modules.named_modules() if isinstance(m, SparseLinear)}
    elif isinstance(modules, dict):
        bad = [n for n, m in modules.items() if not isinstance(m, SparseLinear)]
        if bad:
            raise ValueError(f"DynSpController: argument 'modules' must map names to SparseLinear, "
                             f"got other types for {bad[:5]}")
        found = dict(modules)
    else:
        raise ValueError(f"DynSpController: argument 'modules' must be an nn.Module or a dict of "
                         f"SparseLinear, got {type(modules).__name__}")
    if not found:
        raise ValueError("DynSpController: argument 'modules' must contain at least one SparseLinear, got none")
    return found


class DynSpController:
    """Dynamic-sparsity pattern updates for a set of SparseLinear layers.

    Args: modules (nn.Module to scan, or dict name -> SparseLinear); optimizer (its state
    for the values is carried over; None: no state); total_steps T; settings (a
    ``DynSpSettings``: n_updates, prune ratio and schedule, end_fraction, regrow,
    regrow_init, regrow_pruned, placement, seed; a subclass such as the run config's
    ``sparsity`` section works as is); ``**overrides`` replace single settings
    (``DynSpController(model, opt, 100, n_updates=4)``). Runtime options: sync
    ("auto" | "none" | "verify" | "broadcast", see sync.py); group (the process group of
    the data-parallel replicas of these layers; None: all ranks); layer_offset (index
    of the first layer in the whole model: a pipeline stage draws the random numbers
    the single-process run draws for its layers); verify_fn (called with
    {name: new sorted linear indices} after every update); grad_chunk_elems (max
    dense-gradient entries held at once for RigL); combine_fn (metrics of these layers
    -> metrics of the whole model, e.g. gathered across pipeline stages; applied to what
    step() and pattern_metrics() return). Bad settings raise SettingsError naming the field.
    """

    def __init__(self, modules: Union[nn.Module, dict], optimizer: Optional[torch.optim.Optimizer],
                 total_steps: int, settings: Optional[DynSpSettings] = None, *, sync: str = "auto",
                 verify_fn: Optional[Callable[[dict[str, Tensor]], None]] = None,
                 grad_chunk_elems: int = 1 << 22, group: Optional[object] = None,
                 layer_offset: int = 0, combine_fn: Optional[Callable[[dict], dict]] = None,
                 **overrides: object) -> None:
        settings = settings if settings is not None else DynSpSettings()
        if not isinstance(settings, DynSpSettings):
            raise ValueError(f"DynSpController: argument 'settings' must be a DynSpSettings, "
                             f"got {type(settings).__name__}")
        unknown = sorted(set(overrides) - {f.name for f in fields(DynSpSettings)})
        if unknown:
            raise ValueError(f"DynSpController: unknown setting(s) {unknown}; valid: "
                             f"{[f.name for f in fields(DynSpSettings)]}")
        if overrides:
            settings = replace(settings, **overrides)
        if settings.seed is None:
            raise SettingsError(settings.path("seed"), "an integer (resolve it before building "
                                "the controller)", None)
        if isinstance(grad_chunk_elems, bool) or not isinstance(grad_chunk_elems, int) or grad_chunk_elems < 1:
            raise ValueError(f"DynSpController: argument 'grad_chunk_elems' must be a positive int, "
                             f"got {grad_chunk_elems!r}")
        self.settings = settings
        self.layers = find_sparse_layers(modules)
        self.optimizer = optimizer
        if optimizer is not None:
            check_optimizer_covers(optimizer, {n: m.values for n, m in self.layers.items()})
        self.schedule = settings.schedule(total_steps)
        self.method: DynSpMethod = get_method("static" if settings.n_updates == 0 else settings.regrow,
                                              regrow_pruned=settings.regrow_pruned)
        self.config = dict(total_steps=total_steps, **settings.dynsp_fields())
        self.seed, self.placement, self.regrow_init = settings.seed, settings.placement, settings.regrow_init
        self.group, self.layer_offset = group, int(layer_offset)
        self.combine_fn = combine_fn if combine_fn is not None else dict
        self.sync = resolve_sync(sync, group)
        self.verify_fn = verify_fn
        self.grad_chunk_elems = grad_chunk_elems
        self.nnz = {n: m.nnz for n, m in self.layers.items()}
        self.trackers = {n: LayerTracker.start(self._active_lin(m), self._n_positions(m))
                         for n, m in self.layers.items()}
        self.updates_done = 0
        self.last_update_step: Optional[int] = None
        self.last_metrics: Optional[dict] = None  # metrics of the latest update (checkpointed)
        self._capture = GradientCapture(self.layers)  # type: ignore[arg-type]
        self.before_step(0)

    # ---- helpers ---------------------------------------------------------------------
    @staticmethod
    def _n_positions(m: SparseLinear) -> int:
        return m.n_block_rows * m.n_block_cols

    def _work_device(self, m: SparseLinear) -> torch.device:
        return torch.device("cpu") if self.placement == "host" else m.values.device

    def _active_lin(self, m: SparseLinear) -> Tensor:
        return (m.rows.long() * m.n_block_cols + m.cols).to(self._work_device(m))

    def is_update_step(self, step: int) -> bool:
        """True when the pattern changes right after optimizer step ``step``."""
        return self.schedule.is_update(step)

    # ---- loop API --------------------------------------------------------------------
    def before_step(self, step: int) -> None:
        """Call before the forward pass of ``step``: arms X/dY capture if RigL updates then.

        Cheap no-op otherwise. ``step(t)`` also arms for t + 1, so a loop calling
        ``step`` every iteration only needs this after a resume.
        """
        if self.method.needs_gradient and self.is_update_step(step) and not self._capture.armed:
            self._capture.arm()

    def step(self, step: int) -> Optional[dict]:
        """Call right after ``optimizer.step()`` of ``step``; updates patterns at update steps.

        Returns the update's metrics (see ``_metrics``) or None when nothing changed.
        """
        if not self.is_update_step(step) or step == self.last_update_step:
            self._rearm(step)
            return None
        start = time.perf_counter()
        pr = self.schedule.compute(step)
        index = self.schedule.update_index(step)
        updates = {name: self._decide(name, m, pr, index, li)
                   for li, (name, m) in enumerate(self.layers.items(), self.layer_offset)}
        self._synchronise(updates)
        records = {name: self._apply(name, self.layers[name], updates[name], index, li)
                   for li, name in enumerate(self.layers, self.layer_offset)}
        for m in self.layers.values():
            if m.values.is_cuda:
                torch.cuda.synchronize(m.values.device)
                break
        elapsed = time.perf_counter() - start
        self.updates_done += 1
        self.last_update_step = step
        self._rearm(step)
        self.last_metrics = self._metrics(step, index, pr, elapsed, updates, records)
        return self.combine_fn(dict(self.last_metrics))

    def _rearm(self, step: int) -> None:
        self._capture.disarm()
        self.before_step(step + 1)

    # ---- one layer -------------------------------------------------------------------
    def _decide(self, name: str, m: SparseLinear, pr: float, index: int, li: int) -> PatternUpdate:
        """New pattern of one layer, computed on the working device (no state changes)."""
        nnz, n_pos = m.nnz, self._n_positions(m)
        k = min(int(round(pr * nnz)), max_prune(nnz, n_pos, self.method.regrow_pruned))
        dev = self._work_device(m)
        scores = block_l1_norms(m.values).to(dev)  # norms on the values' device in both placements
        pattern = LayerPattern(self._active_lin(m), scores, n_pos)
        grad_scores = None
        if self.method.needs_gradient:
            if not self._capture.has_gradient(name):
                raise RuntimeError(
                    f"DynSpController.step: regrow='gradient' needs X and dY of layer {name!r} from this "
                    f"step's forward/backward; call controller.before_step(t) before the forward pass")
            reduce_fn = partial(all_reduce_sum, group=self.group) if self.sync != "none" else None
            grad_scores = lambda: self._capture.score_chunks(  # noqa: E731
                name, m.block_size, self.grad_chunk_elems, reduce_fn, dev)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, index, li, 0))
        return self.method.update(pattern, k, gen, grad_scores)

    def _synchronise(self, updates: dict[str, PatternUpdate]) -> None:
        if self.sync == "broadcast":
            broadcast_updates(updates, self.group)
        elif self.sync == "verify":
            verify_across_ranks({n: u.lin for n, u in updates.items()}, self.group)
        if self.verify_fn is not None:
            self.verify_fn({n: u.lin for n, u in updates.items()})

    @torch.no_grad()
    def _apply(self, name: str, m: SparseLinear, upd: PatternUpdate, index: int, li: int) -> dict:
        """Write the new pattern, values and optimizer state of one layer in place."""
        dev = m.values.device
        source, lin = upd.source.to(dev, non_blocking=True), upd.lin.to(dev, non_blocking=True)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, index, li, 1))
        init = new_block_values(upd.k, m.block_size, self.regrow_init, gen)
        new_values = gather_blocks(m.values.detach(), source, init)
        remap_param_state(self.optimizer, m.values, source)
        # lin is sorted and unique by construction: skip set_pattern's host-syncing checks.
        m.set_pattern(lin // m.n_block_cols, lin % m.n_block_cols, new_values, validate=False)
        if m.nnz != self.nnz[name]:
            raise RuntimeError(f"DynSpController: layer {name!r} changed nnz {self.nnz[name]} -> {m.nnz}")
        return self.trackers[name].record(upd.pruned, upd.grown)

    # ---- metrics ---------------------------------------------------------------------
    def _metrics(self, step: int, index: int, pr: float, elapsed: float,
                 updates: dict[str, PatternUpdate], records: dict[str, dict]) -> dict:
        """Flat dict: step, update_index, prune_ratio, update_time_s, dof_mean,
        removed_new_fraction (pooled over layers), and per layer ``dof/NAME``,
        ``density/NAME``, ``removed_new_fraction/NAME``, ``pruned_blocks/NAME``."""
        out: dict = {"step": step, "update_index": index, "prune_ratio": pr, "update_time_s": elapsed}
        for name, rec in records.items():
            out.update(layer_update_keys(name, int(rec["n_pruned"]), int(rec["removed_new"])))
        out.update(self._pattern_metrics())
        out.update(pooled(out))
        return out

    def pattern_metrics(self) -> dict:
        """Current ``dof/NAME``, ``density/NAME`` per layer and ``dof_mean`` (any time;
        through combine_fn, which may be collective)."""
        return self.combine_fn(self._pattern_metrics())

    def _pattern_metrics(self) -> dict:
        out: dict = {}
        for name, m in self.layers.items():
            out.update(layer_pattern_keys(name, self.trackers[name].dof(), m.nnz / self._n_positions(m)))
        out.update(pooled(out))
        return out

    # ---- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """Config, counters, seed and per-layer trackers (ever-active bits, previous new blocks).

        The patterns themselves live in the modules' state dicts (rows / cols buffers).
        """
        return {"version": _STATE_VERSION, "config": dict(self.config),
                "layers": {n: {"shape": (m.out_features, m.in_features), "block_size": m.block_size,
                               "nnz": m.nnz} for n, m in self.layers.items()},
                "trackers": {n: t.state_dict() for n, t in self.trackers.items()},
                "rng": {"seed": self.seed, "updates_done": self.updates_done},
                "last_update_step": self.last_update_step, "last_metrics": self.last_metrics}

    def load_state_dict(self, state: dict) -> None:
        """Restore counters and trackers; ValueError when config or layers do not match."""
        fn = "DynSpController.load_state_dict"
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"{fn}: argument 'state' must have version {_STATE_VERSION}, "
                             f"got {state.get('version')!r}")
        # placement may change on resume: both placements draw identical patterns.
        diff = {k: (v, self.config.get(k)) for k, v in state["config"].items()
                if k != "placement" and self.config.get(k) != v}
        if diff:
            raise ValueError(f"{fn}: argument 'state' must match the controller config; "
                             f"differs (saved, current): {diff}")
        mine = {n: {"shape": (m.out_features, m.in_features), "block_size": m.block_size, "nnz": m.nnz}
                for n, m in self.layers.items()}
        saved = {n: {**v, "shape": tuple(v["shape"])} for n, v in state["layers"].items()}
        if saved != mine:
            raise ValueError(f"{fn}: argument 'state' must describe the same sparse layers; saved "
                             f"{sorted(saved)[:5]}..., current {sorted(mine)[:5]}...")
        self.trackers = {n: LayerTracker.from_state_dict(state["trackers"][n], self._work_device(m))
                         for n, m in self.layers.items()}
        self.updates_done = int(state["rng"]["updates_done"])
        self.last_update_step = state["last_update_step"]
        self.last_metrics = state.get("last_metrics")
        self._capture.disarm()
        if self.last_update_step is not None:
            self.before_step(self.last_update_step + 1)

    def close(self) -> None:
        """Remove any capture hooks (the controller is unusable for RigL afterwards until re-armed)."""
        self._capture.disarm()
