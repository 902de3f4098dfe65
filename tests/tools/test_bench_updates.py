"""tools/bench_updates.py: n capping, ratios, a tiny CPU run (JSON + PNG), the per-layer
update timing, and the message without matplotlib."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tests.tools import load_tool, tool_path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = tool_path("bench_updates")
bench_updates = load_tool("bench_updates")



TINY = ["model.size=tiny", "training.micro_batch_size=2", "data.sequence_length=32",
        "data.mask_tokens=4"]


def test_plan_defaults_to_twice_max_n_and_drops_n_at_or_above_T():
    assert bench_updates.plan([0, 20, 320], None) == (640, [0, 20, 320], [])
    assert bench_updates.plan([0, 20, 100, 320], 100) == (100, [0, 20], [100, 320])
    assert bench_updates.plan([0], None) == (10, [0], [])


def test_summarise_ratio_and_projection():
    runs = [{"placement": "host", "n_updates": 0, "sequences_per_second": 10.0, "update_time_s": 0.0,
             "median_step_s": 0.1},
            {"placement": "host", "n_updates": 4, "sequences_per_second": 8.0, "update_time_s": 0.4,
             "median_step_s": 0.1},
            {"placement": "device", "n_updates": 4, "sequences_per_second": 9.0, "update_time_s": 0.2,
             "median_step_s": 0.1}]
    out = bench_updates.summarise(runs, project_steps=100)
    assert out[0]["ratio_vs_n0"] == 1.0 and out[1]["ratio_vs_n0"] == 0.8
    assert out[2]["ratio_vs_n0"] is None  # no n = 0 run for this placement
    assert out[1]["projected_update_fraction"] == pytest.approx(0.4 / (100 * 0.1 + 0.4))
    assert out[0]["projected_update_fraction"] == 0.0


def test_layer_update_ms_times_a_copy():
    from dynsp_tools.benchlib.layers import layer_update_ms
    from sparse_ops.linear import SparseLinear

    layer = SparseLinear(64, 128, sparsity=0.75, block_size=8, seed=0)
    before = (layer.rows.clone(), layer.cols.clone(), layer.values.detach().clone())
    for placement in ("host", "device"):
        assert 0 < layer_update_ms(layer, placement, repeats=2) < 10_000
    assert torch.equal(layer.rows, before[0]) and torch.equal(layer.cols, before[1])
    assert torch.equal(layer.values.detach(), before[2])
    with pytest.raises(ValueError, match="repeats"):
        layer_update_ms(layer, repeats=0)


def test_tiny_cpu_run_writes_json_and_png(tmp_path, capsys):
    path = tmp_path / "u.json"
    argv = ["--steps", "4", "--n-updates", "0,2,5", "--warmup", "0", "--threads", "1",
            "--json", str(path)] + TINY
    assert bench_updates.main(argv) == 0
    out = capsys.readouterr().out
    assert "n = [5] dropped" in out and "vs n=0" in out
    report = json.loads(path.read_text())
    assert report["steps"] == 4 and report["dropped_n"] == [5] and report["synthetic"] is True
    runs = {(r["placement"], r["n_updates"]): r for r in report["runs"]}
    assert set(runs) == {(p, n) for p in ("host", "device") for n in (0, 2)}
    for (placement, n), r in runs.items():
        # the trainer's schedule: t_k = floor(k T / (n + 1)) with T = 4
        assert r["update_steps"] == [math.floor(k * 4 / (n + 1)) for k in range(1, n + 1)]
        assert r["sequences"] == 4 * 2 and r["sequences_per_second"] > 0
        assert (r["update_time_s"] > 0) == (n > 0)
        assert 0 <= r["update_fraction"] < 1
    assert runs[("host", 0)]["ratio_vs_n0"] == 1.0
    assert set(report["layer_update_ms"]) == {"host", "device"}
    for ms in report["layer_update_ms"].values():
        assert set(ms) == {"query", "key", "value", "attention_output", "ffn_up", "ffn_down"}
        assert all(v > 0 for v in ms.values())
    png = path.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    runs = [{"placement": "host", "n_updates": 0, "sequences_per_second": 1.0, "update_fraction": 0.0}]
    assert bench_updates.plot(runs, tmp_path / "p.png", "t") is None
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "p.png").exists()


def test_bad_placement_is_an_argument_error():
    with pytest.raises(SystemExit):
        bench_updates.parse_args(["--placements", "host,gpu"])
