"""Command line of the sweeps.

    python -m bert_ipu.sweep SWEEP.yaml [--dry-run] [--jobs N] [--emit-commands [--launcher CMD]]
    python -m bert_ipu.sweep collect DIR [--out OUT] [--no-figures]

Running prints the plan (every run: start / resume / done, its folder, what varies), runs
what is unfinished, then collects the sweep's output_root into `<output_root>/results/`.
Exit codes: 0 every run finished; 1 some run failed or was interrupted (the others ran);
2 bad input (sweep file, a point's config, a folder), one line, before anything runs.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

from bert_ipu.cliutil import Parser

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _run_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bert_ipu.sweep",
                                description="Run every point of a sweep file (resumably).",
                                epilog="collect: python -m bert_ipu.sweep collect DIR --help")
    p.add_argument("sweep", help="sweep YAML file (configs/sweeps/, docs/results/README.md)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--emit-commands", action="store_true",
                   help="print one shell command per unfinished run instead of running")
    p.add_argument("--launcher", default=None,
                   help="with --emit-commands: replaces `python`, e.g. 'torchrun --nproc_per_node 8'")
    p.add_argument("--no-collect", action="store_true", help="do not collect at the end")
    return p


def _collect_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bert_ipu.sweep collect",
                                description="Collect run folders into CSV, Markdown and PNG.")
    p.add_argument("dir", help="folder holding the run folders (searched recursively)")
    p.add_argument("--out", default=None, help="where to write (default DIR/results)")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    return p


def _main_collect(argv: list[str]) -> int:
    from bert_ipu.sweep.results import write_results

    args = _collect_parser().parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        print(f"error: collect: DIR must be a folder of runs, got {args.dir!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        paths = write_results(root, args.out, not args.no_figures)
    except (OSError, ImportError) as err:
        print(f"error: collect: {err}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(str(p) for p in paths))
    return EXIT_OK


def _main_run(argv: list[str]) -> int:
    from bert_ipu.config import ConfigError
    from bert_ipu.sweep.results import write_results
    from bert_ipu.sweep.runner import command, plan_lines, run_state, run_sweep
    from bert_ipu.sweep.spec import expand_sweep, load_sweep
    from bert_ipu.store.runlock import OutputInUseError, RunLock

    SWEEP_LOCK = ".sweep.lock"  # fsutil.RUN_MARKERS lists it: a sweep folder is never replaced

    args = _run_parser().parse_args(argv)
    if args.jobs < 1:
        print(f"error: --jobs must be an integer >= 1, got {args.jobs}", file=sys.stderr)
        return EXIT_USAGE
    try:
        runs = expand_sweep(args.sweep)
        root = Path(load_sweep(args.sweep).output_root or f"runs/sweeps/{Path(args.sweep).stem}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.emit_commands:
        for r in runs:
            if (state := run_state(r)) != "done":
                print(shlex.join(command(r, args.launcher, resume=state == "resume")))
        return EXIT_OK
    print(f"sweep {args.sweep}: {len(runs)} runs -> {root}", file=sys.stderr)
    print("\n".join(plan_lines(runs)), file=sys.stderr)
    if args.dry_run:
        return EXIT_OK
    try:  # one runner per sweep folder: a second one would redo runs the first is running
        root.mkdir(parents=True, exist_ok=True)
        lock = RunLock(root, SWEEP_LOCK).acquire("the sweep's output_root")
    except (OSError, OutputInUseError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        codes = run_sweep(runs, args.jobs, log=lambda s: print(s, file=sys.stderr, flush=True))
    finally:
        lock.release()
    failed = sorted(i for i, c in codes.items() if c != 0)
    if not args.no_collect and root.is_dir():
        try:
            paths = write_results(root)
            print(f"collected: {', '.join(str(p) for p in paths)}", file=sys.stderr)
        except (OSError, ImportError) as err:
            print(f"warning: collect failed: {err}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(runs)} runs did not finish: "
              + ", ".join(f"{i:03d}" for i in failed), file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """`collect DIR ...` or `SWEEP.yaml ...`; returns the exit code (module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "collect":
        return _main_collect(argv[1:])
    try:
        return _main_run(argv)
    except KeyboardInterrupt:
        print("stopped: running runs saved a checkpoint; run the same command to resume",
              file=sys.stderr)
        return 130


def cli() -> None:
    """Console entry point (`bert-ipu-sweep`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
