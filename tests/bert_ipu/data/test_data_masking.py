"""Whole-word masking (bert_ipu/data/masking.py) on real WordPiece data and by hand."""
from __future__ import annotations

import numpy as np
import pytest

from bert_ipu.data import DataConfig, build_datasets
from bert_ipu.data.batching import assemble
from bert_ipu.data.masking import (
    apply_fixed_masks, choose_words, counter_uniforms, mask_batch,
)

P = 20


@pytest.fixture(scope="module")
def train_ds(shared_data, tmp_path_factory):
    spec = DataConfig(source="builtin", cache_dir=str(tmp_path_factory.mktemp("cache")),
                    vocab_file=str(shared_data / "vocab/bert-base-uncased-vocab.txt"))
    train, _, _ = build_datasets(spec, log=lambda msg: None)
    return train


def masked_rows(ds, index, epoch=0):
    rows = assemble(ds.arrays, index, ds.sequence_length, ds.info.special_ids,
                    ds.is_continuation)
    s = ds.sequence_length
    u = counter_uniforms(ds.seed, 0, epoch, index, 4 * s).reshape(-1, 4, s)
    masked = mask_batch(rows.input_ids, rows.lengths, rows.candidate, rows.word_start, u,
                        mask_id=ds.info.mask_id, replacement_ids=ds.replacement_ids,
                        max_predictions=P, masked_lm_prob=0.15)
    return rows, masked


def words_of(tokens: list[str]) -> list[list[int]]:
    """Positions of each word: a token and its following '##' pieces; specials excluded."""
    words: list[list[int]] = []
    previous = "[CLS]"
    for i, token in enumerate(tokens):
        if token in ("[CLS]", "[SEP]", "[PAD]"):
            pass
        elif token.startswith("##") and previous not in ("[CLS]", "[SEP]"):
            words[-1].append(i)
        else:
            words.append([i])
        previous = token
    return words


def test_whole_words_masked_together(train_ds):
    vocab = (train_ds.folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
    rows, masked = masked_rows(train_ds, np.arange(400))
    multi_piece_words_masked = 0
    for r in range(400):
        chosen = set(masked.positions[r][masked.weights[r] > 0].tolist())
        for word in words_of([vocab[i] for i in rows.input_ids[r]]):
            members = set(word)
            assert members <= chosen or not (members & chosen), (r, word, chosen)
            multi_piece_words_masked += len(word) > 1 and members <= chosen
    assert multi_piece_words_masked > 50  # '##' pieces are predicted, with their word


def test_prediction_count_and_targets(train_ds):
    index = np.arange(len(train_ds))
    rows, masked = masked_rows(train_ds, index)
    count = masked.weights.sum(axis=1)
    target = np.minimum(P, np.maximum(1, np.rint(rows.lengths * 0.15)))
    assert count.max() <= P and (count <= target).all() and (count >= 1).all()
    assert (count == target).mean() > 0.95  # greedy skipping fills the budget
    assert abs(count.sum() / rows.lengths.sum() - 0.15) < 0.02  # 15% of tokens


def test_positions_labels_and_specials(train_ds):
    index = np.arange(300)
    rows, masked = masked_rows(train_ds, index)
    valid = masked.weights > 0
    assert (masked.positions[valid] > 0).all() and (masked.positions[~valid] == 0).all()
    assert (masked.labels[~valid] == 0).all()
    ascending = np.diff(masked.positions, axis=1) > 0
    assert (ascending | ~valid[:, 1:]).all()  # predictions listed in position order
    original = np.take_along_axis(rows.input_ids, masked.positions, axis=1)
    assert (masked.labels[valid] == original[valid]).all()
    specials = [train_ds.info.cls_id, train_ds.info.sep_id, train_ds.info.pad_id]
    assert not np.isin(masked.labels[valid], specials).any()
    untouched = np.ones_like(rows.input_ids, dtype=bool)
    np.put_along_axis(untouched, masked.positions, False, axis=1)
    untouched[:, 0] = True
    assert (masked.input_ids[untouched] == rows.input_ids[untouched]).all()


def test_80_10_10(train_ds):
    rows, masked = masked_rows(train_ds, np.arange(len(train_ds)))
    valid = masked.weights > 0
    now = np.take_along_axis(masked.input_ids, masked.positions, axis=1)[valid]
    before = masked.labels[valid]
    n = len(now)
    as_mask = (now == train_ds.info.mask_id).mean()
    same = (now == before).mean()
    assert n > 50_000
    assert abs(as_mask - 0.8) < 0.01 and abs(same - 0.1) < 0.01
    assert abs(1 - as_mask - same - 0.1) < 0.01  # random replacements
    assert not np.isin(now, [train_ds.info.cls_id, train_ds.info.sep_id,
                             train_ds.info.pad_id]).any()


def test_masks_depend_on_index_and_epoch_only(train_ds):
    _, both = masked_rows(train_ds, np.array([7, 11]))
    _, alone = masked_rows(train_ds, np.array([11]))
    assert (both.input_ids[1] == alone.input_ids[0]).all()
    assert (both.positions[1] == alone.positions[0]).all()
    _, again = masked_rows(train_ds, np.arange(50), epoch=0)
    _, other = masked_rows(train_ds, np.arange(50), epoch=1)
    _, first = masked_rows(train_ds, np.arange(50), epoch=0)
    assert (again.positions == first.positions).all()
    assert (other.positions != first.positions).any(axis=1).mean() > 0.9


def test_choose_words_greedy_skips_words_that_do_not_fit():
    # words: [1 2 3] (3 tokens, key .1), [4] (.2), [5 6] (.3), [7] (.4); budget 3
    candidate = np.ones((1, 7), dtype=bool)
    word_start = np.array([[1, 0, 0, 1, 1, 0, 1]], dtype=bool)
    keys = np.array([[0.1, 0.9, 0.9, 0.2, 0.3, 0.9, 0.4]])
    chosen = choose_words(candidate, word_start, keys, np.array([3]))
    assert chosen.tolist() == [[True, True, True, False, False, False, False]]
    chosen = choose_words(candidate, word_start, keys, np.array([2]))
    # [1 2 3] does not fit; [4] fits (1), [5 6] does not (3 > 2), [7] fits (2)
    assert chosen.tolist() == [[False, False, False, True, False, False, True]]


def test_fixed_masks_round_trip(train_ds):
    index = np.arange(64)
    rows, masked = masked_rows(train_ds, index)
    repl = np.take_along_axis(masked.input_ids, masked.positions, axis=1)
    again = apply_fixed_masks(rows.input_ids, masked.positions, repl)
    for name in ("input_ids", "positions", "labels", "weights"):
        assert (getattr(again, name) == getattr(masked, name)).all(), name


def test_counter_uniforms_are_uniform():
    u = counter_uniforms(3, 0, 0, np.arange(2000), 64).ravel()
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 0.095 * len(u)
