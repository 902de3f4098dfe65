"""Per-layer densities: uniform and Erdos-Renyi (sparse_ops/dynsp/distribution.py)."""
from __future__ import annotations

import pytest

from sparse_ops.dynsp.distribution import erdos_renyi_densities, layer_block_counts, layer_densities
from sparse_ops.format import nnz_for_density

BERT_BASE = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]


def test_uniform_is_one_minus_s_per_layer():
    assert layer_densities(BERT_BASE, 0.75) == [0.25] * 6
    assert layer_block_counts([(768, 768)], 0.9, "uniform", 16) == [230]  # round(0.1 * 2304)


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.99])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_erdos_renyi_preserves_total_sparsity(sparsity, block_size):
    shapes = BERT_BASE + [(128, 64), (64, 2048)]
    counts = layer_block_counts(shapes, sparsity, "erdos_renyi", block_size)
    n_blocks = [(o // block_size) * (i // block_size) for o, i in shapes]
    assert sum(counts) == round((1 - sparsity) * sum(n_blocks))
    assert all(1 <= c <= n for c, n in zip(counts, n_blocks))
    # SparseLinear builds nnz = round(density * n_blocks): the densities give the counts back.
    densities = layer_densities(shapes, sparsity, "erdos_renyi", block_size)
    assert [nnz_for_density(n, d) for n, d in zip(n_blocks, densities)] == counts


def test_erdos_renyi_scales_with_fan_in_plus_fan_out():
    d_sq, d_ffn = erdos_renyi_densities([(768, 768), (3072, 768)], 0.9)
    assert d_sq / d_ffn == pytest.approx(((768 + 768) / 768**2) / ((3072 + 768) / (3072 * 768)))


def test_erdos_renyi_caps_small_layers_at_dense():
    d = erdos_renyi_densities([(4, 4), (1024, 1024)], 0.5)
    assert d[0] == 1.0  # eps * (8 / 16) would exceed 1
    total = 16 * d[0] + 1024**2 * d[1]
    assert total == pytest.approx(0.5 * (16 + 1024**2))


@pytest.mark.parametrize("kwargs, arg", [
    (dict(shapes=[(8, 8)], sparsity=1.0), "sparsity"),
    (dict(shapes=[(8, 8)], sparsity=0.5, distribution="normal"), "distribution"),
    (dict(shapes=[(8, 6)], sparsity=0.5, block_size=4), "shapes"),
    (dict(shapes=[], sparsity=0.5), "shapes"),
    (dict(shapes=[(8, 8)], sparsity=0.5, block_size=0), "block_size"),
])
def test_errors_name_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=f"'{arg}'"):
        layer_densities(**kwargs)
