"""Next-sentence-prediction pairs as in Google BERT's `create_pretraining_data.py`.

For every document (a list of tokenized sentences):
  * target length = S - 3 tokens; with probability `short_seq_prob` (drawn once per
    document, as in Google's code) a random length in [2, S - 3] instead;
  * sentences are collected into a chunk until the target length is reached (or the
    document ends); segment A = the first `a_end` sentences of the chunk (`a_end` random
    in [1, len(chunk) - 1]);
  * with probability 1/2 B is "random next" (label 1): sentences of a random *other*
    document from a random start up to the remaining length, and the chunk's unused
    sentences are put back for the next chunk; otherwise B is the rest of the chunk
    ("is next", label 0);
  * `truncate_seq_pair`: while A + B > S - 3 tokens, drop one token from the longer
    segment (B on ties), from its front or back with probability 1/2 each.

Two deliberate differences. 1: Google draws the random document up to 10 times and may
end with the same document; here it is drawn uniformly among the *other* documents (so a
corpus needs at least 2 documents). 2: Google makes every one-sentence chunk (a sentence
longer than the target, a document's last sentence) "random next", which skews the labels
with the corpus: 73.5% random-next on a held-out split of SOTU + WikiText-2 (long
sentences), so `nsp_accuracy` measured the majority rate. Here a one-sentence chunk draws
its label like any other (one `random()`): "is next" takes the following sentence as B
(truncated to fit), and a document's last sentence, which has none, then gives no pair.
Every label is thus random-next with probability exactly 1/2. Documents with fewer than 2 sentences cannot give
an "is next" pair and are left out by the caller (counted as too short).

Randomness is a `random.Random` consumed in Google's order, so the pairs are a function
of (documents, S, short_seq_prob, seed).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np


@dataclass
class TokenizedDocs:
    """Documents of tokenized sentences, stored back to back.

    tokens [T] int32; sentence i = tokens[sentence_offsets[i]:sentence_offsets[i + 1]];
    document d = sentences doc_offsets[d] .. doc_offsets[d + 1] - 1.
    """

    tokens: np.ndarray
    sentence_offsets: np.ndarray
    doc_offsets: np.ndarray

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    @classmethod
    def from_lists(cls, documents: list[list[list[int]]]) -> TokenizedDocs:
        """[[sentence ids, ...], ...] -> TokenizedDocs (empty sentences dropped)."""
        sentences = [s for doc in documents for s in doc if s]
        per_doc = [sum(1 for s in doc if s) for doc in documents]
        lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
        flat = np.fromiter((t for s in sentences for t in s), dtype=np.int32,
                           count=int(lengths.sum()))
        return cls(flat, np.concatenate([[0], np.cumsum(lengths)]),
                   np.concatenate([[0], np.cumsum(per_doc, dtype=np.int64)]))

    def select(self, docs: np.ndarray) -> TokenizedDocs:
        """The documents `docs` (indices, in that order) as a new TokenizedDocs."""
        sent_ranges = [range(self.doc_offsets[d], self.doc_offsets[d + 1]) for d in docs]
        sents = np.fromiter((i for r in sent_ranges for i in r), dtype=np.int64)
        starts, ends = self.sentence_offsets[sents], self.sentence_offsets[sents + 1]
        lengths = ends - starts
        flat = self.tokens[_ranges_index(starts, lengths)]
        per_doc = np.array([len(r) for r in sent_ranges], dtype=np.int64)
        return TokenizedDocs(flat, np.concatenate([[0], np.cumsum(lengths)]),
                             np.concatenate([[0], np.cumsum(per_doc)]))


@dataclass
class Pairs:
    """NSP pairs as token ranges of a TokenizedDocs: A = tokens[a_start:a_end], B likewise.
    All arrays [n] int64; is_random [n] bool (True = label 1, B from another document)."""

    a_start: np.ndarray
    a_end: np.ndarray
    b_start: np.ndarray
    b_end: np.ndarray
    is_random: np.ndarray

    def __len__(self) -> int:
        return len(self.is_random)


def _ranges_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices of the concatenated ranges [starts[i], starts[i] + lengths[i])."""
    total = int(lengths.sum())
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + shift


def truncate_amounts(len_a: int, len_b: int, max_tokens: int,
                     rng: random.Random) -> tuple[int, int, int, int]:
    """Google's truncate_seq_pair as counts: (A front, A back, B front, B back) removed.

    >>> truncate_amounts(3, 2, 10, random.Random(0))
    (0, 0, 0, 0)
    >>> a_f, a_b, b_f, b_b = truncate_amounts(10, 4, 8, random.Random(0))
    >>> (a_f + a_b, b_f + b_b)  # the longer shrinks first, then B and A alternate
    (6, 0)
    """
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return 0, 0, 0, 0
    front = [rng.random() < 0.5 for _ in range(excess)]  # one draw per removal, as Google
    lead = min(abs(len_a - len_b), excess)
    # Steps 0..lead-1 hit the longer segment; afterwards the lengths tie and the removal
    # alternates B, A, B, A ... (B on ties).
    a_steps = (front[:lead] if len_a > len_b else []) + front[lead + 1::2]
    b_steps = ([] if len_a > len_b else front[:lead]) + front[lead::2]
    return sum(a_steps), len(a_steps) - sum(a_steps), sum(b_steps), len(b_steps) - sum(b_steps)


def create_pairs(docs: TokenizedDocs, sequence_length: int, short_seq_prob: float,
                 rng: random.Random) -> Pairs:
    """NSP pairs of every document of `docs` (>= 2 documents), in document order."""
    if docs.num_documents < 2:
        raise ValueError(f"create_pairs: need at least 2 documents, got {docs.num_documents}")
    out: list[tuple[int, int, int, int, bool]] = []
    sent_off = docs.sentence_offsets.tolist()
    doc_off = docs.doc_offsets.tolist()
    for d in range(docs.num_documents):
        _document_pairs(d, sent_off, doc_off, sequence_length - 3, short_seq_prob, rng, out)
    arr = np.array(out, dtype=np.int64).reshape(-1, 5)
    return Pairs(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4].astype(bool))


def _document_pairs(d: int, sent_off: list[int], doc_off: list[int], max_tokens: int,
                    short_seq_prob: float, rng: random.Random, out: list) -> None:
    """Append the pairs of document `d` to `out` (Google's create_instances_from_document)."""
    first, end = doc_off[d], doc_off[d + 1]
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_tokens)
    chunk_start, length, i = first, 0, first
    while i < end:
        length += sent_off[i + 1] - sent_off[i]
        if i == end - 1 or length >= target:
            if i == chunk_start:  # one sentence: the label is drawn first (deviation 2)
                is_random = rng.random() < 0.5
                if not is_random and i == end - 1:  # nothing follows it: no pair
                    chunk_start, length, i = i + 1, 0, i + 1
                    continue
                a_end = i + 1
                i += 0 if is_random else 1  # "is next": B is the following sentence
            else:
                a_end = chunk_start + rng.randint(1, i - chunk_start)
                is_random = rng.random() < 0.5
            a0, a1 = sent_off[chunk_start], sent_off[a_end]
            if is_random:
                b0, b1 = _random_segment(d, sent_off, doc_off, target - (a1 - a0), rng)
                i = a_end - 1  # put the unused sentences back
            else:
                b0, b1 = a1, sent_off[i + 1]
            af, ab, bf, bb = truncate_amounts(a1 - a0, b1 - b0, max_tokens, rng)
            out.append((a0 + af, a1 - ab, b0 + bf, b1 - bb, is_random))
            chunk_start, length = i + 1, 0
        i += 1


def _random_segment(d: int, sent_off: list[int], doc_off: list[int], target_b: int,
                    rng: random.Random) -> tuple[int, int]:
    """Token range of sentences of a random other document, from a random start, until at
    least `target_b` tokens (or the document's end)."""
    other = rng.randint(0, len(doc_off) - 3)
    other += other >= d
    first, end = doc_off[other], doc_off[other + 1]
    j = start = rng.randint(first, end - 1)
    while j < end:
        j += 1
        if sent_off[j] - sent_off[start] >= target_b:
            break
    return sent_off[start], sent_off[j]


def gather_pairs(docs: TokenizedDocs, pairs: Pairs) -> tuple[np.ndarray, ...]:
    """Pairs -> flat arrays: (tokens [sum len] int32 (A then B of each pair),
    offsets [n + 1] int64, a_len [n] int64, label [n] uint8 (1 = random next))."""
    len_a, len_b = pairs.a_end - pairs.a_start, pairs.b_end - pairs.b_start
    starts = np.stack([pairs.a_start, pairs.b_start], axis=1).reshape(-1)
    lengths = np.stack([len_a, len_b], axis=1).reshape(-1)
    tokens = docs.tokens[_ranges_index(starts, lengths)]
    offsets = np.concatenate([[0], np.cumsum(len_a + len_b)]).astype(np.int64)
    return tokens, offsets, len_a.astype(np.int64), pairs.is_random.astype(np.uint8)
