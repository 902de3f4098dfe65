"""Issue 22, item 1: DynSp on a model the user already has (sparse_ops.sparsify / densify,
the Hugging Face Trainer callback) and the runnable examples."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

import sparse_ops
from sparse_ops import DynSpController, SparseLinear, densify, sparsify
from sparse_ops.convert import SparsifyError

ROOT = Path(__file__).resolve().parents[2]


def _bert(hidden: int = 64) -> BertForMaskedLM:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=4 * hidden, max_position_embeddings=32)
    return BertForMaskedLM(cfg).eval()


def test_sparsify_replaces_the_encoder_linears_in_compressed_form() -> None:
    model = _bert()
    x = torch.randint(0, 100, (2, 12))
    want = model(input_ids=x).logits
    names = sparsify(model, sparsity=0.0, block_size=16)     # every block kept: the same model
    assert len(names) == 12 and all(isinstance(model.get_submodule(n), SparseLinear) for n in names)
    torch.testing.assert_close(model(input_ids=x).logits, want, rtol=1e-5, atol=1e-5)
    model = _bert()
    sparsify(model, sparsity=0.75, block_size=16)
    ffn = model.bert.encoder.layer[0].intermediate.dense
    assert ffn.values.shape == (round(0.25 * 16 * 4), 16, 16)        # only the active blocks exist
    assert not any(n.endswith("intermediate.dense.weight") for n, _ in model.named_parameters())


def test_magnitude_init_keeps_the_largest_blocks_and_random_init_draws_fresh_weights() -> None:
    model = _bert()
    dense = model.bert.encoder.layer[0].output.dense.weight.detach().clone()
    sparsify(model, sparsity=0.5, block_size=16, patterns=["*.layer.0.output.dense"])
    layer = model.bert.encoder.layer[0].output.dense
    norms = dense.reshape(4, 16, 16, 16).abs().sum((1, 3))
    kept = norms[layer.rows.long(), layer.cols.long()]
    assert kept.min() >= norms.flatten().kthvalue(norms.numel() - layer.nnz).values
    model = _bert()
    sparsify(model, sparsity=0.5, block_size=16, init="random", seed=3)
    assert model.bert.encoder.layer[0].output.dense.values.abs().max() <= 0.04 + 1e-6   # trunc normal


def test_densify_round_trip_and_a_non_bert_model() -> None:
    model = _bert()
    sparsify(model, sparsity=0.5, block_size=16)
    x = torch.randint(0, 100, (2, 12))
    want = model(input_ids=x).logits
    assert len(densify(model)) == 12
    assert not any(isinstance(m, SparseLinear) for m in model.modules())
    torch.testing.assert_close(model(input_ids=x).logits, want, rtol=1e-5, atol=1e-5)
    roberta = RobertaForMaskedLM(RobertaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=256,
                                               max_position_embeddings=40))
    assert len(sparsify(roberta, sparsity=0.9, block_size=16)) == 12


def test_controller_updates_a_sparsified_hf_model_in_a_plain_loop() -> None:
    model = _bert().train()
    sparsify(model, sparsity=0.75, block_size=16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    controller = DynSpController(model, opt, 12, n_updates=2, seed=0)
    x = torch.randint(0, 100, (4, 12))
    updates = []
    for t in range(12):
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        if (r := controller.step(t)) is not None:
            updates.append(r["update_index"])
        opt.zero_grad()
    assert updates == [0, 1]
    # the optimizer state is compressed: the moments have the values' shape
    ffn = model.bert.encoder.layer[0].intermediate.dense
    assert opt.state[ffn.values]["exp_avg"].shape == ffn.values.shape


def test_bad_input_is_one_line_and_changes_nothing() -> None:
    model = _bert()
    with pytest.raises(SparsifyError, match="no nn.Linear of the model matches"):
        sparsify(model, patterns=["*.nothing"])
    odd = _bert(hidden=72)          # 72 is not a multiple of 16
    with pytest.raises(SparsifyError, match=r"layer 'bert.encoder.layer.0.attention.self.query' is "
                                            r"\(72, 72\), not a multiple of block_size=16"):
        sparsify(odd, block_size=16)
    assert not any(isinstance(m, SparseLinear) for m in odd.modules())
    with pytest.raises(SparsifyError, match="'sparsity' must be in"):
        sparsify(model, sparsity=1.0)
    with pytest.raises(SparsifyError, match="'init' must be"):
        sparsify(model, init="ones")
    assert sparse_ops.__getattr__("sparsify") is sparsify


@pytest.mark.parametrize("example", ["plain_loop.py", "hf_trainer.py"])
def test_examples_run_offline(example: str, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / example), str(tmp_path / "out")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "saved" in out.stdout and (tmp_path / "out" / "config.json").is_file()
    if example == "hf_trainer.py":
        assert "pattern updates: 4" in out.stdout
