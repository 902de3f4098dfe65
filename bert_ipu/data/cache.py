"""The on-disk prepared-data cache: keyed, written atomically, verified on every load.

Layout of `<cache_dir>/<source>-<location16>-<key16>/`:
  meta.json                   version, full key and what it was computed from, counts,
                              tokenizer ids, arrays (dtype, shape), files (bytes, sha256)
  vocab.txt                   the vocabulary the ids index
  {train,eval}_tokens.npy ... the arrays of batching.py (memory-mapped when loading)

`location` hashes where the data comes from and the data settings; `key` hashes that plus
the corpus identity (file sizes and content sha256, dataset fingerprint, stdlib-docs hash) and the
tokenizer identity (vocab sha256). A folder of the same location but another key is
*stale* (the corpus or vocab changed): it is removed, with a warning, once the new cache
is complete. A folder whose files do not match meta.json (missing, wrong size, wrong
checksum, inconsistent arrays) is *corrupt*: it is rebuilt, with a warning.

Writing happens in `.tmp-*` next to the final folder; every file is fsynced, meta.json
last, then one rename publishes the folder, so a crash never leaves a half cache under a
final name. A lock file serialises concurrent preparations of one location (several
ranks of a data-parallel run: the first prepares, the others reuse).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from bert_ipu.data.config import DataError
from bert_ipu.fsutil import fsync_dir, naming
from bert_ipu.logs import Log

CACHE_VERSION = 4  # 2: one-sentence chunks draw their NSP label (pretraining.py); 3: non-UTF-8 bytes replaced, not the file skipped (corpus.py); 4: auto reads blank-line prose as paragraphs of one document (text.py)
META = "meta.json"


def digest(obj: Any) -> str:
    """sha256 hex of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class ArrayWriter:
    """Append-only writer of one 1-D or 2-D array, finished as `<name>.npy`."""

    def __init__(self, folder: Path, name: str, dtype: Any, width: int | None = None) -> None:
        self.path = folder / f"{name}.npy"
        self.part = folder / f"{name}.part"
        self.dtype, self.width, self.rows = np.dtype(dtype), width, 0
        self._f = open(self.part, "wb")

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        self.rows += len(values)
        with naming(self.part):  # numpy's own message ("N requested and 0 written") names nothing
            values.tofile(self._f)

    def finish(self) -> dict[str, Any]:
        """Write the .npy (header + data), fsync it; return {"dtype", "shape"}."""
        self._f.close()
        shape = (self.rows,) if self.width is None else (self.rows, self.width)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype),
                  "fortran_order": False, "shape": shape}
        with naming(self.path), open(self.path, "wb") as out, open(self.part, "rb") as src:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(src, out, 1 << 22)
            out.flush()
            os.fsync(out.fileno())
        self.part.unlink()
        return {"dtype": self.dtype.str, "shape": list(shape)}



def finalize(folder: Path, meta: dict[str, Any]) -> None:
    """Record size and sha256 of every file of `folder` in meta.json, written last."""
    files = {}
    for path in sorted(folder.iterdir()):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        files[path.name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    meta = dict(meta, files=files)
    with open(folder / META, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(folder)


def problem(folder: Path, key: str, verify_checksums: bool) -> str | None:
    """Why `folder` is not a usable cache for `key` (None when it is)."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{META} unreadable ({type(err).__name__})"
    if meta.get("version") != CACHE_VERSION or meta.get("key") != key:
        return (f"stale (version {meta.get('version')}, key {str(meta.get('key'))[:16]}; "
                f"expected version {CACHE_VERSION}, key {key[:16]})")
    for name, want in meta.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"file {name} missing"
        if path.stat().st_size != want["bytes"]:
            return f"file {name} has {path.stat().st_size} bytes, expected {want['bytes']}"
        if verify_checksums and file_sha256(path) != want["sha256"]:
            return f"file {name} fails its sha256 checksum"
    try:
        return check_arrays(folder, meta)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"arrays unreadable ({type(err).__name__}: {err})"


@contextmanager
def _flock(f: Any) -> Iterator[None]:
    """An exclusive advisory lock on the open file `f` (no-op where fcntl is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    try:
        fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:  # file systems without flock: go on unlocked (rename stays atomic)
        yield
        return
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    """Rename aside, then delete (a half-deleted folder never keeps a final name)."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def ensure(root: Path, prefix: str, key: str, build: Callable[[Path], dict[str, Any]],
           *, verify_checksums: bool, log: Log) -> tuple[Path, dict[str, Any], bool]:
    """The cache folder `<root>/<prefix>-<key16>`, built with `build(tmp)` if absent,
    stale or corrupt. `build` fills `tmp` and returns meta (without files/key/version).
    Returns (folder, meta, built)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock_file = open(root / f".{prefix}.lock", "a+")
    except OSError as err:
        raise DataError(f"data.cache_dir: cannot write in {root}: {err}") from err
    with lock_file, _flock(lock_file):
        final = root / f"{prefix}-{key[:16]}"
        if final.exists():
            why = problem(final, key, verify_checksums)
            if why is None:
                return final, _read_meta(final), False
            log(f"WARNING: data: prepared-data cache {final} is unusable ({why}); rebuilding")
            _remove(final)
        _publish(root, prefix, key, final, build)
        for old in sorted(root.glob(f"{prefix}-*")):
            if old != final and old.is_dir():
                log(f"WARNING: data: removed stale prepared-data cache {old} (its corpus, "
                    "vocabulary or settings changed)")
                _remove(old)
        return final, _read_meta(final), True


def _read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / META).read_text(encoding="utf-8"))


def _publish(root: Path, prefix: str, key: str, final: Path,
             build: Callable[[Path], dict[str, Any]]) -> None:
    """Build into a fresh temporary folder, finalize it, rename it to `final`."""
    for leftover in root.glob(f".tmp-{prefix}-*"):  # a crashed preparation's remains
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = root / f".tmp-{prefix}-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        meta = dict(build(tmp), version=CACHE_VERSION, key=key)
        finalize(tmp, meta)
        tmp.rename(final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_arrays(folder: Path, meta: dict[str, Any]) -> str | None:
    """Structural consistency of the arrays of a cache (None when consistent)."""
    vocab_size = meta["tokenizer"]["vocab_size"]
    for name, want in meta["arrays"].items():
        if name + ".npy" not in meta["files"]:
            return f"array {name} not listed in files"
        arr = np.load(folder / f"{name}.npy", mmap_mode="r")
        if arr.dtype.str != want["dtype"] or list(arr.shape) != want["shape"]:
            return f"array {name} is {arr.dtype.str} {list(arr.shape)}, expected {want}"
    for split in ("train", "eval"):
        if f"{split}_offsets" not in meta["arrays"]:
            continue
        get = lambda n: np.load(folder / f"{split}_{n}.npy", mmap_mode="r")  # noqa: E731
        offsets, a_len, nsp, tokens = get("offsets"), get("a_len"), get("nsp"), get("tokens")
        lengths = np.diff(offsets)
        if offsets[0] != 0 or offsets[-1] != len(tokens) or (lengths < 2).any():
            return f"{split}_offsets inconsistent with {split}_tokens"
        if (a_len < 1).any() or (a_len >= lengths).any() or (nsp > 1).any():
            return f"{split}_a_len or {split}_nsp out of range"
        if len(tokens) and int(tokens.max()) >= vocab_size:
            return f"{split}_tokens has ids >= the vocabulary size {vocab_size}"
    return None
