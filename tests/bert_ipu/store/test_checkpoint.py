"""Checkpoint folders: atomic writes, manifest checksums, keep-last-k, `latest`."""
from __future__ import annotations

import errno
import json
import logging
import os
import sys

import pytest
import torch

from bert_ipu.store import checkpoint as ck
from bert_ipu.store.checkpoint import CheckpointError, CheckpointId, ChecksumError


def _files(step: int) -> dict:
    torch.manual_seed(step)
    return {
        "model.pt": {"w": torch.randn(4, 4), "rows": torch.arange(4)},
        "trainer.pt": {"step": step, "rng": torch.get_rng_state()},
        "config.yaml": "model:\n  hidden_size: 64\n",
    }


def test_save_writes_every_file_with_a_verifying_manifest(tmp_path):
    path = ck.save_checkpoint(tmp_path, CheckpointId(7), _files(7))
    assert path.name == "step_00000007"
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.pt", "trainer.pt", "config.yaml"}
    assert manifest["step"] == 7 and manifest["micro_step"] == 0
    loaded = ck.load_checkpoint(path)
    torch.testing.assert_close(loaded["model.pt"]["w"], _files(7)["model.pt"]["w"])
    assert loaded["trainer.pt"]["step"] == 7
    assert loaded["config.yaml"].startswith("model:")
    assert not list(tmp_path.glob(".tmp-*"))


def test_micro_step_names_sort_after_their_step():
    ids = [CheckpointId(3, 2), CheckpointId(4), CheckpointId(3), CheckpointId(10)]
    assert [c.name for c in sorted(ids)] == [
        "step_00000003", "step_00000003_m0002", "step_00000004", "step_00000010"]
    assert CheckpointId.parse("step_00000003_m0002") == CheckpointId(3, 2)
    assert CheckpointId.parse(".tmp-step_00000003-1-ab") is None


def test_keep_last_k_deletes_only_older_ones(tmp_path):
    for step in (1, 2, 3, 4):
        ck.save_checkpoint(tmp_path, CheckpointId(step), _files(step), keep_last=2)
    assert [p.name for _, p in ck.list_checkpoints(tmp_path)] == [
        "step_00000003", "step_00000004"]


def test_keep_last_does_not_count_newer_checkpoints_from_another_timeline(tmp_path):
    for step in (1, 2, 5):
        ck.save_checkpoint(tmp_path, CheckpointId(step), _files(step))
    ck.save_checkpoint(tmp_path, CheckpointId(3), _files(3), keep_last=2)
    assert [p.name for _, p in ck.list_checkpoints(tmp_path)] == [
        "step_00000002", "step_00000003", "step_00000005"]


def test_resaving_a_step_replaces_the_old_folder(tmp_path):
    ck.save_checkpoint(tmp_path, CheckpointId(2), _files(2))
    (tmp_path / "step_00000002" / "model.pt").write_bytes(b"garbage")
    ck.save_checkpoint(tmp_path, CheckpointId(2), _files(2))
    ck.verify_checkpoint(tmp_path / "step_00000002")
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000002"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_file_raises_checksum_error_naming_it(tmp_path, damage):
    path = ck.save_checkpoint(tmp_path, CheckpointId(1), _files(1))
    target = path / "model.pt"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    else:
        target.unlink()
    with pytest.raises(ChecksumError, match="model.pt"):
        ck.load_checkpoint(path)
    with pytest.raises(ChecksumError, match="model.pt"):
        ck.resolve_resume(str(path), tmp_path)


def test_corrupt_manifest_is_named(tmp_path):
    path = ck.save_checkpoint(tmp_path, CheckpointId(1), _files(1))
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ChecksumError, match="manifest.json"):
        ck.verify_checkpoint(path)


def test_latest_falls_back_to_previous_good_checkpoint_with_warning(tmp_path, caplog):
    for step in (1, 2, 3):
        ck.save_checkpoint(tmp_path, CheckpointId(step), _files(step))
    bad = tmp_path / "step_00000003" / "trainer.pt"
    bad.write_bytes(bad.read_bytes()[:-1])
    with caplog.at_level(logging.WARNING, logger="bert_ipu.store.checkpoint"):
        assert ck.resolve_resume("latest", tmp_path) == tmp_path / "step_00000002"
    assert "trainer.pt" in caplog.text and "previous good checkpoint" in caplog.text


def test_latest_ignores_unfinished_temporaries_and_empty_roots(tmp_path):
    assert ck.resolve_resume("latest", tmp_path / "nothing") is None
    ck.save_checkpoint(tmp_path, CheckpointId(1), _files(1))
    (tmp_path / ".tmp-step_00000002-1-x").mkdir()
    (tmp_path / "step_00000003").mkdir()  # renamed but no manifest: never trusted
    assert ck.find_latest(tmp_path) == tmp_path / "step_00000001"


def test_latest_with_only_corrupt_checkpoints_is_an_error(tmp_path):
    path = ck.save_checkpoint(tmp_path, CheckpointId(1), _files(1))
    (path / "model.pt").write_bytes(b"")
    with pytest.raises(ChecksumError, match="no valid checkpoint"):
        ck.find_latest(tmp_path)


def test_resume_path_that_is_not_a_folder_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="resume_training_from_checkpoint.*nope"):
        ck.resolve_resume(str(tmp_path / "nope"), tmp_path)


def test_disk_full_mid_write_removes_temporary_and_keeps_earlier(tmp_path, monkeypatch):
    ck.save_checkpoint(tmp_path, CheckpointId(1), _files(1))
    real_write = ck._write_bytes
    calls = []

    def failing_write(path, data):
        calls.append(path.name)
        if len(calls) == 2:  # the second file of the folder hits a full disk
            real_write(path, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(ck, "_write_bytes", failing_write)
    with pytest.raises(CheckpointError, match="no space left on device.*earlier checkpoints"):
        ck.save_checkpoint(tmp_path, CheckpointId(2), _files(2), keep_last=1)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001"]
    ck.verify_checkpoint(tmp_path / "step_00000001")


def test_non_finite_weights_are_never_saved(tmp_path):
    files = _files(1)
    files["model.pt"]["w"][0, 0] = float("nan")
    with pytest.raises(ck.NonFiniteWeightsError, match="'w'"):
        ck.save_checkpoint(tmp_path, CheckpointId(1), files)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_unwritable_output_folder_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="locked.*not writable"):
            ck.check_writable(locked / "run")
    finally:
        locked.chmod(0o700)


def test_output_path_below_a_file_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="a_file.*not writable"):
        ck.check_writable(blocker / "run", "output_dir")


def test_permission_denied_is_reported_even_as_root(tmp_path, monkeypatch):
    def deny(self, data):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(type(tmp_path), "write_bytes", deny)
    with pytest.raises(CheckpointError, match="run.*not writable: Permission denied"):
        ck.check_writable(tmp_path / "run")
