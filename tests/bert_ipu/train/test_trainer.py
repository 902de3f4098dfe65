"""The training loop on a tiny 2-layer H=64 DynSp model (CPU, a few steps)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from bert_ipu.store import checkpoint as ck
from bert_ipu.train.loop import NonFiniteLossError, TrainerHooks
from tests.bert_ipu.tiny_run import load_metrics, load_updates, one_thread, run_tiny, tiny_data  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_run_writes_metrics_eval_summary_and_checkpoints(tiny_data, tmp_path):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    summary = run_tiny(corpus, out, cache, **{"checkpoint.keep_last": 2})
    records = load_metrics(out)
    assert records[0]["step"] == 0 and "eval_mlm_loss" in records[0]
    steps = [r for r in records if r["step"] > 0]
    assert [r["step"] for r in steps] == list(range(1, 13))
    for r in steps:
        for key in ("loss", "mlm_loss", "nsp_loss", "lr", "sequences_per_second", "flops",
                    "skipped_steps", "loss_scale"):
            assert key in r and math.isfinite(r[key]), key
    # cumulative FLOPs: per-sequence FLOPs (actual nnz) x sequences seen
    assert steps[-1]["flops"] == pytest.approx(summary["flops_per_sequence"] * 48)
    assert all(b["flops"] > a["flops"] for a, b in zip(steps, steps[1:]))
    # 3 updates at 0-based steps 3, 6, 9: logged after 4, 7, 10 steps
    updates = load_updates(out)
    assert [r["step"] for r in updates] == [4, 7, 10] and not any("dof_mean" in r for r in steps)
    assert all({"removed_new_fraction", "update_time_s", "dof_mean"} <= set(r) for r in updates)
    final = json.loads((out / "eval.json").read_text())
    assert set(final) >= {"mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"}
    saved = json.loads((out / "summary.json").read_text())
    assert saved["steps"] == 12 and saved["pattern_updates"] == 3
    assert saved["final_eval"] == final and 0 < saved["dof_mean"] <= 1
    assert saved["total_flops"] == steps[-1]["flops"]
    (memory,) = saved["peak_memory_mib"]            # one entry per rank
    assert 50 < memory["rss"] < 64 * 1024 and "cuda_allocated" not in memory
    assert [p.name for _, p in ck.list_checkpoints(out / "checkpoints")] == [
        "step_00000008", "step_00000012"]
    assert (out / "config.yaml").is_file()


def test_controller_runs_right_after_optimizer_step(tiny_data, tmp_path, monkeypatch):
    from sparse_ops.dynsp.controller import DynSpController

    calls = []
    real_step = torch.optim.AdamW.step
    real_ctrl = DynSpController.step
    monkeypatch.setattr(torch.optim.AdamW, "step",
                        lambda self, *a, **k: (calls.append("opt"), real_step(self, *a, **k))[1])
    monkeypatch.setattr(DynSpController, "step",
                        lambda self, t: (calls.append(("ctrl", t)), real_ctrl(self, t))[1])
    corpus, cache = tiny_data
    run_tiny(corpus, tmp_path / "run", cache, **{"training.training_steps": 4})
    assert calls == ["opt", ("ctrl", 0), "opt", ("ctrl", 1), "opt", ("ctrl", 2), "opt",
                     ("ctrl", 3)]


def test_fp16_overflow_is_skipped_backed_off_and_recovers(tiny_data, tmp_path):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    hooks = TrainerHooks(loss_multiplier=lambda t: 1e30 if t in (3, 4) else 1.0)
    summary = run_tiny(corpus, out, cache, hooks=hooks, **{
        "training.precision": "fp16", "training.auto_loss_scaling": True,
        "training.loss_scaling": 65536.0, "training.loss_scaling_growth_interval": 3,
        "training.training_steps": 10, "sparsity.n_updates": 1})
    steps = {r["step"]: r for r in load_metrics(out) if r["step"] > 0}
    assert [steps[s]["skipped_steps"] for s in range(1, 11)] == [0, 0, 0, 1, 2, 2, 2, 2, 2, 2]
    # grows after 3 good steps, halves at each overflow, then grows back every 3 good steps
    assert [steps[s]["loss_scale"] for s in range(1, 11)] == [
        2.0**16, 2.0**16, 2.0**17, 2.0**16, 2.0**15, 2.0**15, 2.0**15, 2.0**16, 2.0**16, 2.0**16]
    assert all(steps[s]["grad_norm"] is None for s in (4, 5))  # NaN is written as null
    assert all(math.isfinite(steps[s]["grad_norm"]) and math.isfinite(steps[s]["loss"])
               for s in (6, 7, 8, 9, 10))
    assert summary["skipped_steps"] == 2 and summary["precision"] == "fp16"
    model = ck.load_checkpoint(ck.find_latest(out / "checkpoints"))["model.pt"]
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


def test_loss_scaling_growth_interval_reaches_the_scaler(tiny_data, tmp_path):
    from bert_ipu.train.build import build_components
    from bert_ipu.config import load_config
    from tests.bert_ipu.tiny_run import tiny_overrides

    corpus, cache = tiny_data
    cfg = load_config(None, tiny_overrides(corpus, tmp_path, cache, **{
        "training.precision": "fp16", "training.auto_loss_scaling": True,
        "training.loss_scaling_growth_interval": 7}))
    scaler = build_components(cfg, log=lambda s: None).scaler
    assert (scaler.mode, scaler.growth_interval, scaler.scale) == ("dynamic", 7, 512.0)


def test_static_fp16_loss_scale_stays_fixed(tiny_data, tmp_path):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    run_tiny(corpus, out, cache, **{"training.precision": "fp16",
                                    "training.training_steps": 3, "sparsity.n_updates": 1})
    assert {r["loss_scale"] for r in load_metrics(out) if r["step"] > 0} == {512.0}


def test_nonfinite_loss_past_the_limit_stops_and_keeps_good_checkpoints(tiny_data, tmp_path):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    hooks = TrainerHooks(loss_multiplier=lambda t: math.nan if t >= 5 else 1.0)
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive.*max_nonfinite_steps=2"):
        run_tiny(corpus, out, cache, hooks=hooks, **{
            "training.max_nonfinite_steps": 2, "checkpoint.checkpoint_steps": 2})
    saved = ck.list_checkpoints(out / "checkpoints")
    assert [c.step for c, _ in saved] == [2, 4, 6]  # step 6 = 5 good steps + 1 skipped
    for _, path in saved:
        model = ck.load_checkpoint(path)["model.pt"]
        assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())
    skipped = [r for r in load_metrics(out) if r["step"] > 5]
    assert skipped and all(r["grad_norm"] is None and r["loss"] is None for r in skipped)


def test_short_run_on_shared_text_lowers_the_held_out_loss(shared_data, tmp_path):
    summary = run_tiny(tmp_path, tmp_path / "run", tmp_path / "cache", **{
        "data.input_files": [str(shared_data / "sotu" / "194*.txt")], "data.vocab_size": 1000,
        "data.sequence_length": 64, "data.mask_tokens": 10, "data.eval_fraction": 0.2,
        "training.training_steps": 60, "training.micro_batch_size": 8,
        "training.learning_rate": 3e-3, "training.lr_warmup": 0.1, "logging.eval_steps": 30,
        "logging.eval_batches": 8, "logging.log_steps": 10, "checkpoint.checkpoint_steps": 0,
        "sparsity.n_updates": 5})
    first, final = summary["initial_eval"]["mlm_loss"], summary["final_eval"]["mlm_loss"]
    assert final < first - 0.5, (first, final)
    assert summary["final_eval"]["mlm_accuracy"] > summary["initial_eval"]["mlm_accuracy"]


def test_cpu_runs_never_import_poptorch(tiny_data, tmp_path):
    import sys

    run_tiny(*tiny_data[:1], tmp_path / "run", tiny_data[1], **{"training.training_steps": 2,
                                                                 "sparsity.n_updates": 1})
    assert "bert_ipu.train.ipu_step" not in sys.modules and "poptorch" not in sys.modules


def test_ipu_without_poptorch_is_a_clear_error():
    from bert_ipu.devices import DeviceError, poptorch_available, resolve_device

    if poptorch_available():
        pytest.skip("PopTorch is installed here")
    with pytest.raises(DeviceError, match="'ipu'.*PopTorch is not installed"):
        resolve_device("ipu")


@pytest.mark.gpu
def test_tiny_run_on_cuda_with_auto_precision(tiny_data, tmp_path):
    corpus, cache = tiny_data
    summary = run_tiny(corpus, tmp_path / "run", cache, **{
        "training.device": "cuda", "training.precision": "auto", "training.training_steps": 6})
    assert summary["device"] == "cuda" and summary["precision"] == "bf16"
    assert math.isfinite(summary["final_eval"]["mlm_loss"])


def test_metrics_writer_truncates_on_resume_and_skips_a_torn_line(tmp_path):
    from bert_ipu.train.metrics import MetricsWriter, read_jsonl

    writer = MetricsWriter(tmp_path)
    for step in range(1, 6):
        writer.log({"step": step, "loss": float(step), "grad_norm": math.nan})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 6, "lo')  # a kill in the middle of a line
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    MetricsWriter(tmp_path).truncate_after(3)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3] and records[0]["grad_norm"] is None
