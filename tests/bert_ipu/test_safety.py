"""Issue 20: nothing destroyed, nothing lost, on export, sweeps, fine-tuning, shared folders
and full disks. Each test failed before its fix (see the issue's numbered list)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from bert_ipu import export as export_cli
from bert_ipu.finetune.cli import main as finetune_main
from bert_ipu.hub import HubError, load_pretrained
from bert_ipu.hub import export as hub_export
from bert_ipu.pretrain import main as pretrain_main
from bert_ipu.sweep.__main__ import main as sweep_main
from bert_ipu.sweep.collect import run_status
from bert_ipu.store import checkpoint as ck
from bert_ipu.store.runlock import RunLock

from tests.bert_ipu.hub.test_export import make_checkpoint
from tests.bert_ipu.finetune.test_finetune import write_task
from tests.bert_ipu.tiny_run import SHORT, error_line, one_thread, tiny_data, tiny_overrides  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder` (what must not change)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """tmp/runs/X: a run folder (checkpoint, metrics, summary, lock file) with a sibling run."""
    (tmp_path / "build").mkdir()
    ckpt = make_checkpoint(tmp_path / "build", "dynamic", 8)
    runs = tmp_path / "runs"
    run = runs / "X"
    shutil.copytree(ckpt.parent.parent, run)
    (run / "metrics.jsonl").write_text('{"step": 5, "loss": 1.0}\n')
    (run / "summary.json").write_text('{"steps": 5}\n')
    (run / ".run.lock").write_text("")
    shutil.copytree(run, runs / "Y")
    return run


# ---------------------------------------------------------------- 1. export destroys data
@pytest.mark.parametrize("target", ["self", "parent", "sibling", "file", "dot", "other"])
def test_export_never_replaces_a_run_its_source_or_a_foreign_folder(run_folder, target, capsys,
                                                                    monkeypatch, tmp_path):
    runs = run_folder.parent
    (tmp_path / "afile").write_text("keep me")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("mine")
    monkeypatch.chdir(other)
    out = {"self": run_folder, "parent": runs, "sibling": runs / "Y", "file": tmp_path / "afile",
           "dot": Path("."), "other": other}[target]
    before = snapshot(tmp_path)
    assert export_cli.main([str(run_folder), str(out), "--overwrite"]) == 2
    line = error_line(capsys)
    assert "OUT_DIR" in line
    assert snapshot(tmp_path) == before


def test_export_overwrites_only_its_own_previous_export(run_folder, tmp_path, capsys):
    out = tmp_path / "hf"
    assert export_cli.main([str(run_folder), str(out)]) == 0
    assert (out / hub_export.MARKER).is_file()
    assert export_cli.main([str(run_folder), str(out)]) == 2          # exists: ask for --overwrite
    assert "--overwrite" in error_line(capsys)
    (out / "extra.txt").write_text("x")
    assert export_cli.main([str(run_folder), str(out), "--overwrite"]) == 0
    assert not (out / "extra.txt").exists() and (out / "model.safetensors").is_file()
    # an export the user has since turned into a run folder is not replaced
    (out / "metrics.jsonl").write_text("{}\n")
    assert export_cli.main([str(run_folder), str(out), "--overwrite"]) == 2
    assert "holds a run" in error_line(capsys)


def test_export_waits_for_no_one_a_second_export_to_the_same_folder_is_refused(run_folder, tmp_path,
                                                                                capsys):
    out = tmp_path / "hf"
    lock = RunLock(tmp_path, f".{out.name}.export.lock").acquire("OUT_DIR", out)
    try:
        assert export_cli.main([str(run_folder), str(out)]) == 2
        assert "in use" in error_line(capsys)
    finally:
        lock.release()
    assert not out.exists()


def test_export_onto_a_full_disk_names_the_file_and_replaces_nothing(run_folder, tmp_path, capsys,
                                                                     monkeypatch):
    out = tmp_path / "hf"
    assert export_cli.main([str(run_folder), str(out)]) == 0
    before = snapshot(out)

    def full(src, tmp, with_sparse):
        (tmp / "model.safetensors").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.safetensors"))

    monkeypatch.setattr(hub_export, "_write", full)
    assert export_cli.main([str(run_folder), str(out), "--overwrite"]) == 2
    line = error_line(capsys)
    assert "model.safetensors" in line and "No space left" in line and "nothing was replaced" in line
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("damage", ["weights", "config", "sparse"])
def test_a_damaged_export_as_source_is_one_line(run_folder, tmp_path, capsys, damage):
    out = tmp_path / "hf"
    assert export_cli.main([str(run_folder), str(out), "--sparse"]) == 0
    if damage == "weights":
        shutil.rmtree(out / "sparse")
        (out / "model.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    elif damage == "config":
        (out / "dynsp_config.yaml").write_bytes(bytes(range(256)))
    else:
        (out / "sparse" / "model.safetensors").write_bytes(b"{not safetensors")
    with pytest.raises(HubError) as info:
        load_pretrained(out)
    assert str(out) in str(info.value) and "\n" not in str(info.value)
    assert export_cli.main([str(out), str(tmp_path / "again")]) == 2
    error_line(capsys)


def test_pretrain_refuses_an_export_dir_that_is_its_run_or_holds_it(tiny_data, tmp_path, capsys):
    corpus, cache = tiny_data
    out = tmp_path / "runs" / "A"
    assert pretrain_main(tiny_overrides(corpus, out, cache, **SHORT)) == 0
    before = snapshot(tmp_path / "runs")
    (tmp_path / "afile").write_text("x")
    for target in (out, out.parent, tmp_path / "afile", out / "checkpoints"):
        code = pretrain_main(tiny_overrides(corpus, out, cache, **SHORT,
                                            **{"checkpoint.export_dir": str(target)}))
        assert code == 2, target
        assert "checkpoint.export_dir" in error_line(capsys)
        assert snapshot(tmp_path / "runs") == before


# ---------------------------------------------------------------- 2. one line, not a traceback
def test_finetune_bad_inputs_are_one_line(tmp_path, capsys):
    exported = tmp_path / "hf"
    (tmp_path / "b").mkdir()
    hub_export.export_folder(load_pretrained(make_checkpoint(tmp_path / "b", "dynamic", 8)), exported)
    task = write_task(tmp_path / "task", 16, 8)
    base = ["--model", str(exported), "--task", str(task), "--epochs", "1", "--batch-size", "8"]
    cases = {
        "max-length": base + ["--max-length", "1000"],
        "epochs inf": base[:-4] + ["--epochs", "inf"],
        "epochs nan": base[:-4] + ["--epochs", "nan"],
        "warmup": base + ["--warmup", "2"],
    }
    for name, argv in cases.items():
        assert finetune_main(argv) == 2, name
        error_line(capsys)
    # a field above csv's 128 KiB default limit is read, not a traceback
    big = tmp_path / "big"
    write_task(big, 16, 8)
    lines = (big / "train.tsv").read_text().splitlines()
    lines[1] = "x " * 70_000 + "cat\t1"
    (big / "train.tsv").write_text("\n".join(lines) + "\n")
    assert finetune_main(["--model", str(exported), "--task", str(big), "--epochs", "0.1",
                          "--max-length", "16"]) == 0
    capsys.readouterr()
    # Latin-1 and binary task files
    for name, content in (("latin", "sentence\tlabel\ncaf\xe9 cat\t1\n".encode("latin-1")),
                          ("binary", bytes(range(256)) * 4)):
        bad = tmp_path / name
        write_task(bad, 16, 8)
        (bad / "train.tsv").write_bytes(content)
        assert finetune_main(["--model", str(exported), "--task", str(bad)]) == 2
        assert "train.tsv" in error_line(capsys)
    # a corrupt model folder
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    assert finetune_main(["--model", str(broken), "--task", str(task), "--max-length", "16"]) == 2
    assert "--model" in error_line(capsys)


def test_finetune_unwritable_output_fails_before_training(tmp_path, capsys):
    exported = tmp_path / "hf"
    (tmp_path / "b").mkdir()
    hub_export.export_folder(load_pretrained(make_checkpoint(tmp_path / "b", "dynamic", 8)), exported)
    task = write_task(tmp_path / "task", 16, 8)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    argv = ["--model", str(exported), "--task", str(task), "--epochs", "1"]
    for output in (blocker / "results.json", tmp_path):   # under a file; a folder
        assert finetune_main(argv + ["--output", str(output)]) == 2
        line = error_line(capsys)
        assert "--output" in line
    assert "finetune: step" not in capsys.readouterr().out   # nothing was trained


def test_finetune_refuses_evaluation_labels_never_seen_in_training(tmp_path, capsys):
    task = write_task(tmp_path / "task", 16, 8)
    dev = (task / "dev.tsv").read_text().splitlines()
    dev[1] = dev[1].rsplit("\t", 1)[0] + "\t7"
    (task / "dev.tsv").write_text("\n".join(dev) + "\n")
    assert finetune_main(["--model", str(tmp_path / "nomodel"), "--task", str(task)]) == 2
    line = error_line(capsys)
    assert "'7'" in line and "never occur" in line


def test_bad_backend_threads_and_sweep_files_are_one_line(tiny_data, tmp_path, capsys):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    assert pretrain_main(tiny_overrides(corpus, out, cache, **SHORT, **{"sparsity.backend": "triton"})) == 2
    assert "sparsity.backend" in error_line(capsys)
    assert pretrain_main(tiny_overrides(corpus, out, cache, **SHORT,
                                        **{"training.num_threads": 100000})) == 2
    assert "training.num_threads" in error_line(capsys)
    binary = tmp_path / "s.yaml"
    binary.write_bytes(bytes(range(256)))
    assert sweep_main([str(binary), "--dry-run"]) == 2
    assert "s.yaml" in error_line(capsys)
    (tmp_path / "rootfile").write_text("x")
    config = tmp_path / "base.yaml"
    config.write_text("model:\n  size: tiny\n")
    sweep = tmp_path / "t.yaml"
    sweep.write_text(f"config: base.yaml\noutput_root: {tmp_path / 'rootfile'}\n")
    assert sweep_main([str(sweep), "--dry-run"]) == 2
    assert "output_root" in error_line(capsys)


# ---------------------------------------------------------------- 3. shared folders
def test_two_runs_sharing_a_checkpoint_folder_cannot_run_at_once(tiny_data, tmp_path, capsys):
    corpus, cache = tiny_data
    shared = tmp_path / "shared_ckpt"
    shared.mkdir()
    lock = RunLock(shared).acquire("checkpoint.checkpoint_output_dir")  # the first run, alive
    try:
        code = pretrain_main(tiny_overrides(corpus, tmp_path / "B", cache, **SHORT,
                                            **{"checkpoint.checkpoint_output_dir": str(shared)}))
        assert code == 2
        assert "checkpoint.checkpoint_output_dir" in error_line(capsys)
    finally:
        lock.release()


def test_sweep_runs_sharing_an_output_dir_or_two_runners_are_refused(tmp_path, capsys):
    config = tmp_path / "base.yaml"
    config.write_text("model:\n  size: tiny\n")
    shared = tmp_path / "s.yaml"
    shared.write_text(f"config: base.yaml\noverrides: [output_dir={tmp_path / 'X'}]\nseeds: [0, 1]\n")
    assert sweep_main([str(shared), "--dry-run"]) == 2
    assert "write the same folder" in error_line(capsys)
    ok = tmp_path / "t.yaml"
    root = tmp_path / "sweep_root"
    ok.write_text(f"config: base.yaml\noutput_root: {root}\nseeds: [0]\n")
    root.mkdir()
    lock = RunLock(root, ".sweep.lock").acquire("the sweep's output_root")  # a runner, alive
    try:
        assert sweep_main([str(ok)]) == 2
        assert "in use" in error_line(capsys)
    finally:
        lock.release()
    assert not (root / "000").exists()   # nothing was started


# ---------------------------------------------------------------- 4. the collector
def test_collector_counts_a_run_finished_only_at_its_configured_step_count():
    config = {"training": {"training_steps": 800}}
    assert run_status({"steps": 800}, {}, config) == "finished"
    assert run_status({"steps": 400}, {"status": "finished"}, config) == "unfinished"   # lengthened
    assert run_status({"steps": 400}, {"status": "interrupted"}, config) == "interrupted"
    assert run_status({}, {}, config) == "unfinished"
    assert run_status({"steps": 3}, {}, {"training": {"training_steps": None}}) == "finished"


# ---------------------------------------------------------------- 5. full disk outside a checkpoint
def test_full_disk_writing_the_vocabulary_names_it_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    from bert_ipu.fsutil import OutputWriteError, write_text_atomic

    real = Path.write_text

    def full(self, *a, **k):
        if self.name.endswith(".tmp"):
            real(self, "partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OutputWriteError) as info:
        write_text_atomic(tmp_path / "vocab.txt", "a\nb\n")
    assert str(tmp_path / "vocab.txt") in str(info.value) and "No space left" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_full_data_cache_disk_names_the_file(tmp_path):
    import numpy as np

    from bert_ipu.data.cache import ArrayWriter
    from bert_ipu.fsutil import OutputWriteError

    writer = ArrayWriter(tmp_path, "tokens", np.int32)
    writer._f.close()
    writer._f = open("/dev/full", "wb")   # every write fails as on a full disk
    with pytest.raises(OutputWriteError) as info:
        writer.append(np.arange(100_000))
    assert "tokens.part" in str(info.value)


# ---------------------------------------------------------------- 6. a run that trained nothing
def test_fp16_overflowing_every_step_never_exits_0(tiny_data, tmp_path, capsys):
    corpus, cache = tiny_data
    code = pretrain_main(tiny_overrides(corpus, tmp_path / "run", cache, **SHORT, **{
        "training.precision": "fp16", "training.auto_loss_scaling": False,
        "training.loss_scaling": 2.0 ** 32, "training.max_skipped_steps": 100}))
    assert code == 3
    assert "nothing was trained" in error_line(capsys)


# ---------------------------------------------------------------- 9. manifest paths
@pytest.mark.parametrize("name", ["../escape.pt", "/etc/passwd", "sub/model.pt", ".."])
def test_a_manifest_naming_a_path_outside_the_checkpoint_is_refused(tmp_path, name):
    path = ck.save_checkpoint(tmp_path / "ckpts", ck.CheckpointId(1), {"config.yaml": "a: 1\n"})
    manifest = json.loads((path / ck.MANIFEST).read_text())
    manifest["files"][name] = {"bytes": 1, "sha256": "0"}
    (path / ck.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ck.ChecksumError, match="not a file name inside"):
        ck.read_manifest(path)


# ---------------------------------------------------------------- 8. SIGTERM during an evaluation
def test_an_evaluation_cut_short_by_a_stop_is_redone_on_resume(tiny_data, tmp_path, one_thread):
    from bert_ipu.train import loop
    from tests.bert_ipu.tiny_run import load_metrics, run_tiny, strip_timing

    corpus, cache = tiny_data
    ref = tmp_path / "ref"
    run_tiny(corpus, ref, cache)
    out = tmp_path / "run"
    real_eval = loop.run_eval
    calls = {"n": 0}

    def stop_during_eval(run):
        calls["n"] += 1
        if run.state.step == 6:       # the periodic evaluation at step 6: a signal lands
            run.stop.request()
            return {}
        return real_eval(run)

    loop.run_eval = stop_during_eval
    try:
        with pytest.raises(loop.TrainingInterrupted):
            run_tiny(corpus, out, cache)
    finally:
        loop.run_eval = real_eval
    run_tiny(corpus, out, cache, **{"checkpoint.resume_training_from_checkpoint": "latest"})
    got, want = strip_timing(load_metrics(out)), strip_timing(load_metrics(ref))
    assert [r for r in got if "eval_mlm_loss" in r] == [r for r in want if "eval_mlm_loss" in r]
    assert got == want


def test_init_from_a_damaged_export_is_one_line(run_folder, tiny_data, tmp_path, capsys):
    corpus, cache = tiny_data
    out = tmp_path / "hf"
    assert export_cli.main([str(run_folder), str(out)]) == 0
    (out / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    code = pretrain_main(tiny_overrides(corpus, tmp_path / "run", cache, **SHORT,
                                        **{"checkpoint.init_from": str(out)}))
    assert code == 2
    line = error_line(capsys)
    assert "checkpoint.init_from" in line and "model.safetensors" in line
