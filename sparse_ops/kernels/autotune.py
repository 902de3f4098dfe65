"""``auto`` on the CPU: pick each product's backend by measuring, once per problem.

The first time a product (forward / grad_input / grad_values) of a problem is asked for,
every backend that supports it is timed on synthetic operands of the same shape,
block size, density and token count (tokens rounded up to a power of two), with the
current thread count, interleaved, and the fastest wins. The choice is kept for the
process and on disk (``$DYNSP_KERNEL_CACHE/auto-<machine>.json``, default
``~/.cache/dynsp/kernels``), keyed by the CPU model, its instruction set, the torch
version and the C++ kernels' source and compiler flags, so that later runs and resumes on the same
machine make the same choice (and so compute bitwise the same numbers) without
measuring again. Each choice is logged once, with the times it rests on.

``DYNSP_AUTO=rule`` switches measuring off: the fixed thresholds of
``cpu.auto_backend_name`` decide instead (as on other devices).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from sparse_ops.format import BlockSparseMatrix
from sparse_ops.kernels import cpp_build
from sparse_ops.kernels.registry import loaded_backend

log = logging.getLogger("sparse_ops.kernels")

CANDIDATES = ("dense", "cpp", "gather_bmm", "bsr")
# gather_bmm gathers [tokens, nnz, B] slabs: at B = 1 it is 20-80x slower than dense
# (measured: 7.7 s vs 0.1 s for one 3072 x 768 product), so it is not even timed there.
MIN_BLOCK = {"gather_bmm": 4}
MODE_ENV = "DYNSP_AUTO"
REPEATS = 3           # timed calls per candidate (after one warm-up), interleaved; min taken
DROP_FACTOR = 4.0     # a candidate 4x slower than the best after its first call is not timed further

_LOCK = threading.Lock()
_CHOICES: dict[str, str] = {}
_DISK: dict[str, dict] = {}


def measuring() -> bool:
    """Whether ``auto`` measures on the CPU (``DYNSP_AUTO`` unset or ``measure``)."""
    return os.environ.get(MODE_ENV, "measure").strip().lower() != "rule"


def problem_key(op: str, dtype: torch.dtype, block_size: int, shape: tuple[int, int],
                nnz: int, n_tokens: int) -> str:
    """The problem a choice is valid for (the token count rounded up to a power of two)."""
    n_blocks = (shape[0] // block_size) * (shape[1] // block_size)
    bucket = 1 << max(0, math.ceil(math.log2(max(1, n_tokens))))
    return (f"{op}|{str(dtype).replace('torch.', '')}|B{block_size}|{shape[0]}x{shape[1]}|"
            f"d{nnz / n_blocks:.4f}|N{bucket}|t{torch.get_num_threads()}")


def _machine_file() -> Path:
    # the build folder's name hashes the C++ source, torch, the compiler flags and the
    # instruction set: a rebuilt kernel is measured anew
    digest = hashlib.sha256("\0".join((cpp_build.cpu_model(), cpp_build.build_dir().name))
                            .encode()).hexdigest()[:16]
    return cpp_build.cache_root() / f"auto-{digest}.json"


def _read_disk(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def _write_disk(path: Path, key: str, record: dict) -> None:
    """Add one choice; the first writer of a key wins (another process may have measured it)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_disk(path)
        data.setdefault(key, record)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:  # the disk cache is an optimisation, never a failure
        log.debug("auto: could not write %s: %s", path, err)


def _operands(shape: tuple[int, int], block_size: int, nnz: int, n_tokens: int,
              dtype: torch.dtype) -> tuple[Tensor, Tensor, BlockSparseMatrix]:
    gen = torch.Generator().manual_seed(0)
    n_rows, n_cols = shape[0] // block_size, shape[1] // block_size
    lin = torch.randperm(n_rows * n_cols, generator=gen)[:nnz].sort().values
    w = BlockSparseMatrix(torch.randn(nnz, block_size, block_size, generator=gen).to(dtype),
                          (lin // n_cols).int(), (lin % n_cols).int(), shape, block_size, {})
    x = torch.randn(n_tokens, shape[1], generator=gen).to(dtype)
    dy = torch.randn(n_tokens, shape[0], generator=gen).to(dtype)
    return x, dy, w


def _call(op: str, name: str, x: Tensor, dy: Tensor, w: BlockSparseMatrix) -> Callable[[], object]:
    backend = loaded_backend(name)
    assert backend is not None
    if op == "forward":
        return lambda: backend.forward(x, w)
    if op == "grad_input":
        return lambda: backend.grad_input(dy, w)
    return lambda: backend.grad_values(dy, x, w)


def measure(op: str, candidates: list[str], dtype: torch.dtype, block_size: int,
            shape: tuple[int, int], nnz: int, n_tokens: int) -> dict[str, float]:
    """Seconds per call (min over REPEATS, interleaved) of each candidate on synthetic data."""
    x, dy, w = _operands(shape, block_size, nnz, n_tokens, dtype)
    calls = {name: _call(op, name, x, dy, w) for name in candidates}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(REPEATS + 1):
        best = min((min(t) for t in times.values() if t), default=math.inf)
        for name, fn in calls.items():
            if times[name] and min(times[name]) > DROP_FACTOR * best:
                continue
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    # the first call of each is a warm-up (index build, page faults) unless it was the only one
    return {name: min(t[1:] if len(t) > 1 else t) for name, t in times.items()}


def choose(op: str, device: torch.device, dtype: torch.dtype, block_size: int,
           shape: tuple[int, int], nnz: int, n_tokens: int) -> Optional[str]:
    """The measured backend for this CPU problem, or None (not measuring, or one candidate)."""
    if not measuring() or device.type != "cpu":
        return None
    key = problem_key(op, dtype, block_size, shape, nnz, n_tokens)
    with _LOCK:
        if key in _CHOICES:
            return _CHOICES[key]
        path = _machine_file()
        disk = _DISK.get(str(path))
        if disk is None:  # read once per process (reset() forgets it)
            disk = _DISK[str(path)] = _read_disk(path)
        stored = disk.get(key)
        if isinstance(stored, dict) and loaded_backend(str(stored.get("backend"))) is not None:
            _CHOICES[key] = str(stored["backend"])
            log.info("sparse_ops.kernels: auto %s -> %s (stored in %s; measured ms: %s)", key,
                     _CHOICES[key], path.name, stored.get("ms"))
            return _CHOICES[key]
        candidates = [n for n in CANDIDATES if (b := loaded_backend(n)) is not None
                      and block_size >= MIN_BLOCK.get(n, 1) and b.supports(device, dtype, block_size)]
        if len(candidates) < 2:
            return candidates[0] if candidates else None
        bucket = int(key.split("|N")[1].split("|")[0])
        times = measure(op, candidates, dtype, block_size, shape, nnz, bucket)
        winner = min(times, key=times.__getitem__)
        _CHOICES[key] = winner
        record = {"backend": winner, "ms": {n: round(t * 1e3, 6) for n, t in times.items()}}
        disk[key] = record
        _write_disk(path, key, record)
    log.info("sparse_ops.kernels: auto %s -> %s (measured ms: %s)", key, winner,
             ", ".join(f"{n} {t * 1e3:.2f}" for n, t in sorted(times.items(), key=lambda kv: kv[1])))
    return winner


def choices() -> dict[str, str]:
    """The choices made in this process (problem key -> backend)."""
    with _LOCK:
        return dict(_CHOICES)


def reset() -> None:
    """Forget the choices of this process (tests, benchmarks); the disk cache stays."""
    with _LOCK:
        _CHOICES.clear()
        _DISK.clear()


__all__ = ["choose", "choices", "measure", "measuring", "problem_key", "reset"]
