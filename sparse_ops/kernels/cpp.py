"""``cpp``: hand-written block-sparse CPU kernels: fp32 (B = 8 and 16, AVX2 + FMA or AVX-512)
and bf16 (B = 16, AMX tiles, where the CPU has AMX-BF16).

The kernels (``cpp_bsr.cpp``, built on first use by ``cpp_build``) do only the useful
FLOPs: a register-tiled row GEMM for the forward (block rows in CSR order, blocks
transposed) and the grad-input (block columns in CSC order), and an SDDMM for the
grad-values. In bf16 the same three products run on the AMX tile unit (forward and
grad-input rounded to bf16 like a bf16 GEMM, grad-values accumulated and returned in
fp32). ``supports`` is False where the extension cannot be built or loaded (no compiler,
no AVX2 + FMA), for bf16 without AMX, for other dtypes and block sizes, and off the CPU,
so ``auto`` keeps the other backends there.
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
BF16_BLOCK_SIZES = (16,)


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
        if device.type != "cpu":
            return False
        if dtype == torch.float32:
            return block_size in BLOCK_SIZES and self.module() is not None
        if dtype == torch.bfloat16:
            module = self.module() if block_size in BF16_BLOCK_SIZES else None
            return module is not None and bool(module.amx())
        return False

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
        if w.values.dtype == torch.bfloat16:
            # P[k][q/2][o][q%2] = V[k][o][q]: one AMX B tile per block
            nnz, B = w.values.shape[0], w.block_size
            p = w.values.view(nnz, B, B // 2, 2).permute(0, 2, 1, 3).contiguous()
            b = bias.float().contiguous() if bias is not None else torch.empty(0)
            with record_function("cpp_bsr::forward_bf16"):
                return self._ext().row_gemm_bf16(x.contiguous(), p, seg_ptr, other, w.shape[0], b)
        p = w.values.transpose(1, 2).contiguous()               # P[k][q][o] = V[k][o][q]
        b = bias.contiguous() if bias is not None else torch.empty(0)
        with record_function("cpp_bsr::forward"):
            return self._ext().row_gemm(x.contiguous(), p, seg_ptr, other, w.shape[0], b)

    def grad_input(self, dy: Tensor, w: BlockSparseMatrix) -> Tensor:
        perm, seg_ptr, other = self._csc(w)
        if w.values.dtype == torch.bfloat16:
            # P[k][q/2][o][q%2] = V[perm k][q][o]
            nnz, B = w.values.shape[0], w.block_size
            p = w.values.index_select(0, perm).view(nnz, B // 2, 2, B).permute(0, 1, 3, 2).contiguous()
            with record_function("cpp_bsr::grad_input_bf16"):
                return self._ext().row_gemm_bf16(dy.contiguous(), p, seg_ptr, other, w.shape[1],
                                                 torch.empty(0))
        p = w.values.index_select(0, perm).contiguous()         # P[k][q][o] = V[perm k][q][o]
        with record_function("cpp_bsr::grad_input"):
            return self._ext().row_gemm(dy.contiguous(), p, seg_ptr, other, w.shape[1], torch.empty(0))

    def grad_values(self, dy: Tensor, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        if w.values.dtype == torch.bfloat16:
            return self._grad_values_bf16(dy, x, w)
        rows, cols = cached(w, "cpp.coo", lambda: (w.rows.long().contiguous(), w.cols.long().contiguous()))
        with record_function("cpp_bsr::grad_values"):
            return self._ext().sddmm(dy.contiguous(), x.contiguous(), rows, cols, w.block_size)


    def grad_bias(self, dy: Tensor) -> Tensor:
        if dy.dtype == torch.bfloat16 and dy.shape[1] % 16 == 0:
            with record_function("cpp_bsr::grad_bias_bf16"):
                return self._ext().col_sum_bf16(dy.contiguous())
        return super().grad_bias(dy)

    def _grad_values_bf16(self, dy: Tensor, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        """fp32 [nnz, B, B]. The kernel transposes the narrower of dY and X (tokens become
        the reduction), listing the blocks per block row (dY^T) or per block column (X^T)."""
        ext = self._ext()
        if w.shape[0] <= w.shape[1]:
            seg_ptr, other = self._csr(w)
            with record_function("cpp_bsr::grad_values_bf16"):
                return ext.sddmm_bf16(dy.contiguous(), x.contiguous(), seg_ptr, other, True)
        perm, seg_ptr, other = self._csc(w)
        with record_function("cpp_bsr::grad_values_bf16"):
            dvt = ext.sddmm_bf16(dy.contiguous(), x.contiguous(), seg_ptr, other, False)
        out = torch.empty_like(dvt)
        out[perm] = dvt.transpose(1, 2)
        return out


BACKEND = register_backend(CppBackend())
