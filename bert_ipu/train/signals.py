"""Graceful stop on SIGINT / SIGTERM: the loop polls `requested` at safe points.

The first signal only sets a flag: the trainer finishes the micro-batch (or step) in
flight, saves a checkpoint and exits with 128 + the signal number (130 for SIGINT,
143 for SIGTERM). A second SIGINT while that happens raises KeyboardInterrupt at
once (the atomic checkpoint writer never leaves a half-written checkpoint behind).
"""
from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Raised by the trainer after the stop checkpoint is saved; carries the exit code."""

    def __init__(self, signum: int, checkpoint: str | None, resume_command: str) -> None:
        name = signal.Signals(signum).name
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint saved"
        super().__init__(f"stopped by {name}; {where}. Resume with:\n  {resume_command}")
        self.signum = signum
        self.exit_code = 128 + signum
        self.checkpoint = checkpoint
        self.resume_command = resume_command


class SetupInterrupted(TrainingInterrupted):
    """A signal during set-up (data preparation, model build): nothing to save yet."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum, None, "")
        self.args = (f"stopped by {signal.Signals(signum).name} during set-up (data "
                     "preparation or model build); nothing was trained or saved, and a "
                     "partly prepared data cache is never used. Run the same command again.",)


class StopRequest:
    """Context manager installing the handlers (main thread only; elsewhere a no-op).

    `immediate=True` (set-up): a signal raises SetupInterrupted at once; otherwise it
    only sets the flag that the loop polls at safe points."""

    def __init__(self, immediate: bool = False) -> None:
        self.signum: int | None = None
        self.immediate = immediate
        self._previous: dict[int, Any] = {}

    def raise_if_requested(self) -> None:
        """SetupInterrupted when a signal arrived (and was deferred) during set-up."""
        if self.signum is not None:
            raise SetupInterrupted(self.signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop as if `signum` had arrived (tests, IPU host callbacks)."""
        if self.signum is None:
            self.signum = signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.request(signum)
        if self.immediate:
            raise SetupInterrupted(signum)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
