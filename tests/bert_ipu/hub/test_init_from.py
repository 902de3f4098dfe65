"""The run keeps its tokenizer (vocab.txt in the run folder and every checkpoint; resume
with another vocabulary refused) and `checkpoint.init_from` starts a run from weights."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bert_ipu.config import ConfigError, load_config
from bert_ipu.store import checkpoint as ck
from bert_ipu.train.build import build_components

from tests.bert_ipu.tiny_run import final_state, one_thread, run_tiny, tiny_data, tiny_overrides  # noqa: F401


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory) -> Path:
    corpus, cache = tiny_data
    out = tmp_path_factory.mktemp("finished") / "run"
    torch.set_num_threads(1)
    run_tiny(corpus, out, cache, **{"training.training_steps": 4})
    return out


def test_run_keeps_its_vocabulary(finished_run):
    vocab = (finished_run / "vocab.txt").read_text()
    assert vocab.startswith("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    for _, path in ck.list_checkpoints(finished_run / "checkpoints"):
        assert (path / "vocab.txt").read_text() == vocab
        assert "vocab.txt" in ck.read_manifest(path)["files"]


def test_resume_with_another_vocabulary_of_same_size_is_refused(finished_run, tiny_data,
                                                                 tmp_path, one_thread):
    corpus, cache = tiny_data
    tokens = (finished_run / "vocab.txt").read_text().splitlines()
    tokens[10], tokens[11] = tokens[11], tokens[10]
    other = tmp_path / "other_vocab.txt"
    other.write_text("".join(t + "\n" for t in tokens))
    before = sorted(p.name for p in (finished_run / "checkpoints").iterdir())
    with pytest.raises(ck.CheckpointError, match=r"data\.vocab_file / tokenizer.*id 10"):
        run_tiny(corpus, finished_run, cache, **{
            "training.training_steps": 8, "data.vocab_file": str(other),
            # the model keeps its shape (a vocab file would otherwise size it to the file's
            # tokens, and the structure check would refuse the resume first)
            "model.vocab_size": 200,
            "checkpoint.resume_training_from_checkpoint": "latest"})
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == before


def _init_cfg(tiny_data, tmp_path, source, **extra):
    corpus, cache = tiny_data
    # model.vocab_size as in the source run (200 rows for a trained 166-token vocabulary):
    # with data.vocab_file given it would default to the file's size.
    overrides = tiny_overrides(corpus, tmp_path / "phase2", cache, **{
        "checkpoint.init_from": str(source), "model.vocab_size": 200, **extra})
    return load_config(None, overrides)


def test_init_from_keeps_patterns_and_values(finished_run, tiny_data, tmp_path, one_thread):
    vocab = str(finished_run / "vocab.txt")
    cfg = _init_cfg(tiny_data, tmp_path, finished_run, **{
        "data.vocab_file": vocab, "data.sequence_length": 64, "sparsity.seed": 99,
        "training.seed": 5})
    c = build_components(cfg, log=lambda s: None)
    source = final_state(finished_run)
    mine = c.core.state_dict()
    assert mine.keys() == source.keys()
    for key in source:
        assert torch.equal(mine[key].cpu(), source[key]), key
    assert c.optimizer.state_dict()["state"] == {}  # fresh optimizer
    assert c.train_loader.epoch == 0


@pytest.mark.parametrize("override,tensor,field", [
    ({"model.max_position_embeddings": 128, "data.sequence_length": 32},
     "bert.embeddings.position_embeddings.weight", "model.max_position_embeddings"),
    ({"sparsity.sparsity": 0.75}, "attention.self.query.values", "sparsity.sparsity"),
])
def test_init_from_shape_mismatch_names_tensor_and_field(finished_run, tiny_data, tmp_path,
                                                         override, tensor, field):
    cfg = _init_cfg(tiny_data, tmp_path, finished_run,
                    **{"data.vocab_file": str(finished_run / "vocab.txt"), **override})
    with pytest.raises(ConfigError) as err:
        build_components(cfg, log=lambda s: None)
    message = str(err.value)
    assert tensor in message and field in message and "\n" not in message


def test_init_from_missing_source_or_other_vocab(finished_run, tiny_data, tmp_path):
    cfg = _init_cfg(tiny_data, tmp_path, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"checkpoint\.init_from: .*does not exist"):
        build_components(cfg, log=lambda s: None)
    cfg = _init_cfg(tiny_data, tmp_path, finished_run, **{"data.vocab_size": 150})
    with pytest.raises(ConfigError, match=r"data\.vocab_file / tokenizer"):
        build_components(cfg, log=lambda s: None)


def test_export_at_end_of_run_then_init_from_exported(finished_run, tiny_data, tmp_path,
                                                      one_thread):
    corpus, cache = tiny_data
    run_tiny(corpus, tmp_path / "run", cache, **{
        "training.training_steps": 4, "checkpoint.export_dir": str(tmp_path / "hf")})
    facts = json.loads((tmp_path / "hf" / "dynsp_run.json").read_text())
    assert facts["steps"] == 4 and facts["eval_mlm_loss"] is not None
    assert (tmp_path / "hf" / "sparse" / "model.safetensors").is_file()
    cfg = _init_cfg(tiny_data, tmp_path, tmp_path / "hf",
                    **{"data.vocab_file": str(tmp_path / "hf" / "vocab.txt")})
    c = build_components(cfg, log=lambda s: None)
    source = final_state(tmp_path / "run")
    for key, value in c.core.state_dict().items():
        assert torch.equal(value.cpu(), source[key]), key
