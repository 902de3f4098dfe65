"""Atomic, checksummed training checkpoints with keep-last-k and `latest` resume.

A checkpoint is a folder `step_XXXXXXXX` (optimizer steps completed; a checkpoint
taken in the middle of gradient accumulation is `step_XXXXXXXX_mYYYY`, Y micro-batches
of the next step already accumulated) under the run's checkpoint folder:

    model.pt        module state dict (SparseLinear: values [nnz, B, B], rows, cols)
    optimizer.pt    AdamW state dict (moments are per active block, never dense)
    trainer.pt      counters, LR schedule and loss-scaler state, data sampler
                    position + RNG, RNG states (torch, cuda, numpy, python), metrics
                    accumulators, accumulated gradients when mid-accumulation
    controller.pt   DynSp controller (patterns, ever-active bitmap, RNG, counters)
    config.yaml     the resolved config of the run
    vocab.txt       the run's vocabulary (token id = line; resume checks it, store/vocab.py)
    manifest.json   {"format", "step", "micro_step", "files": {name: {sha256, bytes}}}

A pipelined run's checkpoint is sharded (manifest `"sharded": true`): model.pt,
optimizer.pt and controller.pt are replaced by torch.distributed.checkpoint shards that
every rank writes in parallel (`__R_0.distcp`, `.metadata`; see sharded.py) and
`sharded.pt`; the other files are the same. `load_checkpoint` reads it back as the
single-process files, so every reader (resume, export) takes either kind.

Writing: a temporary folder `.tmp-...` in the same parent receives every file (each
fsynced), then the manifest, the folder is fsynced, renamed to its final name and the
parent fsynced. Only then are checkpoints beyond the newest `keep_last` deleted.
A reader trusts a folder only when its manifest verifies; stray `.tmp-*` folders from
killed writers are never read and are removed by the next save.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist

from bert_ipu.fsutil import fsync_dir
from bert_ipu.store import sharded

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_NAME_RE = re.compile(r"^step_(\d{8,})(?:_m(\d{4,}))?$")
_CHUNK = 1 << 20
# Test-only: seconds to sleep after each written chunk, so that a SIGKILL lands mid-write.
WRITE_DELAY_ENV = "BERT_IPU_TEST_CKPT_WRITE_DELAY"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, found or loaded (message names the path)."""


class ChecksumError(CheckpointError):
    """A checkpoint file is missing, truncated or altered (message names the file)."""


class NonFiniteWeightsError(CheckpointError):
    """Refused to save weights containing NaN or Inf."""


@dataclass(frozen=True, order=True)
class CheckpointId:
    """Position of a checkpoint: optimizer steps done + micro-batches of the next."""

    step: int
    micro_step: int = 0

    @property
    def name(self) -> str:
        base = f"step_{self.step:08d}"
        return base if self.micro_step == 0 else f"{base}_m{self.micro_step:04d}"

    @classmethod
    def parse(cls, name: str) -> "CheckpointId | None":
        match = _NAME_RE.match(name)
        if match is None:
            return None
        return cls(int(match.group(1)), int(match.group(2) or 0))


# ----------------------------------------------------------------------------- writing


def check_writable(folder: Path, what: str = "output folder") -> None:
    """Create `folder` if needed and prove it is writable, or raise CheckpointError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(
            f"{what} {str(folder)!r} is not writable: {exc.strerror or exc}; "
            "choose another output_dir or fix its permissions"
        ) from None


def check_creatable(folder: Path, what: str = "output folder") -> None:
    """Whether `folder` could be created and written (its nearest existing ancestor, or
    itself, is a writable folder), without creating or writing anything (dry runs)."""
    folder = Path(folder).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a folder" if not existing.is_dir() else "is not writable"
        raise CheckpointError(
            f"{what} {str(folder)!r} is not writable: {str(existing)!r} {why}; "
            "choose another output_dir or fix its permissions")


def check_finite_state(state: Mapping[str, Any], what: str = "model") -> None:
    """Raise NonFiniteWeightsError naming the first floating tensor with NaN/Inf."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                raise NonFiniteWeightsError(
                    f"refusing to save a checkpoint: {what} tensor {key!r} contains NaN or Inf"
                )


def _serialize(obj: Any) -> bytes:
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    if isinstance(obj, str):
        return obj.encode("utf-8")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync one file (chunked, so the test delay can split a write)."""
    delay = float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)
    with open(path, "wb") as handle:
        for start in range(0, max(len(data), 1), _CHUNK):
            handle.write(data[start : start + _CHUNK])
            if delay:
                handle.flush()
                time.sleep(delay)
        handle.flush()
        os.fsync(handle.fileno())



def _write_files(tmp: Path, files: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    entries = {}
    for name, obj in files.items():
        data = _serialize(obj)
        _write_bytes(tmp / name, data)
        entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return entries


def _write_manifest(tmp: Path, ckpt: CheckpointId, entries: Mapping[str, Any],
                    **extra: Any) -> None:
    manifest = {
        "format": FORMAT_VERSION,
        "step": ckpt.step,
        "micro_step": ckpt.micro_step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
        "files": dict(entries),
    }
    _write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
    fsync_dir(tmp)


def _write_folder(tmp: Path, ckpt: CheckpointId, files: Mapping[str, Any]) -> None:
    _write_manifest(tmp, ckpt, _write_files(tmp, files))


def _install(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` (e.g. a corrupt one we fell back
    from) is moved aside first and removed only after the new one is in place."""
    trash = None
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def remove_stale_temporaries(root: Path) -> None:
    """Delete `.tmp-*` / `.trash-*` folders left by killed writers."""
    for path in Path(root).glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in Path(root).glob(".trash-*"):
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(
    root: Path, ckpt: CheckpointId, files: Mapping[str, Any], keep_last: int = 0
) -> Path:
    """Atomically write `files` (name -> tensor tree, str or bytes) as checkpoint `ckpt`.

    Refuses non-finite model weights (`files["model.pt"]`). `keep_last` > 0 keeps
    that many newest complete checkpoints after the new one is in place.
    On any OSError (e.g. ENOSPC) the temporary folder is removed, earlier
    checkpoints are untouched, and CheckpointError explains what happened.
    """
    root = Path(root)
    if "model.pt" in files:
        check_finite_state(files["model.pt"], "model")
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    final = root / ckpt.name
    tmp = root / f".tmp-{ckpt.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        _write_folder(tmp, ckpt, files)
        _install(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint {str(final)!r}: {_reason(exc)}; the partial checkpoint "
            "was removed and earlier checkpoints are intact"
        ) from None
    if keep_last > 0:
        prune_checkpoints(root, keep_last, upto=ckpt)
    return final


def save_sharded_checkpoint(root: Path, ckpt: CheckpointId, files: Mapping[str, Any],
                            shard: dict[str, Any], keep_last: int = 0) -> Path:
    """Write checkpoint `ckpt` of a sharded (pipelined) run; collective over the default
    process group. Rank 0 makes the temporary folder and writes `files` (the common
    ones); every rank writes its `shard` into the same folder in parallel
    (torch.distributed.checkpoint) and hashes what it wrote; rank 0 checks that it sees
    every rank's files (`root` must be on a filesystem all nodes share), writes the
    manifest with everyone's checksums, installs the folder and prunes. Any failure on
    any rank: every rank raises CheckpointError, the partial folder is removed and
    earlier checkpoints are untouched."""
    root, rank = Path(root), dist.get_rank()
    final = root / ckpt.name
    where = f"could not write checkpoint {str(final)!r}"
    bad = _nonfinite(shard)
    box: list[Any] = [None, None]
    if rank == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(root)
            tmp = root / f".tmp-{ckpt.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            box[0] = str(tmp)
        except OSError as exc:
            box[1] = f"{where}: {_reason(exc)}"
    dist.broadcast_object_list(box, src=0)
    problems = [None] * dist.get_world_size()
    dist.all_gather_object(problems, bad)
    if box[1] is not None or any(problems):
        if box[0] is not None and rank == 0:
            shutil.rmtree(box[0], ignore_errors=True)
        message = box[1] or next(p for p in problems if p)
        raise (CheckpointError if box[1] else NonFiniteWeightsError)(message)
    tmp = Path(box[0])
    entries: dict[str, Any] = {}
    error = None
    try:
        for name in sharded.write(tmp, shard):  # collective
            entries[name] = {"sha256": _sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
        if rank == 0:
            entries.update(_write_files(tmp, files))
    except OSError as exc:
        error = f"{where}: {_reason(exc)}"
    except Exception as exc:  # DCP reports a failed write on any rank to every rank
        error = f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    parts: list[Any] = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object((entries, error), parts, dst=0)
    result: list[Any] = [None]
    if rank == 0:
        result[0] = _install_shared(tmp, final, ckpt, parts, where)
    dist.broadcast_object_list(result, src=0)
    if result[0].startswith("error:"):
        raise CheckpointError(result[0][len("error:"):])
    if keep_last > 0 and rank == 0:
        prune_checkpoints(root, keep_last, upto=ckpt)
    return final


def _install_shared(tmp: Path, final: Path, ckpt: CheckpointId, parts: list[Any],
                    where: str) -> str:
    """Rank 0's end of a sharded save: "ok", or "error:<message>" (folder removed)."""
    entries: dict[str, Any] = {}
    try:
        for rank, (theirs, error) in enumerate(parts):
            if error:
                raise CheckpointError(error if rank == 0 else f"{error} (rank {rank})")
            for name, entry in theirs.items():
                if not (tmp / name).is_file():
                    raise CheckpointError(
                        f"{where}: rank {rank} wrote {name}, which rank 0 does not see: the "
                        "checkpoint folder must be on a filesystem every node shares")
            entries.update(theirs)
        meta = tmp / sharded.DCP_METADATA
        entries[sharded.DCP_METADATA] = {"sha256": _sha256_file(meta), "bytes": meta.stat().st_size}
        _write_manifest(tmp, ckpt, dict(sorted(entries.items())), sharded=True)
        _install(tmp, final)
    except (CheckpointError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        message = str(exc) if isinstance(exc, CheckpointError) else f"{where}: {_reason(exc)}"
        return f"error:{message}; the partial checkpoint was removed and earlier checkpoints are intact"
    return "ok"


def _reason(exc: OSError) -> str:
    return "no space left on device" if exc.errno == errno.ENOSPC else str(exc)


def _nonfinite(shard: Mapping[str, Any]) -> str | None:
    try:
        check_finite_state({k: v for k, v in shard.items() if k.startswith("model/")})
    except NonFiniteWeightsError as exc:
        return str(exc)
    return None


def prune_checkpoints(
    root: Path, keep_last: int, upto: CheckpointId | None = None
) -> list[Path]:
    """Delete checkpoints beyond the newest `keep_last` at or before `upto`; returns
    the deleted. Newer ones (another timeline, e.g. a corrupt one we fell back from)
    are not counted, so they can never push a good checkpoint out."""
    found = [(c, p) for c, p in list_checkpoints(root) if upto is None or c <= upto]
    doomed = [path for _, path in found[:-keep_last]] if keep_last > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# ----------------------------------------------------------------------------- reading


def list_checkpoints(root: Path) -> list[tuple[CheckpointId, Path]]:
    """Finished checkpoint folders (a manifest present), oldest first; not verified."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        ckpt = CheckpointId.parse(path.name)
        if ckpt is not None and path.is_dir() and (path / MANIFEST).is_file():
            found.append((ckpt, path))
    return sorted(found)


def read_manifest(path: Path) -> dict[str, Any]:
    """The parsed manifest of checkpoint folder `path` (ChecksumError when unreadable)."""
    manifest_path = Path(path) / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
        for name in files:  # a plain file name inside the folder: never ../ or absolute
            if (not isinstance(name, str) or not name or "/" in name or "\\" in name
                    or name in (".", "..") or "\x00" in name):
                raise ValueError(f"it names {name!r}, which is not a file name inside the "
                                 "checkpoint folder")
    except FileNotFoundError:
        raise ChecksumError(f"checkpoint file {str(manifest_path)!r} is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ChecksumError(
            f"checkpoint file {str(manifest_path)!r} is unreadable or corrupt ({exc})"
        ) from None
    return manifest


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check every file against the manifest, and that the manifest lists every name in
    `required`; returns the manifest or raises ChecksumError naming the missing,
    truncated or altered file."""
    manifest = read_manifest(path)
    if manifest.get("sharded"):  # its shards hold what these files would
        required = tuple(n for n in required if n not in sharded.SHARDED_FILES) + (
            sharded.DCP_METADATA, sharded.COMMON)
    for name in required:
        if name not in manifest["files"]:
            raise ChecksumError(f"checkpoint {str(path)!r} is incomplete: its manifest does "
                                f"not list {name}")
    for name, entry in manifest["files"].items():
        file = Path(path) / name
        if not file.is_file():
            raise ChecksumError(f"checkpoint file {str(file)!r} is missing")
        size = file.stat().st_size
        if size != entry.get("bytes"):
            raise ChecksumError(
                f"checkpoint file {str(file)!r} is truncated or altered: "
                f"expected {entry.get('bytes')} bytes, found {size}"
            )
        if _sha256_file(file) != entry.get("sha256"):
            raise ChecksumError(
                f"checkpoint file {str(file)!r} is altered: its sha256 does not match "
                "the manifest"
            )
    return manifest


def _warn_unfinished(root: Path) -> None:
    """Checkpoint-named folders without a manifest (a deleted manifest, a copy cut
    short) are never resumed from; say so rather than skip them silently."""
    if Path(root).is_dir():
        for path in sorted(Path(root).iterdir()):
            if CheckpointId.parse(path.name) and path.is_dir() and not (path / MANIFEST).is_file():
                log.warning("skipping checkpoint %s: it has no %s (unfinished or damaged)",
                            path, MANIFEST)


def find_latest(root: Path, required: tuple[str, ...] = ()) -> Path | None:
    """Newest checkpoint under `root` whose manifest verifies (and lists `required`);
    older good ones are used with a warning when newer ones are corrupt. None when
    there is none at all."""
    _warn_unfinished(root)
    found = list_checkpoints(root)
    errors = []
    for _, path in reversed(found):
        try:
            verify_checkpoint(path, required)
        except ChecksumError as exc:
            log.warning("skipping corrupt checkpoint: %s", exc)
            errors.append(str(exc))
            continue
        if errors:
            log.warning("resuming from the previous good checkpoint %s", path)
        return path
    if errors:
        raise ChecksumError(f"no valid checkpoint in {str(root)!r}: " + "; ".join(errors))
    return None


def resolve_resume(spec: str | None, root: Path, required: tuple[str, ...] = ()) -> Path | None:
    """`None`/`""` -> no resume; `latest` -> find_latest(root) (None when no
    checkpoint exists yet); a path -> that checkpoint, verified."""
    if not spec:
        return None
    if spec == "latest":
        return find_latest(root, required)
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(
            f"resume_training_from_checkpoint: expected 'latest' or a checkpoint folder, "
            f"got {spec!r} (not a folder)"
        )
    verify_checkpoint(path, required)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu",
                    consolidate: bool = True) -> dict[str, Any]:
    """Verify and load every file of a checkpoint: {name: object, "manifest": the
    manifest, "path": `path`}; `.yaml`/`.json` files come back as text, `.pt` files
    through torch.load(weights_only=True). A sharded checkpoint's shards come back as
    the single-process model.pt, optimizer.pt and controller.pt (`consolidate`; else
    they are left for the caller: sharded.read)."""
    path = Path(path)
    manifest = verify_checkpoint(path)
    loaded: dict[str, Any] = {"manifest": manifest, "path": path}
    for name in manifest["files"]:
        file = path / name
        if name == sharded.DCP_METADATA or name.endswith(".distcp"):
            continue
        if name.endswith(".pt"):
            try:
                loaded[name] = torch.load(file, map_location=map_location, weights_only=True)
            except Exception as exc:  # a verified file that still cannot be unpickled
                raise CheckpointError(f"cannot load checkpoint file {str(file)!r}: {exc}") from None
        else:
            loaded[name] = file.read_text()
    if manifest.get("sharded") and consolidate:
        try:
            loaded.update(sharded.classic_files(path, loaded[sharded.COMMON], map_location))
        except (sharded.ShardError, KeyError) as exc:
            raise CheckpointError(f"cannot load checkpoint {str(path)!r}: {exc}") from None
    return loaded
