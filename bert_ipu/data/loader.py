"""A deterministic, resumable batch loader for PretrainingDataset.

The order of epoch e is a permutation keyed by (seed, e) (a counter-based hash, not a
stateful RNG), split across data-parallel ranks; masks are drawn from (seed, e, index).
So the position (epoch, batch) is the whole data state: `state_dict()` saves it and
`load_state_dict()` restores it, and a resumed run sees exactly the batches an
uninterrupted run would have seen, with the same masks.

A batch counts as consumed once it has been yielded: save `state_dict()` after training
on a batch and the resumed loader starts with the next one.

Another number of data-parallel ranks (or another batch size) may continue a saved
position: the ranks of an epoch together consume a prefix of its order (rank r takes
every world_size-th sample), so the new ranks split what is left of that epoch among
themselves (`offset`: the samples consumed before them) and the next epochs are
theirs. With the same sequences per optimizer step (e.g. 2 ranks x 1 micro-batch ->
1 rank x 2 accumulated), every step sees the same samples as before.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch

from bert_ipu.data.dataset import PretrainingDataset
from bert_ipu.data.masking import ORDER_STREAM, counter_uniforms

WORKER_STREAM = 5  # counter_uniforms stream of the DataLoader worker seeds

_STATE_CHECKED = ("seed", "num_samples", "shuffle", "drop_last")


class PretrainingLoader:
    """Batches (dicts of [N, ...] tensors) of `dataset` for one data-parallel rank.

    Iterating yields the rest of the current epoch; the position moves to (epoch + 1, 0) as
    the epoch's last batch is yielded, so the next iteration is the next epoch.
    num_workers > 0 builds batches in DataLoader worker processes (same batches; the
    workers are seeded from a dedicated generator, never from torch's global RNG).
    """

    def __init__(self, dataset: PretrainingDataset, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or num_workers < 0:
            raise ValueError(f"PretrainingLoader: expected batch_size >= 1, 0 <= rank < "
                             f"world_size, num_workers >= 0; got batch_size={batch_size}, "
                             f"rank={rank}, world_size={world_size}, num_workers={num_workers}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.epoch, self.batch = 0, 0
        self.offset = 0
        """Samples of epoch `self.epoch` consumed by an earlier split of the ranks."""
        if len(self) == 0:
            raise ValueError(
                f"PretrainingLoader: the {len(dataset)} samples of split {dataset.split!r} "
                f"make no batch of {batch_size} per rank over {world_size} rank(s) with "
                f"drop_last={drop_last}; lower the batch size")

    def __len__(self) -> int:
        """Batches per (whole) epoch (for this rank; equal on every rank)."""
        return self._batch_count(0)

    def batches_in(self, epoch: int) -> int:
        """Batches of epoch `epoch` for this rank (fewer in the epoch an earlier split
        of the ranks began)."""
        return self._batch_count(self._skipped(epoch))

    def _batch_count(self, skipped: int) -> int:
        per_rank = self._per_rank(skipped)
        return per_rank // self.batch_size if self.drop_last else math.ceil(
            per_rank / self.batch_size)

    def _skipped(self, epoch: int) -> int:
        return self.offset if epoch == self.epoch else 0

    def _per_rank(self, skipped: int = 0) -> int:
        n, w = len(self.dataset) - skipped, self.world_size
        return n // w if self.drop_last else math.ceil(n / w)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """[len(self) * batch_size] (or fewer, last batch partial) dataset indices of this
        rank in epoch `epoch`, in order."""
        n = len(self.dataset)
        order = np.arange(n)
        if self.shuffle:
            keys = counter_uniforms(self.seed, ORDER_STREAM, epoch, order, 1)[:, 0]
            order = np.argsort(keys, kind="stable")
        skipped = self._skipped(epoch)
        order = np.resize(order[skipped:], self._per_rank(skipped) * self.world_size)  # wraps if padding
        mine = order[self.rank::self.world_size]
        return mine[:self.batches_in(epoch) * self.batch_size] if self.drop_last else mine

    def _batches(self, epoch: int) -> list[np.ndarray]:
        mine = self.epoch_indices(epoch)
        return [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]

    def endless(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches epoch after epoch, without end: the trainer's batch stream (the loader
        never touches torch's global RNG, which drives dropout: see worker_generator)."""
        while True:
            yield from self

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch, start, total = self.epoch, self.batch, self.batches_in(self.epoch)
        self.dataset.set_epoch(epoch)
        batches = self._batches(epoch)[start:]
        if not batches:  # resumed exactly at the end of an epoch
            self._advance(epoch, total)
            return
        if self.num_workers == 0:
            source: Any = (self.dataset.batch(b, epoch=epoch) for b in batches)
        else:
            source = torch.utils.data.DataLoader(
                _EpochBatches(self.dataset, batches, epoch), batch_size=None,
                shuffle=False, num_workers=self.num_workers,
                generator=self.worker_generator(epoch))
        for k, batch in enumerate(source, start + 1):
            self._advance(epoch, k)  # before the yield: the state counts this batch
            yield batch

    def worker_generator(self, epoch: int) -> torch.Generator:
        """The generator DataLoader draws its worker seeds from, keyed by (seed, epoch,
        rank). Without it DataLoader draws them from torch's global RNG, which would
        shift the dropout stream and break bit-identical resume."""
        key = counter_uniforms(self.seed, WORKER_STREAM, epoch, np.array([self.rank]), 1)
        return torch.Generator().manual_seed(int(key[0, 0] * 2**53))

    def _advance(self, epoch: int, consumed: int) -> None:
        """Record `consumed` batches of `epoch`; a finished epoch becomes (epoch + 1, 0)."""
        if consumed >= self.batches_in(epoch):
            self.epoch, self.batch, self.offset = epoch + 1, 0, 0
        else:
            self.epoch, self.batch = epoch, consumed

    def state_dict(self) -> dict[str, Any]:
        """The data position: {"epoch", "batch" (batches of the epoch consumed), ...}."""
        return {"epoch": self.epoch, "batch": self.batch, "offset": self.offset,
                "seed": self.seed, "num_samples": len(self.dataset),
                "batch_size": self.batch_size, "world_size": self.world_size,
                "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (the settings that fix the order must match)."""
        wrong = {k: (state.get(k), getattr(self, k) if k != "num_samples" else len(self.dataset))
                 for k in _STATE_CHECKED}
        wrong = {k: v for k, v in wrong.items() if v[0] != v[1]}
        if wrong:
            detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in wrong.items())
            raise ValueError(f"PretrainingLoader.load_state_dict: the saved data position "
                             f"belongs to another data order ({detail})")
        epoch, batch, offset = int(state["epoch"]), int(state["batch"]), int(state.get("offset", 0))
        if epoch < 0 or batch < 0 or offset < 0:
            raise ValueError(f"PretrainingLoader.load_state_dict: expected epoch, batch, offset "
                             f">= 0, got {epoch}, {batch}, {offset}")
        self.epoch, self.offset, self.batch = epoch, offset, batch
        if (state["world_size"], state["batch_size"]) == (self.world_size, self.batch_size):
            if batch > self.batches_in(epoch):
                raise ValueError(f"PretrainingLoader.load_state_dict: expected batch <= "
                                 f"{self.batches_in(epoch)}, got {batch}")
            return
        if not self.drop_last:
            raise ValueError("PretrainingLoader.load_state_dict: another world_size or "
                             "batch_size continues a position only with drop_last")
        # Another split of the ranks: what the earlier ranks consumed is skipped.
        self.offset = offset + batch * int(state["batch_size"]) * int(state["world_size"])
        self.batch = 0
        if self.offset > len(self.dataset):
            raise ValueError(f"PretrainingLoader.load_state_dict: the saved position "
                             f"({self.offset} samples) is past the {len(self.dataset)} samples")


class _EpochBatches(torch.utils.data.Dataset):
    """Item k = collated batch k of one epoch (so DataLoader workers build whole batches)."""

    def __init__(self, dataset: PretrainingDataset, batches: list[np.ndarray],
                 epoch: int) -> None:
        self.dataset, self.batches, self.epoch = dataset, batches, epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return self.dataset.batch(self.batches[k], epoch=self.epoch)
