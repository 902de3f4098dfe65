"""Training FLOPs per DESIGN section 2 (sparse_ops/flops.py)."""
from __future__ import annotations

import pytest

from sparse_ops.flops import (attention_flops_per_sequence, linear_flops_per_sequence, nnz_weights,
                              rigl_flops_per_update, training_flops_per_sequence, training_flops_total)


def test_dense_layer_equals_hand_count():
    # One dense 768 x 3072 layer, 128 tokens: forward 2 * 128 * 768 * 3072 multiply-adds,
    # backward twice that (grad input + grad weight).
    fwd = 2 * 128 * 768 * 3072
    assert linear_flops_per_sequence([(768, 3072)], 128) == 3 * fwd == 1_811_939_328


def test_sparse_layer_counts_active_weights_only():
    # 64 x 64 at B = 16: 16 blocks, s = 0.75 -> 4 blocks -> 1024 weights.
    assert nnz_weights([(64, 64)], 0.75, 16) == [1024]
    assert linear_flops_per_sequence([(64, 64)], 10, sparsity=0.75, block_size=16) == 3 * 2 * 10 * 1024
    # Rounding is per block: 48 x 48 blocks at s = 0.9 -> round(230.4) = 230 blocks.
    assert nnz_weights([(768, 768)], 0.9, 16) == [230 * 256]


def test_attention_term():
    assert attention_flops_per_sequence(128, 768, 12) == 3 * 4 * 128**2 * 768 * 12


def test_bert_base_dense_total():
    shapes = ([(768, 768)] * 4 + [(3072, 768), (768, 3072)]) * 12
    b = training_flops_per_sequence(shapes, seq_len=128, hidden=768, n_layers=12)
    weights = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert b.sparse_linears == 6 * 128 * weights
    assert b.flops_per_sequence == 3 * (2 * 128 * weights + 4 * 128**2 * 768 * 12)
    assert b.rigl_extra_per_update_sequence == 0


def test_rigl_extra_per_update_and_amortised():
    shapes = [(8, 4), (4, 8)]
    assert rigl_flops_per_update(shapes, n_tokens=100) == 2 * 100 * 64
    b = training_flops_per_sequence(shapes, seq_len=10, hidden=4, n_layers=1, sparsity=0.5,
                                    n_updates=5, regrow="gradient", training_steps=50)
    assert b.rigl_extra_per_update_sequence == 2 * 10 * 64
    assert b.rigl_extra_per_sequence == pytest.approx(5 * 2 * 10 * 64 / 50)
    assert b.flops_per_sequence == pytest.approx(b.sparse_linears + b.attention + 5 * 1280 / 50)
    random = training_flops_per_sequence(shapes, seq_len=10, hidden=4, n_layers=1, sparsity=0.5,
                                         n_updates=5, regrow="random", training_steps=50)
    assert random.rigl_extra_per_update_sequence == 0 and random.flops_per_sequence < b.flops_per_sequence
    unknown_steps = training_flops_per_sequence(shapes, seq_len=10, hidden=4, n_layers=1, n_updates=5,
                                                regrow="gradient")
    assert unknown_steps.rigl_extra_per_sequence is None


def test_run_total_is_exact():
    shapes = [(8, 4)]
    kw = dict(seq_len=10, hidden=4, n_layers=1, sparsity=0.5, n_updates=3, regrow="gradient")
    per_seq = training_flops_per_sequence(shapes, **kw)
    total = training_flops_total(shapes, training_steps=20, batch_size=6, **kw)
    assert total == (per_seq.sparse_linears + per_seq.attention) * 120 + 3 * 6 * 2 * 10 * 32
    assert total == pytest.approx(training_flops_per_sequence(shapes, training_steps=20, **kw).total(120))


@pytest.mark.parametrize("call, arg", [
    (lambda: linear_flops_per_sequence([(4, 4)], 0), "seq_len"),
    (lambda: attention_flops_per_sequence(8, 0, 1), "hidden"),
    (lambda: rigl_flops_per_update([(4, 4)], -1), "n_tokens"),
    (lambda: training_flops_per_sequence([(4, 4)], seq_len=8, hidden=4, n_layers=1, regrow="rigl"), "regrow"),
    (lambda: training_flops_per_sequence([(4, 4)], seq_len=8, hidden=4, n_layers=1, n_updates=-2), "n_updates"),
    (lambda: nnz_weights([(4, 4)], 1.2), "sparsity"),
    (lambda: training_flops_total([(4, 4)], seq_len=8, hidden=4, n_layers=1, training_steps=5,
                                  batch_size=0), "batch_size"),
])
def test_errors_name_the_argument(call, arg):
    with pytest.raises(ValueError, match=f"'{arg}'"):
        call()
