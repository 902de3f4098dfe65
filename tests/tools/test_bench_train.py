"""tools/bench_train.py and tools/benchlib/training.py: a tiny CPU run writes JSON with ratios
vs dense, the peak-memory window sees an allocation, and the data-free components
(synthetic mode) come from the trainer's own `build_components`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynsp_tools.benchlib import training as bm
from bert_ipu.config import ConfigError, load_config
from bert_ipu.train.build import build_components
from dynsp_tools.benchlib.layers import PeakMemory
from tests.bert_ipu.tiny_run import tiny_overrides, write_corpus
from tests.tools import load_tool, tool_path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = tool_path("bench_train")
bench_train = load_tool("bench_train")



def test_tiny_cpu_run_writes_json_with_ratios(tmp_path, capsys):
    path = tmp_path / "t.json"
    argv = ["--sizes", "tiny", "--steps", "3", "--warmup", "0", "--micro-batch-size", "2",
            "--variants", "dense,static_b16,dynsp_b16", "--threads", "1", "--json", str(path),
            "data.sequence_length=32", "data.mask_tokens=4"]
    assert bench_train.main(argv) == 0
    printed = capsys.readouterr().out
    assert "enc-linear state MiB" in printed and "spread" in printed
    report = json.loads(path.read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"dense", "static_b16", "dynsp_b16"}
    for r in rows.values():
        assert r["size"] == "tiny" and r["steps"] == 3 and r["sequences"] == 6
        assert r["sequences_per_second_median"] > 0 and r["peak_memory_bytes"] > 0
        assert r["peak_memory_method"] in ("rss_hwm_reset", "ru_maxrss_delta")
    assert rows["dense"]["state_bytes_model_vs_dense"] == 1.0
    # epsilon: time per non-embedding FLOP over dense's (1 for dense itself)
    assert rows["dense"]["epsilon"] == pytest.approx(1.0)
    s = rows["static_b16"]
    assert s["epsilon"] == pytest.approx(rows["dense"]["flops_per_sequence"] / s["flops_per_sequence"]
                                         / s["sequences_per_second_median_vs_dense"])
    assert "epsilon" in printed
    assert rows["dense"]["n_updates"] == rows["static_b16"]["n_updates"] == 0
    assert rows["dynsp_b16"]["n_updates"] == 1 and rows["dynsp_b16"]["update_time_s"] > 0
    # s = 0.9, B = 16: values + Adam moments + indices ~ 0.1 of the dense linears
    for name in ("static_b16", "dynsp_b16"):
        assert 0.09 < rows[name]["state_bytes_encoder_linears_vs_dense"] < 0.15
        assert rows[name]["state_bytes_model_vs_dense"] < 1.0


def test_variants_and_argument_errors():
    v = bm.train_variants(0.8, (4,), dynsp_updates=2)
    assert list(v) == ["dense", "static_b4", "dynsp_b4"]
    assert "sparsity.n_updates=2" in v["dynsp_b4"] and "sparsity.sparsity=0.8" in v["static_b4"]
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--sizes", "huge"])
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--steps", "2", "--dynsp-updates", "2"])


def test_peak_memory_sees_an_allocation():
    with PeakMemory(torch.device("cpu")) as pm:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del x
    assert pm.method in ("rss_hwm_reset", "ru_maxrss_delta")
    assert pm.peak_bytes >= 60 * 2**20
    with PeakMemory(torch.device("cpu")) as small:
        torch.ones(1000)
    if small.method == "rss_hwm_reset":  # the mark was reset: the earlier 64 MiB is not seen
        assert small.peak_bytes < 32 * 2**20


def test_data_free_components_come_from_the_same_builder(tmp_path):
    """Benchmarks build through `build_components(cfg, data=False)`: the same model,
    optimizer, controller and scaler as a run with data, and no data stage."""
    corpus = write_corpus(tmp_path / "corpus", documents=12, sentences=8)
    overrides = tiny_overrides(corpus, tmp_path / "out", tmp_path / "cache",
                               **{"training.training_steps": 6, "sparsity.n_updates": 2,
                                  "training.precision": "fp16", "training.auto_loss_scaling": True,
                                  "training.loss_scaling_growth_interval": 7,
                                  "training.lr_warmup": 0.5})
    cfg = load_config(None, overrides)
    ref = build_components(cfg, log=lambda s: None)
    ours = bm.build_bench_components(cfg, synthetic=True)
    assert ours.train_loader is None and ours.eval_dataset is None
    a, b = ours.core.state_dict(), ref.core.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ours.controller.state_dict()["config"] == ref.controller.state_dict()["config"]
    assert vars(ours.scaler) == vars(ref.scaler) and ours.schedule == ref.schedule
    assert (ours.total_steps, ours.flops, ours.precision) == (ref.total_steps, ref.flops, ref.precision)
    with pytest.raises(ConfigError, match="training.training_steps: expected a step count"):
        build_components(load_config(None, overrides + ["training.training_steps=null"]),
                         data=False)
    real = next(iter(ref.train_loader))
    fake = bm.synthetic_batch(cfg, torch.Generator().manual_seed(0))
    assert fake.keys() == real.keys()
    for k in real:
        assert (fake[k].dtype, fake[k].shape) == (real[k].dtype, real[k].shape), k
    assert int(fake["input_ids"].max()) < cfg.model.vocab_size
    pos = fake["masked_lm_positions"]
    assert bool((pos > 0).all()) and all(len(set(r.tolist())) == r.numel() for r in pos)


def _row(variant, ratio, spread, steps=5, updates=0):
    return {"size": "mini", "variant": variant, "sequences_per_second_median_vs_dense": ratio,
            "step_time_spread": spread, "steps": steps, "n_updates": updates}


def test_a_ratio_within_the_spread_is_flagged():
    """Issue 11: 2 steps reported DynSp 1.96x and static 1.16x dense without a warning."""
    rows = [_row("dense", 1.0, 0.10), _row("static_b16", 1.16, 0.15),
            _row("dynsp_b16", 1.96, 0.2, updates=1), _row("static_b1", 0.5, 0.05)]
    warnings = bench_train.noise_warnings(rows)
    assert len(warnings) == 1 and warnings[0].startswith("warning: mini static_b16: 1.16x")
    short = [_row("dense", 1.0, 0.0, steps=2), _row("dynsp_b16", 1.96, 0.0, steps=2, updates=1)]
    (line,) = bench_train.noise_warnings(short)
    assert "fewer than 3 timed steps" in line


def test_step_time_spread():
    from dynsp_tools.benchlib.training import StepTiming

    timing = StepTiming(4, 8, 1.0, step_seconds=[1.0, 2.0, 1.5, 9.0], update_steps=[3])
    assert timing.spread() == pytest.approx(1.0 / 1.5)
