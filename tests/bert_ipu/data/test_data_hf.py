"""Several Hugging Face datasets in one corpus (bert_ipu/data/hf.py), offline: every
dataset is written to tmp_path with `save_to_disk`, or `load_dataset` is stubbed."""
from __future__ import annotations

import random

import pytest

from bert_ipu.data import prepare
from bert_ipu.data.corpus import open_corpus
from bert_ipu.data.prepare import prepare_data
from bert_ipu.data.config import ConfigError, DataConfig, DataError

datasets = pytest.importorskip("datasets")
WORDS = "alpha beta gamma delta river stone light house garden window paper music".split()


def rows(n: int, seed: int, sentences: int = 4) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(" ".join(rng.choice(WORDS) for _ in range(5)).capitalize() + "."
                     for _ in range(sentences)) for _ in range(n)]


@pytest.fixture
def two(tmp_path, monkeypatch):
    """Dataset A (column `text`) and a DatasetDict B (splits train/validation, column
    `body`), both saved in tmp_path."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    datasets.Dataset.from_dict({"text": rows(6, 0)}).save_to_disk(str(tmp_path / "a"))
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"body": rows(3, 1)}),
        "validation": datasets.Dataset.from_dict({"body": rows(5, 2), "n": list(range(5))}),
    }).save_to_disk(str(tmp_path / "b"))
    return tmp_path


def spec_of(base, **kw) -> DataConfig:
    values = dict(source="hf", hf_path=(str(base / "a"), str(base / "b")),
                  hf_split=("train", "validation"), hf_text_column=("text", "body"),
                  cache_dir=str(base / "cache"), vocab_size=64, eval_fraction=0.2)
    return DataConfig(**{**values, **kw})


def test_documents_of_both_datasets_in_order_with_their_own_split_and_column(two):
    corpus = open_corpus(spec_of(two), lambda m: None)
    docs = list(corpus.documents())
    assert len(docs) == 6 + 5
    assert docs[0][0] == rows(6, 0)[0].split(". ")[0] + "."
    assert " ".join(docs[6]) == rows(5, 2)[0]  # B's validation split, column `body`
    identity = corpus.identity()
    assert [d["split"] for d in identity["datasets"]] == ["train", "validation"]
    assert all(d["fingerprint"] for d in identity["datasets"])
    assert "+" in corpus.description


def test_each_dataset_gets_its_own_name(monkeypatch):
    calls = []

    def fake_load(path, name=None, split=None, data_files=None, streaming=False):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"text": [f"From {path}. Second sentence."]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    spec = DataConfig(source="hf", hf_path=("hub/wiki", "hub/books"),
                    hf_name=("20231101.en", None))
    docs = list(open_corpus(spec, lambda m: None).documents())
    assert calls == [("hub/wiki", "20231101.en", "train"), ("hub/books", None, "train")]
    assert docs == [["From hub/wiki.", "Second sentence."],
                    ["From hub/books.", "Second sentence."]]


def test_the_cache_key_covers_every_dataset(two, monkeypatch):
    spec = spec_of(two)
    folder, meta = prepare_data(spec, lambda m: None)
    assert meta["counts"]["documents"] == 11
    assert len(meta["identity"]["corpus"]["datasets"]) == 2

    def forbidden(*args, **kw):
        raise AssertionError("preparation ran again")

    with monkeypatch.context() as m:
        m.setattr(prepare, "build_cache", forbidden)
        assert prepare_data(spec, lambda m: None)[0] == folder  # reused
    # Only the SECOND dataset changes: the cache is stale and rebuilt.
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"body": rows(3, 1)}),
        "validation": datasets.Dataset.from_dict({"body": rows(7, 3)}),
    }).save_to_disk(str(two / "b2"))
    import shutil

    shutil.rmtree(two / "b")
    (two / "b2").rename(two / "b")
    logs: list[str] = []
    rebuilt, meta2 = prepare_data(spec, logs.append)
    assert rebuilt != folder and meta2["counts"]["documents"] == 13
    assert any("removed stale prepared-data cache" in m for m in logs)
    # Another dataset list (order, split, column) is another cache.
    swapped = spec_of(two, hf_path=(str(two / "b"), str(two / "a")),
                      hf_split=("validation", "train"), hf_text_column=("body", "text"))
    assert prepare.cache_location(swapped)[0] != prepare.cache_location(spec)[0]


def test_a_bad_second_dataset_is_named_with_its_index(two):
    with pytest.raises(DataError, match=r"data.hf_path\[1\]: could not load"):
        open_corpus(spec_of(two, hf_path=(str(two / "a"), str(two / "missing"))))
    with pytest.raises(DataError, match=r"data.hf_text_column\[1\]: expected one of "
                                        r"\['body', 'n'\].*got 'text'"):
        open_corpus(spec_of(two, hf_text_column=("text",)))
    with pytest.raises(DataError, match=r"data.hf_split\[1\]: expected one of "
                                        r"\['train', 'validation'\].*got 'test'"):
        open_corpus(spec_of(two, hf_split=("train", "test")))


def test_spec_checks_the_per_dataset_lists():
    for kw, match in [({"hf_name": ("x",)}, r"data.hf_name: expected empty or one entry per "),
                      ({"hf_split": ("a", "b", "c")}, r"hf_split: expected one entry, or one per"),
                      ({"hf_data_files": ("f.json",)}, r"hf_data_files: expected empty with several"),
                      ({"hf_name": (1, None)}, r"data.hf_name\[0\]: expected a string, got 1")]:
        with pytest.raises(ConfigError, match=match):
            DataConfig(source="hf", hf_path=("a", "b"), **kw)
    one = DataConfig(source="hf", hf_path="a", hf_name="cfg", hf_split="test")
    assert (one.hf_path, one.hf_name, one.hf_split) == (("a",), ("cfg",), ("test",))


def test_a_dataset_of_single_sentences_is_reported(two):
    datasets.Dataset.from_dict({"text": ["One sentence.", "Another one."]}).save_to_disk(
        str(two / "sentences"))
    logs: list[str] = []
    spec = spec_of(two, hf_path=(str(two / "a"), str(two / "sentences")),
                   hf_split=("train",), hf_text_column=("text",))
    corpus = open_corpus(spec, logs.append)
    assert len(list(corpus.documents())) == 8
    list(corpus.documents())  # a second pass does not repeat the warning
    warnings = [m for m in logs if "single sentence" in m]
    assert len(warnings) == 1 and "sentences" in warnings[0] and "WARNING" in warnings[0]


def test_the_cli_trains_on_two_datasets_named_in_the_config(two, capsys):
    from bert_ipu.pretrain import main
    from tests.bert_ipu.tiny_run import tiny_overrides

    overrides = tiny_overrides(two, two / "run", two / "cache", **{
        "data.source": "hf", "data.hf_path": [str(two / "a"), str(two / "b")],
        "data.hf_split": ["train", "validation"], "data.hf_text_column": ["text", "body"],
        "data.vocab_size": 64, "data.eval_fraction": 0.2, "training.training_steps": 2,
        "sparsity.n_updates": 1, "logging.eval_steps": 0})
    assert main(overrides) == 0
    err = capsys.readouterr().err
    assert "11 documents" in err and f"Hugging Face dataset {str(two / 'b')!r}" in err
    saved = (two / "run" / "config.yaml").read_text()
    assert "- validation" in saved and "- body" in saved
