"""Whole-word masking of a batch of assembled sequences (numpy, vectorised over the batch).

Per sequence, as in Google BERT's `create_masked_lm_predictions` with whole-word masking:
  * candidates: every real token except [CLS] / [SEP] / [PAD]; a word is a token and its
    following `##` continuations (a segment's first token always starts a word);
  * words are visited in random order and taken whole while they fit into
    num_to_predict = min(P, max(1, round(len * masked_lm_prob))) (len counts [CLS] and
    [SEP]s, as Google); a word that does not fit is skipped, later smaller ones may fit;
  * each chosen token independently: 80% -> [MASK], 10% -> a random non-special token,
    10% -> unchanged.
Predictions are listed in position order and padded to P with position 0 / id 0 /
weight 0 ([CLS] at position 0 is never a prediction, so padding is unambiguous).

Randomness comes from `counter_uniforms(seed, stream, epoch, index)`: a counter-based
hash, so a sequence's mask depends only on (seed, stream, epoch, dataset index) — never
on the batch it is in, the worker that builds it or what was drawn before.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRAIN_STREAM = 0
EVAL_STREAM = 1
ORDER_STREAM = 2
UNIFORMS_PER_TOKEN = 4  # word key, mask-or-not, keep-or-random, random id

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrap-around arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _combine(h: np.ndarray, value: np.ndarray) -> np.ndarray:
    return _mix(h ^ _mix(value.astype(np.uint64) + _GOLDEN))


def counter_uniforms(seed: int, stream: int, epoch: int, index: np.ndarray,
                     width: int) -> np.ndarray:
    """[N, width] float64 uniforms in [0, 1), row i a function of (seed, stream, epoch,
    index[i]) only.

    >>> a = counter_uniforms(1, 0, 0, np.array([5, 7]), 3)
    >>> b = counter_uniforms(1, 0, 0, np.array([7]), 3)
    >>> bool((a[1] == b[0]).all()), a.shape
    (True, (2, 3))
    """
    h = _mix(np.array([seed], dtype=np.uint64))
    h = _combine(_combine(h, np.array([stream])), np.array([epoch]))
    rows = _combine(h, np.asarray(index, dtype=np.int64).reshape(-1))
    bits = _combine(rows[:, None], np.arange(width, dtype=np.int64)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


@dataclass
class MaskedBatch:
    """Masked sequences: input_ids [N, S] int64; positions, labels [N, P] int64;
    weights [N, P] float32 (1 = a real prediction)."""

    input_ids: np.ndarray
    positions: np.ndarray
    labels: np.ndarray
    weights: np.ndarray


def _word_lengths(candidate: np.ndarray, word_start: np.ndarray) -> tuple[np.ndarray, ...]:
    """(word id [N, S] of each candidate (-1 elsewhere), word length [N, S] by word id)."""
    n, s = candidate.shape
    starts = word_start & candidate
    wid = np.where(candidate, np.cumsum(starts, axis=1) - 1, -1)
    flat = (np.arange(n)[:, None] * s + wid)[candidate]
    lengths = np.bincount(flat, minlength=n * s).reshape(n, s)
    return wid, lengths


def choose_words(candidate: np.ndarray, word_start: np.ndarray, keys: np.ndarray,
                 num_to_predict: np.ndarray) -> np.ndarray:
    """[N, S] bool: the positions chosen for prediction (whole words, greedy in key order).

    candidate, word_start, keys [N, S]; num_to_predict [N] int. The key of a word is the
    key at its first token; words are visited by increasing key and taken if they fit.
    """
    n, s = candidate.shape
    wid, lengths = _word_lengths(candidate, word_start)
    starts = word_start & candidate
    word_keys = np.full((n, s), np.inf)
    rows, cols = np.nonzero(starts)
    word_keys[rows, wid[rows, cols]] = keys[rows, cols]
    order = np.argsort(word_keys, axis=1, kind="stable")  # [N, S] word ids by key
    sorted_len = np.take_along_axis(lengths, order, axis=1)
    taken = np.zeros((n, s), dtype=bool)
    count = np.zeros(n, dtype=np.int64)
    max_words = int(starts.sum(axis=1).max(initial=0))
    for k in range(max_words):  # greedy; usually stops after ~num_to_predict words
        fits = (sorted_len[:, k] > 0) & (count + sorted_len[:, k] <= num_to_predict)
        taken[:, k] = fits
        count += np.where(fits, sorted_len[:, k], 0)
        if (count >= num_to_predict).all():
            break
    chosen_word = np.zeros((n, s), dtype=bool)
    np.put_along_axis(chosen_word, order, taken, axis=1)
    return candidate & np.take_along_axis(chosen_word, np.maximum(wid, 0), axis=1)


def mask_batch(input_ids: np.ndarray, lengths: np.ndarray, candidate: np.ndarray,
               word_start: np.ndarray, uniforms: np.ndarray, *, mask_id: int,
               replacement_ids: np.ndarray, max_predictions: int,
               masked_lm_prob: float) -> MaskedBatch:
    """Whole-word mask a batch (see the module docstring).

    input_ids [N, S] int; lengths [N] real tokens incl. specials; candidate, word_start
    [N, S] bool; uniforms [N, 4, S] from `counter_uniforms(..., 4 * S)`; replacement_ids
    [R] ids a random replacement is drawn from.
    """
    n, s = input_ids.shape
    target = np.minimum(max_predictions,
                        np.maximum(1, np.rint(lengths * masked_lm_prob))).astype(np.int64)
    chosen = choose_words(candidate, word_start, uniforms[:, 0], target)
    random_ids = replacement_ids[(uniforms[:, 3] * len(replacement_ids)).astype(np.int64)]
    replaced = np.where(uniforms[:, 1] < 0.8, mask_id,
                        np.where(uniforms[:, 2] < 0.5, input_ids, random_ids))
    masked = np.where(chosen, replaced, input_ids).astype(np.int64)
    p = max_predictions
    first = np.argsort(~chosen, axis=1, kind="stable")[:, :p]  # chosen positions, ascending
    valid = np.arange(p)[None, :] < chosen.sum(axis=1, keepdims=True)
    positions = np.where(valid, first, 0).astype(np.int64)
    labels = np.where(valid, np.take_along_axis(input_ids, first, axis=1), 0).astype(np.int64)
    return MaskedBatch(masked, positions, labels, valid.astype(np.float32))


def apply_fixed_masks(input_ids: np.ndarray, positions: np.ndarray,
                      replacements: np.ndarray) -> MaskedBatch:
    """Stored masks -> MaskedBatch: positions, replacements [N, P] (position 0 = padding)."""
    positions = positions.astype(np.int64)
    valid = positions > 0
    labels = np.where(valid, np.take_along_axis(input_ids, positions, axis=1), 0)
    masked = input_ids.astype(np.int64).copy()
    rows, cols = np.nonzero(valid)
    masked[rows, positions[rows, cols]] = replacements[rows, cols]
    return MaskedBatch(masked, positions, labels.astype(np.int64), valid.astype(np.float32))
