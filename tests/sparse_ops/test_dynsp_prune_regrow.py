"""Pure prune / regrow helpers and DynSp methods over linear block indices."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_ops.dynsp.methods import (METHODS, DynSpMethod, LayerPattern, get_method, max_prune,
                                      merge_pattern, register_method)
from sparse_ops.dynsp.prune import block_l1_norms, prune_smallest, split_prune_keep
from sparse_ops.dynsp.regrow import (gradient_regrow, new_block_values, random_regrow, ranks_to_positions,
                                     sample_ranks, sorted_isin)


def _random_pattern(seed: int, n_pos: int, nnz: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_pos, generator=g)[:nnz].sort().values


def test_block_l1_norms_per_block():
    v = torch.tensor([[[1., -2.], [3., -4.]], [[0., 0.], [0., -0.5]]])
    torch.testing.assert_close(block_l1_norms(v), torch.tensor([10.0, 0.5]))
    assert block_l1_norms(v.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="'values'"):
        block_l1_norms(torch.zeros(3, 2))


def test_prune_removes_exactly_the_k_smallest_ties_by_index():
    lin = torch.tensor([3, 8, 11, 20, 21, 40])
    scores = torch.tensor([2.0, 1.0, 5.0, 1.0, 1.0, 0.5])
    kept, pruned = prune_smallest(lin, scores, 3)
    # 0.5 (lin 40) then the tied 1.0s in index order: 8, 20 (21 survives).
    assert pruned.tolist() == [8, 20, 40]
    assert kept.tolist() == [3, 11, 21]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=40), st.data())
def test_prune_matches_brute_force(int_scores, data):
    # Small integer scores force many ties.
    scores = torch.tensor(int_scores, dtype=torch.float32)
    k = data.draw(st.integers(0, len(int_scores)))
    pruned, kept = split_prune_keep(scores, k)
    expected = sorted(range(len(int_scores)), key=lambda i: (int_scores[i], i))[:k]
    assert pruned.tolist() == sorted(expected)
    assert sorted(pruned.tolist() + kept.tolist()) == list(range(len(int_scores)))


def test_prune_k_out_of_range_names_k():
    with pytest.raises(ValueError, match="'k'"):
        split_prune_keep(torch.ones(4), 5)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.data())
def test_sample_ranks_distinct_in_range(m, data):
    k = data.draw(st.integers(0, m))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    r = sample_ranks(m, k, g)
    assert r.numel() == k and r.unique().numel() == k
    assert bool(((r >= 0) & (r < m)).all()) and torch.equal(r, r.sort().values)


def test_sample_ranks_is_uniform():
    # Every rank of [0, 20) is picked with probability k/m = 1/4; 4000 draws -> 1000 +- ~27.
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(20)
    for _ in range(800):
        counts[sample_ranks(20, 5, g)] += 1
    assert float(counts.sum()) == 4000
    assert float((counts - 200).abs().max()) < 60  # ~5 sigma; a biased sampler fails this


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=30, unique=True), st.data())
def test_ranks_to_positions_matches_brute_force(excluded, data):
    excluded_t = torch.tensor(sorted(excluded), dtype=torch.int64)
    free = [p for p in range(200) if p not in set(excluded)]
    ranks = data.draw(st.lists(st.integers(0, 100), max_size=20))
    got = ranks_to_positions(torch.tensor(ranks, dtype=torch.int64), excluded_t)
    assert got.tolist() == [free[r] for r in ranks]


def test_sorted_isin():
    assert sorted_isin(torch.tensor([0, 4, 9]), torch.tensor([4, 5])).tolist() == [False, True, False]
    assert sorted_isin(torch.tensor([1]), torch.tensor([], dtype=torch.int64)).tolist() == [False]


def test_random_regrowth_positions_were_inactive_and_not_just_pruned():
    n_pos, lin = 400, _random_pattern(0, 400, 100)
    scores = torch.rand(100, generator=torch.Generator().manual_seed(1))
    upd = get_method("random").update(LayerPattern(lin, scores, n_pos), 30, torch.Generator().manual_seed(2))
    assert upd.k == 30 and upd.grown.unique().numel() == 30
    assert not bool(torch.isin(upd.grown, lin).any())          # was inactive, incl. just pruned
    assert not bool(torch.isin(upd.grown, upd.pruned).any())   # drop and grow disjoint
    assert bool(torch.isin(upd.pruned, lin).all())
    assert upd.lin.numel() == 100 and torch.equal(upd.lin, upd.lin.unique())
    expected_new = torch.cat([lin[~torch.isin(lin, upd.pruned)], upd.grown]).sort().values
    assert torch.equal(upd.lin, expected_new)


def test_regrow_pruned_option_allows_just_pruned_positions():
    # 6 positions, 4 active: without regrow_pruned only 2 candidates exist; with it, the
    # just-pruned ones are candidates too and (over seeds) get picked.
    lin, scores = torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert max_prune(4, 6, False) == 2 and max_prune(4, 6, True) == 4
    with pytest.raises(ValueError, match="'k'"):
        get_method("random").update(LayerPattern(lin, scores, 6), 3, torch.Generator())
    picked_pruned = False
    for seed in range(20):
        upd = get_method("random", regrow_pruned=True).update(LayerPattern(lin, scores, 6), 3,
                                                              torch.Generator().manual_seed(seed))
        assert upd.pruned.tolist() == [0, 1, 2] and not bool(torch.isin(upd.grown, torch.tensor([3])).any())
        picked_pruned |= bool(torch.isin(upd.grown, upd.pruned).any())
    assert picked_pruned


def test_random_regrow_same_generator_state_same_positions():
    excl = _random_pattern(3, 1000, 300)
    a = random_regrow(1000, excl, 50, torch.Generator().manual_seed(7))
    b = random_regrow(1000, excl, 50, torch.Generator().manual_seed(7))
    c = random_regrow(1000, excl, 50, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.data())
def test_gradient_regrow_chunked_equals_global_topk(chunk, data):
    n = 30
    scores = torch.tensor(data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)), dtype=torch.float32)
    excluded = torch.tensor(sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=20))), dtype=torch.int64)
    k = data.draw(st.integers(0, n - excluded.numel()))
    chunks = [(s, scores[s:s + chunk]) for s in range(0, n, chunk)]
    got = gradient_regrow(chunks, excluded, k)
    candidates = [i for i in range(n) if i not in set(excluded.tolist())]
    expected = sorted(sorted(candidates, key=lambda i: (-float(scores[i]), i))[:k])
    assert got.tolist() == expected


def test_gradient_method_needs_scores_and_picks_largest():
    lin, scores = torch.tensor([0, 5]), torch.tensor([1.0, 9.0])
    method = get_method("gradient")
    with pytest.raises(ValueError, match="'grad_scores'"):
        method.update(LayerPattern(lin, scores, 8), 1, torch.Generator())
    grad = torch.tensor([0., 3., 1., 7., 2., 99., 7., 0.])
    upd = method.update(LayerPattern(lin, scores, 8), 1, torch.Generator(), lambda: [(0, grad)])
    assert upd.pruned.tolist() == [0] and upd.grown.tolist() == [3]  # 5 is excluded; 3 beats 6 on ties
    assert upd.lin.tolist() == [3, 5] and upd.source.tolist() == [-1, 1]


def test_static_method_keeps_pattern():
    lin = torch.tensor([1, 4])
    upd = get_method("static").update(LayerPattern(lin, torch.ones(2), 9), 1, torch.Generator())
    assert torch.equal(upd.lin, lin) and upd.k == 0 and upd.source.tolist() == [0, 1]


def test_merge_pattern_source_permutation():
    lin, source = merge_pattern(torch.tensor([0, 3]), torch.tensor([2, 30]), torch.tensor([1, 40]))
    assert lin.tolist() == [1, 2, 30, 40] and source.tolist() == [-1, 0, 3, -2]


def test_registry_rejects_duplicates_and_lists_names():
    assert set(METHODS) >= {"static", "random", "gradient"}
    with pytest.raises(ValueError, match=r"'name'.*\['gradient', 'random', 'static'\]"):
        get_method("set")

    class Again(DynSpMethod):
        name = "random"
    with pytest.raises(ValueError, match="already registered"):
        register_method(Again)
    with pytest.raises(ValueError, match="'regrow_pruned'"):
        get_method("random", regrow_pruned="yes")


def test_new_block_values():
    assert torch.equal(new_block_values(3, 4, "zero", torch.Generator()), torch.zeros(3, 4, 4))
    v = new_block_values(500, 4, "normal", torch.Generator().manual_seed(0))
    assert float(v.abs().max()) <= 0.04 and 0.012 < float(v.std()) < 0.02  # truncated at 2 std
    with pytest.raises(ValueError, match="'init'"):
        new_block_values(1, 1, "ones", torch.Generator())
