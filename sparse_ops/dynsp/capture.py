"""Capture of X and dY at update steps, for gradient (RigL) regrowth.

The controller arms forward hooks on the sparse layers only for the step whose batch
feeds an update. The forward hook keeps the layer input X [N, I] (a reference; autograd
keeps it alive anyway for the values' gradient) and registers a tensor hook on the
output that keeps dY [N, O] during backward. With gradient accumulation every
micro-batch adds one (X, dY) pair; the batch gradient is sum_m dY_m^T X_m.

``score_chunks`` then forms the block L1 norms of the dense gradient G = dY^T X one
range of block rows at a time: at most ``chunk_elems`` entries of G exist at once and
nothing of it outlives the update. Works with any module taking X [..., I] and
returning Y [..., O] (SparseLinear-agnostic).
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

ReduceFn = Callable[[Tensor], Tensor]


class GradientCapture:
    """Forward/backward hooks that record (X, dY) pairs per named module while armed."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self._handles: list[RemovableHandle] = []
        self._pairs: dict[str, list[list[Optional[Tensor]]]] = {}

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def arm(self) -> None:
        """Start recording (idempotent); drops anything recorded before."""
        self.disarm()
        for name, module in self.modules.items():
            self._pairs[name] = []
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))

    def disarm(self) -> None:
        """Stop recording and free the captured tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pairs.clear()

    def _forward_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if not (torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
                return  # evaluation forward: no gradient will come
            x = inputs[0].detach()
            pair: list[Optional[Tensor]] = [x.reshape(-1, x.shape[-1]), None]
            self._pairs[name].append(pair)

            def grad_hook(grad: Tensor) -> None:
                pair[1] = grad.detach().reshape(-1, grad.shape[-1])
            output.register_hook(grad_hook)
        return hook

    def has_gradient(self, name: str) -> bool:
        """True when at least one complete (X, dY) pair was recorded for ``name``."""
        return any(dy is not None for _, dy in self._pairs.get(name, []))

    def score_chunks(self, name: str, block_size: int, chunk_elems: int = 1 << 22,
                     reduce_fn: Optional[ReduceFn] = None,
                     to_device: Optional[torch.device] = None) -> Iterator[tuple[int, Tensor]]:
        """Yield (first linear block index, block L1 norms of G chunk [rows * (I/B)]) in order.

        G = sum over recorded pairs of dY^T X (fp32). ``reduce_fn`` (e.g. an all-reduce
        across data-parallel ranks) is applied to each dense chunk before the norms;
        ``to_device`` moves the norms (host-side controller: "cpu").
        """
        pairs = [(x, dy) for x, dy in self._pairs.get(name, []) if dy is not None]
        if not pairs:
            raise RuntimeError(f"GradientCapture.score_chunks: no (X, dY) recorded for layer {name!r}")
        B = block_size
        n_out, n_in = pairs[0][1].shape[1], pairs[0][0].shape[1]
        nbr, nbc = n_out // B, n_in // B
        xs = [x.float() for x, _ in pairs]
        rows_per_chunk = max(1, chunk_elems // (B * n_in))
        for r0 in range(0, nbr, rows_per_chunk):
            r1 = min(nbr, r0 + rows_per_chunk)
            grad = sum(dy[:, r0 * B:r1 * B].float().t() @ x for x, (_, dy) in zip(xs, pairs))  # [(r1-r0)B, I]
            if reduce_fn is not None:
                grad = reduce_fn(grad)
            norms = grad.view(r1 - r0, B, nbc, B).abs().sum(dim=(1, 3)).reshape(-1)
            yield r0 * nbc, (norms if to_device is None else norms.to(to_device))
