"""Pure-torch gather / scatter-add backend: any device, any float dtype; the test oracle.

Each block k contributes ``Y[:, rows[k]] += X[:, cols[k]] @ values[k]^T`` (block
slices of width B). The gathered operands are [n, nnz, B], so the token dimension is
processed in chunks to bound the scratch memory to about ``_CHUNK_ELEMS`` elements.
"""
from __future__ import annotations

import torch
from torch import Tensor

from sparse_ops.format import BlockSparseMatrix
from sparse_ops.kernels.registry import Backend, register_backend

_CHUNK_ELEMS = 1 << 23


class ReferenceBackend(Backend):
    """Gather the block columns of X, batched block products, scatter-add into Y."""

    name = "reference"

    def forward(self, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        B, n = w.block_size, x.shape[0]
        xb = x.reshape(n, w.n_block_cols, B)
        y = x.new_zeros(n, w.n_block_rows, B)
        step = _step(n, w)
        for s in range(0, n, step):
            part = torch.einsum("nkj,kij->nki", xb[s:s + step][:, w.cols], w.values)
            y[s:s + step].index_add_(1, w.rows, part)
        return y.reshape(n, w.shape[0])

    def grad_input(self, dy: Tensor, w: BlockSparseMatrix) -> Tensor:
        B, n = w.block_size, dy.shape[0]
        dyb = dy.reshape(n, w.n_block_rows, B)
        dx = dy.new_zeros(n, w.n_block_cols, B)
        step = _step(n, w)
        for s in range(0, n, step):
            part = torch.einsum("nki,kij->nkj", dyb[s:s + step][:, w.rows], w.values)
            dx[s:s + step].index_add_(1, w.cols, part)
        return dx.reshape(n, w.shape[1])

    def grad_values(self, dy: Tensor, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        B, n = w.block_size, x.shape[0]
        dyb = dy.reshape(n, w.n_block_rows, B)
        xb = x.reshape(n, w.n_block_cols, B)
        dv = x.new_zeros(w.nnz, B, B)
        step = _step(n, w)
        for s in range(0, n, step):
            dv += torch.einsum("nki,nkj->kij", dyb[s:s + step][:, w.rows], xb[s:s + step][:, w.cols])
        return dv


def _step(n_tokens: int, w: BlockSparseMatrix) -> int:
    """Token rows per chunk so that a gathered [chunk, nnz, B] operand stays small."""
    return max(1, _CHUNK_ELEMS // max(1, w.nnz * w.block_size))


register_backend(ReferenceBackend())
