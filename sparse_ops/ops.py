"""The three block-sparse products by layout, each with its dense reference.

With W the dense (O, I) matrix that ``w`` (a BlockSparseMatrix) represents:

    sparse_forward(x, w)         y  = x @ W^T                 x [..., I] -> y [..., O]
    sparse_grad_input(dy, w)     dx = dy @ W                  dy [..., O] -> dx [..., I]
    sparse_grad_values(dy, x, w) dv = (dy^T @ x) at w's blocks -> [nnz, B, B]
    sparse_grad_bias(dy, w)      db = dy summed over tokens   -> [O], at least fp32

Leading batch dims are flattened to N tokens. Operands must share one dtype and
device (``w.values`` in the compute dtype: casting is autograd.py's job). The
``backend`` argument is a registered backend name or ``auto`` (sparse_ops.kernels).
The ``dense_*_reference`` functions are the test oracle: they build the dense W.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from sparse_ops.format import BlockSparseMatrix, SparseFormatError
from sparse_ops.kernels import Backend, select_backend


def _check(fn: str, name: str, t: Tensor, last_dim: int, w: BlockSparseMatrix) -> Tensor:
    """Flatten ``t`` [..., last_dim] to [N, last_dim] after checking it against ``w``."""
    if not isinstance(t, Tensor) or t.dim() < 1 or t.shape[-1] != last_dim:
        raise SparseFormatError(f"{fn}: argument '{name}' must have last dimension {last_dim}, got "
                                f"shape {tuple(getattr(t, 'shape', ()))}")
    if t.dtype != w.values.dtype or t.device != w.values.device:
        raise SparseFormatError(f"{fn}: argument '{name}' must have dtype {w.values.dtype} on "
                                f"{w.values.device} (those of w.values), got {t.dtype} on {t.device}")
    return t.reshape(-1, last_dim)


def resolve(backend: str, w: BlockSparseMatrix, n_tokens: int, op: str = "forward") -> Backend:
    """The backend object for product ``op`` (forward / grad_input / grad_values) of ``w``."""
    return select_backend(backend, w.values.device, w.values.dtype, w.block_size, w.shape,
                          w.nnz, n_tokens, op)


def sparse_forward(x: Tensor, w: BlockSparseMatrix, backend: str = "auto",
                   bias: Optional[Tensor] = None) -> Tensor:
    """y [..., O] = x [..., I] @ W^T (+ bias [O]); equivalent to ``F.linear(x, w.to_dense(), bias)``."""
    x2 = _check("sparse_forward", "x", x, w.shape[1], w)
    impl = resolve(backend, w, x2.shape[0])
    x2 = x2.contiguous()
    if bias is None:
        y = impl.forward(x2, w)
    else:
        if bias.shape != (w.shape[0],) or bias.dtype != w.values.dtype:
            raise SparseFormatError(f"sparse_forward: argument 'bias' must have shape ({w.shape[0]},) "
                                    f"and dtype {w.values.dtype}, got {tuple(bias.shape)} {bias.dtype}")
        y = impl.forward_with_bias(x2, w, bias)
    return y.reshape(*x.shape[:-1], w.shape[0])


def sparse_grad_input(dy: Tensor, w: BlockSparseMatrix, backend: str = "auto") -> Tensor:
    """dx [..., I] = dy [..., O] @ W; equivalent to ``dy @ w.to_dense()``."""
    dy2 = _check("sparse_grad_input", "dy", dy, w.shape[0], w)
    dx = resolve(backend, w, dy2.shape[0], "grad_input").grad_input(dy2.contiguous(), w)
    return dx.reshape(*dy.shape[:-1], w.shape[1])


def sparse_grad_values(dy: Tensor, x: Tensor, w: BlockSparseMatrix, backend: str = "auto") -> Tensor:
    """dv [nnz, B, B] = (dy^T @ x) sampled at w's blocks (the gradient of w.values).

    Equivalent to ``dense_grad_values_reference(dy, x, w)``.
    """
    dy2 = _check("sparse_grad_values", "dy", dy, w.shape[0], w)
    x2 = _check("sparse_grad_values", "x", x, w.shape[1], w)
    if dy2.shape[0] != x2.shape[0]:
        raise SparseFormatError(f"sparse_grad_values: arguments 'dy' and 'x' must have the same number "
                                f"of tokens, got {dy2.shape[0]} and {x2.shape[0]}")
    return resolve(backend, w, x2.shape[0], "grad_values").grad_values(dy2.contiguous(), x2.contiguous(), w)


def sparse_grad_bias(dy: Tensor, w: BlockSparseMatrix, backend: str = "auto") -> Tensor:
    """db [O] = dy [..., O] summed over the tokens, in at least fp32 (never rounded to bf16 /
    fp16 first); computed by the backend that does w's grad_values."""
    dy2 = _check("sparse_grad_bias", "dy", dy, w.shape[0], w)
    return resolve(backend, w, dy2.shape[0], "grad_values").grad_bias(dy2.contiguous())


def dense_forward_reference(x: Tensor, w: BlockSparseMatrix) -> Tensor:
    """Oracle: ``x @ W^T`` with the dense W."""
    return x @ w.to_dense().t()


def dense_grad_input_reference(dy: Tensor, w: BlockSparseMatrix) -> Tensor:
    """Oracle: ``dy @ W`` with the dense W."""
    return dy @ w.to_dense()


def dense_grad_values_reference(dy: Tensor, x: Tensor, w: BlockSparseMatrix) -> Tensor:
    """Oracle: the dense gradient ``dy^T @ x`` [O, I] cut into w's blocks."""
    grad = dy.reshape(-1, w.shape[0]).t() @ x.reshape(-1, w.shape[1])
    B = w.block_size
    blocks = grad.reshape(w.n_block_rows, B, w.n_block_cols, B).transpose(1, 2)
    return blocks[w.rows, w.cols]


__all__ = [
    "sparse_forward", "sparse_grad_input", "sparse_grad_values", "sparse_grad_bias", "dense_forward_reference",
    "dense_grad_input_reference", "dense_grad_values_reference", "resolve",
]
