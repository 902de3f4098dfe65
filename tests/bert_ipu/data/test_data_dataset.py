"""build_datasets, samples, fixed eval masks, the resumable loader, tokenizers, bad input."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bert_ipu.data import DataConfig, DataError, PretrainingLoader, build_datasets
from bert_ipu.schema import ConfigError

S, P = 128, 20
WORDS = ("alpha beta gamma delta river stone light house garden window paper music "
         "market number island forest winter summer unbelievable").split()


def quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def vocab(shared_data) -> str:
    return str(shared_data / "vocab/bert-base-uncased-vocab.txt")


@pytest.fixture(scope="module")
def builtin(vocab, tmp_path_factory):
    logs: list[str] = []
    spec = DataConfig(source="builtin", vocab_file=vocab, eval_fraction=0.05,
                    cache_dir=str(tmp_path_factory.mktemp("cache")))
    train, held_out, info = build_datasets(spec, log=logs.append)
    return spec, train, held_out, info, logs


def write_docs(folder: Path, sentence_counts: list[int], seed: int = 0) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d, n in enumerate(sentence_counts):
        text = " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))
                        .capitalize() + "." for _ in range(n))
        (folder / f"doc{d:03d}.txt").write_text(text)


def files_spec(tmp_path: Path, vocab: str | None, **kw) -> DataConfig:
    return DataConfig(source="files", input_files=(str(tmp_path / "docs"),), vocab_file=vocab,
                    cache_dir=str(tmp_path / "cache"), **kw)


# ------------------------------------------------------------------------ samples
def test_sample_keys_shapes_dtypes(builtin):
    _, train, held_out, info, logs = builtin
    assert info.vocab_size == 30522 and (info.cls_id, info.sep_id, info.mask_id) == (101, 102, 103)
    assert len(train) > 3000 and len(held_out) > 50
    assert any("documents" in m and "pairs" in m for m in logs)
    want = {"input_ids": ([S], torch.int64), "token_type_ids": ([S], torch.int64),
            "attention_mask": ([S], torch.int64), "masked_lm_positions": ([P], torch.int64),
            "masked_lm_ids": ([P], torch.int64), "masked_lm_weights": ([P], torch.float32),
            "next_sentence_label": ([], torch.int64)}
    for ds in (train, held_out):
        sample = ds[0]
        assert {k: (list(v.shape), v.dtype) for k, v in sample.items()} == want


def test_layout_cls_a_sep_b_sep(builtin):
    _, train, _, info, _ = builtin
    b = train.batch(np.arange(len(train)))
    ids, types, attn = b["input_ids"], b["token_type_ids"], b["attention_mask"]
    length = attn.sum(1)
    assert (length <= S).all() and (length >= 5).all() and (ids[:, 0] == info.cls_id).all()
    is_sep = ids == info.sep_id
    assert (is_sep.sum(1) == 2).all()
    first = is_sep.int().argmax(1)
    col = torch.arange(S)[None, :]
    assert (ids[col >= length[:, None]] == info.pad_id).all()
    assert (ids.gather(1, (length - 1)[:, None])[:, 0] == info.sep_id).all()
    expected_types = ((col > first[:, None]) & (col < length[:, None])).long()
    assert (types == expected_types).all()  # 0: [CLS] A [SEP]; 1: B [SEP]; 0: padding
    assert (attn == (col < length[:, None]).long()).all()
    assert ((first >= 2) & (first <= length - 3)).all()  # A and B non-empty
    nsp = b["next_sentence_label"].float().mean()
    assert 0.45 < nsp < 0.6


def test_train_masks_redrawn_per_epoch_eval_fixed(builtin):
    _, train, held_out, _, _ = builtin
    idx = np.arange(40)
    e0, e0b, e1 = train.batch(idx, epoch=0), train.batch(idx, epoch=0), train.batch(idx, epoch=1)
    assert torch.equal(e0["input_ids"], e0b["input_ids"])
    assert not torch.equal(e0["masked_lm_positions"], e1["masked_lm_positions"])
    assert torch.equal(e0["next_sentence_label"], e1["next_sentence_label"])
    h0 = held_out.batch(np.arange(len(held_out)), epoch=0)
    held_out.set_epoch(5)
    h5 = held_out.batch(np.arange(len(held_out)))
    assert all(torch.equal(h0[k], h5[k]) for k in h0)
    assert (h0["masked_lm_weights"].sum(1) >= 1).all()


def test_preparation_is_deterministic(builtin, tmp_path):
    spec, train, _, _, _ = builtin
    other = DataConfig(**{**vars(spec), "cache_dir": str(tmp_path)})
    train2, _, _ = build_datasets(other, log=quiet)
    for name in ("tokens", "offsets", "a_len", "nsp"):
        assert np.array_equal(train.arrays[name], train2.arrays[name]), name


def test_dataset_pickles_as_memory_maps(builtin):
    _, train, _, _, _ = builtin
    assert isinstance(train.arrays["tokens"], np.memmap)
    clone = pickle.loads(pickle.dumps(train))
    assert len(pickle.dumps(train)) < 100_000  # paths, not the arrays
    assert torch.equal(clone.batch([3, 9])["input_ids"], train.batch([3, 9])["input_ids"])


# ------------------------------------------------------------------------ loader
def collect(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_loader_resume_is_exact_across_epochs(builtin):
    _, train, _, _, _ = builtin
    make = lambda: PretrainingLoader(train, batch_size=256, seed=3)  # noqa: E731
    per_epoch = len(make())
    ref = make()
    reference = collect(ref, per_epoch) + collect(ref, 5)
    loader = make()
    for batch in loader:
        if loader.batch == per_epoch - 2:
            break
    state = loader.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    got = collect(resumed, 5)  # the end of epoch 0 ...
    assert len(got) == 2 and (resumed.epoch, resumed.batch) == (1, 0)
    got += collect(resumed, 5)  # ... then epoch 1
    assert (resumed.epoch, resumed.batch) == (1, 5)
    for a, b in zip(reference[per_epoch - 2:], got):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_loader_order_seeded_and_sharded(builtin):
    _, train, _, _, _ = builtin
    n = len(train)
    loader = PretrainingLoader(train, 16, seed=1)
    e0 = loader.epoch_indices(0)
    assert len(e0) == len(loader) * 16 == n // 16 * 16 and len(set(e0.tolist())) == len(e0)
    assert (np.diff(e0) < 0).any()  # shuffled
    assert not np.array_equal(e0, PretrainingLoader(train, 16, seed=1).epoch_indices(1))
    assert not np.array_equal(e0, PretrainingLoader(train, 16, seed=2).epoch_indices(0))
    ranks = [PretrainingLoader(train, 16, seed=1, rank=r, world_size=3) for r in range(3)]
    shards = [set(r.epoch_indices(0).tolist()) for r in ranks]
    assert len({len(r) for r in ranks}) == 1
    assert not (shards[0] & shards[1]) and not (shards[1] & shards[2])
    assert len(set.union(*shards)) > 0.95 * n


class Indices:
    """A stand-in dataset whose batch is its sample indices (the loader's order only)."""

    split = "train"

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        pass

    def batch(self, indices, epoch: int = 0) -> dict[str, torch.Tensor]:
        return {"index": torch.as_tensor(indices)}


@pytest.mark.parametrize("before, after", [((2, 4), (1, 8)), ((1, 8), (2, 4)), ((2, 4), (4, 2))])
def test_loader_position_continues_on_another_number_of_ranks(before, after):
    """Issue 23: a position saved by W ranks of B samples continues on W' ranks of B'
    (the same samples per step): every later step takes the samples the first split
    would have taken, and saved again and resumed on the first split it continues
    across the epoch's end."""
    data = Indices(203)
    (w, b), (w2, b2) = before, after

    def ranks(world: int, size: int) -> list[PretrainingLoader]:
        return [PretrainingLoader(data, size, seed=3, rank=r, world_size=world)  # type: ignore[arg-type]
                for r in range(world)]

    def steps(loaders: list[PretrainingLoader], n: int) -> list[list[int]]:
        its = [iter(x.endless()) for x in loaders]
        return [sorted(int(i) for it in its for i in next(it)["index"]) for _ in range(n)]

    first, moved = ranks(w, b), ranks(w, b)
    assert steps(first, 3) == steps(moved, 3)
    second = ranks(w2, b2)
    for x in second:
        x.load_state_dict(moved[0].state_dict())
    assert steps(second, 4) == steps(first, 4)
    back = ranks(w, b)
    for x in back:
        x.load_state_dict(second[0].state_dict())
    per_epoch = len(first[0])
    assert steps(back, per_epoch) == steps(first, per_epoch)  # across the epoch's end
    assert back[0].epoch == first[0].epoch == 1 and back[0].offset == 0


def test_loader_state_mismatch_and_workers(builtin):
    _, train, _, _, _ = builtin
    state = PretrainingLoader(train, 8, seed=0).state_dict()
    with pytest.raises(ValueError, match="seed: saved 0, now 1"):
        PretrainingLoader(train, 8, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="only with drop_last"):
        PretrainingLoader(train, 16, seed=0, drop_last=False).load_state_dict(
            dict(state, drop_last=False))
    with pytest.raises(ValueError, match="make no batch"):
        PretrainingLoader(train, len(train) + 1)
    plain = collect(PretrainingLoader(train, 32, seed=4), 3)
    workers = collect(PretrainingLoader(train, 32, seed=4, num_workers=1), 3)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(plain, workers) for k in a)


# ------------------------------------------------------------------------ tokenizers
def test_trained_wordpiece_vocabulary(tmp_path):
    write_docs(tmp_path / "docs", [8] * 20)
    spec = files_spec(tmp_path, None, vocab_size=120, eval_fraction=0.1)
    train, held_out, info = build_datasets(spec, log=quiet)
    tokens = Path(info.vocab_file).read_text().split("\n")[:-1]
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert info.vocab_size == len(tokens) <= 120 and Path(info.vocab_file).parent.is_dir()
    assert any(t.startswith("##") for t in tokens) and "garden" in tokens  # frequent word
    assert held_out is not None and int(train.batch([0])["input_ids"].max()) < info.vocab_size
    again = files_spec(tmp_path, None, vocab_size=120, eval_fraction=0.1)
    again = DataConfig(**{**vars(again), "cache_dir": str(tmp_path / "cache2")})
    _, _, info2 = build_datasets(again, log=quiet)
    assert Path(info2.vocab_file).read_text() == Path(info.vocab_file).read_text()


def test_vocab_without_special_tokens_is_named(tmp_path, vocab):
    write_docs(tmp_path / "docs", [5] * 6)
    lines = Path(vocab).read_text(encoding="utf-8").split("\n")
    bad = tmp_path / "bad_vocab.txt"
    bad.write_text("\n".join(t for t in lines if t not in ("[CLS]", "[MASK]")), encoding="utf-8")
    with pytest.raises(DataError, match=r"bad_vocab\.txt: missing special token\(s\) "
                                        r"\[CLS\] \[MASK\]"):
        build_datasets(files_spec(tmp_path, str(bad)), log=quiet)
    with pytest.raises(DataError, match=r"vocab_file: .*nope\.txt: does not exist"):
        build_datasets(files_spec(tmp_path, str(tmp_path / "nope.txt")), log=quiet)


# ------------------------------------------------------------------------ bad input
def test_documents_too_short_for_nsp(tmp_path, vocab):
    write_docs(tmp_path / "docs", [1] * 8)
    with pytest.raises(DataError, match=r"no NSP pair can be made: 8 document\(s\), 8 too "
                                        r"short"):
        build_datasets(files_spec(tmp_path, vocab, eval_fraction=0.0), log=quiet)
    write_docs(tmp_path / "docs", [1] * 8 + [6] * 6)  # some usable: the short ones counted
    logs: list[str] = []
    train, _, _ = build_datasets(files_spec(tmp_path, vocab, eval_fraction=0.0), log=logs.append)
    assert len(train) > 0 and any("(8 too short for NSP)" in m for m in logs), logs


def test_empty_corpus_and_too_few_documents(tmp_path, vocab):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/blank.txt").write_text("  \n\n \n")
    with pytest.raises(DataError, match="the corpus is empty"):
        build_datasets(files_spec(tmp_path, vocab), log=quiet)
    write_docs(tmp_path / "docs", [5] * 3)
    with pytest.raises(DataError, match=r"data.eval_fraction=0.02: no held-out pair"):
        build_datasets(files_spec(tmp_path, vocab), log=quiet)
    train, held_out, _ = build_datasets(files_spec(tmp_path, vocab, eval_fraction=0.0),
                                        log=quiet)
    assert len(train) > 0 and held_out is None


def test_hf_local_dataset_end_to_end(tmp_path, vocab, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    rng = random.Random(0)
    rows = [" ".join(" ".join(rng.choice(WORDS) for _ in range(6)).capitalize() + "."
                     for _ in range(8)) for _ in range(10)]
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "ds"))
    spec = DataConfig(source="hf", hf_path=str(tmp_path / "ds"), vocab_file=vocab,
                    cache_dir=str(tmp_path / "cache"), eval_fraction=0.2)
    train, held_out, _ = build_datasets(spec, log=quiet)
    assert len(train) > 0 and len(held_out) > 0
    assert train[0]["input_ids"][0].item() == 101


def test_spec_rejects_bad_values():
    for kw, match in [({"source": "web"}, "data.source: expected one of 'builtin', 'files', 'hf'"),
                      ({"sequence_length": 4}, "data.sequence_length: expected an integer"),
                      ({"masked_lm_prob": 0.0}, r"masked_lm_prob: expected a number in \(0, 1\)"),
                      ({"eval_fraction": 1.0}, r"eval_fraction: expected a number in \[0, 1\)"),
                      ({"format": "csv"}, "data.format: expected one of"),
                      ({"source": "hf"}, "data.hf_path: expected at least one dataset"),
                      ({"seed": "1"}, "data.seed: expected an integer, got .1.")]:
        with pytest.raises(ConfigError, match=match):
            DataConfig(**kw)
    assert DataConfig(source="files", input_files=["a.txt"]).input_files == ("a.txt",)
