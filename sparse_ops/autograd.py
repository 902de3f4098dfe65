"""Autograd for the block-sparse linear map: gradients go to x, values and bias only.

``sparse_linear(x, values, bias, rows, cols, shape, block_size)`` is equivalent to
``torch.nn.functional.linear(x, W, bias)`` with W the dense (O, I) matrix holding
``values`` at the blocks (rows, cols); the gradient w.r.t. W is only formed at the
active blocks ([nnz, B, B], the sampled product) and never as a dense tensor.

Mixed precision: ``values`` (and bias) are fp32 master weights. Under autocast the
compute dtype is the autocast dtype of x's device (bf16 on CPU; fp16/bf16 on CUDA):
x, values and bias are cast inside the op, the kernels run with autocast off, the
output is in the compute dtype (as ``nn.Linear`` under autocast), and the gradients
are returned in the dtypes of the inputs (fp32 for values and bias). Outside
autocast the compute dtype is ``promote_types(x.dtype, values.dtype)``.
``torch.amp.custom_fwd/custom_bwd`` make backward run under the autocast state of
forward; one Function class is built per device type because those decorators take
the device type at decoration time.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from sparse_ops.format import BlockSparseMatrix
from sparse_ops.ops import sparse_forward, sparse_grad_bias, sparse_grad_input, sparse_grad_values


def compute_dtype(x: Tensor, values: Tensor) -> torch.dtype:
    """The dtype the kernels run in for input ``x`` and master ``values``."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(x.dtype, values.dtype)


def _forward(ctx: Any, x: Tensor, values: Tensor, bias: Optional[Tensor], rows: Tensor, cols: Tensor,
             shape: tuple[int, int], block_size: int, backend: str, cache: Optional[dict]) -> Tensor:
    cdt = compute_dtype(x, values)
    x2 = x.reshape(-1, shape[1]).to(cdt).contiguous()                       # (N, I)
    w = BlockSparseMatrix(values.to(cdt), rows, cols, shape, block_size, cache)
    with torch.autocast(x.device.type, enabled=False):
        y = sparse_forward(x2, w, backend, None if bias is None else bias.to(cdt))  # (N, O)
    ctx.meta = (shape, block_size, backend, cache, x.shape, x.dtype, values.dtype,
                None if bias is None else bias.dtype)
    ctx.save_for_backward(x2 if ctx.needs_input_grad[1] else None, w.values, rows, cols)
    return y.reshape(*x.shape[:-1], shape[0])


def _backward(ctx: Any, dy: Tensor) -> tuple[Optional[Tensor], ...]:
    shape, block_size, backend, cache, x_shape, x_dtype, v_dtype, b_dtype = ctx.meta
    x2, v, rows, cols = ctx.saved_tensors
    w = BlockSparseMatrix(v, rows, cols, shape, block_size, cache)
    dy2 = dy.reshape(-1, shape[0]).to(v.dtype).contiguous()                # (N, O)
    dx = dv = db = None
    with torch.autocast(dy.device.type, enabled=False):
        if ctx.needs_input_grad[0]:
            dx = sparse_grad_input(dy2, w, backend).reshape(x_shape).to(x_dtype)
        if ctx.needs_input_grad[1]:
            dv = sparse_grad_values(dy2, x2, w, backend).to(v_dtype)
        if ctx.needs_input_grad[2]:
            # Accumulated and returned in the (fp32) master dtype, not rounded to bf16/fp16 first.
            db = sparse_grad_bias(dy2, w, backend).to(b_dtype)
    return dx, dv, db, None, None, None, None, None, None


def _make_function(device_type: str) -> type:
    class SparseLinearFunction(torch.autograd.Function):
        """y = x @ W^T + b with W block-sparse; see the module docstring."""

        @staticmethod
        @torch.amp.custom_fwd(device_type=device_type)
        def forward(ctx, x, values, bias, rows, cols, shape, block_size, backend, cache):  # type: ignore[override]
            return _forward(ctx, x, values, bias, rows, cols, shape, block_size, backend, cache)

        @staticmethod
        @torch.amp.custom_bwd(device_type=device_type)
        def backward(ctx, dy):  # type: ignore[override]
            return _backward(ctx, dy)

    SparseLinearFunction.__qualname__ = f"SparseLinearFunction[{device_type}]"
    return SparseLinearFunction


_FUNCTIONS: dict[str, type] = {}


def function_for(device_type: str) -> type:
    """The autograd.Function class for tensors on ``device_type`` ('cpu', 'cuda', ...)."""
    if device_type not in _FUNCTIONS:
        _FUNCTIONS[device_type] = _make_function(device_type)
    return _FUNCTIONS[device_type]


SparseLinearFunction = function_for("cpu")


def sparse_linear(x: Tensor, values: Tensor, bias: Optional[Tensor], rows: Tensor, cols: Tensor,
                  shape: tuple[int, int], block_size: int, backend: str = "auto",
                  cache: Optional[dict] = None) -> Tensor:
    """y [..., O] = x [..., I] @ W^T + bias, W = BlockSparseMatrix(values, rows, cols, shape, B).

    Equivalent to ``F.linear(x, W.to_dense(), bias)``; differentiable in x, values
    and bias. ``cache`` is an optional dict for pattern-derived kernel metadata.
    """
    return function_for(x.device.type).apply(x, values, bias, rows, cols, tuple(shape), block_size,
                                             backend, cache)
