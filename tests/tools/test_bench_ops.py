"""tools/bench_ops.py: the CPU suite writes JSON, --device cuda without CUDA exits 0 with
one line, and the CUDA kernel table is built from `bench_cuda_layer` results."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tools import load_tool, tool_path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = tool_path("bench_ops")
bench_ops = load_tool("bench_ops")
TINY = ["--hidden", "32", "--tokens", "64", "--sparsity", "0.5", "--block-sizes", "16",
        "--amp", "fp32", "--shapes", "HxH", "3HxH", "--backends", "dense", "--repeats", "1"]


def test_cpu_suite_writes_json(tmp_path, capsys):
    path = tmp_path / "ops.json"
    assert bench_ops.main(TINY + ["--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["device"] == "cpu" and report["suite"] == "linear" and report["complete"]
    assert {"torch", "threads", "cpu"} <= set(report["machine"])
    rows = report["rows"]
    assert [(r["case"]["out_features"], r["case"]["in_features"]) for r in rows] == [(32, 32), (96, 32)]
    for r in rows:
        assert r["ms"]["dense_linear"] > 0 and r["ms"]["dense"] > 0
        assert r["update_ms"] > 0
        assert 0 < r["sparse_bytes"] < r["dense_bytes"]  # s = 0.5: half the blocks
    assert f"wrote {path}" in capsys.readouterr().out


def test_results_are_written_as_they_come(tmp_path, monkeypatch):
    """Issue 11: --quick ran 8 minutes and wrote nothing (JSON only at the end)."""
    path = tmp_path / "ops.json"
    real, seen = bench_ops.bench.bench_layer, []

    def bench_layer_checking_the_file(*args, **kwargs):
        if seen:  # the previous case is on disk before the next is timed
            assert len(json.loads(path.read_text())["rows"]) == len(seen)
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_ops.bench, "bench_layer", bench_layer_checking_the_file)
    assert bench_ops.main(TINY + ["--json", str(path)]) == 0
    assert len(seen) == 2 and json.loads(path.read_text())["complete"]


def test_cuda_without_cuda_prints_one_line_and_exits_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--json",
                           str(tmp_path / "x.json")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_kernel_suite_on_cpu_is_a_clean_no_op(capsys):
    assert bench_ops.main(["--suite", "kernels"]) == 0
    assert "needs --device cuda" in capsys.readouterr().out


def _fake_bench(shape, N, sparsity, block_size, dtype, iters=20):
    if block_size == 8:
        raise RuntimeError("no triton here")
    dense, ts, tr = 3.0, 8.0, 2.0
    return {"device": "fake", "dense_ms": dense, "torch_sparse_ms": ts, "triton_ms": tr,
            "speedup_vs_dense": dense / tr, "speedup_vs_torch_sparse": ts / tr,
            "roofline_ms": 1.0, "roofline_fraction": 0.5, "speedup_bound": 3.0,
            "triton_forward_rel_err": 1e-3}


def test_kernel_table_from_bench_cuda_layer(monkeypatch, capsys):
    from dynsp_tools.benchlib import triton_layers as triton_bench

    monkeypatch.setattr(triton_bench, "bench_cuda_layer", _fake_bench)
    args = argparse.Namespace(hidden=None, tokens=[4096], sparsity=None, block_sizes=[16, 8],
                              amp=None, shapes=None, repeats=3)
    rows = bench_ops.run_kernels(args)
    assert [r["case"]["shape"] for r in rows[::2]] == [(768, 768), (2304, 768), (3072, 768), (768, 3072)]
    good, bad = rows[0], rows[1]
    assert good["case"]["block_size"] == 16 and good["speedup_vs_dense"] == 1.5
    assert bad["case"]["block_size"] == 8 and "no triton here" in bad["error"]
    out = capsys.readouterr().out
    cells = [[c.strip() for c in line.split("|")] for line in out.splitlines() if " | " in line]
    head = cells[0]
    ok = [dict(zip(head, c)) for c in cells[1:] if c[head.index("B")] == "16"]
    assert len(ok) == 4
    assert {(r["x dense"], r["x t.sparse"], r["roofline frac"]) for r in ok} == {("1.50", "4.00", "0.50")}
    assert out.count("error: RuntimeError") == 4


@pytest.mark.gpu
def test_kernel_suite_on_gpu(tmp_path):
    pytest.importorskip("triton")
    path = tmp_path / "k.json"
    assert bench_ops.main(["--device", "cuda", "--shapes", "4HxH", "--tokens", "4096",
                           "--block-sizes", "16", "--repeats", "3", "--json", str(path)]) == 0
    (row,) = json.loads(path.read_text())["kernel_rows"]
    assert row["dense_ms"] > 0 and row["triton_ms"] > 0
    assert 0 < row["roofline_fraction"] <= 1.5
    assert row["triton_forward_rel_err"] < 2e-2
    assert torch.cuda.is_available()


def test_step_suite_reports_speedup_gflops_and_epsilon(tmp_path, capsys):
    """Issue 19: the layer-step suite (fwd + bwd + AdamW) against nn.Linear in one run."""
    path = tmp_path / "step.json"
    argv = ["--suite", "step", "--hidden", "64", "--tokens", "96", "--sparsity", "0.75",
            "--block-sizes", "16", "--amp", "fp32", "--shapes", "HxH", "--threads", "1",
            "--backends", "reference", "dense", "--repeats", "2", "--json", str(path)]
    assert bench_ops.main(argv) == 0
    printed = capsys.readouterr().out
    assert "epsilon" in printed and "% peak" in printed
    row, = json.loads(path.read_text())["step_rows"]
    assert set(row["ms"]) == {"nn.Linear", "reference", "dense"}  # the baseline is not overwritten
    for name in ("reference", "dense"):
        t, d = row["ms"][name], row["derived"][name]
        assert 0 < t["min_ms"] <= t["median_ms"]
        assert d["speedup_median"] == pytest.approx(row["ms"]["nn.Linear"]["median_ms"] / t["median_ms"])
        # epsilon = (t_sparse / t_dense) / density
        assert d["epsilon"] == pytest.approx(1 / d["speedup_median"] / 0.25)
        assert d["gflops"] == pytest.approx(6 * 96 * 64 * 64 * 0.25 / (t["min_ms"] * 1e-3) / 1e9)


def test_step_suite_needs_the_cpu(tmp_path, capsys):
    assert bench_ops.main(["--suite", "step", "--device", "cuda", "--json", str(tmp_path / "x")]) == 0
