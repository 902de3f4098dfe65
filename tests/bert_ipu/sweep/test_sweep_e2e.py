"""Issue 9, end to end (slow, minutes): the sweep runner trains real runs in child
processes, records a failure and carries on, skips finished runs, resumes from a
checkpoint, and the collector turns the folders into tables and figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bert_ipu.tiny_run import load_metrics, tiny_overrides, tiny_data  # noqa: F401

ROOT = Path(__file__).resolve().parents[3]


def sweep_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bert_ipu.sweep", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                          text=True, timeout=1500)


def write_tiny_sweep(path: Path, corpus: Path, cache: Path, steps: int) -> Path:
    common = [o for o in tiny_overrides(corpus, path.parent / "unused", cache)
              if not o.startswith(("name=", "output_dir=", "training.training_steps="))]
    missing = json.dumps([str(path.parent / "no_such_corpus" / "*.txt")])
    path.write_text(
        f"config: {ROOT / 'configs' / 'tiny_dense.yaml'}\noutput_root: {path.parent / 'out'}\n"
        f"overrides: {json.dumps(common + [f'training.training_steps={steps}'])}\n"
        f"runs:\n  - [sparsity.sparsity=0.5]\n  - ['data.input_files={missing}']\n")
    return path


@pytest.mark.slow
def test_runner_carries_on_after_a_failure_skips_done_and_resumes(tmp_path, tiny_data):
    from bert_ipu.sweep.spec import expand_sweep
    from bert_ipu.train.loop import TrainerHooks, train
    from bert_ipu.train.signals import TrainingInterrupted

    corpus, cache = tiny_data
    sweep = write_tiny_sweep(tmp_path / "tiny.yaml", corpus, cache, steps=12)
    good, bad = tmp_path / "out" / "000", tmp_path / "out" / "001"
    with pytest.raises(TrainingInterrupted):  # stopped as by SIGTERM after step 6
        train(expand_sweep(sweep)[0].config, hooks=TrainerHooks(stop_at=(6, 0)), log=lambda s: None)
    assert "000  resume" in sweep_cli(str(sweep), "--dry-run").stderr
    first = sweep_cli(str(sweep), "--no-collect")
    assert first.returncode == 1, first.stderr[-3000:]
    assert "[000] resume: sparsity.sparsity=0.5" in first.stderr
    assert json.loads((good / "sweep_run.json").read_text())["status"] == "finished"
    steps = [r["step"] for r in load_metrics(good) if "loss" in r]
    assert steps == list(range(1, 13))  # resumed: nothing lost, nothing repeated
    record = json.loads((bad / "sweep_run.json").read_text())
    assert record["status"] == "failed" and record["exit_code"] == 2
    assert "no_such_corpus" in (bad / "sweep.log").read_text()
    assert "1 of 2 runs did not finish: 001" in first.stderr
    second = sweep_cli(str(sweep))  # the finished run is skipped, the failed one retried
    assert second.returncode == 1 and "[000]" not in second.stderr
    assert "[001] failed (exit 2" in second.stderr
    md = (tmp_path / "out" / "results" / "results.md").read_text()
    assert f"{bad} (failed)" in md and "| 42 |" in md  # one finished seed


@pytest.mark.slow
def test_two_point_sweep_on_the_builtin_corpus_runner_collector_figures(tmp_path):
    """random vs gradient (RigL) regrowth, BERT-Mini on the built-in corpus (no files)."""
    sweep = tmp_path / "builtin.yaml"
    sweep.write_text(
        f"config: {ROOT / 'configs' / 'demo.yaml'}\noutput_root: {tmp_path / 'out'}\n"
        f"overrides: [training.training_steps=16, training.micro_batch_size=8,\n"
        f"  data.sequence_length=64, data.mask_tokens=10, sparsity.n_updates=4,\n"
        f"  logging.log_steps=4, logging.eval_steps=8, logging.eval_batches=4,\n"
        f"  checkpoint.checkpoint_steps=8, logging.progress_bar=false,\n"
        f"  data.cache_dir={tmp_path / 'cache'}]\n"
        "grid:\n  sparsity.regrow: [random, gradient]\n")
    proc = sweep_cli(str(sweep), "--jobs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = tmp_path / "out" / "results"
    for name in ("runs.csv", "points.csv", "results.md", "pareto.png", "curves.png",
                 "dof_curves.png", "pattern.png"):
        assert (results / name).stat().st_size > 0, name
    md = (results / "results.md").read_text()
    assert "| sparsity.regrow |" in md and "| random |" in md and "| gradient |" in md
    rows = (results / "runs.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",finished," in r for r in rows[1:])
    summary = json.loads((tmp_path / "out" / "000" / "summary.json").read_text())
    assert f"{summary['total_flops']}" in rows[1]  # the run summary's FLOPs, one definition
