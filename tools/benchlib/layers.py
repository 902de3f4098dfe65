"""Benchmark helpers: fwd+bwd time of SparseLinear backends vs dense nn.Linear, pattern
update time, persistent-state bytes. tools/bench_ops.py is the thin CLI over this.

All variants of one case are timed in the same run and *interleaved* (round r runs
every variant once), so a load change on a shared machine hits all of them alike;
the reported number is the median over rounds, in milliseconds, with the device
synchronised around every call (CUDA).

Also here, for the training benchmarks (training.py, tools/bench_*.py):
``PeakMemory`` (peak memory growth of a code region, CUDA or CPU), ``layer_update_ms``
(one DynSp update of one existing layer, either placement), ``KERNEL_SHAPES`` /
``kernel_cases`` (the CUDA kernel grid) and ``format_table``.
"""
from __future__ import annotations

import copy
import ctypes
import gc
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Optional, Sequence

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
        name = {H: "H", 3 * H: "3H", 4 * H: "4H"}
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
    return _median_update_ms(ctrl, total, device)


def memory_ratio(case: LayerCase) -> tuple[int, int]:
    """(sparse, dense) persistent bytes: values/weight + bias + indices + 2 fp32 Adam moments."""
    sparse = SparseLinear(case.in_features, case.out_features, sparsity=case.sparsity,
                          block_size=case.block_size, seed=0)
    return state_bytes(sparse), state_bytes(nn.Linear(case.in_features, case.out_features, device="meta"))


FULL_GRID = dict(hidden=(256, 512, 768), tokens=(4096, 16384), sparsity=(0.5, 0.75, 0.9),
                 block_sizes=(1, 4, 8, 16), amp=("fp32", "bf16"))
# --quick: BERT-Base layers (8 sequences of 128 tokens), block size 16, fp32 (about 2 min on 2
# CPU cores; the previous 48-case subset did not finish in 8 minutes).
QUICK_GRID = dict(hidden=(768,), tokens=(1024,), sparsity=(0.5, 0.9), block_sizes=(16,),
                  amp=("fp32",))
# (backend, block size) pairs --quick does not time: > 100x dense in the full run.
QUICK_SKIP = {("gather_bmm", 1)}


def layer_cases(hidden: tuple[int, ...], tokens: tuple[int, ...], sparsity: tuple[float, ...],
                block_sizes: tuple[int, ...], amp: tuple[str, ...],
                shapes: tuple[str, ...] = ("HxH", "4HxH", "Hx4H")) -> list[LayerCase]:
    """The BERT encoder layer shapes (O x I): HxH (q, k, v, attention output), 4HxH (FFN up),
    Hx4H (FFN down), and on request 3HxH (fused QKV), crossed with the other axes."""
    dims = {"HxH": (1, 1), "3HxH": (3, 1), "4HxH": (4, 1), "Hx4H": (1, 4)}
    return [LayerCase(H, dims[sh][0] * H, dims[sh][1] * H, n, s, B, a)
            for H in hidden for sh in shapes for n in tokens for s in sparsity for B in block_sizes
            for a in amp]


def machine_info(device: torch.device) -> dict[str, object]:
    """Processor / GPU name, core and thread counts, torch version, the instruction-set flags
    the kernels care about."""
    info: dict[str, object] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "cpus": os.cpu_count(), "platform": platform.platform()}
    from sparse_ops.kernels.cpp_build import cpu_flags, cpu_model

    flags, model = cpu_flags(), cpu_model()
    info.update(cpu=model if model != "unknown" else platform.processor(),
                **{f: f in flags for f in ("amx_bf16", "avx512f", "avx512_bf16", "avx2")})
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------- peak memory of a region
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> Optional[int]:
    """A ``VmXXX:`` field of /proc/self/status in KiB (None where there is no procfs)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _trim_and_reset_hwm() -> bool:
    """Return freed heap to the OS (glibc ``malloc_trim``), then reset the process's peak
    RSS (VmHWM) to its current RSS (Linux >= 4.0, ``echo 5 > /proc/self/clear_refs``)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakMemory:
    """Peak memory growth (bytes) of the code inside ``with PeakMemory(device) as pm:``.

    * CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
      the allocated bytes at entry (tensors only; the caching allocator's reserve and the
      CUDA context are not counted). ``method = "cuda_max_memory_allocated"``.
    * CPU: peak resident set size of the whole process minus its RSS at entry. At entry
      freed heap is returned to the OS (``malloc_trim``) and the kernel's peak-RSS mark
      is reset (/proc/self/clear_refs), so the peak belongs to this region:
      ``method = "rss_hwm_reset"``. Without that (not Linux): the growth of
      ``getrusage().ru_maxrss`` (``method = "ru_maxrss_delta"``), a lower bound that only
      sees growth above the earlier peak of the process. RSS counts everything the
      process touches (tensors, allocator slack, oneDNN scratch, Python objects), which
      is why neither ``tracemalloc`` (Python objects only) nor torch's counters are used.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.method = ""
        self.peak_bytes = 0
        self._base = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method, self._base = "cuda_max_memory_allocated", torch.cuda.memory_allocated(self.device)
        elif _trim_and_reset_hwm():
            self.method, self._base = "rss_hwm_reset", 1024 * (_status_kib("VmRSS") or 0)
        else:
            self.method = "ru_maxrss_delta"
            self._base = 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if self.method == "cuda_max_memory_allocated":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "rss_hwm_reset":
            peak = 1024 * (_status_kib("VmHWM") or 0)
        else:
            peak = 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak_bytes = max(0, peak - self._base)


# ---------------------------------------------------------------- one layer's update
def layer_update_ms(layer: SparseLinear, placement: str = "host", repeats: int = 3,
                    prune_ratio: float = 0.5, seed: int = 0) -> float:
    """Median wall ms of one DynSp update (prune + random regrow + AdamW state remap +
    metrics) of a *copy* of ``layer``, with the controller at ``placement``.

    The copy gets a fresh AdamW with one step taken (so its moments exist and are
    remapped, as in training) and a single-layer ``DynSpController`` with a constant
    prune ratio ``prune_ratio`` (the largest k of a cosine schedule); ``layer`` itself
    and its optimizer are untouched.
    """
    from sparse_ops.dynsp.controller import DynSpController

    if repeats < 1:
        raise ValueError(f"layer_update_ms: argument 'repeats' must be >= 1, got {repeats}")
    work = copy.deepcopy(layer)
    device = work.values.device
    opt = torch.optim.AdamW([work.values], lr=1e-3)
    work(torch.randn(8, work.in_features, device=device)).sum().backward()
    opt.step()
    total = repeats + 1  # updates at steps 1..repeats
    ctrl = DynSpController({"layer": work}, opt, total_steps=total, n_updates=repeats,
                           prune_ratio=prune_ratio, prune_schedule="constant", seed=seed,
                           placement=placement, sync="none")
    return _median_update_ms(ctrl, total, device)


# ---------------------------------------------------------------- CUDA kernel grid
# Layer shapes (O, I) of BERT as multiples of H: the four products a layer runs.
KERNEL_SHAPES: dict[str, tuple[int, int]] = {
    "HxH": (1, 1),   # query, key, value, attention output
    "3HxH": (3, 1),  # fused query/key/value weight
    "4HxH": (4, 1),  # FFN up
    "Hx4H": (1, 4),  # FFN down
}
KERNEL_SHAPE_ROLES = {"HxH": "q/k/v/out", "3HxH": "fused QKV", "4HxH": "FFN up", "Hx4H": "FFN down"}
KERNEL_GRID = dict(hidden=(768,), tokens=(4096, 16384), sparsity=(0.9,), block_sizes=(16, 8))


@dataclass(frozen=True)
class KernelCase:
    """One CUDA kernel benchmark cell: a named (O, I) shape on N tokens."""

    shape_name: str
    shape: tuple[int, int]
    n_tokens: int
    sparsity: float
    block_size: int


def kernel_cases(hidden: Sequence[int] = (768,), tokens: Sequence[int] = (4096, 16384),
                 sparsity: Sequence[float] = (0.9,), block_sizes: Sequence[int] = (16, 8),
                 shapes: Sequence[str] = tuple(KERNEL_SHAPES)) -> list[KernelCase]:
    """The grid of tools/bench_ops.py --device cuda (default: BERT-Base, N = 4096 and 16384)."""
    unknown = [s for s in shapes if s not in KERNEL_SHAPES]
    if unknown:
        raise ValueError(f"kernel_cases: argument 'shapes' must name {sorted(KERNEL_SHAPES)}, got {unknown}")
    return [KernelCase(name, (KERNEL_SHAPES[name][0] * H, KERNEL_SHAPES[name][1] * H), n, s, B)
            for H in hidden for name in shapes for n in tokens for s in sparsity for B in block_sizes]


# ---------------------------------------------------------------- tables
def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with columns padded to their widest cell (floats as given).

    >>> print(format_table(["a", "bb"], [[1, "x"], [22, "y"]]))
    a  | bb
    ---+---
    1  | x
    22 | y
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _median_update_ms(ctrl: Any, total: int, device: torch.device | str) -> float | None:
    """Median wall time (ms, device-synchronised) of the controller's updates over steps
    0..total-1; None when no step of that range is an update step."""
    times = []
    for step in range(total):
        if ctrl.is_update_step(step):
            sync(device)
            t0 = time.perf_counter()
            ctrl.step(step)
            sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times) if times else None
