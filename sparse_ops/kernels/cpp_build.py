"""Build (once, cached) and load the C++ CPU kernels of ``cpp_bsr.cpp``.

The extension is compiled with ``torch.utils.cpp_extension.load`` on first use, into
``$DYNSP_KERNEL_CACHE`` (default ``~/.cache/dynsp/kernels``), in a folder named by a
hash of the source, the torch version, the compiler flags and the CPU's instruction
set, so a change of any of them builds anew and two machines sharing a home folder
never load each other's build. The source is compiled for AVX2 + FMA and AVX-512F in
one object (function target attributes); the path runs is chosen at run time.

A machine without a compiler, without ninja, or whose CPU lacks AVX2 + FMA gets
``None`` from :func:`load` and one warning line (the reason, the compiler's first
error line); the callers then keep the other backends. Nothing here raises.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

log = logging.getLogger("sparse_ops.kernels")

SOURCE = Path(__file__).with_name("cpp_bsr.cpp")
# -fopenmp: at::parallel_for is inline (ATen/ParallelOpenMP.h), so without it the
# extension's loops run on one thread whatever torch.set_num_threads says. The extension
# then needs libgomp.so.1, which the loader resolves to the copy torch has already loaded
# (same soname): one OpenMP runtime and one thread pool in the process.
CFLAGS = ["-O3", "-fno-math-errno", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
CACHE_ENV = "DYNSP_KERNEL_CACHE"
DISABLE_ENV = "DYNSP_NO_CPP_KERNELS"  # set to 1: never build or load (the other backends run)

STALE_LOCK_S = 600  # a build takes well under a minute; an older lock was left by a killed build
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(name: str, cpuinfo: Path) -> Optional[str]:
    """The value of the first `name` line of /proc/cpuinfo (None where it cannot be read)."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    return frozenset((_cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where it cannot be read)."""
    return _cpuinfo_field("model name", cpuinfo) or "unknown"


def isa_key(flags: frozenset[str]) -> str:
    """The instruction-set part of the cache key: the flags the build can depend on."""
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16")
    return "-".join(f for f in wanted if f in flags) or "baseline"


def cache_root() -> Path:
    """Where builds (and ``auto``'s measured choices) are kept."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dynsp" / "kernels").expanduser()


def build_dir() -> Path:
    """The folder this source / torch / flags / CPU combination builds into."""
    root = cache_root()
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), " ".join(CFLAGS + LDFLAGS).encode(),
                 isa_key(cpu_flags()).encode()):
        digest.update(part)
        digest.update(b"\0")
    return root / f"cpp_bsr-{digest.hexdigest()[:16]}"


def _first_error_line(text: str) -> str:
    """The compiler's first ``error:`` line (else the first line naming an error)."""
    lines = text.splitlines()
    for pattern in (": error:", "error:", "error"):
        for line in lines:
            if pattern in line.lower():
                return line.strip()[:300]
    lines = [line.strip() for line in lines if line.strip()]
    return (lines[-1] if lines else "no output")[:300]


def clear_stale_lock(folder: Path, max_age_s: float = STALE_LOCK_S) -> bool:
    """Remove the build folder's `lock` (torch's FileBaton) when it is older than
    `max_age_s`: a build killed mid-way (Ctrl-C, kill -9) leaves it behind, and torch then
    waits for it forever, at every later load. Returns whether one was removed."""
    lock = folder / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return False
    if age <= max_age_s:
        return False
    try:
        lock.unlink()
    except OSError:
        return False
    log.warning("sparse_ops.kernels: removed the stale build lock %s (%.0f s old, left by an "
                "interrupted build)", lock, age)
    return True


def _build() -> Optional[ModuleType]:
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    flags = cpu_flags()
    if flags and not {"avx2", "fma"} <= flags:
        log.warning("sparse_ops.kernels: cpp backend unavailable (this CPU has no AVX2 + FMA); "
                    "using the other backends")
        return None
    folder = build_dir()
    try:
        from torch.utils import cpp_extension

        folder.mkdir(parents=True, exist_ok=True)
        clear_stale_lock(folder)
        module = cpp_extension.load(name="dynsp_cpp_bsr", sources=[str(SOURCE)],
                                    extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                                    build_directory=str(folder), verbose=False)
    except Exception as exc:  # a failed build must never break training
        text = str(exc)
        output = getattr(exc, "output", None)
        if isinstance(output, (bytes, str)):
            text = output.decode(errors="replace") if isinstance(output, bytes) else output
        log.warning("sparse_ops.kernels: cpp backend unavailable, building %s failed: %s; "
                    "using the other backends", SOURCE.name, _first_error_line(text))
        return None
    if module.isa() == "none":
        log.warning("sparse_ops.kernels: cpp backend unavailable (no AVX2 + FMA at run time)")
        return None
    module.keep_large_allocations(32 << 20)
    log.info("sparse_ops.kernels: cpp backend loaded (%s path) from %s", module.isa(), folder)
    return module


def load() -> Optional[ModuleType]:
    """The compiled module, building it on the first call; None where it cannot be had."""
    with _LOCK:
        if "module" not in _STATE:
            _STATE["module"] = _build()
        return _STATE["module"]  # type: ignore[return-value]


def main() -> int:
    """Build now (the set-up command runs this, `make` does: so that the first training run
    does not wait for the compiler); prints the outcome in one line, returns 0 either way."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    module = load()
    if module is None:
        print("cpp kernels: not built; training uses the other backends (see the warning above)")
    else:
        print(f"cpp kernels: ready ({module.isa()} path) in {build_dir()}")
    return 0

