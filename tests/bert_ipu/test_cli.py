"""`python -m bert_ipu.pretrain`: outputs, exit codes, one-line errors."""
from __future__ import annotations

import errno
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bert_ipu.store import checkpoint as ck
from bert_ipu.pretrain import main, resume_command
from tests.bert_ipu.tiny_run import (  # noqa: F401
    load_metrics, one_thread, strip_timing, tiny_data, tiny_overrides,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_end_to_end_writes_every_output(tiny_data, tmp_path, capsys):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    assert main(tiny_overrides(corpus, out, cache, **{"training.training_steps": 4})) == 0
    assert {p.name for p in out.iterdir()} >= {
        "config.yaml", "metrics.jsonl", "eval.json", "summary.json", "checkpoints"}
    assert set(json.loads((out / "eval.json").read_text())) >= {
        "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"}
    assert load_metrics(out)[-1]["step"] == 4
    assert ck.find_latest(out / "checkpoints").name == "step_00000004"
    assert "run summary" in capsys.readouterr().out


def test_unknown_key_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([f"output_dir={tmp_path}", "training.learnig_rate=1"]) == 2
    assert "training.learnig_rate" in _error_line(capsys)


def test_bad_config_file_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    assert main(["--config", str(bad)]) == 2
    assert "bad.yaml" in _error_line(capsys)


def test_unwritable_output_dir_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([f"output_dir={blocker / 'run'}", "data.source=files",
                 "data.input_files=[/nonexistent/*.txt]"]) == 2
    assert "output_dir" in (line := _error_line(capsys)) and "not writable" in line


def test_missing_corpus_is_named(tmp_path, capsys):
    assert main([f"output_dir={tmp_path / 'run'}", "data.source=files",
                 f"data.input_files=[{tmp_path}/nothing/*.txt]",
                 f"data.cache_dir={tmp_path / 'cache'}"]) == 2
    assert "nothing" in _error_line(capsys)


def test_corrupt_checkpoint_path_is_named(tiny_data, tmp_path, capsys):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    args = tiny_overrides(corpus, out, cache, **{"training.training_steps": 4,
                                                  "checkpoint.checkpoint_steps": 2})
    assert main(args) == 0
    target = out / "checkpoints" / "step_00000004" / "optimizer.pt"
    target.write_bytes(target.read_bytes()[:100])
    capsys.readouterr()
    resume = f"checkpoint.resume_training_from_checkpoint={target.parent}"
    assert main(args + [resume]) == 2
    line = _error_line(capsys)
    assert "optimizer.pt" in line and "truncated" in line


def test_latest_falls_back_to_the_previous_good_checkpoint(tiny_data, tmp_path, caplog):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    args = tiny_overrides(corpus, out, cache, **{"training.training_steps": 6,
                                                  "checkpoint.checkpoint_steps": 2})
    assert main(args) == 0
    reference = load_metrics(out)
    bad = out / "checkpoints" / "step_00000006" / "model.pt"
    bad.write_bytes(b"\0" + bad.read_bytes()[1:])
    assert main(args + ["checkpoint.resume_training_from_checkpoint=latest"]) == 0
    assert "model.pt" in caplog.text and "previous good checkpoint" in caplog.text
    assert strip_timing(load_metrics(out)) == strip_timing(reference)  # steps 5-6 redone
    ck.verify_checkpoint(out / "checkpoints" / "step_00000006")  # rewritten, good again


def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_earlier(tiny_data, tmp_path,
                                                                     capsys, monkeypatch):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    real_write, calls = ck._write_bytes, []

    def full_disk_on_second_checkpoint(path, data):
        calls.append(path)
        if "step_00000004" in str(path.parent) and path.name == "optimizer.pt":
            real_write(path, data[: len(data) // 3])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(ck, "_write_bytes", full_disk_on_second_checkpoint)
    args = tiny_overrides(corpus, out, cache, **{"training.training_steps": 6,
                                                  "checkpoint.checkpoint_steps": 2})
    assert main(args) == 2
    line = _error_line(capsys)
    assert "no space left on device" in line and "step_00000004" in line
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
    ck.verify_checkpoint(out / "checkpoints" / "step_00000002")
    monkeypatch.undo()  # space again: `latest` continues from the intact checkpoint
    assert main(args + ["checkpoint.resume_training_from_checkpoint=latest"]) == 0
    assert [r["step"] for r in load_metrics(out) if r["step"] > 0] == [1, 2, 3, 4, 5, 6]
    assert ck.find_latest(out / "checkpoints").name == "step_00000006"


def test_resume_command_replaces_an_earlier_resume_override():
    cmd = resume_command("configs/demo.yaml", ["a.b=1", "checkpoint.resume_training_from_checkpoint=x"],
                         env={})
    assert cmd == (f"{shlex.quote(sys.executable)} -m bert_ipu.pretrain --config configs/demo.yaml "
                   "a.b=1 checkpoint.resume_training_from_checkpoint=latest")


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bert_ipu.pretrain", "--config", str(tmp_path / "missing.yaml")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "missing.yaml" in proc.stderr


def test_fresh_start_over_an_earlier_run_archives_it(tiny_data, tmp_path, caplog):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    args = tiny_overrides(corpus, out, cache, **{"training.training_steps": 2,
                                                  "sparsity.n_updates": 1})
    assert main(args) == 0
    assert main(args) == 0
    archived = list((out / "checkpoints").glob("previous-*"))
    assert len(archived) == 1 and "moved them to" in caplog.text
    assert {p.name for p in archived[0].iterdir()} == {
        "step_00000002", "metrics.jsonl", "dynsp_updates.jsonl", "dynsp_layers.jsonl",
        "config.yaml", "eval.json", "summary.json", "vocab.txt"}   # nothing left to truncate
    assert ck.find_latest(out / "checkpoints").name == "step_00000002"
    assert [r["step"] for r in load_metrics(out)] == [0, 1, 2]


def test_divergence_exits_3_with_one_line_and_finite_checkpoints(tiny_data, tmp_path, capsys,
                                                                  monkeypatch):
    import dataclasses
    import math

    import torch

    from bert_ipu.train import loop as trainer

    @dataclasses.dataclass
    class NaNFromStep3(trainer.TrainerHooks):
        loss_multiplier: object = lambda t: math.nan if t >= 3 else 1.0

    monkeypatch.setattr(trainer, "TrainerHooks", NaNFromStep3)
    corpus, cache = tiny_data
    out = tmp_path / "run"
    assert main(tiny_overrides(corpus, out, cache, **{
        "training.max_nonfinite_steps": 2, "checkpoint.checkpoint_steps": 2,
        "training.training_steps": 10, "sparsity.n_updates": 1})) == 3
    line = _error_line(capsys)
    assert "NaN/Inf for 3 consecutive steps (training.max_nonfinite_steps=2)" in line
    assert "last checkpoint: step_00000004" in line
    for _, path in ck.list_checkpoints(out / "checkpoints"):
        model = ck.load_checkpoint(path)["model.pt"]
        assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


def test_flags_and_overrides_in_any_order(capsys):
    """Issue 22: an override after a flag was 'unrecognized arguments'."""
    assert main(["training.seed=3", "--print-config", "model.size=tiny", "--config",
                 str(ROOT / "configs" / "demo.yaml"), "training.training_steps=5"]) == 0
    out = capsys.readouterr().out
    assert 'training.seed: 3  # command line' in out and 'model.size: "tiny"  # command line' in out
    # the rule between epochs and training_steps is printed
    assert "training.epochs: 1.0  # default; not used: training.training_steps is set" in out


def test_too_many_updates_for_a_short_run_names_the_keys_and_the_limit(capsys):
    """Issue 22: 10 steps vs 40 updates was refused with a tangled message."""
    assert main(["--config", str(ROOT / "configs" / "demo.yaml"), "--dry-run",
                 "training.training_steps=10"]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: sparsity.n_updates: expected at most 10 pattern updates in a run of "
                           "10 training steps")
    assert "lower sparsity.n_updates or raise the run's training steps, got 40" in line
