"""Issue 20: the command lines attacked with generated arguments (hypothesis).

For pretrain (config checks: --print-config, and --config files of every kind), export,
finetune and sweep (--dry-run): every command line must end with exit code 0 or 2, a
code-2 exit with exactly one `error: ...` line and never a traceback, and no file that
existed before may be changed or removed, except in `scratch/`, where outputs go (a new
folder a command creates is its own output). Each hostile choice is tried alone in an
otherwise valid command (exhaustive), then hypothesis generates combinations. `make test` runs a bounded number of examples
per command; the `slow` variants (make test-slow) run many more.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bert_ipu import export as export_cli
from bert_ipu.finetune.cli import main as finetune_main
from bert_ipu.hub import load_pretrained
from bert_ipu.hub.export import export_folder
from bert_ipu.pretrain import main as pretrain_main
from bert_ipu.sweep.__main__ import main as sweep_main

from tests.bert_ipu.hub.test_export import make_checkpoint
from tests.bert_ipu.finetune.test_finetune import write_task
from tests.bert_ipu.tiny_run import one_thread  # noqa: F401  (fixture)

FAST, SLOW = 12, 150   # examples per command: make test / make test-slow
CODES: dict = {}   # (command's main, exit code) -> examples: success paths must be reached too

HOSTILE = ["0", "-1", "1", "3", "0.5", "1e309", "-1e309", "inf", "-inf", "nan", "1e-320",
           "99999999999999999999", "", "null", "[]", "[1, 2]", "{a: 1}", "true", "yes", "'",
           '"', "\\", "../..", "/", ".", "~", "a" * 300, "\u00e9\u4e2d\U0001f642", "x=y",
           "--overwrite", "-h2"]
CONFIG_KEYS = ["training.learning_rate", "training.training_steps", "training.micro_batch_size",
               "training.num_threads", "training.precision", "training.device", "training.seed",
               "training.epochs", "training.loss_scaling", "model.size", "model.hidden_size",
               "model.num_attention_heads", "sparsity.sparsity", "sparsity.block_size",
               "sparsity.n_updates", "sparsity.backend", "sparsity.method", "data.vocab_file",
               "data.sequence_length", "data.mask_tokens", "output_dir",
               "checkpoint.export_dir", "checkpoint.resume_training_from_checkpoint",
               "checkpoint.checkpoint_output_dir", "logging.log_steps", "nonsense.key", "name"]


def _snapshot(folder: Path, skip: Path) -> dict[str, str]:
    """Hash of every file under `folder` except in `skip` and in a previous export (which
    `export --overwrite` may replace: it holds the export marker)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and skip not in p.parents and not any(
                (a / ".dynsp-export").is_file() for a in p.parents if folder in a.parents):
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Folders and files the generated commands point at: a run (checkpoint, metrics,
    lock), an export, a task, a sweep, binary / empty / garbage files. `scratch/` is the
    only place a command may write (its outputs)."""
    root = tmp_path_factory.mktemp("world")
    (root / "build").mkdir()
    ckpt = make_checkpoint(root / "build", "dynamic", 8)
    run = root / "runs" / "X"
    shutil.copytree(ckpt.parent.parent, run)
    (run / "metrics.jsonl").write_text('{"step": 5}\n')
    (run / ".run.lock").write_text("")
    scratch = root / "scratch"
    scratch.mkdir()
    export_folder(load_pretrained(run), scratch / "hf", with_sparse=True)
    task = write_task(root / "task", 16, 8)
    (root / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (root / "empty.txt").write_text("")
    (root / "latin1.yaml").write_bytes("model:\n  size: caf\xe9\n".encode("latin-1"))
    (root / "garbage.yaml").write_text("model: [unclosed\n  - : :\n")
    (scratch / "emptydir").mkdir()   # an empty folder the user names may receive an output
    (root / "base.yaml").write_text("model:\n  size: tiny\nsparsity:\n  method: dynamic\n")
    (root / "sweep.yaml").write_text(f"config: base.yaml\noutput_root: {scratch / 'sweep'}\n"
                                     "grid:\n  sparsity.sparsity: [0.5, 0.9]\n")
    (root / "badsweep.yaml").write_text("config: base.yaml\nruns: []\nseeds: [1, 1]\n")
    return {"root": root, "run": run, "parent": run.parent, "ckpt": run / "checkpoints" / ckpt.name,
            "export": scratch / "hf", "task": task, "binary": root / "binary.bin",
            "empty": root / "empty.txt", "latin1": root / "latin1.yaml",
            "garbage": root / "garbage.yaml", "emptydir": scratch / "emptydir",
            "sweep": root / "sweep.yaml", "badsweep": root / "badsweep.yaml",
            "missing": root / "does" / "not" / "exist", "scratch": scratch}


def _paths(world: dict[str, Path]) -> st.SearchStrategy[str]:
    fixed = [str(p) for k, p in world.items() if k != "root"]
    fresh = st.integers(0, 10 ** 6).map(lambda i: str(world["scratch"] / f"out{i}"))
    return st.one_of(st.sampled_from(fixed), fresh, st.just("."), st.sampled_from(HOSTILE))


def _check(world: dict[str, Path], main: Callable[[Sequence[str]], int], argv: list[str]) -> None:
    root = world["root"]
    before = _snapshot(root, world["scratch"])
    here = sorted(os.listdir("."))
    err = io.StringIO()
    # relative paths (".", "1e309", ...) resolve inside scratch/, never in the checkout
    with contextlib.chdir(world["scratch"]), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse (usage errors, --help)
            code = exc.code if isinstance(exc.code, int) else 2
    text = err.getvalue()
    assert "Traceback" not in text, (argv, text)
    assert code in (0, 2), (argv, code, text)
    if code == 2:
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, (argv, text)
    after = _snapshot(root, world["scratch"])
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, (argv, changed)          # nothing that existed was changed or removed
    assert sorted(os.listdir(".")) == here, argv  # nothing written where pytest runs
    CODES[(main, code)] = CODES.get((main, code), 0) + 1


def _pretrain_args(world: dict[str, Path]) -> st.SearchStrategy[list[str]]:
    value = st.one_of(st.sampled_from(HOSTILE), _paths(world), st.integers(-10 ** 12, 10 ** 12).map(str),
                      st.floats(allow_nan=True, allow_infinity=True).map(repr))
    override = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(CONFIG_KEYS), value)
    config = st.one_of(st.just([]), st.builds(lambda p: ["--config", p], st.one_of(
        st.sampled_from([str(world[k]) for k in ("binary", "empty", "latin1", "garbage", "emptydir",
                                                 "missing", "base.yaml" if False else "sweep")]),
        _paths(world))))
    overrides = st.one_of(st.lists(override, min_size=1, max_size=1), st.lists(override, max_size=4))
    return st.builds(lambda c, o: ["--print-config"] + c + o, config, overrides)


def _export_args(world: dict[str, Path]) -> st.SearchStrategy[list[str]]:
    flags = st.lists(st.sampled_from(["--sparse", "--overwrite"]), max_size=2, unique=True)
    return st.builds(lambda a, b, f: [a, b] + f, _paths(world), _paths(world), flags)


FINETUNE_VALUES = {
    "--epochs": ["0.1", "0", "-1", "inf", "nan", "x"],
    "--max-length": ["8", "0", "-3", "513", "100000", "1.5"],
    "--batch-size": ["4", "0", "-1", "1e3"],
    "--learning-rate": ["1e-3", "0", "nan", "-1", "inf"],
    "--warmup": ["0.1", "2", "-1", "nan"],
    "--weight-decay": ["0", "-1", "inf"],
    "--eval-steps": ["1", "-1", "0"],
    "--seed": ["-1", "99999999999999999999"],
    "--label-column": ["label", "sentence", "zz", ""],
    "--text-columns": ["sentence", "a,b,c", "", "label"],
}
FINETUNE_PATHS = ("--output", "--train", "--eval")
FINETUNE_FLAGS = ("--keep-sparsity", "--random-init", "--no-header")


def _finetune_args(world: dict[str, Path]) -> st.SearchStrategy[list[str]]:
    option = st.one_of(
        st.builds(lambda k, v: [k, v], st.sampled_from(list(FINETUNE_VALUES)),
                  st.sampled_from(sorted({v for vs in FINETUNE_VALUES.values() for v in vs}))),
        st.builds(lambda k, p: [k, p], st.sampled_from(FINETUNE_PATHS), _paths(world)),
        st.sampled_from([[f] for f in FINETUNE_FLAGS]),
    )
    # mostly one hostile choice in an otherwise valid command (so that each check is
    # reached), sometimes several at once
    model = st.one_of(*[st.just(str(world["export"]))] * 3, _paths(world))
    task = st.one_of(*[st.just(str(world["task"]))] * 3, _paths(world))
    options = st.one_of(st.lists(option, min_size=1, max_size=1), st.lists(option, max_size=3))
    return st.builds(lambda m, t, opts: ["--model", m, "--task", t, "--epochs", "0.2", "--max-length", "16"]
                     + [x for o in opts for x in o], model, task, options)


def _sweep_args(world: dict[str, Path]) -> st.SearchStrategy[list[str]]:
    sweep = st.one_of(st.sampled_from([str(world[k]) for k in ("sweep", "badsweep", "binary", "empty",
                                                              "garbage", "latin1", "emptydir", "missing")]),
                      _paths(world))
    jobs = st.one_of(st.just([]), st.builds(lambda v: ["--jobs", v], st.sampled_from(["1", "0", "-2", "x"])))
    return st.builds(lambda s, j: [s, "--dry-run"] + j, sweep, jobs)


def _fixed_paths(world: dict[str, Path]) -> list[str]:
    return [str(p) for k, p in world.items() if k != "root"] + [".", str(world["scratch"] / "new")]


def single_faults(world: dict[str, Path], name: str) -> list[list[str]]:
    """Every command line that is valid but for one hostile choice (exhaustive)."""
    paths = _fixed_paths(world)
    if name == "pretrain":
        return ([["--print-config", f"{k}={v}"] for k in CONFIG_KEYS for v in HOSTILE + paths]
                + [["--print-config", "--config", p] for p in paths])
    if name == "export":
        flags = [[], ["--overwrite"], ["--sparse", "--overwrite"]]
        return ([[str(world["run"]), p] + f for p in paths for f in flags]
                + [[p, str(world["scratch"] / "fresh")] for p in paths])
    if name == "finetune":
        base = ["--model", str(world["export"]), "--task", str(world["task"]), "--epochs", "0.2",
                "--max-length", "16"]
        return ([base + [k, v] for k, vs in FINETUNE_VALUES.items() for v in vs]
                + [base + [k, p] for k in FINETUNE_PATHS for p in paths]
                + [base + [f] for f in FINETUNE_FLAGS]
                + [["--model", p, "--task", str(world["task"]), "--max-length", "16"] for p in paths]
                + [["--model", str(world["export"]), "--task", p, "--max-length", "16"] for p in paths])
    return ([[p, "--dry-run"] for p in paths]
            + [[str(world["sweep"]), "--dry-run", "--jobs", v] for v in ("0", "-2", "x", "1")])


COMMANDS = {"pretrain": (pretrain_main, _pretrain_args), "export": (export_cli.main, _export_args),
            "finetune": (finetune_main, _finetune_args), "sweep": (sweep_main, _sweep_args)}


def _fuzz(world: dict[str, Path], name: str, examples: int) -> None:
    main, args = COMMANDS[name]

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(args(world))
    def run(argv: list[str]) -> None:
        _check(world, main, argv)

    run()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_cli_single_faults(world, name, one_thread) -> None:
    """Each hostile choice alone in an otherwise valid command line."""
    main = COMMANDS[name][0]
    before = {c: CODES.get((main, c), 0) for c in (0, 2)}
    for argv in single_faults(world, name):
        _check(world, main, argv)
    # both the refusals and the successful paths were exercised
    assert all(CODES.get((main, c), 0) > before[c] for c in (0, 2)), CODES


@pytest.mark.parametrize("name", list(COMMANDS))
def test_cli_fuzz(world, name, one_thread) -> None:
    """Generated combinations (several hostile choices at once)."""
    _fuzz(world, name, FAST)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_cli_fuzz_long(world, name, one_thread) -> None:
    _fuzz(world, name, SLOW)

