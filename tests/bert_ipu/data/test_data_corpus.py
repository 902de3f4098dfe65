"""Corpus sources and text layouts (bert_ipu/data/text.py, corpus.py, stdlib_docs.py)."""
from __future__ import annotations

import json

import pytest

from bert_ipu.data.corpus import BuiltinCorpus, _stdlib_extract, open_corpus
from bert_ipu.data.config import DataError, DataConfig
from bert_ipu.data.text import detect_format, parse_documents, split_sentences


def files_spec(*patterns: str, **kw) -> DataConfig:
    return DataConfig(source="files", input_files=tuple(patterns), **kw)


# ----------------------------------------------------------------------------- text
def test_sentence_splitter_rules():
    text = ('It rained. "Cass" Beard rose at 4 A. M., wet. Was it gold? Yes! Élan. '
            'Mr. Smith met Dr. Who in the U.S. Army. (It was 3.14 p.m.) Done. '
            'Lower case. after a period: no break. Digits. 42 neither.\nNew line')
    assert split_sentences(text.split("\n")[0]) + split_sentences(text.split("\n")[1]) == [
        "It rained.", '"Cass" Beard rose at 4 A. M., wet.', "Was it gold?", "Yes!", "Élan.",
        "Mr. Smith met Dr. Who in the U.S. Army.", "(It was 3.14 p.m.) Done.",
        "Lower case. after a period: no break.", "Digits. 42 neither.", "New line"]


def test_layouts_and_detection():
    blank = "A one.\nA two.\n\n \nB one. B two.\n"
    wiki = " = Lobster = \n \n Lobsters are blue . They swim .\n = = Taxonomy = = \n" \
           " It was named . \n = Crab = \n Crabs walk . Sideways .\n"
    single = "Only one document. With two sentences."
    assert detect_format(blank) == "blank_line" and detect_format(wiki) == "wikitext"
    assert detect_format(single) == "file"
    assert parse_documents(blank) == [["A one.", "A two."], ["B one.", "B two."]]
    assert parse_documents(wiki) == [["Lobsters are blue .", "They swim .", "It was named ."],
                                     ["Crabs walk .", "Sideways ."]]
    assert parse_documents(blank, "file") == [["A one.", "A two.", "B one.", "B two."]]


README = """# mytool

mytool copies files between
machines. It keeps permissions
and times.

## Install

Run the installer as root. It
asks no questions.

See also the manual
page.
"""


def test_readme_style_prose_is_one_document_of_paragraphs():
    """Issue 22: README-style files were split at every blank line, so most of their
    "documents" were one sentence long (too short for NSP pairs)."""
    assert detect_format(README) == "paragraphs"
    (doc,) = parse_documents(README)
    assert doc == ["# mytool", "mytool copies files between machines.",
                   "It keeps permissions and times.", "## Install",
                   "Run the installer as root.", "It asks no questions.",
                   "See also the manual page."]
    assert len(parse_documents(README, "blank_line")) == 5   # the explicit layout still splits
    # one sentence per line: 3 of 4 lines end a sentence (>= 70 %): Google's layout
    assert detect_format("A one.\nA two;\n\nB one.\nB two.\n") == "blank_line"
    assert detect_format("A one\nA two;\n\nB one.\nB two\n") == "paragraphs"


# ----------------------------------------------------------------------------- files
def docs_of(spec: DataConfig, log=lambda m: None) -> list[list[str]]:
    return list(open_corpus(spec, log).documents())


def test_files_globs_folders_and_formats(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a/one.txt").write_text("First doc. Two sentences.")
    (tmp_path / "a/two.txt").write_text("Second doc.\nAnother line.")
    (tmp_path / "blank.txt").write_text("X one.\nX two.\n\nY one.\nY two.\n")
    (tmp_path / "wiki.txt").write_text(" = T1 = \n A b . C d .\n = T2 = \n E f .\n")
    assert docs_of(files_spec(str(tmp_path / "a/*.txt"))) == [
        ["First doc.", "Two sentences."], ["Second doc.", "Another line."]]
    assert len(docs_of(files_spec(str(tmp_path / "a")))) == 2  # a folder: every file
    assert len(docs_of(files_spec(str(tmp_path / "blank.txt")))) == 2
    assert len(docs_of(files_spec(str(tmp_path / "blank.txt"), format="file"))) == 1
    assert docs_of(files_spec(str(tmp_path / "wiki.txt"))) == [["A b .", "C d ."], ["E f ."]]
    everything = docs_of(files_spec(str(tmp_path / "**/*.txt"), str(tmp_path / "a/one.txt")))
    assert len(everything) == 2 + 2 + 2  # a/one.txt once, though named twice


def test_a_folder_named_through_dot_dot_is_read(tmp_path, monkeypatch):
    """A relative folder such as ../corpus held "no file": the hidden-file rule looked at
    the '..' of the path itself."""
    (tmp_path / "corpus" / ".git").mkdir(parents=True)
    (tmp_path / "corpus" / "a.txt").write_text("One. Two.\n")
    (tmp_path / "corpus" / ".git" / "HEAD").write_text("ref\n")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    corpus = open_corpus(files_spec("../corpus"))
    assert [p.name for p in corpus.files] == ["a.txt"]


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(DataError, match=r"input_files: '.*nothere\.txt': file does not exist"):
        open_corpus(files_spec(str(tmp_path / "nothere.txt")))
    with pytest.raises(DataError, match=r"'.*\*\.md': glob matches no file"):
        open_corpus(files_spec(str(tmp_path / "*.md")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="folder holds no file"):
        open_corpus(files_spec(str(tmp_path / "empty")))


def test_binary_skipped_and_non_utf8_bytes_replaced_with_counts(tmp_path):
    (tmp_path / "good.txt").write_text("Good text. Two sentences.")
    (tmp_path / "bin.txt").write_bytes(b"\x7fELF\x00\x01\x02")
    (tmp_path / "latin1.txt").write_bytes("Caf\xe9 au lait. Already \ufffd here.".encode("latin-1", "replace")
                                          .replace(b"?", "\ufffd".encode()))
    logs: list[str] = []
    docs = docs_of(files_spec(str(tmp_path / "*.txt")), logs.append)
    assert ["Good text.", "Two sentences."] in docs
    assert ["Caf\ufffd au lait.", "Already \ufffd here."] in docs     # kept, one byte replaced
    assert any("skipped 1 of 3 input file(s)" in m and "bin.txt (binary)" in m for m in logs), logs
    # the U+FFFD the file already held is not counted as a replacement
    assert any("latin1.txt (1 byte(s))" in m for m in logs), logs


def test_nothing_left_after_skipping_is_an_error(tmp_path):
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01")
    (tmp_path / "bad.txt").write_bytes(b"\x00\xff\xfe\xfa")
    with pytest.raises(DataError, match="all 2 file.*skipped, nothing left"):
        docs_of(files_spec(str(tmp_path / "*")))


def test_files_identity_follows_content(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("One. Two.")
    spec = files_spec(str(f))
    first = open_corpus(spec).identity()
    assert open_corpus(spec).identity() == first
    f.write_text("One. Two. Three.")
    assert open_corpus(spec).identity() != first


def test_shared_corpora_layouts(shared_data):
    sample = docs_of(files_spec(str(shared_data / "sample_text.txt")))
    assert len(sample) == 3 and all(len(d) >= 3 for d in sample)
    wiki = docs_of(files_spec(str(shared_data / "wikitext-2/valid.txt")))
    assert len(wiki) == 60 and wiki[0][0].startswith("Homarus gammarus")
    sotu = docs_of(files_spec(str(shared_data / "sotu/179*.txt")))
    assert len(sotu) == 10 and all(len(d) > 10 for d in sotu)  # one speech per document


# ----------------------------------------------------------------------------- builtin
def test_builtin_corpus_is_large_and_deterministic():
    corpus = BuiltinCorpus()
    docs = list(corpus.documents())
    assert len(docs) > 300 and sum(len(d) for d in docs) > 10_000
    text = " ".join(s for d in docs for s in d)
    for phrase in ("regular expression", "The \"yield\" statement", "JSON"):
        assert phrase in text, phrase
    _stdlib_extract.cache_clear()  # a fresh extraction subprocess gives the same corpus
    assert BuiltinCorpus().identity() == corpus.identity()


# ----------------------------------------------------------------------------- hf
@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    return tmp_path


def test_hf_save_to_disk_dataset(hf_cache):
    import datasets

    rows = {"text": ["Doc one. It has two.", "Doc two.\nSecond line.", None],
            "id": [1, 2, 3]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(hf_cache / "ds"))
    logs: list[str] = []
    spec = DataConfig(source="hf", hf_path=str(hf_cache / "ds"))
    corpus = open_corpus(spec, logs.append)
    assert list(corpus.documents()) == [["Doc one.", "It has two."],
                                        ["Doc two.", "Second line."]]
    assert corpus.identity()["fingerprint"] and any("skipped 1 row" in m for m in logs)
    with pytest.raises(DataError, match="hf_text_column: expected one of.*got 'body'"):
        open_corpus(DataConfig(source="hf", hf_path=str(hf_cache / "ds"), hf_text_column="body"))


def test_hf_builder_with_local_data_files(hf_cache):
    path = hf_cache / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n"
                            for t in ["A first. A second.", "B first. B second."]))
    spec = DataConfig(source="hf", hf_path="json", hf_data_files=(str(path),))
    assert list(open_corpus(spec).documents()) == [["A first.", "A second."],
                                                   ["B first.", "B second."]]
    lines = hf_cache / "lines.txt"
    lines.write_text("A one.\nA two.\n\nB one.\nB two.\n")
    spec = DataConfig(source="hf", hf_path="text", hf_data_files=(str(lines),),
                    format="blank_line")
    assert list(open_corpus(spec).documents()) == [["A one.", "A two."], ["B one.", "B two."]]


def test_hf_streaming_prepares_the_same_data_without_loading_the_dataset(hf_cache, shared_data,
                                                                        monkeypatch):
    """Issue 22: data.hf_streaming reads the rows as a stream (no Arrow conversion of the
    whole dataset first); the prepared arrays equal the non-streamed preparation."""
    from bert_ipu.data.prepare import prepare_data

    path = hf_cache / "docs.jsonl"
    sentences = ["The river runs far.", "A stone lies still.", "Light falls in.",
                 "Music plays on.", "Paper burns fast."]
    path.write_text("".join(json.dumps({"text": " ".join(sentences[i % 5:] + sentences[:i % 5])}) + "\n"
                            for i in range(30)))
    common = dict(source="hf", hf_path="json", hf_data_files=(str(path),), eval_fraction=0.2,
                  vocab_file=str(shared_data / "vocab/bert-base-uncased-vocab.txt"))
    streamed = DataConfig(**common, hf_streaming=True, cache_dir=str(hf_cache / "s"))
    corpus = open_corpus(streamed)
    assert corpus.streamed and "streamed" in corpus.description
    assert corpus.identity()["streaming"] and corpus.identity()["files_sha256"][0]
    folder_s, meta_s = prepare_data(streamed, lambda m: None)
    folder_a, meta_a = prepare_data(DataConfig(**common, cache_dir=str(hf_cache / "a")),
                                    lambda m: None)
    assert meta_s["counts"] == meta_a["counts"] and meta_s["counts"]["documents"] == 30
    for name in ("train_tokens", "train_offsets", "eval_tokens", "eval_mask_positions"):
        assert (folder_s / f"{name}.npy").read_bytes() == (folder_a / f"{name}.npy").read_bytes()
    # a file that changes changes the key of a stream too
    before = corpus.identity()
    path.write_text(path.read_text() + json.dumps({"text": "More text. And more."}) + "\n")
    assert open_corpus(streamed).identity() != before


def test_hf_unreachable_stream_is_one_error_naming_the_dataset(hf_cache, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"data.hf_path: could not load the dataset \(hf_path='no-user/no-such-dataset'"):
        open_corpus(DataConfig(source="hf", hf_path="no-user/no-such-dataset", hf_streaming=True))
    with pytest.raises(DataError, match="hf_text_column: expected one of.*got 'body'"):
        path = hf_cache / "t.jsonl"
        path.write_text(json.dumps({"text": "A. B."}) + "\n")
        open_corpus(DataConfig(source="hf", hf_path="json", hf_data_files=(str(path),),
                               hf_streaming=True, hf_text_column="body"))


def test_hf_unloadable_dataset_is_named(hf_cache):
    with pytest.raises(DataError, match="hf_path: could not load the dataset"):
        open_corpus(DataConfig(source="hf", hf_path=str(hf_cache / "no_such_dataset")))


def test_docstring_examples():
    import doctest

    from bert_ipu.data import config, masking, pretraining, text

    for module in (text, config, masking, pretraining):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
