"""Durable-write helpers shared by checkpoints and the prepared-data cache."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def fsync_dir(path: Path) -> None:
    """fsync a folder so that a rename or new entry inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutputWriteError(OSError):
    """An output could not be written; the message names the file (a bare
    `[Errno 28] No space left on device` does not say where)."""

    def __str__(self) -> str:
        return f"could not write {self.filename}: {self.strerror}"


@contextmanager
def naming(path: Path, cleanup: Path | None = None) -> Iterator[None]:
    """Re-raise an OSError of the block as OutputWriteError naming `path`; remove the
    temporary file `cleanup` (if given) when the block fails in any way."""
    try:
        yield
    except BaseException as exc:
        if cleanup is not None:
            try:
                Path(cleanup).unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(exc, OSError) and not isinstance(exc, OutputWriteError):
            raise OutputWriteError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary sibling and a rename: a failure (full
    disk) names the file and leaves neither a torn file nor the temporary one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with naming(path, cleanup=tmp):
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path


# ------------------------------------------------------------------ replacing folders
# What marks a folder as a run, a checkpoint or a sweep: never replaced or deleted by a
# command that did not create it (runlock.LOCK_NAME, checkpoint.MANIFEST, the sweep
# runner's record and lock, a run's metrics and summary; kept here, below all of them).
RUN_MARKERS = (".run.lock", "manifest.json", "checkpoints", "metrics.jsonl", "summary.json",
               "sweep_run.json", ".sweep.lock")


# What marks a folder written by `bert_ipu.export` (hub/export.py): the marker, or the run
# config every export holds (exports written before the marker existed).
EXPORT_MARKERS = (".dynsp-export", "dynsp_config.yaml")


class UnsafeTargetError(ValueError):
    """A command was pointed at a folder it must not replace (one line: which and why)."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_replaceable(target: str | Path, what: str, markers: tuple[str, ...],
                      protected: tuple[str | Path, ...] = ()) -> Path:
    """The resolved `target`, which a command that writes folders recognised by any of
    `markers` may create or replace: it does not exist, or is an empty folder, or is a
    folder this command wrote before (holding a marker and nothing that marks a run,
    checkpoint or sweep). Never a `protected` folder (the command's source, the run's
    own output) nor a folder holding one. UnsafeTargetError otherwise, before any work."""
    path = Path(target).expanduser().resolve()
    for p in protected:
        p = Path(p).expanduser().resolve()
        if _inside(p, path):
            relation = "is" if p == path else "holds"
            raise UnsafeTargetError(f"{what} {str(target)!r}: {relation} {p}, which this command "
                                    "reads or writes; choose a new folder")
    if not path.exists():
        return path
    if not path.is_dir():
        raise UnsafeTargetError(f"{what} {str(target)!r}: is an existing file; expected a folder "
                                "path that is new, empty or a previous output of this command")
    try:
        names = {p.name for p in path.iterdir()}
    except OSError as exc:
        raise UnsafeTargetError(f"{what} {str(target)!r}: cannot be listed: {exc.strerror or exc}") from None
    if not names:
        return path
    run = sorted(names & set(RUN_MARKERS))
    if run:
        raise UnsafeTargetError(f"{what} {str(target)!r}: holds a run, checkpoint or sweep "
                                f"({', '.join(run)}); it is never replaced; choose a new folder")
    if not names & set(markers):
        raise UnsafeTargetError(f"{what} {str(target)!r}: exists and is not empty, and is not a "
                                "previous output of this command; it is never replaced; choose "
                                "a new folder")
    return path
