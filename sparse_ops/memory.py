"""Memory accounting: bytes of the persistent training state of a layer (or model).

Persistent state = parameters + buffers + optimizer state. For Adam/AdamW the state
is two fp32 moments shaped like each trainable parameter (the scalar ``step`` is
ignored). Dense scratch inside a kernel is transient and not counted here.

    dense nn.Linear (O x I, bias):  (O*I + O) * 4 * 3 bytes in fp32 with Adam
    SparseLinear:                   (nnz*B^2 + O) * 4 * 3  +  nnz * 2 * INDEX_BYTES (rows/cols)

INDEX_BYTES is 4 (int32 indices, format.INDEX_DTYPE): at B = 1 a layer then costs
12 + 8 = 20 bytes per active weight against 12 per dense weight, so its state is below
the dense layer's for every s > 0.4 (with int64 indices only for s > 4/7).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from sparse_ops.format import INDEX_DTYPE

INDEX_BYTES = torch.empty(0, dtype=INDEX_DTYPE).element_size()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def state_breakdown(module: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    adam_moments: int = 2) -> dict[str, int]:
    """Bytes by kind: ``params``, ``buffers`` (indices etc.) and ``optimizer``.

    With ``optimizer``, its actual state tensors of this module's parameters are
    counted; otherwise ``adam_moments`` fp32 tensors per trainable parameter.
    """
    params = list(module.parameters())
    out = {"params": sum(_nbytes(p) for p in params),
           "buffers": sum(_nbytes(b) for b in module.buffers())}
    if optimizer is not None:
        ids = {id(p) for p in params}
        out["optimizer"] = sum(_nbytes(t) for p, st in optimizer.state.items() if id(p) in ids
                               for t in st.values() if torch.is_tensor(t) and t.dim() > 0)
    else:
        out["optimizer"] = sum(adam_moments * p.numel() * 4 for p in params if p.requires_grad)
    return out


def state_bytes(module: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                adam_moments: int = 2) -> int:
    """Total persistent bytes: parameters + buffers + (Adam) optimizer state."""
    return sum(state_breakdown(module, optimizer, adam_moments).values())


def dense_linear_state_bytes(in_features: int, out_features: int, bias: bool = True,
                             adam_moments: int = 2, element_size: int = 4) -> int:
    """Bytes of an fp32 ``nn.Linear`` with ``adam_moments`` fp32 moments (weight + bias)."""
    n = out_features * in_features + (out_features if bias else 0)
    return n * element_size + adam_moments * n * 4


def sparse_linear_state_bytes(in_features: int, out_features: int, nnz: int, block_size: int,
                              bias: bool = True, adam_moments: int = 2, element_size: int = 4) -> int:
    """Predicted bytes of a SparseLinear: values + bias (+ moments) + rows/cols (INDEX_BYTES each)."""
    n = nnz * block_size * block_size + (out_features if bias else 0)
    return n * element_size + adam_moments * n * 4 + index_bytes(nnz)


def index_bytes(nnz: int) -> int:
    """Bytes of the block coordinates of ``nnz`` blocks: rows + cols, INDEX_BYTES each."""
    return nnz * 2 * INDEX_BYTES
