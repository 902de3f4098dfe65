"""SparseLinear: an always-sparse drop-in for ``nn.Linear`` (contract: docs/architecture.md).

State: ``values`` [nnz, B, B] (nn.Parameter, fp32 master weights, the only trainable
weight), ``rows`` / ``cols`` [nnz] int32 block coordinates (persistent buffers, in
canonical order; format.INDEX_DTYPE), dense ``bias`` [O]. The dense O x I weight is never stored.

    y = x @ W^T + b,  W[r*B:(r+1)*B, c*B:(c+1)*B] = values[k] for (r, c) = (rows[k], cols[k])

Ablation ``inactive="frozen"`` (mask-based, for the ablation only): inactive positions
hold frozen random values from a dense, seeded, truncated-normal buffer
``frozen_weight`` [O, I] whose entries at the active blocks are ignored, so the
effective weight is ``W_eff = W_sparse + frozen_weight * (1 - active_mask)`` and the
forward adds ``x @ (frozen_weight * inactive_mask)^T`` (the mask is rebuilt from
rows/cols at every forward, so it follows ``set_pattern``). It stores an O x I dense
buffer and runs one extra dense GEMM: mask-based by design.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse_ops.autograd import sparse_linear
from sparse_ops.format import (INDEX_DTYPE, INDEX_DTYPES, BlockSparseMatrix, SparseFormatError,
                               canonical_order, check_block_size, check_shape, nnz_for_density,
                               random_pattern, validate_pattern)
from sparse_ops.kernels import check_backend_name

INIT_STD = 0.02
INACTIVE_MODES = ("zero", "frozen")


def make_frozen_weight(shape: tuple[int, int], seed: int, std: float = 0.02) -> Tensor:
    """Dense [O, I] fp32 truncated-normal (std, cut at +-2 std) values from ``seed``; CPU."""
    gen = torch.Generator().manual_seed(int(seed))
    frozen = torch.empty(shape)
    return nn.init.trunc_normal_(frozen, std=std, a=-2 * std, b=2 * std, generator=gen)


def masked_frozen_weight(frozen: Tensor, rows: Tensor, cols: Tensor, block_size: int) -> Tensor:
    """Copy of ``frozen`` [O, I] with the active blocks (rows, cols) set to zero."""
    O, I = frozen.shape
    B = block_size
    masked = frozen.clone()
    masked.view(O // B, B, I // B, B).permute(0, 2, 1, 3)[rows, cols] = 0
    return masked


def frozen_inactive_term(x: Tensor, frozen: Tensor, rows: Tensor, cols: Tensor, block_size: int) -> Tensor:
    """x [..., I] @ (frozen * inactive_mask)^T -> [..., O]; no gradient reaches ``frozen``."""
    return F.linear(x, masked_frozen_weight(frozen.detach(), rows, cols, block_size))


def _make_generator(fn: str, generator: Optional[torch.Generator], seed: Optional[int]) -> Optional[torch.Generator]:
    if generator is not None and seed is not None:
        raise SparseFormatError(f"{fn}: pass either 'generator' or 'seed', got both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise SparseFormatError(f"{fn}: argument 'seed' must be an int, got {seed!r}")
        return torch.Generator().manual_seed(seed)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise SparseFormatError(f"{fn}: argument 'generator' must be a torch.Generator, got "
                                f"{type(generator).__name__}")
    return generator


def _density(fn: str, sparsity: float, density: Optional[float]) -> float:
    if density is not None:
        if not 0.0 < float(density) <= 1.0:
            raise SparseFormatError(f"{fn}: argument 'density' must be in (0, 1], got {density!r}")
        return float(density)
    if not 0.0 <= float(sparsity) < 1.0:
        raise SparseFormatError(f"{fn}: argument 'sparsity' must be in [0, 1), got {sparsity!r}")
    return 1.0 - float(sparsity)


class SparseLinear(nn.Module):
    """Block-sparse linear layer ``y = x @ W^T + b`` holding only the active blocks.

    Args:
        in_features, out_features: I and O; both divisible by ``block_size``.
        bias: keep a dense bias [O] (initialised to zero, as BERT does).
        sparsity: fraction of inactive blocks; nnz = round((1 - s) (O/B) (I/B)).
        block_size: B in {1, 4, 8, 16}.
        backend: kernel backend name or ``"auto"`` (sparse_ops.kernels).
        density: overrides ``sparsity`` (Erdos-Renyi layer densities): nnz = round(d (O/B)(I/B)).
        generator / seed: RNG for the uniformly random initial pattern and the values
            (truncated normal, std 0.02, cut at +-2 std); default: torch's global RNG.
        inactive: ``"zero"`` (default) or ``"frozen"`` (ablation, see the module docstring).
        inactive_seed: seed of the frozen random inactive values (default 0).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, sparsity: float = 0.9,
                 block_size: int = 16, backend: str = "auto", density: Optional[float] = None,
                 generator: Optional[torch.Generator] = None, seed: Optional[int] = None, *,
                 inactive: str = "zero", inactive_seed: int = 0,
                 device: Union[torch.device, str, None] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        fn = "SparseLinear"
        B = check_block_size(fn, block_size)
        O, I = check_shape(fn, (out_features, in_features), B)
        if inactive not in INACTIVE_MODES:
            raise SparseFormatError(f"{fn}: argument 'inactive' must be one of {INACTIVE_MODES}, got {inactive!r}")
        self.in_features, self.out_features, self.block_size = I, O, B
        self.backend = check_backend_name(fn, backend)
        self.inactive = inactive
        gen = _make_generator(fn, generator, seed)
        nnz = nnz_for_density((O // B) * (I // B), _density(fn, sparsity, density), fn)
        rows, cols = random_pattern(O // B, I // B, nnz, gen)
        self.register_buffer("rows", rows.to(device))
        self.register_buffer("cols", cols.to(device))
        values = torch.empty(nnz, B, B, dtype=dtype or torch.float32)
        nn.init.trunc_normal_(values, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD, generator=gen)
        self.values = nn.Parameter(values.to(device))
        self.bias = nn.Parameter(torch.zeros(O, device=device, dtype=dtype or torch.float32)) if bias else None
        if inactive == "frozen":
            frozen = make_frozen_weight((O, I), inactive_seed, INIT_STD)
            self.register_buffer("frozen_weight", frozen.to(device=device, dtype=dtype or torch.float32))
        self._kernel_cache: dict = {}

    # ---- shape properties ------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return int(self.rows.numel())

    @property
    def n_block_rows(self) -> int:
        return self.out_features // self.block_size

    @property
    def n_block_cols(self) -> int:
        return self.in_features // self.block_size

    @property
    def density(self) -> float:
        """Exact fraction of active blocks (= fraction of active weights)."""
        return self.nnz / (self.n_block_rows * self.n_block_cols)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def matrix(self) -> BlockSparseMatrix:
        """The weight as a BlockSparseMatrix sharing this module's tensors (values detached)."""
        return BlockSparseMatrix(self.values.detach(), self.rows, self.cols,
                                 (self.out_features, self.in_features), self.block_size, self._kernel_cache)

    # ---- compute ---------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """x [..., I] -> y [..., O]; equivalent to ``F.linear(x, self.to_dense_weight(), self.bias)``."""
        if x.shape[-1] != self.in_features:
            raise SparseFormatError(f"SparseLinear.forward: argument 'x' must have last dimension "
                                    f"{self.in_features}, got shape {tuple(x.shape)}")
        y = sparse_linear(x, self.values, self.bias, self.rows, self.cols,
                          (self.out_features, self.in_features), self.block_size, self.backend,
                          self._kernel_cache)
        if self.inactive == "frozen":
            y = y + frozen_inactive_term(x, self.frozen_weight, self.rows, self.cols, self.block_size)
        return y

    # ---- pattern ---------------------------------------------------------------------
    @torch.no_grad()
    def set_pattern(self, rows: Tensor, cols: Tensor, values: Tensor, validate: bool = True) -> Tensor:
        """Replace the pattern and values in place (same Parameter / buffer objects).

        rows, cols: [nnz] int32 or int64 block coordinates (any order, no duplicates),
        stored as int32; values: [nnz, B, B]. nnz must equal the current nnz. The blocks
        are sorted into canonical order; returns the permutation ``order`` applied
        (stored[i] = given[order[i]]) so callers can permute optimizer state alike.
        ``validate=False`` skips the range / duplicate / order checks, which need host
        syncs (min, max, unique): for trusted callers such as the DynSp controller,
        whose patterns are canonical by construction. Shapes and dtypes are always checked.
        """
        fn = "SparseLinear.set_pattern"
        B = self.block_size
        for name, t, shp in (("rows", rows, (self.nnz,)), ("cols", cols, (self.nnz,)),
                             ("values", values, (self.nnz, B, B))):
            if not isinstance(t, Tensor) or tuple(t.shape) != shp:
                raise SparseFormatError(f"{fn}: argument '{name}' must have shape {shp} (nnz={self.nnz} "
                                        f"is fixed), got {tuple(getattr(t, 'shape', ())) or type(t).__name__}")
            if name != "values" and t.dtype not in INDEX_DTYPES:
                raise SparseFormatError(f"{fn}: argument '{name}' must be an int32 or int64 tensor, got {t.dtype}")
        rows, cols = rows.to(self.rows.device, INDEX_DTYPE), cols.to(self.rows.device, INDEX_DTYPE)
        order = (rows.long() * self.n_block_cols + cols).argsort()
        rows, cols = rows[order], cols[order]
        if validate:
            validate_pattern(fn, rows, cols, (self.out_features, self.in_features), B)
        self.values.copy_(values.to(self.values.device)[order])
        self.rows.copy_(rows)
        self.cols.copy_(cols)
        return order

    @torch.no_grad()
    def to_dense_weight(self, include_frozen: bool = True) -> Tensor:
        """Dense [O, I] effective weight (diagnostics / export only; never used in training)."""
        dense = self.matrix().to_dense()
        if self.inactive == "frozen" and include_frozen:
            dense = dense + masked_frozen_weight(self.frozen_weight, self.rows, self.cols,
                                                           self.block_size)
        return dense

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Re-draw values (truncated normal std 0.02) and zero the bias; pattern unchanged."""
        values = torch.empty(self.values.shape, dtype=self.values.dtype)
        nn.init.trunc_normal_(values, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD, generator=generator)
        self.values.copy_(values)
        if self.bias is not None:
            self.bias.zero_()

    @classmethod
    def from_dense(cls, linear_or_weight: Union[nn.Linear, Tensor], bias: Optional[Tensor] = None, *,
                   block_size: int = 16, sparsity: Optional[float] = None, rows: Optional[Tensor] = None,
                   cols: Optional[Tensor] = None, backend: str = "auto") -> "SparseLinear":
        """Compress an ``nn.Linear`` (or a weight [O, I] plus optional ``bias``).

        Pattern: ``rows``/``cols`` if given; else, with ``sparsity``, the
        round((1-s)(O/B)(I/B)) blocks of largest L1 norm (ties: lower block index);
        else every block holding a nonzero. Export/import helper.
        """
        fn = "SparseLinear.from_dense"
        if isinstance(linear_or_weight, nn.Linear):
            weight = linear_or_weight.weight.detach()
            bias = linear_or_weight.bias.detach() if linear_or_weight.bias is not None else None
        elif isinstance(linear_or_weight, Tensor) and linear_or_weight.dim() == 2:
            weight = linear_or_weight.detach()
        else:
            raise SparseFormatError(f"{fn}: argument 'linear_or_weight' must be an nn.Linear or a 2-D "
                                    f"tensor, got {type(linear_or_weight).__name__}")
        B = check_block_size(fn, block_size)
        O, I = check_shape(fn, weight.shape, B)
        if rows is None and sparsity is not None:
            rows, cols = _top_blocks(fn, weight, B, sparsity)
        mat = BlockSparseMatrix.from_dense(weight, B, rows, cols)
        if mat.nnz == 0:
            raise SparseFormatError(f"{fn}: argument 'linear_or_weight' must have at least one nonzero "
                                    f"block (or pass 'sparsity' / 'rows' and 'cols'), got an all-zero weight")
        layer = cls(I, O, bias is not None, density=mat.density, block_size=B, backend=backend,
                    device=weight.device, dtype=weight.dtype, seed=0)
        if layer.nnz != mat.nnz:  # rounding of the density cannot drift, but stay exact
            raise SparseFormatError(f"{fn}: internal nnz mismatch {layer.nnz} vs {mat.nnz}")
        layer.set_pattern(mat.rows, mat.cols, mat.values)
        if bias is not None:
            layer.bias.data.copy_(bias)
        return layer

    # ---- serialisation ---------------------------------------------------------------
    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        """Accept a different pattern of equal nnz: rows/cols/values are copied in place."""
        rows, cols = state_dict.get(prefix + "rows"), state_dict.get(prefix + "cols")
        if rows is not None and cols is not None and rows.shape == self.rows.shape == cols.shape:
            try:
                # int64 (or int32) patterns load; copy_ stores them as int32.
                validate_pattern("SparseLinear.load_state_dict", rows, cols,
                                 (self.out_features, self.in_features), self.block_size)
            except SparseFormatError as exc:
                error_msgs.append(f"{prefix}rows/{prefix}cols: {exc}")
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_kernel_cache"] = {}  # derived data; rebuilt on first use
        return state

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, block_size={self.block_size}, nnz={self.nnz}, "
                f"density={self.density:.4f}, backend={self.backend!r}, inactive={self.inactive!r}")


def _top_blocks(fn: str, weight: Tensor, block_size: int, sparsity: float) -> tuple[Tensor, Tensor]:
    """The round((1-s) n_blocks) blocks of largest L1 norm, ties to the lower linear index."""
    O, I = weight.shape
    B = block_size
    norms = weight.abs().reshape(O // B, B, I // B, B).sum(dim=(1, 3)).reshape(-1).double()
    nnz = nnz_for_density(norms.numel(), _density(fn, sparsity, None), fn)
    # Stable descending sort keeps lower indices first among equal norms.
    lin = torch.sort(norms, descending=True, stable=True).indices[:nnz]
    rows, cols, _ = canonical_order(lin // (I // B), lin % (I // B), I // B)
    return rows, cols

