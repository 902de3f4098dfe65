"""Ahead-of-time compilation of the Triton kernels for a CUDA target, without a GPU.

The interpreter (CPU tests) never runs Triton's compiler, so a kernel can pass every
interpreter test and still fail to compile for a GPU. `compile_variants` compiles the
kernels through the real pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin with the bundled
ptxas) for e.g. sm_90 on a machine without a GPU, and reports what the code generator did
(vector width of global loads, tensor-core instructions, shared memory). Used by a test
(in a subprocess without TRITON_INTERPRET) and for inspecting PTX before a GPU session.

Must run with TRITON_INTERPRET unset (the kernels must be JITFunctions).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sparse_ops.kernels.triton_kernels import _dsd_kernel, _sdd_kernel

_PTR_ALIGNED = 16  # torch allocations are 16-byte (in fact 512-byte) aligned


@dataclass(frozen=True)
class Variant:
    """One specialisation: kernel name, operand dtype ('bf16', 'fp16', 'fp32'), constexprs."""

    kernel: str  # "dsd" or "sdd"
    dtype: str
    block_size: int
    block_n: int = 128
    trans_v: bool = True  # dsd only: True = forward, False = grad-input
    num_warps: int = 4
    num_stages: int = 3


def _signature(kernel: str, dtype: str) -> dict[str, str]:
    if kernel == "dsd":
        ptrs = {"a_ptr": dtype, "seg_ptr": "i32", "perm_ptr": "i32", "coord_ptr": "i32", "v_ptr": dtype,
                "bias_ptr": dtype, "out_ptr": dtype}
        ints = ["N", "n_segs", "stride_an", "stride_on", "M_OUT", "K_IN", "NNZ_BUCKET"]
    else:
        ptrs = {"dy_ptr": dtype, "x_ptr": dtype, "rows_ptr": "i32", "cols_ptr": "i32", "out_ptr": "fp32"}
        ints = ["N", "nnz", "tokens_per_split", "stride_dn", "stride_xn", "M_OUT", "K_IN", "NNZ_BUCKET"]
    sig = {name: f"*{t}" for name, t in ptrs.items()}
    sig.update({name: "i32" for name in ints})
    return sig


def _source(v: Variant) -> ASTSource:
    fn = _dsd_kernel if v.kernel == "dsd" else _sdd_kernel
    sig = _signature(v.kernel, v.dtype)
    const = {"B": v.block_size, "G": max(1, 16 // v.block_size), "BLOCK_N": v.block_n, "UPCAST": False,
             "PRECISION": "ieee" if v.dtype == "fp32" else "tf32"}
    if v.kernel == "dsd":
        const.update(TRANS_V=v.trans_v, HAS_PERM=not v.trans_v, HAS_BIAS=v.trans_v)
    sig.update({name: "constexpr" for name in const})
    names = list(fn.arg_names)
    # Pointers and row strides: Triton specialises them as 16-divisible at run time too.
    aligned = [n for n in sig if sig[n].startswith("*") or n.startswith("stride")]
    attrs = {(names.index(n),): [["tt.divisibility", _PTR_ALIGNED]] for n in aligned}
    return ASTSource(fn, sig, const, attrs)


def compile_variant(v: Variant, arch: int = 90) -> dict[str, object]:
    """Compile one variant for ``sm_<arch>``; returns code-generation facts from its PTX."""
    kernel = triton.compile(_source(v), target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": v.num_warps, "num_stages": v.num_stages})
    ptx = kernel.asm["ptx"]
    copies = re.findall(r"cp\.async\.c[ag]\.shared\.global[^;]*?, (0x[0-9a-f]+)", ptx)
    return {
        "variant": v, "shared_bytes": kernel.metadata.shared,
        "max_copy_bytes": max((int(c, 16) for c in copies), default=0),
        "wgmma": "wgmma.mma_async" in ptx, "mma": "mma.sync" in ptx or "wgmma.mma_async" in ptx,
        "cubin": "cubin" in kernel.asm,
    }


def default_variants() -> list[Variant]:
    """Forward, grad-input and grad-values for B = 8, 16, 32 in bf16, and fp32 / fp16 once."""
    out = []
    for B in (8, 16, 32):
        out += [Variant("dsd", "bf16", B, trans_v=True), Variant("dsd", "bf16", B, trans_v=False),
                Variant("sdd", "bf16", B)]
    out += [Variant("dsd", "fp32", 16, block_n=64), Variant("sdd", "fp16", 16, block_n=64)]
    return out


def compile_variants(variants: list[Variant] | None = None, arch: int = 90) -> list[dict[str, object]]:
    """`compile_variant` over ``variants`` (default: `default_variants`)."""
    return [compile_variant(v, arch) for v in (variants or default_variants())]


if __name__ == "__main__":  # python -m sparse_ops.kernels.triton_aot
    for row in compile_variants():
        print(row)
