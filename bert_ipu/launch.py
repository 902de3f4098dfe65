"""Data-parallel launcher: `python -m bert_ipu.launch [torchrun options] -m bert_ipu.pretrain ...`.

It is torchrun (the same options, `torch.distributed.run`) with exit codes a cluster can
act on. Plain torchrun answers a SIGTERM (pre-emption) by raising SignalException in its
agent: the ranks save their checkpoint and exit 143, but the job ends with exit 1 and a
traceback. Here the job ends as its ranks do: 128 + the signal after a stop, the first
failing rank's code (2 bad input, 3 diverged) after a failure, one line each.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Sequence

LAUNCHER_ENV = "BERT_IPU_LAUNCHER"
"""Set for the ranks, so that the resume command they print names this launcher."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run torchrun with `argv`; returns the job's exit code (see the module docstring)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    os.environ[LAUNCHER_ENV] = "bert_ipu.launch"
    try:
        torchrun(list(sys.argv[1:] if argv is None else argv))
    except SignalException as exc:
        name = signal.Signals(exc.sigval).name
        print(f"launch: stopped by {name}; the ranks were asked to save a checkpoint "
              "(their message above has the resume command)", file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        print(f"launch: rank {rank} ended with exit code {code}", file=sys.stderr)
        return code if 0 < code < 256 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
