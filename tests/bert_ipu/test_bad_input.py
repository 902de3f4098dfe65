"""Issue 4, bad input: every case through the CLI (`bert_ipu.pretrain.main`) gives exit
code 2 and ONE line `error: ...` naming the thing (no traceback), and a finished earlier
run in the same output folder stays byte for byte as it was."""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from bert_ipu.store import checkpoint as ck
from bert_ipu.data.config import SPECIAL_TOKENS
from bert_ipu.pretrain import main
from tests.bert_ipu.tiny_run import (  # noqa: F401
    WORDS, error_line, one_thread, tiny_data, tiny_overrides, write_corpus,
)

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = {"training.training_steps": 2, "checkpoint.checkpoint_steps": 2,
         "logging.eval_steps": 0, "sparsity.n_updates": 1}


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file below `folder` (relative paths)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def earlier(tiny_data, tmp_path_factory):
    """A finished 2-step run; every bad-input case reuses its output folder."""
    corpus, cache = tiny_data
    out = tmp_path_factory.mktemp("earlier") / "run"
    assert main(tiny_overrides(corpus, out, cache, **STEPS)) == 0
    return out, snapshot(out)


def fails_cleanly(capsys, earlier, tiny_data, *extra: str, config: str | None = None,
                  **settings) -> str:
    """Run the CLI over the earlier run's folder with bad input; return the error line."""
    out, before = earlier
    corpus, cache = tiny_data
    capsys.readouterr()
    argv = (["--config", config] if config else []) + tiny_overrides(
        corpus, out, cache, **{**STEPS, **settings}) + list(extra)
    assert main(argv) == 2
    line = error_line(capsys)
    assert snapshot(out) == before, "an earlier run's files were changed"
    return line


def write_vocab(path: Path, drop: str | None = None) -> Path:
    tokens = [t for t in SPECIAL_TOKENS if t != drop] + sorted(set(WORDS) | {".", ",", "##s"}
                                                             | set("abcdefghijklmnopqrstuvwxyz"))
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------ config
def test_invalid_yaml(capsys, earlier, tiny_data, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  learning_rate: [1e-3\n")
    line = fails_cleanly(capsys, earlier, tiny_data, config=str(bad))
    assert "bad.yaml:" in line and "invalid YAML" in line


def test_unknown_key(capsys, earlier, tiny_data):
    line = fails_cleanly(capsys, earlier, tiny_data, "training.learnig_rate=1e-3")
    assert "'training.learnig_rate': unknown config key" in line
    assert "did you mean 'learning_rate'?" in line


def test_wrong_type(capsys, earlier, tiny_data):
    line = fails_cleanly(capsys, earlier, tiny_data, "training.micro_batch_size=many")
    assert line == "error: training.micro_batch_size: expected an integer, got 'many'"


def test_out_of_range_value(capsys, earlier, tiny_data):
    line = fails_cleanly(capsys, earlier, tiny_data, "sparsity.sparsity=1.5")
    assert line.startswith("error: sparsity.sparsity: expected a number in [0, 1), got 1.5")


@pytest.mark.parametrize("text", ["", "null\n", "# only a comment\n", "{}\n"])
def test_empty_or_null_config_file_is_refused(capsys, earlier, tiny_data, tmp_path, text):
    """Issue 11, failure 11: it used to start a full BERT-Base run with defaults."""
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    line = fails_cleanly(capsys, earlier, tiny_data, config=str(empty))
    assert "empty.yaml: expected a mapping of config sections (the file is empty or null)" in line


@pytest.mark.parametrize("key, value", [("training.learning_rate", "1e39"),
                                        ("training.loss_scaling", "1e39")])
def test_values_that_overflow_fp32_are_refused(capsys, earlier, tiny_data, key, value):
    """Issue 11, failure 3: learning_rate=1e39 was accepted and overflowed (traceback)."""
    line = fails_cleanly(capsys, earlier, tiny_data, f"{key}={value}")
    assert line.startswith(f"error: {key}: expected a number in (0, ") and "1e+39" in line


def test_micro_batch_larger_than_the_training_split(capsys, earlier, tiny_data):
    """Issue 11, failure 3: a ValueError traceback from the loader before."""
    line = fails_cleanly(capsys, earlier, tiny_data, "training.micro_batch_size=5000")
    assert line.startswith("error: training.micro_batch_size: expected at most the ")
    assert "got 5000" in line


def test_vocab_of_only_special_tokens(capsys, earlier, tiny_data, tmp_path):
    """Issue 11, failure 3: an IndexError from masking before."""
    vocab = tmp_path / "special_only.txt"
    vocab.write_text("\n".join(SPECIAL_TOKENS) + "\n")
    line = fails_cleanly(capsys, earlier, tiny_data, **{"data.vocab_file": str(vocab)})
    assert f"data.vocab_file: {vocab}: expected word tokens besides" in line


# ------------------------------------------------------------------ corpus
def test_missing_corpus_file(capsys, earlier, tiny_data, tmp_path):
    missing = tmp_path / "no_such_corpus.txt"
    line = fails_cleanly(capsys, earlier, tiny_data, **{"data.input_files": [str(missing)]})
    assert f"data.input_files: {str(missing)!r}: file does not exist" in line


def test_empty_corpus(capsys, earlier, tiny_data, tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n\n")
    line = fails_cleanly(capsys, earlier, tiny_data,
                         **{"data.input_files": [str(tmp_path / "empty.txt")]})
    assert "1 input file(s)" in line and "the corpus is empty" in line


def test_only_binary_files_is_an_error_naming_them(capsys, earlier, tiny_data, tmp_path):
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "archive.txt").write_bytes(b"PK\x03\x04\x00\x00")
    line = fails_cleanly(capsys, earlier, tiny_data,
                         **{"data.input_files": [str(tmp_path / "*.txt")]})
    assert "data.input_files: all 2 file(s) skipped, nothing left" in line
    assert "image.txt (binary)" in line and "archive.txt (binary)" in line


def test_documents_too_short_for_nsp(capsys, earlier, tiny_data, tmp_path):
    for d in range(6):
        (tmp_path / f"one_sentence_{d}.txt").write_text(f"Only one sentence number {d} here.")
    line = fails_cleanly(capsys, earlier, tiny_data,
                         **{"data.input_files": [str(tmp_path / "*.txt")]})
    assert "no NSP pair can be made: 6 document(s), 6 too short" in line


@pytest.mark.parametrize("token", SPECIAL_TOKENS)
def test_vocab_without_a_special_token(capsys, earlier, tiny_data, tmp_path, token):
    vocab = write_vocab(tmp_path / f"vocab_without_{token.strip('[]')}.txt", drop=token)
    line = fails_cleanly(capsys, earlier, tiny_data, **{"data.vocab_file": str(vocab)})
    assert f"data.vocab_file: {vocab}: missing special token(s) {token};" in line


# ------------------------------------------------------------------ output folders
def test_output_folder_below_a_file(capsys, earlier, tiny_data, tmp_path):
    (tmp_path / "a_file").write_text("x")
    line = fails_cleanly(capsys, earlier, tiny_data,
                         **{"checkpoint.checkpoint_output_dir": str(tmp_path / "a_file/ck")})
    assert "checkpoint.checkpoint_output_dir" in line and "not writable" in line


def test_output_folder_without_write_permission(capsys, earlier, tiny_data, monkeypatch):
    """Tests run as root, whom chmod does not stop: the refusal is simulated."""
    real = Path.write_bytes

    def deny(self, data):
        if self.name.startswith(".write-test-"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", deny)
    line = fails_cleanly(capsys, earlier, tiny_data)
    assert f"output_dir {str(earlier[0])!r} is not writable: Permission denied" in line


# ------------------------------------------------------------------ cases that succeed
def test_binary_files_are_skipped_and_non_utf8_bytes_replaced_with_a_count(capsys, tiny_data, tmp_path):
    corpus, _ = tiny_data
    (tmp_path / "docs").mkdir()
    for doc in sorted(corpus.glob("*.txt"))[:12]:
        (tmp_path / "docs" / doc.name).write_text(doc.read_text())
    (tmp_path / "docs" / "zz_binary.txt").write_bytes(b"\x00\x01\x02garbage")
    (tmp_path / "docs" / "zz_latin1.txt").write_bytes("na\xefve caf\xe9.".encode("latin-1"))
    args = tiny_overrides(tmp_path / "docs", tmp_path / "run", tmp_path / "cache", **{
        **STEPS, "data.vocab_size": 120, "data.eval_fraction": 0.0, "sparsity.n_updates": 1})
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "data: skipped 1 of 14 input file(s) (binary)" in err and "zz_binary.txt (binary)" in err
    # issue 22: one stray byte no longer drops the file; the replaced bytes are counted
    assert "1 input file(s) are not valid UTF-8" in err and "zz_latin1.txt (2 byte(s))" in err


def test_stale_and_corrupt_prepared_data_are_rebuilt(capsys, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", documents=12)
    cache = tmp_path / "cache"
    settings = {**STEPS, "data.vocab_size": 120, "data.eval_fraction": 0.0,
                "sparsity.n_updates": 1}
    assert main(tiny_overrides(corpus, tmp_path / "r1", cache, **settings)) == 0
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    tokens = folder / "train_tokens.npy"
    data = bytearray(tokens.read_bytes())
    data[-1] ^= 0xFF
    tokens.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(tiny_overrides(corpus, tmp_path / "r2", cache, **settings)) == 0
    err = capsys.readouterr().err
    assert (f"prepared-data cache {folder} is unusable (file train_tokens.npy fails its "
            "sha256 checksum); rebuilding") in err
    assert ck.verify_checkpoint(ck.find_latest(tmp_path / "r2" / "checkpoints"))
    write_corpus(corpus, documents=13)  # the corpus changes: the cache is stale
    assert main(tiny_overrides(corpus, tmp_path / "r3", cache, **settings)) == 0
    err = capsys.readouterr().err
    assert f"removed stale prepared-data cache {folder}" in err
    assert [p for p in cache.iterdir() if p.is_dir()] != [folder]
