"""Real processes: SIGTERM / SIGINT stop with a checkpoint and a resume command;
SIGKILL during checkpoint writes never leaves a state that `latest` resumes wrongly."""
from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bert_ipu.store import checkpoint as ck
from tests.bert_ipu.tiny_run import (  # noqa: F401
    final_state, load_metrics, strip_timing, tiny_data, tiny_overrides,
)

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bert_ipu.pretrain", *args], cwd=ROOT,
                            env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): "
                                 f"{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def _logged_steps(out: Path) -> int:
    try:
        return sum(1 for line in (out / "metrics.jsonl").read_text().splitlines() if line)
    except FileNotFoundError:
        return 0


def test_sigterm_then_sigint_save_print_resume_and_exit_nonzero(tiny_data, tmp_path):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    args = tiny_overrides(corpus, out, cache, **{
        "training.training_steps": 100000, "checkpoint.checkpoint_steps": 0,
        "logging.eval_steps": 0, "sparsity.n_updates": 1})
    proc = _start(args)
    _wait_for(lambda: _logged_steps(out) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    command = err.split("Resume with:")[1].strip().splitlines()[0]
    assert command.endswith("checkpoint.resume_training_from_checkpoint=latest")
    saved = ck.find_latest(out / "checkpoints")
    stopped_at = ck.CheckpointId.parse(saved.name).step
    assert stopped_at >= 3 and load_metrics(out)[-1]["step"] == stopped_at

    argv = shlex.split(command)
    assert argv[:3] == [sys.executable, "-m", "bert_ipu.pretrain"]  # the interpreter used
    proc = _start(argv[3:])
    _wait_for(lambda: load_metrics(out)[-1]["step"] > stopped_at + 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"continuing from {saved}" in err and "stopped by SIGINT" in err
    steps = [r["step"] for r in load_metrics(out)]
    assert steps == list(range(1, len(steps) + 1))  # no gap, no repeat across the resume


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_then_resume_is_exact(tiny_data, tmp_path):
    corpus, cache = tiny_data
    settings = {"training.training_steps": 14, "checkpoint.checkpoint_steps": 1,
                "checkpoint.keep_last": 3, "logging.eval_steps": 5}
    reference = tmp_path / "reference"
    proc = _start(tiny_overrides(corpus, reference, cache, **settings))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()

    out = tmp_path / "chaos"
    ckpts = out / "checkpoints"
    args = tiny_overrides(corpus, out, cache, **settings,
                          **{"checkpoint.resume_training_from_checkpoint": "latest"})
    slow = {**ENV, ck.WRITE_DELAY_ENV: "0.05"}
    rng = random.Random(7)
    torn = 0
    for _ in range(4):
        proc = _start(args, slow)
        _wait_for(lambda: any(ckpts.glob(".tmp-*")), proc)  # a checkpoint write is under way
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait(timeout=60)
        torn += any(ckpts.glob(".tmp-*"))  # killed mid-write: a partial folder is left
        latest = ck.find_latest(ckpts)  # never raises: every finished folder verifies
        for _, path in ck.list_checkpoints(ckpts):
            ck.verify_checkpoint(path)
        assert latest is not None or not ck.list_checkpoints(ckpts)
    assert torn >= 2, "the kills should land in the middle of checkpoint writes"
    proc = _start(args)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert not list(ckpts.glob(".tmp-*"))  # stale partial folders are cleaned up
    assert strip_timing(load_metrics(out)) == strip_timing(load_metrics(reference))
    want, got = final_state(reference), final_state(out)
    assert all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_train_and_resume_exactly(tiny_data, tmp_path):
    """DDP over gloo: rank 0 writes, patterns are verified across ranks, resume is exact."""
    import shutil

    import yaml

    from bert_ipu.schema import apply_overrides

    corpus, cache = tiny_data

    def launch(out, *extra):
        raw = apply_overrides({}, tiny_overrides(corpus, out, cache, **{
            "training.training_steps": 8, "checkpoint.checkpoint_steps": 4}))
        config = tmp_path / f"{out.name}.yaml"
        config.write_text(yaml.safe_dump(raw))
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             "-m", "bert_ipu.pretrain", "--config", str(config), *extra],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    continuous, resumed = tmp_path / "continuous", tmp_path / "resumed"
    launch(continuous)
    launch(resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000008")  # as if killed after step 4
    proc = launch(resumed, "checkpoint.resume_training_from_checkpoint=latest")
    assert proc.stderr.count("resume: continuing from") == 1  # only rank 0 speaks
    want, got = final_state(continuous), final_state(resumed)
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert strip_timing(load_metrics(resumed)) == strip_timing(load_metrics(continuous))


def test_stop_request_sets_a_flag_and_a_second_ctrl_c_raises():
    from bert_ipu.train.signals import StopRequest, TrainingInterrupted

    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is before
    err = TrainingInterrupted(signal.SIGINT, "/x/step_00000003", "python -m bert_ipu.pretrain")
    assert err.exit_code == 130 and "Resume with:\n  python -m bert_ipu.pretrain" in str(err)


@pytest.mark.slow
def test_sigterm_to_the_launcher_ends_the_job_with_143(tiny_data, tmp_path):
    """Issue 11, failure 6: under plain torchrun the agent exits 1 with a traceback after
    its ranks saved; `bert_ipu.launch` ends the job with 143 and one message."""
    import yaml

    from bert_ipu.schema import apply_overrides

    corpus, cache = tiny_data
    out = tmp_path / "run"
    raw = apply_overrides({}, tiny_overrides(corpus, out, cache, **{
        "training.training_steps": 400, "checkpoint.checkpoint_steps": 0,
        "logging.eval_steps": 0}))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bert_ipu.launch", "--standalone", "--nproc_per_node=2",
         "-m", "bert_ipu.pretrain", "--config", str(config)],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _logged_steps(out) >= 3, proc, timeout=180)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and err.count("stopped by SIGTERM; checkpoint saved") == 1
    resume = err.split("Resume with:\n", 1)[1].splitlines()[0].strip()
    assert shlex.split(resume)[:5] == [sys.executable, "-m", "bert_ipu.launch",
                                       "--nproc_per_node=2", "--standalone"]
    assert ck.find_latest(out / "checkpoints") is not None
