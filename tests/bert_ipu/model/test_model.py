"""The BERT model: HF BertForPreTraining parity, masked-only MLM head, factory, init, groups."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bert_ipu.config import load_config
from bert_ipu.train.optim import parameter_groups
from bert_ipu.model import (
    ENCODER_LINEARS, BertForPreTraining, build_model, encoder_linear_shapes,
    sparse_modules,
)

transformers = pytest.importorskip("transformers")

V, S, P = 96, 16, 5
SMALL = ["model.size=null", "model.hidden_size=32", "model.num_hidden_layers=2",
         "model.num_attention_heads=2", f"model.vocab_size={V}", f"data.vocab_size={V}",
         "model.max_position_embeddings=64", "data.sequence_length=16", "data.mask_tokens=5"]
NO_DROPOUT = ["model.hidden_dropout_prob=0", "model.attention_probs_dropout_prob=0"]
SPARSE = ["sparsity.method=dynamic", "sparsity.sparsity=0.75", "sparsity.block_size=8"]


def small_cfg(*extra: str):
    return load_config(None, [*SMALL, *NO_DROPOUT, *extra])


def hf_model(cfg) -> nn.Module:
    m = cfg.model
    hf_cfg = transformers.BertConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads, intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings, type_vocab_size=m.type_vocab_size,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=m.layer_norm_eps)
    return transformers.BertForPreTraining(hf_cfg).eval()


def batch(seed: int = 0, B: int = 3) -> dict[str, torch.Tensor]:
    """A padded batch with P masked slots; the last slot of row 0 is padding (weight 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 11:] = 0
    ids[1, 11:] = 0
    types = (torch.arange(S) >= 7).long().expand(B, S).clone() * mask
    positions = torch.stack([torch.randperm(10, generator=g)[:P] + 1 for _ in range(B)])
    weights = torch.ones(B, P)
    positions[0, -1], weights[0, -1] = 0, 0.0
    labels = torch.randint(5, V, (B, P), generator=g)
    return dict(input_ids=ids, token_type_ids=types, attention_mask=mask,
                masked_lm_positions=positions, masked_lm_ids=labels, masked_lm_weights=weights,
                next_sentence_label=torch.tensor([0, 1, 0][:B]))


# ---------------------------------------------------------------- HF parity
def test_dense_state_dict_matches_hf_keys_and_shapes_and_loads_both_ways():
    cfg = small_cfg()
    ours, theirs = build_model(cfg.model, cfg.sparsity, 0), hf_model(cfg)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert set(ours_sd) == set(theirs_sd)
    assert {k: tuple(v.shape) for k, v in ours_sd.items()} == \
        {k: tuple(v.shape) for k, v in theirs_sd.items()}
    theirs.load_state_dict(ours_sd, strict=True)
    ours.load_state_dict(hf_model(cfg).state_dict(), strict=True)


def test_dense_forward_equals_hf_in_eval_mode():
    cfg = small_cfg()
    theirs = hf_model(cfg)
    ours = build_model(cfg.model, cfg.sparsity, 1).eval()
    ours.load_state_dict(theirs.state_dict())
    b = batch()
    with torch.no_grad():
        out = ours(**b)
        ref = theirs(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"],
                     attention_mask=b["attention_mask"])
    index = b["masked_lm_positions"].unsqueeze(-1).expand(-1, -1, V)
    torch.testing.assert_close(out.mlm_logits, torch.gather(ref.prediction_logits, 1, index))
    torch.testing.assert_close(out.nsp_logits, ref.seq_relationship_logits)


def test_masked_only_loss_equals_full_logits_loss_and_hf_loss():
    cfg = small_cfg()
    theirs = hf_model(cfg)
    ours = build_model(cfg.model, cfg.sparsity, 2).eval()
    ours.load_state_dict(theirs.state_dict())
    b = batch(seed=3)
    B = b["input_ids"].shape[0]
    labels = torch.full((B, S), -100)  # HF-style labels over all S tokens
    for r in range(B):
        for p in range(P):
            if b["masked_lm_weights"][r, p] > 0:
                labels[r, b["masked_lm_positions"][r, p]] = b["masked_lm_ids"][r, p]
    with torch.no_grad():
        out = ours(**b)
        every = torch.arange(S).expand(B, S)
        full = ours(b["input_ids"], every, b["token_type_ids"], b["attention_mask"]).mlm_logits
        ref = theirs(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"],
                     attention_mask=b["attention_mask"], labels=labels,
                     next_sentence_label=b["next_sentence_label"])
    torch.testing.assert_close(out.mlm_loss, F.cross_entropy(full.reshape(-1, V), labels.flatten()))
    torch.testing.assert_close(out.loss, ref.loss)
    assert out.mlm_count == int((labels != -100).sum())


def test_vocab_projection_only_sees_the_masked_positions():
    cfg = small_cfg()
    model = build_model(cfg.model, cfg.sparsity, 0)
    seen: list[tuple[int, ...]] = []
    model.cls.predictions.decoder.register_forward_hook(
        lambda mod, args, out: seen.append(tuple(args[0].shape)))
    b = batch()
    out = model(**b)
    assert seen == [(3, P, 32)] and tuple(out.mlm_logits.shape) == (3, P, V)
    assert tuple(out.nsp_logits.shape) == (3, 2)


def test_padding_mask_hides_padded_tokens():
    cfg = small_cfg()
    model = build_model(cfg.model, cfg.sparsity, 0).eval()
    b = batch()
    changed = dict(b, input_ids=b["input_ids"].clone())
    changed["input_ids"][1, 11:] = 7  # padded positions of row 1
    with torch.no_grad():
        a, c = model(**b), model(**changed)
    torch.testing.assert_close(a.mlm_logits, c.mlm_logits)
    torch.testing.assert_close(a.nsp_logits, c.nsp_logits)
    with torch.no_grad():  # without the mask the padded tokens would matter
        d = model(**dict(changed, attention_mask=None))
    assert not torch.allclose(a.nsp_logits, d.nsp_logits)


def test_loss_weights_counts_and_ignored_ids():
    cfg = small_cfg()
    model = build_model(cfg.model, cfg.sparsity, 0)
    b = batch()
    out = model(**b)
    logits = out.mlm_logits.detach().reshape(-1, V)
    ce = F.cross_entropy(logits, b["masked_lm_ids"].flatten(), reduction="none")
    w = b["masked_lm_weights"].flatten()
    torch.testing.assert_close(out.mlm_loss.detach(), (ce * w).sum() / w.sum())
    correct = ((logits.argmax(-1) == b["masked_lm_ids"].flatten()).float() * w).sum()
    assert out.mlm_correct == correct and out.mlm_count == w.sum()
    assert out.nsp_count == 3 and 0 <= out.nsp_correct <= 3
    torch.testing.assert_close(out.loss, out.mlm_loss + out.nsp_loss)
    ids = b["masked_lm_ids"].clone()
    ids[0, -1] = -100  # -100 never contributes, whatever its weight
    again = model(**dict(b, masked_lm_ids=ids, masked_lm_weights=None))
    torch.testing.assert_close(again.mlm_loss, out.mlm_loss)
    assert model(b["input_ids"], b["masked_lm_positions"]).loss is None


# ---------------------------------------------------------------- init and ties
def test_init_follows_hf_semantics_with_truncation():
    cfg = load_config(None, ["model.size=tiny", "data.vocab_size=2000"])
    model = build_model(cfg.model, cfg.sparsity, 0)
    std = cfg.model.initializer_range
    for name, p in model.named_parameters():
        if "LayerNorm.weight" in name:
            assert torch.all(p == 1), name
        elif p.ndim == 1:
            assert torch.all(p == 0), name
        else:
            assert p.abs().max() <= 2 * std + 1e-7, name
    w = model.bert.encoder.layer[0].intermediate.dense.weight
    assert 0.8 * std < float(w.detach().std()) < 0.95 * std  # truncated at 2 std: std ~ 0.88 std
    assert torch.all(model.bert.embeddings.word_embeddings.weight[cfg.model.pad_token_id] == 0)


def test_build_is_deterministic_and_leaves_the_global_rng_alone():
    cfg = small_cfg()
    state = torch.random.get_rng_state()
    a = build_model(cfg.model, cfg.sparsity, 5).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_model(cfg.model, cfg.sparsity, 5).state_dict()
    c = build_model(cfg.model, cfg.sparsity, 6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["bert.pooler.dense.weight"], c["bert.pooler.dense.weight"])


def test_decoder_is_tied_to_the_word_embeddings_and_bias():
    cfg = small_cfg()
    model = build_model(cfg.model, cfg.sparsity, 0)
    head = model.cls.predictions
    assert head.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert head.decoder.bias is head.bias
    model.load_state_dict(hf_model(cfg).state_dict())
    assert head.decoder.weight is model.bert.embeddings.word_embeddings.weight


# ---------------------------------------------------------------- factory and sparse models
def test_the_model_is_sparsified_through_the_public_api(monkeypatch):
    """Issue 22: our own trainer's model goes through `sparse_ops.sparsify`, the call a user
    makes; each layer's pattern is the one SparseLinear draws from (sparsity.seed, name)."""
    import zlib

    from sparse_ops import convert
    from sparse_ops.linear import SparseLinear

    calls = []
    real = convert.sparsify
    monkeypatch.setattr(convert, "sparsify", lambda *a, **k: calls.append(k) or real(*a, **k))
    cfg = small_cfg(*SPARSE, "sparsity.backend=reference", "sparsity.seed=5")
    model = build_model(cfg.model, cfg.sparsity, 0)
    assert len(calls) == 1 and calls[0]["init"] == "random"
    sparse = sparse_modules(model)
    assert sorted(sparse) == sorted(calls[0]["patterns"]) and len(sparse) == 6 * 2
    for name, layer in sparse.items():
        seed = (5 * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)
        want = SparseLinear(layer.in_features, layer.out_features, density=calls[0]["density"][name],
                            block_size=8, seed=seed)
        assert torch.equal(layer.rows, want.rows) and torch.equal(layer.cols, want.cols), name
    a, b = sparse["bert.encoder.layer.0.intermediate.dense"], sparse["bert.encoder.layer.1.intermediate.dense"]
    assert not torch.equal(a.rows * 64 + a.cols, b.rows * 64 + b.cols)
    assert not any(p.is_meta for p in model.parameters())
    dense = build_model(small_cfg().model, small_cfg().sparsity, 0)
    assert not sparse_modules(dense) and all(not p.is_meta for p in dense.parameters())


def test_sparse_model_has_sparse_encoder_linears_only():
    linear = pytest.importorskip("sparse_ops.linear")
    cfg = small_cfg(*SPARSE)
    model = build_model(cfg.model, cfg.sparsity, 0)
    sparse = sparse_modules(model)
    assert set(sparse) == set(encoder_linear_shapes(cfg.model))
    assert len(sparse) == len(ENCODER_LINEARS) * cfg.model.num_hidden_layers
    for name, layer in sparse.items():
        out_f, in_f = encoder_linear_shapes(cfg.model)[name]
        assert (layer.out_features, layer.in_features) == (out_f, in_f)
        assert layer.nnz == round(0.25 * (out_f // 8) * (in_f // 8)), name
    for name in ("bert.pooler.dense", "cls.predictions.transform.dense", "cls.seq_relationship"):
        assert not isinstance(model.get_submodule(name), linear.SparseLinear)
    assert sparse_modules(build_model(small_cfg().model, small_cfg().sparsity, 0)) == {}
    out = model(**batch())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(m.values.grad is not None and m.values.grad.abs().sum() > 0 for m in sparse.values())


def test_erdos_renyi_keeps_the_total_and_varies_by_shape():
    pytest.importorskip("sparse_ops.dynsp.distribution")
    cfg = small_cfg(*SPARSE, "sparsity.distribution=erdos_renyi")
    sparse = sparse_modules(build_model(cfg.model, cfg.sparsity, 0))
    shapes = encoder_linear_shapes(cfg.model)
    active = sum(m.nnz * 64 for m in sparse.values())
    total = sum(o * i for o, i in shapes.values())
    assert abs(active / total - 0.25) < 64 / total + 1e-9
    square = sparse["bert.encoder.layer.0.attention.self.query"].density
    assert square > sparse["bert.encoder.layer.0.intermediate.dense"].density


def test_parameter_groups_decay_weights_not_biases_or_layernorm():
    pytest.importorskip("sparse_ops.linear")
    cfg = small_cfg(*SPARSE)
    model = build_model(cfg.model, cfg.sparsity, 0)
    decay, no_decay = parameter_groups(model, 0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert not decayed & plain and len(decay["params"]) + len(no_decay["params"]) == len(names)
    assert all(n.endswith("bias") or "LayerNorm" in n for n in plain)
    assert all(not n.endswith("bias") and "LayerNorm" not in n for n in decayed)
    assert "bert.encoder.layer.0.attention.self.query.values" in decayed
    assert "bert.embeddings.word_embeddings.weight" in decayed
    assert "cls.predictions.bias" in plain


def test_model_class_defaults_to_dense():
    cfg = small_cfg()
    model = BertForPreTraining(cfg.model)
    assert isinstance(model.bert.encoder.layer[1].output.dense, nn.Linear)
