"""Prepared pairs -> fixed-size model inputs, vectorised over a batch (numpy only).

A split of the cache holds the unmasked pairs as flat arrays (see cache.py):
  tokens [T] uint16/int32   A then B of every pair, back to back, no special tokens
  offsets [n + 1] int64     pair i = tokens[offsets[i]:offsets[i + 1]]
  a_len [n] uint16          tokens of segment A
  nsp [n] uint8             1 = B is a random next segment, 0 = B is the true next
and, for the held-out split, fixed masks:
  mask_positions [n, P] uint16, mask_replacements [n, P] (position 0 = padding).

`assemble` builds `[CLS] A [SEP] B [SEP] [PAD]...` rows of length S with segment ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARRAYS = ("tokens", "offsets", "a_len", "nsp")
MASK_ARRAYS = ("mask_positions", "mask_replacements")


@dataclass
class SplitArrays:
    """The memory-mapped arrays of one split ("train" or "eval") of a prepared cache.

    Pickles as its folder and split name (DataLoader workers re-open the memory maps).
    """

    folder: Path
    split: str
    has_masks: bool = False

    def __post_init__(self) -> None:
        self._open()

    def _open(self) -> None:
        names = ARRAYS + (MASK_ARRAYS if self.has_masks else ())
        self.arrays = {name: np.load(self.folder / f"{self.split}_{name}.npy", mmap_mode="r")
                       for name in names}

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "split": self.split, "has_masks": self.has_masks}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self.arrays["nsp"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


@dataclass
class Rows:
    """Unmasked rows: input_ids, token_type_ids, attention_mask [N, S] int64; lengths [N]
    (real tokens incl. specials); candidate (maskable), word_start [N, S] bool; nsp [N]."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    attention_mask: np.ndarray
    lengths: np.ndarray
    candidate: np.ndarray
    word_start: np.ndarray
    nsp: np.ndarray


def assemble(split: SplitArrays, index: np.ndarray, sequence_length: int,
             special: dict[str, int], is_continuation: np.ndarray) -> Rows:
    """Rows [CLS] A [SEP] B [SEP] padded to `sequence_length` for the pairs `index` [N]."""
    index = np.asarray(index, dtype=np.int64)
    start = split["offsets"][index].astype(np.int64)[:, None]
    total = split["offsets"][index + 1].astype(np.int64)[:, None] - start
    a_len = split["a_len"][index].astype(np.int64)[:, None]
    col = np.arange(sequence_length)[None, :]
    in_a = (col >= 1) & (col <= a_len)
    in_b = (col >= a_len + 2) & (col <= total + 1)
    source = start + np.where(in_a, col - 1, np.where(in_b, col - 2, 0))
    real = in_a | in_b
    tokens = np.asarray(split["tokens"][np.where(real, source, start)], dtype=np.int64)
    ids = np.where(real, tokens, special["[PAD]"])
    ids[:, 0] = special["[CLS]"]
    rows = np.arange(len(index))
    ids[rows, a_len[:, 0] + 1] = special["[SEP]"]
    ids[rows, total[:, 0] + 2] = special["[SEP]"]
    segment_start = (col == 1) | (col == a_len + 2)
    return Rows(
        input_ids=ids,
        token_type_ids=((col >= a_len + 2) & (col <= total + 2)).astype(np.int64),
        attention_mask=(col < total + 3).astype(np.int64),
        lengths=total[:, 0] + 3,
        candidate=real,
        word_start=real & (~is_continuation[ids] | segment_start),
        nsp=np.asarray(split["nsp"][index], dtype=np.int64),
    )
