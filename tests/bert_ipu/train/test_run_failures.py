"""Issue 11: the failures found by attacking the trainer; each test failed before its fix.

Numbers refer to the issue's list: 1 folder in use, 2 resume with other structure,
4 fp16 skipping forever, 5 resume command, 7 incomplete checkpoints, 8 disk full while
writing metrics, 9 corpus edits that keep size and mtime, 10 signals during set-up and
evaluation; and the summary's initial_eval / num_threads.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bert_ipu.pretrain import main, resume_command
from bert_ipu.store import checkpoint as ck
from bert_ipu.train.loop import NonFiniteLossError, TrainerHooks
from bert_ipu.store.runlock import OutputInUseError, RunLock
from bert_ipu.train.signals import SetupInterrupted, StopRequest
from tests.bert_ipu.tiny_run import (  # noqa: F401
    SHORT, error_line, load_metrics, one_thread, run_tiny, tiny_data, tiny_overrides,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ 1: one run per folder
def test_a_second_run_on_a_folder_in_use_is_refused(tiny_data, tmp_path, capsys):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    out.mkdir()
    holder = RunLock(out).acquire()  # a live run of this folder
    try:
        assert main(tiny_overrides(corpus, out, cache, **SHORT)) == 2
        line = error_line(capsys)
        assert f"output_dir {str(out)!r} is in use by a running run (pid {os.getpid()}" in line
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.release()
    assert main(tiny_overrides(corpus, out, cache, **SHORT)) == 0  # not stuck afterwards


def test_a_killed_run_leaves_no_stuck_lock(tmp_path):
    code = ("import sys, time; from bert_ipu.store.runlock import RunLock; "
            f"lock = RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(OutputInUseError, match="in use"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()  # kill -9: no clean-up code runs
        proc.wait()
    RunLock(tmp_path).acquire().release()


# ------------------------------------------------------------------ 2: structure on resume
def test_resume_with_another_structure_names_the_fields_in_one_line(tiny_data, tmp_path, capsys):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    assert main(tiny_overrides(corpus, out, cache, **SHORT)) == 0
    capsys.readouterr()
    argv = tiny_overrides(corpus, out, cache, **{
        **SHORT, "model.hidden_size": 32, "sparsity.sparsity": 0.75, "sparsity.block_size": 4,
        "checkpoint.resume_training_from_checkpoint": "latest"})
    assert main(argv) == 2
    line = error_line(capsys)
    assert "model.hidden_size: checkpoint 64, this run 32" in line
    assert "sparsity.sparsity: checkpoint 0.5, this run 0.75" in line
    assert "sparsity.block_size: checkpoint 8, this run 4" in line
    assert "state_dict" not in line


# ------------------------------------------------------------------ 4: fp16 skipping forever
def test_fp16_static_scale_overflowing_every_step_stops_as_diverged(tiny_data, tmp_path):
    corpus, cache = tiny_data
    hooks = TrainerHooks(loss_multiplier=lambda t: 1e30)  # finite loss, fp16 grads overflow
    with pytest.raises(NonFiniteLossError) as info:
        run_tiny(corpus, tmp_path / "run", cache, hooks=hooks, **{
            **SHORT, "training.training_steps": 8, "training.precision": "fp16",
            "training.max_skipped_steps": 3})
    message = str(info.value)
    assert "skipped 4 times in a row (training.max_skipped_steps=3" in message
    assert "training.auto_loss_scaling=true" in message and "at step 4" in message


def test_fp16_skips_below_the_limit_keep_training(tiny_data, tmp_path):
    corpus, cache = tiny_data
    hooks = TrainerHooks(loss_multiplier=lambda t: 1e30 if t < 3 else 1.0)
    summary = run_tiny(corpus, tmp_path / "run", cache, hooks=hooks, **{
        **SHORT, "training.training_steps": 6, "training.precision": "fp16",
        "training.max_skipped_steps": 3})
    assert summary["skipped_steps"] == 3 and summary["steps"] == 6


# ------------------------------------------------------------------ 5: the resume command
def test_resume_command_uses_this_interpreter():
    cmd = resume_command("c.yaml", ["a=1"], env={})
    assert shlex.split(cmd)[:3] == [sys.executable, "-m", "bert_ipu.pretrain"]


def test_resume_command_under_torchrun_keeps_the_launcher_and_world_size():
    env = {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    argv = shlex.split(resume_command("c.yaml", [], env=env))
    assert argv[:7] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        "--standalone",
                        "-m", "bert_ipu.pretrain"]
    env = {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
           "GROUP_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "1234"}
    argv = shlex.split(resume_command("c.yaml", [], env=env))
    assert argv[3:8] == ["--nproc_per_node=4", "--nnodes=2", "--node_rank=1",
                         "--master_addr=node0", "--master_port=1234"]


# ------------------------------------------------------------------ 7: incomplete checkpoints
FILES = ("model.pt", "trainer.pt", "config.yaml")


def _save(root: Path, step: int, names=FILES) -> Path:
    files = {"model.pt": {"w": torch.ones(2)}, "trainer.pt": {"step": step},
             "config.yaml": "model: {}\n"}
    return ck.save_checkpoint(root, ck.CheckpointId(step), {n: files[n] for n in names})


def test_latest_skips_a_checkpoint_whose_manifest_lacks_a_file(tmp_path, caplog):
    good = _save(tmp_path, 1)
    _save(tmp_path, 2, names=("model.pt", "config.yaml"))  # verifies, but no trainer.pt
    with caplog.at_level(logging.WARNING):
        assert ck.find_latest(tmp_path, FILES) == good
    assert "does not list trainer.pt" in caplog.text
    assert "previous good checkpoint" in caplog.text


def test_a_checkpoint_without_manifest_is_skipped_with_a_warning(tmp_path, caplog):
    good = _save(tmp_path, 1)
    (_save(tmp_path, 2) / ck.MANIFEST).unlink()
    with caplog.at_level(logging.WARNING):
        assert ck.find_latest(tmp_path, FILES) == good
    assert "step_00000002: it has no manifest.json" in caplog.text


# ------------------------------------------------------------------ 8: disk full, metrics
def test_disk_full_while_writing_metrics_names_the_file(tmp_path):
    from bert_ipu.train.metrics import MetricsWriter

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
    writer = MetricsWriter(tmp_path)
    with pytest.raises(OSError) as info:
        writer.log({"step": 1, "loss": 1.0})
    writer.close()
    assert str(info.value) == (f"could not write {tmp_path / 'metrics.jsonl'}: "
                               "No space left on device")


# ------------------------------------------------------------------ 9: corpus edits
def test_an_edit_keeping_size_and_mtime_rebuilds_the_prepared_data(tmp_path):
    from bert_ipu.config import load_config
    from bert_ipu.data.prepare import prepare_data

    corpus = write_corpus(tmp_path / "corpus", documents=8)
    cfg = load_config(None, tiny_overrides(corpus, tmp_path / "out", tmp_path / "cache"))
    first, _ = prepare_data(cfg.data, lambda s: None)
    doc = corpus / "doc000.txt"
    stat = doc.stat()
    text = doc.read_text()
    doc.write_text(text.replace("The", "Teh", 1))  # same size
    os.utime(doc, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert doc.stat().st_size == stat.st_size and doc.stat().st_mtime_ns == stat.st_mtime_ns
    second, _ = prepare_data(cfg.data, lambda s: None)
    assert second != first


# ------------------------------------------------------------------ 10: signals
def test_a_signal_during_set_up_stops_at_once_with_its_exit_code(tiny_data, tmp_path, capsys,
                                                                monkeypatch):
    import bert_ipu.train.build as build

    corpus, cache = tiny_data
    real = build.build_datasets

    def prepare_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of data preparation
        time.sleep(5)
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "build_datasets", prepare_then_signal)
    started = time.perf_counter()
    assert main(tiny_overrides(corpus, tmp_path / "run", cache, **SHORT)) == 143
    assert time.perf_counter() - started < 4
    assert "stopped by SIGTERM during set-up" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
        signal.getsignal(signal.SIGTERM))


def test_set_up_signal_handler_raises_at_once():
    with StopRequest(immediate=True):
        with pytest.raises(SetupInterrupted) as info:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert info.value.exit_code == 130


def test_evaluation_stops_at_the_next_batch_when_asked():
    from bert_ipu.train.evaluate import evaluate

    seen = []

    def batches():
        for i in range(100):
            seen.append(i)
            yield {"i": i}

    model = torch.nn.Linear(1, 1)
    result = evaluate(model, batches(), "fp32", torch.device("cpu"),
                      should_stop=lambda: len(seen) >= 1)
    assert result is None and seen == [0]


def test_sigterm_during_evaluation_saves_without_finishing_it(tiny_data, tmp_path):
    from bert_ipu.train import loop

    corpus, cache = tiny_data
    calls = []
    real = loop.evaluate

    def evaluate_with_signal(model, batches, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the evaluation after step 2
            os.kill(os.getpid(), signal.SIGTERM)
        return real(model, batches, *args, **kwargs)

    loop.evaluate = evaluate_with_signal
    try:
        with pytest.raises(loop.TrainingInterrupted) as info:
            run_tiny(corpus, tmp_path / "run", cache, **{
                **SHORT, "training.training_steps": 6, "logging.eval_steps": 2})
    finally:
        loop.evaluate = real
    assert info.value.exit_code == 143
    assert (tmp_path / "run" / "checkpoints" / "step_00000002").is_dir()
    assert not any("eval_mlm_loss" in r for r in load_metrics(tmp_path / "run") if r["step"] == 2)


# ------------------------------------------------------------------ numbers in the summary
def test_initial_eval_is_null_without_a_step_0_evaluation(tiny_data, tmp_path):
    corpus, cache = tiny_data
    summary = run_tiny(corpus, tmp_path / "run", cache, **{**SHORT, "training.num_threads": 1})
    assert summary["initial_eval"] is None and summary["final_eval"]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["initial_eval"] is None and saved["num_threads"] == 1


def test_initial_eval_is_the_untrained_model(tiny_data, tmp_path):
    corpus, cache = tiny_data
    summary = run_tiny(corpus, tmp_path / "run", cache, **{**SHORT, "logging.eval_steps": 1})
    step0 = [r for r in load_metrics(tmp_path / "run") if r["step"] == 0][0]
    assert summary["initial_eval"]["mlm_loss"] == step0["eval_mlm_loss"]
    assert summary["initial_eval"] != summary["final_eval"]


def test_a_dense_run_saves_only_the_sparsity_fields_it_uses(tmp_path):
    from bert_ipu.config import load_config, save_config

    cfg = load_config(None, ["sparsity.method=dense", "sparsity.sparsity=0", "model.size=tiny"])
    text = save_config(cfg, tmp_path / "config.yaml").read_text()
    assert "block_size" not in text and "n_updates" not in text and "method: dense" in text
    assert load_config(tmp_path / "config.yaml") == cfg
    static = load_config(None, ["sparsity.method=static", "sparsity.sparsity=0.5",
                                "model.size=tiny"])
    text = save_config(static, tmp_path / "static.yaml").read_text()
    assert "n_updates: 0" in text and "block_size: 16" in text
