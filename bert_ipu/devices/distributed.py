"""Data-parallel training under torchrun (`WORLD_SIZE > 1`): gloo on CPU, nccl on CUDA.

Rank 0 writes every output; all ranks run the DynSp controller with the same seed
stream, and `verify_same_patterns` checks after every update that they agree bit for
bit (DESIGN section 2).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn


class PatternMismatchError(RuntimeError):
    """Ranks ended a pattern update with different sparsity patterns."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (world_size 1 = not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_environment() -> DistInfo:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (defaults: a single process)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(info: DistInfo, device_kind: str) -> None:
    """Join the process group (no-op for a single process)."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def shutdown() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` when distributed, else the model itself.

    Buffers (sparse patterns) are not broadcast: each rank computes them and
    `verify_same_patterns` proves they agree instead of silently overwriting."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    with warnings.catch_warnings():  # newer torch renames broadcast_buffers; same meaning
        warnings.simplefilter("ignore", FutureWarning)
        return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                   broadcast_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _pattern_buffers(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for name, buf in unwrap(model).named_buffers():
        if name.rsplit(".", 1)[-1] in ("rows", "cols"):
            yield name, buf


def pattern_digest(model: nn.Module) -> bytes:
    """sha256 over every SparseLinear's rows and cols (32 bytes)."""
    digest = hashlib.sha256()
    for name, buf in _pattern_buffers(model):
        digest.update(name.encode())
        digest.update(buf.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()


def verify_same_patterns(model: nn.Module, info: DistInfo, device: torch.device) -> None:
    """Raise PatternMismatchError naming the ranks whose patterns differ from rank 0."""
    if not info.enabled:
        return
    mine = torch.tensor(list(pattern_digest(model)), dtype=torch.uint8, device=device)
    gathered = [torch.empty_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine)
    bad = [r for r, g in enumerate(gathered) if not torch.equal(g, gathered[0])]
    if bad:
        raise PatternMismatchError(
            f"sparsity patterns differ from rank 0 on ranks {bad} after a pattern update"
        )


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """Mean of a scalar over ranks (for logging the global loss)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] when not distributed)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when `flag` is true on any rank (stop requests, non-finite grads)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
