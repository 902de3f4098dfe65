"""Fast backends (CPU first; ``dense`` and ``gather_bmm`` run on any device) and ``auto``.

dense       scatter the blocks into a dense [O, I] scratch in the compute dtype, one
            GEMM (MKL fp32 / oneDNN AMX bf16); the scratch (and, for grad_values,
            the dense [O, I] gradient) is freed before the op returns.
bsr         MKL sparse through torch.sparse: CSR for B = 1, BSR for B > 1, fp32/fp64
            on CPU only (MKL has no bf16 sparse GEMM). grad_input uses the
            transposed pattern (permutation cached per pattern); grad_values uses
            ``torch.sparse.sampled_addmm`` for B = 1 and gather_bmm for B > 1.
gather_bmm  gather the block columns of a token chunk, batched B x B GEMMs, scatter-add;
            chunks of tokens sized so the gathered operand stays in cache.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from sparse_ops.format import BlockSparseMatrix
from sparse_ops.kernels.registry import Backend, cached, loaded_backend, register_backend


def _block_view(dense: Tensor, w: BlockSparseMatrix) -> Tensor:
    """[O, I] -> strided view [O/B, I/B, B, B] of the same storage."""
    B = w.block_size
    return dense.view(w.n_block_rows, B, w.n_block_cols, B).permute(0, 2, 1, 3)


def scatter_dense(w: BlockSparseMatrix) -> Tensor:
    """Dense [O, I] weight in ``w.values.dtype``; equivalent to ``w.to_dense()``."""
    dense = w.values.new_zeros(w.shape)
    if w.block_size == 1:
        dense.view(-1)[w.linear_index()] = w.values.reshape(-1)
    else:
        _block_view(dense, w)[w.rows, w.cols] = w.values
    return dense


def gather_blocks(dense: Tensor, w: BlockSparseMatrix) -> Tensor:
    """Blocks of a dense [O, I] tensor at w's pattern -> [nnz, B, B]."""
    if w.block_size == 1:
        return dense.reshape(-1)[w.linear_index()].view(-1, 1, 1)
    return _block_view(dense, w)[w.rows, w.cols]


class DenseScratchBackend(Backend):
    """Dense scratch GEMM: fastest when the dense GEMM is cheap (bf16 + AMX) or density is high."""

    name = "dense"

    def forward(self, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        return x @ scatter_dense(w).t()

    def forward_with_bias(self, x: Tensor, w: BlockSparseMatrix, bias: Tensor) -> Tensor:
        return torch.addmm(bias, x, scatter_dense(w).t())

    def grad_input(self, dy: Tensor, w: BlockSparseMatrix) -> Tensor:
        return dy @ scatter_dense(w)

    def grad_values(self, dy: Tensor, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        return gather_blocks(dy.t() @ x, w)


GATHER_CHUNK_ELEMS = 1 << 20  # ~4 MB fp32 per gathered operand: stays in L2 on this CPU


def _token_step(w: BlockSparseMatrix) -> int:
    """Tokens per chunk so that one gathered [chunk, nnz, B] operand is ~GATHER_CHUNK_ELEMS."""
    return max(16, GATHER_CHUNK_ELEMS // max(1, w.nnz * w.block_size))


class GatherBmmBackend(Backend):
    """Per token chunk: gather block columns, ``torch.bmm`` over blocks, ``index_add_``."""

    name = "gather_bmm"

    def forward(self, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        B, n = w.block_size, x.shape[0]
        y = x.new_zeros(n, w.n_block_rows, B)
        vt = w.values.transpose(1, 2)                                   # (nnz, B_in, B_out)
        step = _token_step(w)
        for s in range(0, n, step):
            xg = x[s:s + step].view(-1, w.n_block_cols, B).index_select(1, w.cols)  # (n, nnz, B)
            part = torch.bmm(xg.transpose(0, 1), vt)                    # (nnz, n, B)
            y[s:s + step].index_add_(1, w.rows, part.transpose(0, 1))
        return y.view(n, w.shape[0])

    def grad_input(self, dy: Tensor, w: BlockSparseMatrix) -> Tensor:
        B, n = w.block_size, dy.shape[0]
        dx = dy.new_zeros(n, w.n_block_cols, B)
        step = _token_step(w)
        for s in range(0, n, step):
            dyg = dy[s:s + step].view(-1, w.n_block_rows, B).index_select(1, w.rows)
            part = torch.bmm(dyg.transpose(0, 1), w.values)              # (nnz, n, B)
            dx[s:s + step].index_add_(1, w.cols, part.transpose(0, 1))
        return dx.view(n, w.shape[1])

    def grad_values(self, dy: Tensor, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        B, n = w.block_size, x.shape[0]
        dv = x.new_zeros(w.nnz, B, B)
        step = _token_step(w)
        for s in range(0, n, step):
            dyg = dy[s:s + step].view(-1, w.n_block_rows, B).index_select(1, w.rows)
            xg = x[s:s + step].view(-1, w.n_block_cols, B).index_select(1, w.cols)
            dv.baddbmm_(dyg.permute(1, 2, 0), xg.transpose(0, 1))        # (nnz, B, n) @ (nnz, n, B)
        return dv


def _crow(index: Tensor, n: int) -> Tensor:
    crow = index.new_zeros(n + 1)
    crow[1:] = torch.bincount(index, minlength=n).cumsum(0)
    return crow


def _compressed(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        if values.shape[-1] == 1:
            return torch.sparse_csr_tensor(crow, col, values.reshape(-1), shape)
        return torch.sparse_bsr_tensor(crow, col, values, shape)


class MklBsrBackend(Backend):
    """torch.sparse CSR/BSR x dense through MKL (CPU, fp32/fp64)."""

    name = "bsr"

    def supports(self, device: torch.device, dtype: torch.dtype, block_size: int) -> bool:
        return device.type == "cpu" and dtype in (torch.float32, torch.float64)

    def _pattern(self, w: BlockSparseMatrix) -> Tensor:
        return cached(w, "bsr.crow", lambda: _crow(w.rows, w.n_block_rows))

    def _pattern_t(self, w: BlockSparseMatrix) -> tuple[Tensor, Tensor, Tensor]:
        def build() -> tuple[Tensor, Tensor, Tensor]:
            perm = (w.cols.long() * w.n_block_rows + w.rows).argsort()
            return perm, _crow(w.cols, w.n_block_cols), w.rows[perm]
        return cached(w, "bsr.transposed", build)

    def forward(self, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        return self.forward_with_bias(x, w, None)

    def forward_with_bias(self, x: Tensor, w: BlockSparseMatrix, bias: Optional[Tensor]) -> Tensor:
        sp = _compressed(self._pattern(w), w.cols, w.values, w.shape)
        y_t = sp @ x.t() if bias is None else torch.addmm(bias[:, None], sp, x.t())  # (O, N)
        return y_t.t().contiguous()

    def grad_input(self, dy: Tensor, w: BlockSparseMatrix) -> Tensor:
        perm, crow_t, col_t = self._pattern_t(w)
        sp_t = _compressed(crow_t, col_t, w.values[perm].transpose(1, 2).contiguous(),
                           (w.shape[1], w.shape[0]))
        return (sp_t @ dy.t()).t().contiguous()                         # (N, I)

    def grad_values(self, dy: Tensor, x: Tensor, w: BlockSparseMatrix) -> Tensor:
        if w.block_size > 1:
            return _REGISTERED["gather_bmm"].grad_values(dy, x, w)
        pattern = _compressed(self._pattern(w), w.cols, x.new_zeros(w.nnz, 1, 1), w.shape)
        return torch.sparse.sampled_addmm(pattern, dy.t(), x, beta=0.0).values().view(-1, 1, 1)


_REGISTERED = {b.name: register_backend(b) for b in (DenseScratchBackend(), GatherBmmBackend(),
                                                     MklBsrBackend())}


# Thresholds of the ``auto`` rule (see auto_backend_name for the measurements).
GATHER_MAX_DENSITY_PER_B = 1.0 / 1000    # fp32: gather_bmm when density / B <= this (B >= 4)
CSR_MAX_DENSITY = 0.01                   # fp32, B = 1: MKL CSR when density <= this
LOWP_GATHER_GRAD_MAX_DENSITY = 0.01      # bf16/fp16: gather_bmm grad_values when B >= 16 and density <= this
CUDA_TRITON_MAX_DENSITY = 0.3            # CUDA: triton when density <= this (provisional, see below)


def auto_backend_name(device: torch.device, dtype: torch.dtype, block_size: int,
                      shape: tuple[int, int], nnz: int, n_tokens: int, op: str = "forward") -> str:
    """Backend ``auto`` uses for one product ``op`` of a (O, I) = ``shape`` layer.

    Derived from measurements on the 2-core Xeon (AMX-bf16 + AVX-512, Sapphire Rapids class,
    torch 2.13 CPU, shared with other jobs, so +-30%), N = 4096 tokens, per product,
    each backend interleaved with the others (ms, median of 5-9):

    bf16 (autocast): the dense AMX GEMM is 8-10x faster than fp32 and wins outright.
      768x768   s=0.9  B=16: dense f/gi/gv 1.7/1.5/2.9  gather_bmm 45/45/14
      3072x768  s=0.9  B=16: dense 6.9/7.2/12.4         gather_bmm 178/175/50
      3072x768  s=0.9  B=1:  dense 7.9/8.1/12.6         (MKL sparse has no bf16)
      only at s=0.99, B=16 does the sampled grad win: gather_bmm gv 1.8 vs 3.0 (768x768),
      8.9 vs 14.2 (3072x768); its forward stays 2-4x slower.
    fp32: dense scratch is within ~5% of nn.Linear's GEMMs and wins for s <= 0.9:
      768x768   s=0.9  B=1:  dense 12.5/12.7/12.0  bsr (MKL CSR) 27.9/29.6/29.0
      768x768   s=0.9  B=16: dense 11.7/11.7/11.7  bsr (MKL BSR) 22.4/21.5  gather_bmm 16.2/14.0/12.7
      3072x768  s=0.9  B=16: dense 55.7/51.7/49.1  bsr 94.0/77.6           gather_bmm 70.4/48.7/47.2
      3072x768  s=0.5  B=16: dense 59.4/48.7/50.4  bsr 229/219             gather_bmm 326/271/216
      B=4 s=0.9: gather_bmm 8-10x slower than dense; MKL BSR 1.5x slower.
      At s=0.99 (density / B = 1/1600 for B=16) the sparse paths win:
      768x768   B=16: dense 11.3/-/11.7  gather_bmm 2.7/-/1.9;  3072x768: 58.7/-/50.3 vs 25.2/-/13.9
      768x768   B=1:  dense 43.7/49.3/48.6 vs bsr 39.3/50.6/20.6 (loaded run); 3072x768: 128/118/136
      vs 112/97/57.  B=4, s=0.99 (density / B = 1/400): gather_bmm 14.2/-/9.3 vs dense 11.4/-/11.9.
    End to end (tools/bench_ops.py --quick, fwd+bwd of the layer vs nn.Linear, N = 4096,
    H = 256 / 768, s = 0.5 / 0.9, B = 1 / 16): auto (= dense scratch) runs at
    0.90-1.09x of nn.Linear in fp32 and 0.93-1.45x in bf16 (worst: B = 1, s = 0.5,
    where scattering 1.2M single weights per product costs most); MKL bsr 1.5-7.7x and
    gather_bmm 1.15-7.6x (fp32) / 5-11x (bf16) slower than nn.Linear.
    Hence: dense everywhere, except fp32 with density / B <= 1/1000 (B >= 4: gather_bmm)
    or density <= 0.01 (B = 1: bsr), and low-precision grad_values with B >= 16 and
    density <= 0.01 (gather_bmm).

    CUDA (provisional: no GPU was available to measure in this session): ``triton`` when
    it is registered, supports (dtype, B) and density <= 0.3 (the roofline in
    kernels/README.md gives the sparse kernels 1.3-2.1x over dense at s = 0.9, B = 16,
    and nothing to gain near s = 0.5 where the dense cuBLAS GEMM does only 2x the
    FLOPs at full tensor-core efficiency); otherwise dense (cuBLAS). Other devices: dense.
    """
    density = nnz / max(1, (shape[0] // block_size) * (shape[1] // block_size))
    if device.type == "cuda":
        use_triton = density <= CUDA_TRITON_MAX_DENSITY and _triton_supports(device, dtype, block_size)
        return "triton" if use_triton else "dense"
    if device.type != "cpu":
        return "dense"
    if dtype in (torch.float32, torch.float64):
        if block_size == 1:
            return "bsr" if density <= CSR_MAX_DENSITY else "dense"
        return "gather_bmm" if density / block_size <= GATHER_MAX_DENSITY_PER_B else "dense"
    if op == "grad_values" and block_size >= 16 and density <= LOWP_GATHER_GRAD_MAX_DENSITY:
        return "gather_bmm"
    return "dense"


def _triton_supports(device: torch.device, dtype: torch.dtype, block_size: int) -> bool:
    backend = loaded_backend("triton")  # declared; imported by select_backend for CUDA
    return backend is not None and backend.supports(device, dtype, block_size)
