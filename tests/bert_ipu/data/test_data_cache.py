"""The prepared-data cache: reuse, atomic writes, corruption and staleness (cache.py)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from bert_ipu.data import prepare
from bert_ipu.data.prepare import prepare_data
from bert_ipu.data.config import DataError, DataConfig

WORDS = ("alpha beta gamma delta river stone light house garden window paper music "
         "market number island forest winter summer").split()


def write_corpus(folder: Path, n_docs: int = 12, seed: int = 0) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize()
                     + "." for _ in range(rng.randint(6, 20))]
        (folder / f"doc{d:02d}.txt").write_text(" ".join(sentences))


@pytest.fixture
def setup(tmp_path, shared_data):
    write_corpus(tmp_path / "corpus")
    spec = DataConfig(source="files", input_files=(str(tmp_path / "corpus"),),
                    vocab_file=str(shared_data / "vocab/bert-base-uncased-vocab.txt"),
                    cache_dir=str(tmp_path / "cache"), eval_fraction=0.2)
    return spec, tmp_path


def build(spec: DataConfig) -> tuple[Path, dict, list[str]]:
    logs: list[str] = []
    folder, meta = prepare_data(spec, logs.append)
    return folder, meta, logs


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "meta.json"}


def test_second_build_reuses_cache(setup, monkeypatch):
    spec, _ = setup
    folder, meta, logs = build(spec)
    assert any(m.startswith("data: prepared") for m in logs)
    assert meta["counts"]["train_pairs"] > 0 and meta["counts"]["eval_pairs"] > 0

    def forbidden(*args, **kw):
        raise AssertionError("preparation ran again")

    monkeypatch.setattr(prepare, "build_cache", forbidden)
    again, meta2, logs2 = build(spec)
    assert again == folder and meta2 == meta
    assert any("skipped preparation" in m for m in logs2)
    assert not any("WARNING" in m for m in logs2)


@pytest.mark.parametrize("damage, reason", [
    ("flip", "fails its sha256 checksum"),
    ("truncate", "has 8 bytes, expected"),
    ("delete", "missing"),
    ("meta", "meta.json unreadable"),
])
def test_corrupt_cache_is_rebuilt(setup, damage, reason):
    spec, _ = setup
    folder, _, _ = build(spec)
    before = snapshot(folder)
    target = folder / "train_tokens.npy"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:8])
    elif damage == "delete":
        target.unlink()
    else:
        (folder / "meta.json").write_text("{not json")
    again, _, logs = build(spec)
    assert any("WARNING" in m and "unusable" in m and reason in m for m in logs), logs
    assert again == folder and snapshot(again) == before  # rebuilt, identical


def test_structural_check_without_checksums(setup):
    spec, _ = setup
    spec = DataConfig(**{**vars(spec), "verify_checksums": False})
    folder, _, _ = build(spec)
    tokens = np.load(folder / "train_tokens.npy", mmap_mode="r+")
    tokens[3] = 65535  # same size, checksum not verified: ids beyond the vocabulary
    tokens.flush()
    del tokens
    _, _, logs = build(spec)
    assert any("ids >= the vocabulary size" in m for m in logs), logs


def test_stale_cache_replaced_when_corpus_changes(setup):
    spec, tmp = setup
    folder, meta, _ = build(spec)
    write_corpus(tmp / "corpus", n_docs=14, seed=1)  # edit files, add two documents
    new, meta2, logs = build(spec)
    assert new != folder and not folder.exists()
    assert any("removed stale prepared-data cache" in m for m in logs)
    assert meta2["counts"]["documents"] == 14 != meta["counts"]["documents"]


def test_other_settings_get_their_own_cache(setup):
    spec, _ = setup
    folder, _, _ = build(spec)
    other, _, logs = build(DataConfig(**{**vars(spec), "masked_lm_prob": 0.2}))
    assert other != folder and folder.exists()
    assert not any("stale" in m for m in logs)


def test_crash_during_preparation_leaves_no_cache(setup, monkeypatch):
    spec, _ = setup
    root = Path(spec.cache_dir)

    def crash(*args, **kw):
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(prepare, "_fixed_masks", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(spec)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    (root / f".tmp-{prepare.cache_location(spec)[0]}-killed-123").mkdir()  # a kill -9
    folder, _, _ = build(spec)
    assert folder.exists() and not list(root.glob(".tmp-*"))


def test_unwritable_cache_dir_is_named(setup):
    spec, tmp = setup
    (tmp / "a_file").write_text("x")
    bad = DataConfig(**{**vars(spec), "cache_dir": str(tmp / "a_file" / "cache")})
    with pytest.raises(DataError, match="data.cache_dir: cannot write in"):
        build(bad)


def test_meta_records_identity_and_checksums(setup):
    spec, _ = setup
    folder, meta, _ = build(spec)
    assert meta["identity"]["corpus"]["source"] == "files"
    assert len(meta["identity"]["tokenizer"]["vocab_sha256"]) == 64
    assert set(meta["files"]) == {p.name for p in folder.iterdir()} - {"meta.json"}
    arr = np.load(folder / "train_tokens.npy", mmap_mode="r")
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint16


def test_two_preparation_processes_give_the_same_cache(tmp_path, shared_data):
    """Issue 22: data.num_proc worker processes prepare shards in parallel; the prepared
    arrays are byte-identical to one process's (and the setting is not in the cache key)."""
    from dataclasses import replace

    write_corpus(tmp_path / "corpus", n_docs=40)
    one = DataConfig(source="files", input_files=(str(tmp_path / "corpus"),),
                     vocab_file=str(shared_data / "vocab/bert-base-uncased-vocab.txt"),
                     cache_dir=str(tmp_path / "one"), eval_fraction=0.2, shard_documents=6)
    two = replace(one, cache_dir=str(tmp_path / "two"), num_proc=2)
    (f1, m1, _), (f2, m2, _) = build(one), build(two)
    assert snapshot(f1) == snapshot(f2) and f1.name == f2.name
    assert m1["counts"] == m2["counts"] and m1["counts"]["train_pairs"] > 0
    assert len(list(prepare._shards(iter([[]] * 40), 6))) == 6  # several shards in flight


def _failing_shard(spec, shard, docs):
    """A worker's shard function that fails (module level: the workers import it)."""
    if shard == 1:
        raise DataError(f"data.input_files: shard {shard} could not be prepared")
    return prepare.process_shard(prepare._WORKER["tok"], spec, shard, docs)


def test_a_shard_that_fails_in_a_worker_is_reported_and_leaves_no_cache(setup, monkeypatch):
    from dataclasses import replace

    spec, tmp_path = setup
    monkeypatch.setattr(prepare, "_worker_shard", _failing_shard)
    with pytest.raises(DataError, match="shard 1 could not be prepared"):
        build(replace(spec, num_proc=2, shard_documents=4))
    assert not any((tmp_path / "cache").glob("*/meta.json"))
