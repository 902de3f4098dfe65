"""The command lines' argument parser: a usage error is one line (`error: ...`) and exit 2,
like every other bad input, instead of argparse's usage block."""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose errors are one line naming the argument."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)
