"""One run per output folder: an exclusive, non-blocking lock held for the whole run.

Two runs writing one `output_dir` would delete each other's temporary checkpoint folders
and interleave `metrics.jsonl`. The lock is `flock` on `<output_dir>/.run.lock`: the
kernel releases it when the process ends in any way (even `kill -9`), so a crashed run
never leaves the folder locked. The file holds the owner's pid and host, for the message.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import IO

LOCK_NAME = ".run.lock"


class OutputInUseError(RuntimeError):
    """Another live run holds the output folder (the message names it and its pid)."""


class RunLock:
    """Hold the lock of `folder` from `acquire()` until `release()` (or process exit)."""

    def __init__(self, folder: Path, name: str = LOCK_NAME) -> None:
        self.path = Path(folder) / name
        self._file: IO[str] | None = None

    def acquire(self, what: str = "output_dir", shown: str | Path | None = None) -> "RunLock":
        """Take the lock now or raise OutputInUseError naming `what` and `shown` (default:
        the folder); no waiting."""
        try:
            import fcntl
        except ImportError:  # no flock on this platform: run unguarded
            return self
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise OutputInUseError(
                f"{what} {str(shown or self.path.parent)!r} is in use by a running {'run' if self.path.name == LOCK_NAME else 'command'} ({owner}); "
                f"wait for it to end or choose another {what}") from None
        except OSError:  # a file system without flock: run unguarded
            handle.close()
            return self
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        """Give the folder back (closing the file drops the flock)."""
        if self._file is not None:
            self._file.close()
            self._file = None
