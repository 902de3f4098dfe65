"""Roofline model and the CUDA layer benchmark entry point (no triton needed)."""
from __future__ import annotations

import pytest
import torch

from dynsp_tools.benchlib import roofline

pytestmark = pytest.mark.kernels


def test_dense_bytes_hand_count():
    b = roofline.dense_layer_bytes((3, 5), 7, torch.bfloat16)
    assert b["forward"] == 2 * (7 * 5 + 7 * 3 + 3 * 5)
    assert b["forward"] == b["grad_input"] == b["grad_weight"]


def test_sparse_bytes_hand_count():
    b = roofline.sparse_layer_bytes((32, 48), 10, nnz=2, block_size=16, dtype=torch.float16)
    acts = 2 * 10 * 48 + 2 * 10 * 32
    assert b["forward"] == acts + 2 * 2 * 256 + 4 * (2 + 1 + 2)
    assert b["grad_input"] == acts + 2 * 2 * 256 + 4 * (3 + 1 + 4)
    assert b["grad_values"] == acts + 4 * 2 * 256 + 8 * 2


def test_bert_base_ffn_bound_is_memory_bound_and_about_2x():
    r = roofline.layer_roofline((3072, 768), 16384, 0.9, 16, torch.bfloat16, device="h100-sxm")
    assert r["sparse_memory_s"] > r["sparse_compute_s"]
    assert r["dense_compute_s"] > r["dense_memory_s"]
    assert 1.8 < r["speedup_bound"] < 2.5
    assert roofline.roofline_fraction(2 * r["sparse_s"], r["sparse_s"]) == pytest.approx(0.5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="layer_roofline: argument 'sparsity'"):
        roofline.layer_roofline((16, 16), 16, 1.0, 16, torch.float16)
    with pytest.raises(ValueError, match="device_spec: argument 'name' must be one of"):
        roofline.device_spec("tpu")


def test_bench_cuda_layer_raises_clearly_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    from dynsp_tools.benchlib.triton_layers import bench_cuda_layer

    with pytest.raises(RuntimeError, match="bench_cuda_layer: needs a CUDA device"):
        bench_cuda_layer((768, 768), 4096, 0.9, 16, torch.bfloat16)


@pytest.mark.gpu
def test_bench_cuda_layer_reports_every_column():
    pytest.importorskip("triton")
    from dynsp_tools.benchlib.triton_layers import bench_cuda_layer

    res = bench_cuda_layer((256, 128), 1024, 0.9, 16, torch.bfloat16, iters=3)
    for key in ("dense_ms", "triton_ms", "roofline_ms", "roofline_fraction", "speedup_vs_dense"):
        assert res[key] > 0
    assert "torch_sparse_ms" in res or "torch_sparse_error" in res
