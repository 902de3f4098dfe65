"""Roofline model of one linear layer's forward + backward (dense or block-sparse).

Bytes are the compulsory DRAM traffic of the three products when each runs as one kernel
(every operand read once, every result written once; L2 reuse inside a kernel is free):

    forward      Y  = X W^T   reads X [N, I], W; writes Y [N, O]
    grad_input   dX = dY W    reads dY [N, O], W; writes dX [N, I]
    grad_weight  dW = dY^T X  reads dY, X; writes dW (dense [O, I] or sparse [nnz, B, B])

For a sparse W, "W" is the values [nnz, B, B] in the compute dtype plus the int32 block
indices the kernels read (forward: row pointers + column indices; grad-input: column
pointers + permutation + row indices; grad-values: row + column indices). The gradient of
the values is written in fp32 (``grad_values_bytes``). Time = max(bytes / bandwidth,
FLOPs / peak): at 90% sparsity the sparse layer is memory-bound, the dense one (large N)
compute-bound, which is where the sparse speed-up comes from.

Example (H100 SXM, bf16, N = 16384, BERT-Base FFN 3072 x 768, s = 0.9, B = 16):
``layer_roofline((3072, 768), 16384, 0.9, 16, torch.bfloat16)["speedup_bound"]`` is about 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceSpec:
    """Peak DRAM bandwidth (bytes/s) and dense tensor-core throughput (FLOP/s) per dtype."""

    name: str
    bandwidth: float
    flops_16bit: float  # bf16 / fp16 dense, fp32 accumulation
    flops_fp32: float  # fp32 (no TF32)


# Datasheet peaks (dense, no sparsity feature).
DEVICES = {
    "h100-sxm": DeviceSpec("H100 SXM", 3.35e12, 989e12, 67e12),
    "h100-pcie": DeviceSpec("H100 PCIe", 2.0e12, 756e12, 51e12),
    "h200": DeviceSpec("H200", 4.8e12, 989e12, 67e12),
    "a100": DeviceSpec("A100 SXM 80GB", 2.04e12, 312e12, 19.5e12),
}


def device_spec(name: str | None = None) -> DeviceSpec:
    """The spec called ``name``, or (None) the one matching the current CUDA device's name."""
    if name is None:
        if not torch.cuda.is_available():
            raise ValueError("device_spec: argument 'name' must be given without a CUDA device, got None")
        gpu = torch.cuda.get_device_name().lower()
        name = ("h200" if "h200" in gpu else "h100-pcie" if "h100" in gpu and "pcie" in gpu
                else "h100-sxm" if "h100" in gpu else "a100" if "a100" in gpu else gpu)
    if name not in DEVICES:
        raise ValueError(f"device_spec: argument 'name' must be one of {sorted(DEVICES)}, got {name!r}")
    return DEVICES[name]


def _nbytes(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def sparse_layer_bytes(shape: tuple[int, int], n_tokens: int, nnz: int, block_size: int,
                       dtype: torch.dtype, grad_values_bytes: int = 4) -> dict[str, int]:
    """Compulsory bytes of the sparse forward, grad-input and grad-values (see module doc)."""
    O, I = shape
    e, B = _nbytes(dtype), block_size
    x, y = n_tokens * I * e, n_tokens * O * e
    vals = nnz * B * B * e
    fwd_idx = 4 * (O // B + 1 + nnz)
    gin_idx = 4 * (I // B + 1 + 2 * nnz)
    return {
        "forward": x + y + vals + fwd_idx,
        "grad_input": y + x + vals + gin_idx,
        "grad_values": y + x + nnz * B * B * grad_values_bytes + 8 * nnz,
    }


def dense_layer_bytes(shape: tuple[int, int], n_tokens: int, dtype: torch.dtype) -> dict[str, int]:
    """Compulsory bytes of the dense forward, grad-input and grad-weight."""
    O, I = shape
    e = _nbytes(dtype)
    x, y, w = n_tokens * I * e, n_tokens * O * e, O * I * e
    return {"forward": x + y + w, "grad_input": y + x + w, "grad_weight": y + x + w}


def layer_flops(shape: tuple[int, int], n_tokens: int, density: float = 1.0) -> float:
    """FLOPs of forward + backward: 3 products of 2 N O I (x density for a sparse W)."""
    return 6.0 * n_tokens * shape[0] * shape[1] * density


def layer_roofline(shape: tuple[int, int], n_tokens: int, sparsity: float, block_size: int,
                   dtype: torch.dtype, device: DeviceSpec | str | None = "h100-sxm") -> dict[str, float]:
    """Roofline times (seconds) of fwd+bwd, sparse and dense, and the best possible speed-up.

    Returns ``sparse_s``, ``dense_s``, ``sparse_memory_s``, ``dense_compute_s``,
    ``speedup_bound`` (dense_s / sparse_s), ``sparse_bytes``, ``dense_bytes``, ``nnz``.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"layer_roofline: argument 'sparsity' must be in [0, 1), got {sparsity}")
    spec = device if isinstance(device, DeviceSpec) else device_spec(device)
    O, I = shape
    n_blocks = (O // block_size) * (I // block_size)
    nnz = max(1, round((1.0 - sparsity) * n_blocks))
    density = nnz / n_blocks
    peak = spec.flops_fp32 if dtype == torch.float32 else spec.flops_16bit
    s_bytes = sum(sparse_layer_bytes(shape, n_tokens, nnz, block_size, dtype).values())
    d_bytes = sum(dense_layer_bytes(shape, n_tokens, dtype).values())
    s_mem, d_mem = s_bytes / spec.bandwidth, d_bytes / spec.bandwidth
    s_cmp, d_cmp = layer_flops(shape, n_tokens, density) / peak, layer_flops(shape, n_tokens) / peak
    sparse_s, dense_s = max(s_mem, s_cmp), max(d_mem, d_cmp)
    return {
        "sparse_s": sparse_s, "dense_s": dense_s, "sparse_memory_s": s_mem, "sparse_compute_s": s_cmp,
        "dense_memory_s": d_mem, "dense_compute_s": d_cmp, "speedup_bound": dense_s / sparse_s,
        "sparse_bytes": float(s_bytes), "dense_bytes": float(d_bytes), "nnz": float(nnz),
    }


def roofline_fraction(measured_s: float, roofline_s: float) -> float:
    """Achieved fraction of the roofline: roofline time / measured time (1.0 = at the bound)."""
    if measured_s <= 0:
        raise ValueError(f"roofline_fraction: argument 'measured_s' must be > 0, got {measured_s}")
    return roofline_s / measured_s
