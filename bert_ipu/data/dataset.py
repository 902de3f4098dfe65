"""Torch datasets over a prepared cache, and `build_datasets` (the one entry point).

    train_ds, eval_ds, info = build_datasets(spec, log=print)
    loader = PretrainingLoader(train_ds, batch_size=32, seed=spec.seed_value)
    for batch in loader:            # the rest of the current epoch; then epoch += 1
        ...                         # batch["input_ids"]: [32, S] int64, ...
    state = loader.state_dict()     # {"epoch", "batch", ...}: save in a checkpoint
    loader.load_state_dict(state)   # a resumed run continues with the same batches

A sample (dict of tensors; a batch adds a leading [N]):
  input_ids [S] int64          [CLS] A [SEP] B [SEP] [PAD]..., masked tokens replaced
  token_type_ids [S] int64     0 for [CLS] A [SEP], 1 for B [SEP], 0 for padding
  attention_mask [S] int64     1 for real tokens
  masked_lm_positions [P] int64, masked_lm_ids [P] int64 (labels), masked_lm_weights [P]
                               float32 (1 = real prediction; padding: 0 / 0 / 0)
  next_sentence_label [] int64 0 = B is the next segment, 1 = B is random
Training masks are redrawn each epoch from (seed, epoch, index); held-out masks are fixed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bert_ipu.data.batching import SplitArrays, assemble
from bert_ipu.data.masking import (TRAIN_STREAM, UNIFORMS_PER_TOKEN, apply_fixed_masks,
                                   counter_uniforms, mask_batch)
from bert_ipu.data.prepare import prepare_data
from bert_ipu.data.config import DataConfig
from bert_ipu.data.tokenizer import (
    TokenizerInfo, continuation_table, read_vocab, replacement_ids, tokenizer_info,
)
from bert_ipu.logs import Log



class PretrainingDataset(torch.utils.data.Dataset):
    """MLM + NSP samples of one split of a prepared cache (see the module docstring)."""

    def __init__(self, folder: Path, split: str, spec: DataConfig, info: TokenizerInfo,
                 fixed_masks: bool) -> None:
        self.folder = Path(folder)
        self.arrays = SplitArrays(self.folder, split, has_masks=fixed_masks)
        self.split, self.info, self.fixed_masks = split, info, fixed_masks
        self.sequence_length, self.mask_tokens = spec.sequence_length, spec.mask_tokens
        self.masked_lm_prob, self.seed = spec.masked_lm_prob, spec.seed_value
        self.epoch = 0
        self._vocab_tables()

    def _vocab_tables(self) -> None:
        tokens = read_vocab(self.folder / "vocab.txt")
        self.is_continuation = continuation_table(tokens)  # [V] bool
        self.replacement_ids = replacement_ids(tokens)  # [V - 5] int64

    def __getstate__(self) -> dict[str, Any]:
        """Pickles small (DataLoader workers): tables are rebuilt from vocab.txt."""
        return {k: v for k, v in self.__dict__.items()
                if k not in ("is_continuation", "replacement_ids")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._vocab_tables()

    def __len__(self) -> int:
        return len(self.arrays)

    def set_epoch(self, epoch: int) -> None:
        """Masks of the training split are drawn for this epoch (ignored with fixed masks)."""
        self.epoch = int(epoch)

    def batch(self, indices: Any, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """Collated samples `indices` [N] -> dict of [N, ...] tensors (masks of `epoch`,
        default the current one)."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"PretrainingDataset.batch: indices must be in [0, {len(self)}),"
                             f" got {index.min()}..{index.max()}")
        special = self.info.special_ids
        rows = assemble(self.arrays, index, self.sequence_length, special,
                        self.is_continuation)
        if self.fixed_masks:
            masked = apply_fixed_masks(rows.input_ids, self.arrays["mask_positions"][index],
                                       self.arrays["mask_replacements"][index])
        else:
            s = self.sequence_length
            epoch = self.epoch if epoch is None else int(epoch)
            u = counter_uniforms(self.seed, TRAIN_STREAM, epoch, index, UNIFORMS_PER_TOKEN * s)
            masked = mask_batch(rows.input_ids, rows.lengths, rows.candidate, rows.word_start,
                                u.reshape(-1, UNIFORMS_PER_TOKEN, s), mask_id=special["[MASK]"],
                                replacement_ids=self.replacement_ids,
                                max_predictions=self.mask_tokens,
                                masked_lm_prob=self.masked_lm_prob)
        out = {"input_ids": masked.input_ids, "token_type_ids": rows.token_type_ids,
               "attention_mask": rows.attention_mask,
               "masked_lm_positions": masked.positions, "masked_lm_ids": masked.labels,
               "masked_lm_weights": masked.weights, "next_sentence_label": rows.nsp}
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batch([i]).items()}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """Batched fetch for torch DataLoader (one vectorised call, then split)."""
        b = self.batch(indices)
        return [{k: v[j] for k, v in b.items()} for j in range(len(indices))]


def build_datasets(spec: DataConfig, log: Log = print
                   ) -> tuple[PretrainingDataset, PretrainingDataset | None, TokenizerInfo]:
    """Prepare (or reuse) the cache of `spec`; return (train, held-out or None when
    eval_fraction is 0, tokenizer info: vocab size, special ids, cached vocab.txt)."""
    folder, meta = prepare_data(spec, log)
    vocab = folder / "vocab.txt"
    info = tokenizer_info(vocab, read_vocab(vocab), spec.lowercase)
    train = PretrainingDataset(folder, "train", spec, info, fixed_masks=False)
    held_out = None
    if meta["counts"]["eval_pairs"]:
        held_out = PretrainingDataset(folder, "eval", spec, info, fixed_masks=True)
    return train, held_out, info
