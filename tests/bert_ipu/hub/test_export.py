"""Hugging Face export: the folder loads offline in `transformers` and reproduces the
project's logits (dense, static, DynSp, every block size); the compressed sparse form
reloads bit-exact; the CLI refuses bad input with one line and exit code 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from bert_ipu import export as export_cli
from bert_ipu.config import config_to_dict, load_config
from bert_ipu.data.tokenizer import load_wordpiece, read_vocab
from bert_ipu.hub import load_pretrained
from bert_ipu.hub.export import export_folder
from bert_ipu.hub.sparse import load_compressed
from bert_ipu.model import build_model, sparse_modules
from bert_ipu.schema import dump_yaml
from bert_ipu.store import checkpoint as ck
from sparse_ops.format import VALID_BLOCK_SIZES

from tests.bert_ipu.tiny_run import WORDS, one_thread, tiny_data  # noqa: F401

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOKENS = SPECIALS + sorted(set(WORDS)) + [".", ",", "##s", "##ed", "a"]
TEXTS = ["The cat sat over the house.", "Dogs walked near a river, slowly", "red"]


def write_vocab(folder: Path, tokens: list[str] = TOKENS) -> Path:
    path = folder / "vocab.txt"
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


def make_checkpoint(tmp: Path, method: str, block: int = 8, sparsity: float = 0.5) -> Path:
    """A checkpoint (model.pt, config.yaml, vocab.txt) of a randomised 2-layer H=64 model."""
    vocab = write_vocab(tmp)
    sp = 0.0 if method == "dense" else sparsity
    cfg = load_config(None, [
        "model.size=null", "model.hidden_size=64", "model.num_hidden_layers=2",
        "model.num_attention_heads=2", "model.max_position_embeddings=64",
        "data.sequence_length=32", "data.mask_tokens=5",
        f"model.vocab_size={len(TOKENS)}", f"data.vocab_file={vocab}", "data.source=builtin",
        f"sparsity.method={method}", f"sparsity.sparsity={sp}", f"sparsity.block_size={block}",
        f"output_dir={tmp / 'run'}"])
    model = build_model(cfg.model, cfg.sparsity, seed=3)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # non-zero biases and LayerNorms too, so every tensor matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    files = {"model.pt": model.state_dict(), "config.yaml": dump_yaml(config_to_dict(cfg)),
             "vocab.txt": vocab.read_text()}
    return ck.save_checkpoint(tmp / "run" / "checkpoints", ck.CheckpointId(5), files)


def project_logits(model, enc) -> tuple[torch.Tensor, torch.Tensor]:
    S = enc["input_ids"].shape[1]
    positions = torch.arange(S).expand(enc["input_ids"].shape[0], S)
    with torch.no_grad():
        out = model.eval()(enc["input_ids"], positions, enc["token_type_ids"],
                           enc["attention_mask"])
    return out.mlm_logits, out.nsp_logits


VARIANTS = [("dense", 8)] + [("static", 8)] + [("dynamic", b) for b in VALID_BLOCK_SIZES]


@pytest.mark.parametrize("method,block", VARIANTS)
def test_export_round_trip_logits_and_tokenizer(tmp_path, method, block):
    from transformers import AutoModelForPreTraining, AutoTokenizer

    ckpt = make_checkpoint(tmp_path, method, block)
    src = load_pretrained(ckpt)
    sizes = export_folder(src, tmp_path / "hf", with_sparse=method != "dense")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    ours = load_wordpiece(read_vocab(tmp_path / "vocab.txt"), lowercase=True)
    for text, ids, mask in zip(TEXTS, enc["input_ids"], enc["attention_mask"]):
        expected = [2] + ours.encode(text, add_special_tokens=False).ids + [3]
        assert ids[mask.bool()].tolist() == expected
    hf, info = AutoModelForPreTraining.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        out = hf.eval()(**enc)
    mlm, nsp = project_logits(src.model, enc)
    real = enc["attention_mask"].bool()
    assert_close(out.prediction_logits[real], mlm[real], rtol=1e-5, atol=1e-5)
    assert_close(out.seq_relationship_logits, nsp, rtol=1e-5, atol=1e-5)
    assert sizes["model.safetensors"] > 0
    if method != "dense" and block >= 4:  # B = 1: two int32 indices per fp32 value
        assert sizes["sparse/model.safetensors"] < sizes["model.safetensors"]


def test_other_heads_and_fill_mask_pipeline(tmp_path):
    from transformers import (AutoModelForMaskedLM, AutoModelForSequenceClassification,
                              pipeline)

    src = load_pretrained(make_checkpoint(tmp_path, "dynamic", 8))
    export_folder(src, tmp_path / "hf")
    _, info = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"]  # the pooler and NSP head are simply not used
    _, info = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "hf", num_labels=3, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    fill = pipeline("fill-mask", model=str(tmp_path / "hf"), top_k=1)
    best = fill("the cat [MASK] over the house")[0]["token"]
    vocab = read_vocab(tmp_path / "vocab.txt")
    ids = [2] + [vocab.index(w) for w in "the cat [MASK] over the house".split()] + [3]
    enc = {"input_ids": torch.tensor([ids]), "token_type_ids": torch.zeros(1, len(ids), dtype=torch.long),
           "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    mlm, _ = project_logits(src.model, enc)
    assert best == int(mlm[0, 3].argmax())


def test_compressed_form_reloads_bit_exact_and_card_records_run(tmp_path):
    src = load_pretrained(make_checkpoint(tmp_path, "dynamic", 4))
    export_folder(src, tmp_path / "hf", with_sparse=True)
    model, model_cfg, sparsity_cfg = load_compressed(tmp_path / "hf" / "sparse" / "model.safetensors")
    assert sparsity_cfg.block_size == 4 and model_cfg.hidden_size == 64
    mine, theirs = src.model.state_dict(), model.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key
    assert set(sparse_modules(model)) == set(sparse_modules(src.model))
    facts = json.loads((tmp_path / "hf" / "dynsp_run.json").read_text())
    assert facts["block_size"] == 4 and facts["sparsity"] == 0.5 and facts["steps"] == 5
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "| block size | 4 |" in card and "| method | dynamic |" in card
    # an exported folder is itself a source: the compressed form comes back
    again = load_pretrained(tmp_path / "hf")
    assert torch.equal(again.model.state_dict()["bert.encoder.layer.0.output.dense.values"],
                       mine["bert.encoder.layer.0.output.dense.values"])


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = export_cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_exports_and_reports_sizes(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path, "static", 8)
    assert export_cli.main([str(tmp_path / "run"), str(tmp_path / "hf"), "--sparse"]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "sparse/model.safetensors" in out
    assert (tmp_path / "hf" / "config.json").is_file() and ckpt.is_dir()


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path, "dense")
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    cases = [((tmp_path / "missing", tmp_path / "o1"), "does not exist"),
             ((tmp_path / "empty", tmp_path / "o2"), "not a checkpoint folder"),
             ((ckpt, tmp_path / "full"), "exists and is not empty"),
             ((ckpt, tmp_path / "o3", "--sparse"), "dense model")]
    for argv, words in cases:
        code, err = _cli(capsys, *argv)
        assert code == 2 and words in err and len(err.splitlines()) == 1, (argv, err)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "o3").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_mid_run_checkpoint_card_has_the_run_numbers_as_of_its_step(tiny_data, tmp_path, one_thread):
    """Issue 22: a mid-run checkpoint's card said "not recorded" for numbers the run has."""
    from bert_ipu.hub.card import model_card, run_facts
    from tests.bert_ipu.tiny_run import load_metrics, load_updates, run_tiny

    corpus, cache = tiny_data
    out = tmp_path / "run"
    run_tiny(corpus, out, cache)                        # 12 steps, checkpoints every 4, eval every 6
    src = load_pretrained(out / "checkpoints" / "step_00000008")
    facts = run_facts(src, 1, {})
    records = load_metrics(out)
    assert facts["steps"] == 8 and facts["eval_step"] == 6
    assert facts["eval_mlm_loss"] == next(r["eval_mlm_loss"] for r in records if r["step"] == 6 and "eval_mlm_loss" in r)
    assert facts["total_flops"] == next(r["flops"] for r in records if r["step"] == 8 and "flops" in r)
    assert facts["pattern_updates"] == sum(1 for r in load_updates(out) if r["step"] <= 8) > 0
    card = model_card(facts)
    assert "| held-out evaluation at step | 6 |" in card
