"""Persistent state bytes: sparse layer against a dense nn.Linear with Adam state."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse_ops.linear import SparseLinear
from sparse_ops.memory import (INDEX_BYTES, dense_linear_state_bytes, index_bytes, sparse_linear_state_bytes,
                               state_breakdown, state_bytes)


@pytest.mark.parametrize("s,B", [(0.5, 1), (0.75, 4), (0.875, 8), (0.75, 16)])
def test_sparse_state_at_most_density_of_dense_plus_index_overhead(s: float, B: int) -> None:
    O, I = 256, 128
    m = SparseLinear(I, O, sparsity=s, block_size=B, seed=0)
    dense_bytes = state_bytes(nn.Linear(I, O))
    assert dense_bytes == dense_linear_state_bytes(I, O) == (O * I + O) * 4 * 3
    # The overhead is whatever the layer's index tensors take, not a constant.
    index_overhead = sum(t.numel() * t.element_size() for t in (m.rows, m.cols))
    assert index_overhead == index_bytes(m.nnz) == state_breakdown(m)["buffers"]
    bias_bytes = O * 4 * 3  # the bias (and its moments) stays dense
    assert state_bytes(m) <= (1 - s) * (dense_bytes - bias_bytes) + bias_bytes + index_overhead
    assert state_bytes(m) == sparse_linear_state_bytes(I, O, m.nnz, B)


def test_int32_indices_keep_unstructured_half_sparse_state_below_dense() -> None:
    # B = 1: 12 bytes of value + moments and 2 indices per active weight. With int64
    # indices (28 bytes) a half-sparse layer would cost more than the dense one (12 bytes).
    m = SparseLinear(256, 256, sparsity=0.5, block_size=1, seed=0)
    assert m.rows.dtype == m.cols.dtype == torch.int32 and INDEX_BYTES == 4
    assert state_bytes(m) < state_bytes(nn.Linear(256, 256))
    # Issue 5's goal at s = 0.9, B = 16 for the BERT-Base FFN: at most 0.15x dense.
    ffn = sparse_linear_state_bytes(768, 3072, round(0.1 * 192 * 48), 16)
    assert ffn <= 0.15 * dense_linear_state_bytes(768, 3072)


def test_state_bytes_with_real_adamw_state() -> None:
    m = SparseLinear(64, 64, sparsity=0.9, block_size=4, seed=0)
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(2, 64)).sum().backward()
    opt.step()
    assert state_bytes(m, opt) == state_bytes(m)
    assert state_breakdown(m, opt)["optimizer"] == 2 * 4 * (m.values.numel() + 64)


def test_bench_ops_cli_tiny_grid(tmp_path, capsys) -> None:
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tools" / "bench_ops.py"
    spec = importlib.util.spec_from_file_location("bench_ops_cli", path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "bench.json"
    rc = cli.main(["--hidden", "32", "--tokens", "64", "--sparsity", "0.5", "--block-sizes", "4",
                   "--amp", "fp32", "bf16", "--shapes", "HxH", "4HxH", "--repeats", "1", "--json", str(out),
                   "--cap", "1e9"])  # never capped: a loaded CPU must not turn timings into None
    assert rc == 0
    text = capsys.readouterr().out
    assert "| auto |" in text and "n/a" in text  # bsr has no bf16 path
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(r["ms"]["dense_linear"] > 0 for r in rows)
    assert all(r["ms"]["auto"] is not None for r in rows)
    first = rows[0]
    assert first["sparse_bytes"] == sparse_linear_state_bytes(32, 32, 32, 4)
    assert first["dense_bytes"] == dense_linear_state_bytes(32, 32)
    if not torch.cuda.is_available():  # skips cleanly without CUDA
        assert cli.main(["--device", "cuda"]) == 0
        assert "CUDA is not available" in capsys.readouterr().out
