"""Issue 11, fail fast: every check that needs no prepared data runs before preparing
it; the README's own-corpus command works as written; --print-config, --dry-run and
--prepare-only."""
from __future__ import annotations

import pytest

from bert_ipu.pretrain import main
from tests.bert_ipu.tiny_run import (  # noqa: F401
    SHORT, error_line, one_thread, tiny_data, tiny_overrides,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _nothing_prepared(cache) -> bool:
    return not cache.exists() or not any(cache.iterdir())


def test_model_vocab_smaller_than_the_vocab_file_fails_before_preparing(
        tiny_data, shared_data, tmp_path, capsys):
    corpus, _ = tiny_data
    cache = tmp_path / "cache"
    vocab = shared_data / "vocab" / "bert-base-uncased-vocab.txt"
    argv = tiny_overrides(corpus, tmp_path / "run", cache, **{
        **SHORT, "data.vocab_file": str(vocab), "model.vocab_size": 16384})
    assert main(argv) == 2
    line = error_line(capsys)
    assert "model.vocab_size: expected >= the 30522 tokens of data.vocab_file=" in line
    assert "got 16384" in line and _nothing_prepared(cache)


def test_updates_that_do_not_fit_the_steps_fail_before_preparing(tiny_data, tmp_path, capsys):
    corpus, _ = tiny_data
    cache = tmp_path / "cache"
    argv = tiny_overrides(corpus, tmp_path / "run", cache, **{**SHORT, "sparsity.n_updates": 5})
    assert main(argv) == 2
    assert error_line(capsys).startswith("error: sparsity.n_updates: expected at most 2 pattern "
                                         "updates in a run of 2 training steps")
    assert _nothing_prepared(cache)


def test_readme_own_corpus_command_works_as_written(tiny_data, shared_data, tmp_path, capsys):
    """configs/local_text_folder.yaml with the 30,522-token BERT vocabulary: model.vocab_size
    follows the vocab file (it failed after preparing the data: 30522 vs 16384)."""
    corpus, _ = tiny_data
    vocab = shared_data / "vocab" / "bert-base-uncased-vocab.txt"
    argv = ["--config", "configs/local_text_folder.yaml", f"data.input_files=[{corpus}/*.txt]",
            f"data.vocab_file={vocab}", f"output_dir={tmp_path / 'run'}",
            f"data.cache_dir={tmp_path / 'cache'}", "training.micro_batch_size=8",
            "training.epochs=60", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run: steps=") and "pattern_updates=160" in out
    assert not (tmp_path / "run").exists()  # a dry run creates no run folder (nor lock)


def test_a_dry_run_into_an_unwritable_place_is_refused_without_creating_it(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--dry-run", f"output_dir={blocker / 'run'}"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: output_dir") and "is not a folder" in line
    assert blocker.read_text() == ""


def test_print_config_names_each_source(tmp_path, capsys):
    argv = ["--config", "configs/local_text_folder.yaml", "training.learning_rate=1e-3",
            "--print-config"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "training.learning_rate: 0.001  # command line" in lines
    assert "sparsity.block_size: 16  # configs/local_text_folder.yaml" in lines
    assert "model.hidden_size: 256  # resolved" in lines  # from model.size: mini
    assert "training.adam_eps: 1e-06  # default" in lines
    assert not any(line.startswith("model.") and "# " not in line for line in lines)


def test_prepare_only_builds_the_cache_and_nothing_else(tiny_data, tmp_path, capsys):
    corpus, _ = tiny_data
    cache, out = tmp_path / "cache", tmp_path / "run"
    assert main(tiny_overrides(corpus, out, cache, **SHORT) + ["--prepare-only"]) == 0
    assert capsys.readouterr().out.startswith("prepared: train_sequences=")
    assert [p.name for p in cache.iterdir() if p.is_dir() and p.name.startswith("files-")]
    assert not out.exists()
    capsys.readouterr()
    assert main(tiny_overrides(corpus, out, cache, **SHORT)) == 0  # the run reuses it
    assert "reusing prepared data" in capsys.readouterr().err
