"""Command line: `python -m bert_ipu.pretrain --config configs/NAME.yaml [key=value ...]`.

Exit codes:
    0    finished
    1    unexpected internal error (with a traceback: please report it)
    2    bad input: config, data, checkpoint, device, output folder (one line, no traceback)
    3    training diverged: non-finite loss past training.max_nonfinite_steps, fp16
         steps skipped past training.max_skipped_steps, or non-finite weights that
         were refused for a checkpoint
    130  stopped by SIGINT (Ctrl-C), 143 by SIGTERM: a checkpoint was saved and the
         command to resume was printed (during set-up: stopped at once, nothing saved)
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from typing import Any, Mapping, Sequence

from bert_ipu.cliutil import Parser

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_DIVERGED = 0, 1, 2, 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = Parser(
        prog="python -m bert_ipu.pretrain",
        description="BERT phase-I pre-training (MLM + NSP), dense, static-sparse or DynSp.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="overrides use dotted keys, e.g. training.learning_rate=1e-3 "
               "checkpoint.resume_training_from_checkpoint=latest\n"
               "every key, its default and valid values: docs/config_reference.md "
               "(or python -m bert_ipu.config.reference --stdout)\n\nexit codes:"
               + __doc__.split("Exit codes:", 1)[1])
    parser.add_argument("--config", "-c", help="YAML config file (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides (dotted keys, YAML values)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print-config", action="store_true",
                      help="print the resolved config, each value with its source, and exit")
    mode.add_argument("--dry-run", action="store_true",
                      help="check everything and build the run (data prepared or reused, "
                           "model, optimizer), take no step, write no run outputs")
    mode.add_argument("--prepare-only", action="store_true",
                      help="prepare the data cache only (e.g. once on a disk that cluster "
                           "nodes share) and exit")
    return parser.parse_intermixed_args(argv)  # flags and key=value overrides in any order


def run_mode(args: argparse.Namespace, cfg: Any) -> None:
    """The selected mode: print the config, dry run, prepare only, or train."""
    say = lambda s: print(s, file=sys.stderr)  # noqa: E731
    if args.print_config:
        from bert_ipu.config.provenance import config_sources

        print(config_sources(cfg, args.config, list(args.overrides)))
    elif args.dry_run or args.prepare_only:
        from bert_ipu.train.modes import dry_run, prepare_only

        facts = dry_run(cfg, say) if args.dry_run else prepare_only(cfg, say)
        print(("dry run: " if args.dry_run else "prepared: ")
              + ", ".join(f"{k}={v}" for k, v in facts.items()))
    else:
        from bert_ipu.train.loop import train

        train(cfg, resume_command=resume_command(args.config, list(args.overrides)), log=say)


def launcher(env: Mapping[str, str] | None = None) -> list[str]:
    """How this process was started, as argv: this interpreter (a venv's python, not
    whatever `python` is on PATH), under torchrun with its world size when it is a rank
    of one (a checkpoint refuses another world size)."""
    env = os.environ if env is None else env
    python = sys.executable or "python"
    if "TORCHELASTIC_RUN_ID" not in env and int(env.get("WORLD_SIZE", "1")) <= 1:
        return [python, "-m", "bert_ipu.pretrain"]
    world = int(env.get("WORLD_SIZE", "1"))
    local = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    module = env.get("BERT_IPU_LAUNCHER", "torch.distributed.run")  # bert_ipu.launch sets it
    argv = [python, "-m", module, f"--nproc_per_node={local}"]
    if world == local:
        argv.append("--standalone")
    if world > local:  # several nodes: this node's part of the rendezvous
        argv += [f"--nnodes={world // local}", f"--node_rank={int(env.get('GROUP_RANK', 0))}",
                 f"--master_addr={env.get('MASTER_ADDR', 'localhost')}",
                 f"--master_port={env.get('MASTER_PORT', '29500')}"]
    return argv + ["-m", "bert_ipu.pretrain"]


def resume_command(config: str | None, overrides: list[str],
                   env: Mapping[str, str] | None = None) -> str:
    """This command again (same interpreter and launcher, see `launcher`), with
    `resume_training_from_checkpoint=latest` appended."""
    kept = [o for o in overrides
            if not o.startswith("checkpoint.resume_training_from_checkpoint=")]
    argv = launcher(env) + (["--config", config] if config else [])
    return shlex.join(argv + kept + ["checkpoint.resume_training_from_checkpoint=latest"])


def _user_errors() -> tuple[type[BaseException], ...]:
    from bert_ipu.store.checkpoint import CheckpointError, NonFiniteWeightsError
    from bert_ipu.config import ConfigError
    from bert_ipu.data import DataError
    from bert_ipu.devices import DeviceError
    from bert_ipu.store.runlock import OutputInUseError

    # OSError: the file system refused something (full disk, permissions) outside a
    # checkpoint write; the message names the path.
    return (ConfigError, DataError, DeviceError, CheckpointError, OutputInUseError,
            OSError), (NonFiniteWeightsError,)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module docstring)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stderr)
    from bert_ipu.config import load_config
    from bert_ipu.train.signals import TrainingInterrupted
    from bert_ipu.train.loop import NonFiniteLossError

    user, diverged = _user_errors()
    try:
        run_mode(args, load_config(args.config, list(args.overrides)))
    except TrainingInterrupted as stop:
        if int(os.environ.get("RANK", "0")) == 0:  # one message per job, not per rank
            print(str(stop), file=sys.stderr)
        return stop.exit_code
    except (NonFiniteLossError,) + diverged as exc:
        _error(str(exc))
        return EXIT_DIVERGED
    except user as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted before a checkpoint could be saved (during set-up, or by a "
               "second Ctrl-C)")
        return 130
    return EXIT_OK


def _exit(code: int) -> None:
    """Exit with `code`. A rank of a data-parallel (torchrun) run leaves through os._exit
    once its outputs are closed and the process group is gone: with gloo, the interpreter's
    own teardown intermittently aborted a rank *after* a successful run ("terminate called
    without an active exception", SIGABRT/SIGSEGV), turning a finished run into a failure.
    Everything the run writes is closed and fsynced before this point."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def cli() -> None:
    """Console entry point (`bert-ipu-pretrain`): main() and the exit code."""
    _exit(main())


if __name__ == "__main__":
    cli()
