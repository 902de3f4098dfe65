"""Freeze a random subset of the active weights for part of the run (an ablation).

``FrozenSubset`` freezes a random fraction of the active weights of every SparseLinear
until a step (then unfreezes: the "first half" ablation) or from a step on (the "second
half" ablation): a gradient mask on ``values`` plus restoring the frozen entries after
``optimizer.step()`` (AdamW weight decay and momentum would otherwise still move them).
It is a schedule beside the DynSp controller and follows its pattern changes: frozen
weights keep their identity by position, pruned ones leave the subset, regrown ones are
not frozen. Mask-based by design (for the ablation only).
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
from torch import Tensor, nn

from ..format import SparseFormatError
from ..linear import SparseLinear


def _sparse_layers(modules: Union[nn.Module, Iterable[nn.Module]]) -> list[nn.Module]:
    roots = [modules] if isinstance(modules, nn.Module) else list(modules)
    found: list[nn.Module] = []
    for root in roots:
        found.extend(m for m in root.modules() if isinstance(m, SparseLinear) and m not in found)
    return found


class FrozenSubset:
    """Freeze a random fraction of the active weights of every SparseLinear for a step range.

    ``mode="until"``: frozen for steps ``< step`` then trainable (unfreeze event);
    ``mode="from"``: trainable before ``step`` and frozen from ``step`` on (freeze event).
    The subset (exactly round(fraction * nnz * B^2) weights per layer, seeded) is drawn
    among the weights active at the first frozen step. If the DynSp controller
    changes the pattern, frozen weights keep their identity by position; pruned ones
    leave the subset and regrown ones are not frozen.

    Where to call it in the training loop::

        loss.backward()                      # (after scaler.unscale_(opt) with fp16)
        frozen.apply(step)                   # zero frozen grads, snapshot frozen values
        clip_grad_norm_(...); opt.step()     # frozen grads do not count in the norm
        frozen.after_optimizer_step()        # restore frozen values (undo decay/momentum)
        controller.step(step)                # DynSp pattern update, if any
    """

    MODES = ("until", "from")

    def __init__(self, modules: Union[nn.Module, Iterable[nn.Module]], fraction: float, step: int,
                 mode: str = "until", seed: int = 0):
        fn = "FrozenSubset"
        if not 0.0 <= float(fraction) <= 1.0:
            raise SparseFormatError(f"{fn}: argument 'fraction' must be in [0, 1], got {fraction!r}")
        if mode not in self.MODES:
            raise SparseFormatError(f"{fn}: argument 'mode' must be one of {self.MODES}, got {mode!r}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise SparseFormatError(f"{fn}: argument 'step' must be an int >= 0, got {step!r}")
        self.layers = _sparse_layers(modules)
        if not self.layers:
            raise SparseFormatError(f"{fn}: argument 'modules' must contain at least one SparseLinear, got none")
        self.fraction, self.step, self.mode = float(fraction), step, mode
        self._gen = torch.Generator().manual_seed(int(seed))
        self.masks: Optional[list[Tensor]] = None      # per layer [nnz, B, B] bool
        self._lins: list[Tensor] = []                  # block linear indices the masks refer to
        self._snapshots: Optional[list[Tensor]] = None

    def is_frozen(self, step: int) -> bool:
        """Whether the subset is frozen at training step ``step``."""
        return step < self.step if self.mode == "until" else step >= self.step

    def apply(self, step: int) -> bool:
        """Before optimizer.step(): zero frozen grads and snapshot frozen values. Returns is_frozen."""
        if not self.is_frozen(step):
            self._snapshots = None
            return False
        if self.masks is None:
            self._draw()
        self._follow_patterns()
        self._snapshots = []
        for layer, mask in zip(self.layers, self.masks):
            if layer.values.grad is not None:
                layer.values.grad.masked_fill_(mask, 0)
            self._snapshots.append(layer.values.detach()[mask].clone())
        return True

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Right after optimizer.step(): put the frozen values back exactly."""
        if self._snapshots is None:
            return
        for layer, mask, snap in zip(self.layers, self.masks, self._snapshots):
            layer.values[mask] = snap
        self._snapshots = None

    def n_frozen(self) -> int:
        """Number of weights currently in the frozen subset (0 before it is drawn)."""
        return 0 if self.masks is None else int(sum(int(m.sum()) for m in self.masks))

    def _draw(self) -> None:
        self.masks, self._lins = [], []
        for layer in self.layers:
            n = layer.values.numel()
            k = int(round(self.fraction * n))
            flat = torch.zeros(n, dtype=torch.bool)
            flat[torch.randperm(n, generator=self._gen)[:k]] = True
            self.masks.append(flat.view(layer.values.shape).to(layer.values.device))
            self._lins.append(_lin(layer).clone())

    def _follow_patterns(self) -> None:
        """Re-index masks after pattern changes: same positions stay frozen, new blocks are not."""
        for i, layer in enumerate(self.layers):
            new_lin, old_lin = _lin(layer), self._lins[i]
            if torch.equal(new_lin, old_lin):
                continue
            pos = torch.searchsorted(old_lin, new_lin).clamp(max=old_lin.numel() - 1)
            found = old_lin[pos] == new_lin
            mask = torch.zeros_like(self.masks[i])
            mask[found] = self.masks[i][pos[found]]
            self.masks[i], self._lins[i] = mask, new_lin.clone()

    def state_dict(self) -> dict:
        """Masks, their block indices and the RNG state (for resuming)."""
        return {"masks": None if self.masks is None else [m.cpu() for m in self.masks],
                "lins": [t.cpu() for t in self._lins], "rng": self._gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._gen.set_state(state["rng"])
        if state["masks"] is None:
            self.masks, self._lins = None, []
            return
        self.masks = [m.to(l.values.device) for m, l in zip(state["masks"], self.layers)]
        self._lins = [t.to(l.rows.device) for t, l in zip(state["lins"], self.layers)]


def _lin(layer: nn.Module) -> Tensor:
    return layer.rows.long() * layer.n_block_cols + layer.cols
