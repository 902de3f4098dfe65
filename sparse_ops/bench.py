"""Benchmark helpers: fwd+bwd time of SparseLinear backends vs dense nn.Linear, pattern
update time, persistent-state bytes. tools/bench_ops.py is the thin CLI over this.

All variants of one case are timed in the same run and *interleaved* (round r runs
every variant once), so a load change on a shared machine hits all of them alike;
the reported number is the median over rounds, in milliseconds, with the device
synchronised around every call (CUDA).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from sparse_ops.linear import SparseLinear
from sparse_ops.memory import state_bytes


@dataclass(frozen=True)
class LayerCase:
    """One benchmark cell: a (O, I) layer, N tokens, sparsity, block size, compute dtype."""

    hidden: int
    out_features: int
    in_features: int
    n_tokens: int
    sparsity: float
    block_size: int
    amp: str  # "fp32" | "bf16" | "fp16" (the last two: autocast)

    @property
    def shape_name(self) -> str:
        O, I, H = self.out_features, self.in_features, self.hidden
        name = {H: "H", 4 * H: "4H"}
        return f"{name.get(O, O)}x{name.get(I, I)}"


def sync(device: torch.device) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int = 1,
                     repeats: int = 5, cap_ms: Optional[float] = None,
                     cap_ref: Optional[str] = None) -> dict[str, Optional[float]]:
    """Median ms per variant over ``repeats`` interleaved rounds after ``warmup`` calls each.

    With ``cap_ms``, a variant whose last warm-up call took longer than ``cap_ms``
    times the warm-up of ``cap_ref`` is not timed further and reported as None.
    """
    warm: dict[str, float] = {}
    for name, fn in fns.items():
        for _ in range(max(1, warmup)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            warm[name] = (time.perf_counter() - t0) * 1e3
    live = dict(fns)
    if cap_ms is not None and cap_ref in warm:
        live = {n: f for n, f in fns.items() if n == cap_ref or warm[n] <= cap_ms * warm[cap_ref]}
    samples: dict[str, list[float]] = {n: [] for n in live}
    for _ in range(repeats):
        for name, fn in live.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {n: (statistics.median(samples[n]) if n in samples else None) for n in fns}


def _autocast_dtype(amp: str) -> Optional[torch.dtype]:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def fwd_bwd_fn(module: nn.Module, x: torch.Tensor, amp: str) -> Callable[[], None]:
    """A closure running one forward + backward of ``module`` on ``x`` (grads reset each call)."""
    dtype = _autocast_dtype(amp)
    grad = torch.randn(*x.shape[:-1], _out_features(module), device=x.device)

    def run() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            y = module(x)
        y.backward(grad.to(y.dtype))
    return run


def _out_features(module: nn.Module) -> int:
    return int(module.out_features)


def bench_layer(case: LayerCase, backends: list[str], device: torch.device, repeats: int = 5,
                warmup: int = 1, cap: Optional[float] = 20.0, seed: int = 0) -> dict[str, Optional[float]]:
    """ms of fwd+bwd for ``dense`` (nn.Linear) and SparseLinear with each name in ``backends``.

    Keys: ``dense_linear`` and the backend names; None where a backend does not
    support the case or was slower than ``cap`` x dense in its warm-up.
    """
    torch.manual_seed(seed)
    x = torch.randn(case.n_tokens, case.in_features, device=device, requires_grad=True)
    fns: dict[str, Callable[[], None]] = {
        "dense_linear": fwd_bwd_fn(nn.Linear(case.in_features, case.out_features).to(device), x, case.amp)}
    skipped = []
    for name in backends:
        if not backend_supported(name, device, case):
            skipped.append(name)
            continue
        layer = SparseLinear(case.in_features, case.out_features, sparsity=case.sparsity,
                             block_size=case.block_size, backend=name, seed=seed, device=device)
        fns[name] = fwd_bwd_fn(layer, x, case.amp)
    times = time_interleaved(fns, device, warmup, repeats, cap, "dense_linear")
    times.update({name: None for name in skipped})
    return times


def backend_supported(name: str, device: torch.device, case: LayerCase) -> bool:
    """Whether backend ``name`` (or ``auto``) is registered and runs ``case`` on ``device``."""
    from sparse_ops.kernels import AUTO, get_backend

    if name == AUTO:
        return True
    try:
        backend = get_backend(name, device)
    except ValueError:
        return False
    dtype = _autocast_dtype(case.amp) or torch.float32
    return backend.supports(device, dtype, case.block_size)


def pattern_update_ms(case: LayerCase, device: torch.device, n_updates: int = 3,
                      seed: int = 0) -> Optional[float]:
    """Median wall ms of one DynSp pattern update (prune + random regrow + AdamW state remap)
    of a single SparseLinear; None if ``sparse_ops.dynsp.controller`` is not available."""
    try:
        from sparse_ops.dynsp.controller import DynSpController
    except ImportError:
        return None
    layer = SparseLinear(case.in_features, case.out_features, sparsity=case.sparsity,
                         block_size=case.block_size, seed=seed, device=device)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    layer(torch.randn(8, case.in_features, device=device)).sum().backward()
    opt.step()
    total = 100 * (n_updates + 1)
    ctrl = DynSpController(layer, opt, total_steps=total, n_updates=n_updates, seed=seed)
    times = []
    for step in range(total):
        if ctrl.is_update_step(step):
            sync(device)
            t0 = time.perf_counter()
            ctrl.step(step)
            sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times) if times else None


def memory_ratio(case: LayerCase) -> tuple[int, int]:
    """(sparse, dense) persistent bytes: values/weight + bias + indices + 2 fp32 Adam moments."""
    sparse = SparseLinear(case.in_features, case.out_features, sparsity=case.sparsity,
                          block_size=case.block_size, seed=0)
    return state_bytes(sparse), state_bytes(nn.Linear(case.in_features, case.out_features, device="meta"))


FULL_GRID = dict(hidden=(256, 512, 768), tokens=(4096, 16384), sparsity=(0.5, 0.75, 0.9),
                 block_sizes=(1, 4, 8, 16), amp=("fp32", "bf16"))
QUICK_GRID = dict(hidden=(256, 768), tokens=(4096,), sparsity=(0.5, 0.9), block_sizes=(1, 16),
                  amp=("fp32", "bf16"))
# (backend, block size) pairs --quick does not time: > 100x dense in the full run.
QUICK_SKIP = {("gather_bmm", 1)}


def layer_cases(hidden: tuple[int, ...], tokens: tuple[int, ...], sparsity: tuple[float, ...],
                block_sizes: tuple[int, ...], amp: tuple[str, ...],
                shapes: tuple[str, ...] = ("HxH", "4HxH", "Hx4H")) -> list[LayerCase]:
    """The BERT encoder layer shapes (O x I): HxH (q, k, v, attention output), 4HxH (FFN up),
    Hx4H (FFN down), crossed with the other axes."""
    dims = {"HxH": (1, 1), "4HxH": (4, 1), "Hx4H": (1, 4)}
    return [LayerCase(H, dims[sh][0] * H, dims[sh][1] * H, n, s, B, a)
            for H in hidden for sh in shapes for n in tokens for s in sparsity for B in block_sizes
            for a in amp]


def machine_info(device: torch.device) -> dict[str, object]:
    """Processor / GPU name, core and thread counts, torch version, AMX presence."""
    info: dict[str, object] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
        info.update(cpu=model, amx_bf16="amx_bf16" in text, avx512f="avx512f" in text)
    except OSError:
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
