"""``cpp``: hand-written block-sparse CPU kernels (fp32, B = 8 and 16), AVX2 + FMA or AVX-512.

The kernels (``cpp_bsr.cpp``, built on first use by ``cpp_build``) do only the useful
FLOPs: a register-tiled row GEMM for the forward (block rows in CSR order, blocks
transposed) and the grad-input (block columns in CSC order), and an SDDMM for the
grad-values. ``supports`` is False where the extension cannot be built or loaded (no
compiler, no AVX2 + FMA), for other dtypes and block sizes, and off the CPU, so ``auto``
keeps the other backends there.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional

import torch
from torch import Tensor
from torch.profiler import record_function

from sparse_ops.format import BlockSparseMatrix
from sparse_ops.kernels import cpp_build
from sparse_ops.kernels.registry import Backend, cached, register_backend

BLOCK_SIZES = (8, 16)


def _crow(index: Tensor, n: int) -> Tensor:
    crow = torch.zeros(n + 1, dtype=torch.int64)
    crow[1:] = torch.bincount(index.long(), minlength=n).cumsum(0)
    return crow


class CppBackend(Backend):
    """Row GEMM (forward, grad_input) and SDDMM (grad_values) in C++ with SIMD intrinsics."""

    name = "cpp"

    def module(self) -> Optional[ModuleType]:
        return cpp_build.load()

    def supports(self, device: torch.device, dtype: torch.dtype, block_size: int) -> bool:
        return (device.type == "cpu" and dtype == torch.float32 and block_size in BLOCK_SIZES
                and self.module() is not None)

    def _ext(self) -> ModuleType:
        module = self.module()
        if module is None:
            raise RuntimeError("cpp backend: the C++ kernels could not be built on this machine")
        return module

    @staticmethod
    def _csr(w: BlockSparseMatrix) -> tuple[Tensor, Tensor]:
        return cached(w, "cpp.csr", lambda: (_crow(w.rows, w.n_block_rows), w.cols.long().contiguous()))

    @staticmethod
    def _csc(w: BlockSparseMatrix) -> tuple[Tensor, Tensor, Tensor]:
        def build() -> tuple[Tensor, Tensor, Tensor]:
            perm = (w.cols.long() * w.n_block_rows + w.rows.long()).argsort()
            return perm, _crow(w.cols, w.n_block_cols), w.rows.long()[perm].contiguous()
        return cached(w, "cpp.csc", build)

    def forward(self, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        return self.forward_with_bias(x, w, None)

    def forward_with_bias(self, x: Tensor, w: BlockSparseMatrix, bias: Optional[Tensor]) -> Tensor:
        seg_ptr, other = self._csr(w)
        p = w.values.transpose(1, 2).contiguous()               # P[k][q][o] = V[k][o][q]
        b = bias.contiguous() if bias is not None else torch.empty(0)
        with record_function("cpp_bsr::forward"):
            return self._ext().row_gemm(x.contiguous(), p, seg_ptr, other, w.shape[0], b)

    def grad_input(self, dy: Tensor, w: BlockSparseMatrix) -> Tensor:
        perm, seg_ptr, other = self._csc(w)
        p = w.values.index_select(0, perm).contiguous()         # P[k][q][o] = V[perm k][q][o]
        with record_function("cpp_bsr::grad_input"):
            return self._ext().row_gemm(dy.contiguous(), p, seg_ptr, other, w.shape[1], torch.empty(0))

    def grad_values(self, dy: Tensor, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        rows, cols = cached(w, "cpp.coo", lambda: (w.rows.long().contiguous(), w.cols.long().contiguous()))
        with record_function("cpp_bsr::grad_values"):
            return self._ext().sddmm(dy.contiguous(), x.contiguous(), rows, cols, w.block_size)


BACKEND = register_backend(CppBackend())
