"""Numeric precision: `fp32 | bf16 | fp16 | auto`, autocast, and loss scaling.

Master weights and Adam moments always stay fp32; precision only changes the dtype
that autocast runs matmuls in (`auto` is resolved by the device, bert_ipu/devices).
fp16 needs loss scaling: a static scale (512 as in the original IPU runs) or a dynamic
one that halves on overflow and skips that optimizer step, and doubles after
`growth_interval` good steps.

>>> scaler = LossScaler("dynamic", init_scale=8.0, growth_interval=2)
>>> scaler.update(found_nonfinite=True), scaler.scale, scaler.skipped_steps
(False, 4.0, 1)
>>> scaler.update(False), scaler.update(False), scaler.scale
(True, True, 8.0)
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterable, Iterator

import torch


SCALER_MODES = ("none", "static", "dynamic")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype:
    """The matmul dtype of a concrete precision (`fp32` -> torch.float32)."""
    if precision not in _DTYPES:
        raise ValueError(
            f"autocast_dtype: precision must be one of {tuple(_DTYPES)}, got {precision!r}"
        )
    return _DTYPES[precision]


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Autocast context for a concrete precision; a no-op for fp32."""
    dtype = autocast_dtype(precision)
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def grads_are_finite(params: Iterable[torch.nn.Parameter]) -> bool:
    """True when every existing gradient is finite (one sync per device).

    torch's fused check of the loss scaler (the op `torch.amp.GradScaler` runs, with an
    unscale factor of exactly 1, so the gradients are unchanged bit for bit): one vectorised
    pass a tensor. `isfinite(g).all()` makes four passes, and the max-norm, tried before, is
    not vectorised on the CPU (it showed up as 7 % of a BERT-Base DynSp step's profile)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_device.setdefault(p.grad.device, []).append(p.grad)
    for device, grads in by_device.items():
        found = torch.zeros(1, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones(1, device=device))
        if found.item() != 0:
            return False
    return True


class LossScaler:
    """Loss scaling with the skipped-step bookkeeping the trainer logs.

    mode `none` (fp32/bf16) keeps scale 1 but still skips steps whose gradients are
    not finite; `static` keeps the scale fixed; `dynamic` multiplies it by
    `backoff_factor` on overflow and by `growth_factor` after `growth_interval`
    consecutive good steps. `update(found_nonfinite)` returns whether the optimizer
    step should be applied.
    """

    def __init__(
        self,
        mode: str = "none",
        init_scale: float = 2.0**16,
        growth_interval: int = 2000,
        backoff_factor: float = 0.5,
        growth_factor: float = 2.0,
        min_scale: float = 1.0,
    ) -> None:
        if mode not in SCALER_MODES:
            raise ValueError(f"LossScaler: mode must be one of {SCALER_MODES}, got {mode!r}")
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"LossScaler: init_scale must be finite and > 0, got {init_scale!r}")
        if growth_interval < 1:
            raise ValueError(f"LossScaler: growth_interval must be >= 1, got {growth_interval!r}")
        if not 0 < backoff_factor < 1 or growth_factor <= 1:
            raise ValueError(
                "LossScaler: need 0 < backoff_factor < 1 and growth_factor > 1, got "
                f"{backoff_factor!r} and {growth_factor!r}"
            )
        self.mode = mode
        self.scale = 1.0 if mode == "none" else float(init_scale)
        self.growth_interval = growth_interval
        self.backoff_factor = backoff_factor
        self.growth_factor = growth_factor
        self.min_scale = min_scale
        self.good_steps = 0
        self.skipped_steps = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss * scale` (the scale is a power of two, so this is exact)."""
        return loss if self.scale == 1.0 else loss * self.scale

    def unscale_(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Divide every gradient by the scale in place (before clipping)."""
        if self.scale == 1.0:
            return
        inv = 1.0 / self.scale
        for p in params:
            if p.grad is not None:
                p.grad.mul_(inv)

    def update(self, found_nonfinite: bool) -> bool:
        """Record one optimizer step's outcome; True when the step should be applied."""
        if found_nonfinite:
            self.skipped_steps += 1
            self.good_steps = 0
            if self.mode == "dynamic":
                self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            return False
        self.good_steps += 1
        if self.mode == "dynamic" and self.good_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "scale": self.scale,
            "good_steps": self.good_steps,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mode") != self.mode:
            raise ValueError(
                f"LossScaler.load_state_dict: checkpoint has mode {state.get('mode')!r}, "
                f"this run uses {self.mode!r}"
            )
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.skipped_steps = int(state["skipped_steps"])


def build_loss_scaler(
    precision: str, loss_scaling: float, auto_loss_scaling: bool, growth_interval: int = 2000
) -> LossScaler:
    """The scaler for a concrete precision: fp16 gets static or dynamic scaling."""
    if precision != "fp16":
        return LossScaler("none")
    mode = "dynamic" if auto_loss_scaling else "static"
    return LossScaler(mode, init_scale=loss_scaling, growth_interval=growth_interval)
