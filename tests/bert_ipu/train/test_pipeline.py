"""Pipelined BERT on CPU (torch.distributed.pipelining over gloo): the stage split, the
stage module, per-stage DynSp, bad input, and real torchrun runs that must equal the
single-process (or data-parallel) run of the same config."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any
from pathlib import Path

import pytest
import torch

from bert_ipu.devices.pipeline import (
    LayoutError, PipelineLayout, layout_for, owner_stage, stage_keeps,
)
from bert_ipu.model import build_model
from bert_ipu.model.stages import BertStage, stage_module_names
from bert_ipu.pretrain import main
from bert_ipu.store import checkpoint as ck
from bert_ipu.train.pipeline_step import merge_stage_metrics
from sparse_ops.dynsp.controller import DynSpController
from tests.bert_ipu.test_bad_input import error_line
from tests.bert_ipu.model.test_model import SPARSE, batch, small_cfg
from tests.bert_ipu.tiny_run import (  # noqa: F401
    load_metrics, load_updates, one_thread, strip_timing, tiny_data, tiny_overrides,
)

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
KEY = "training.layers_per_stage"


# ---------------------------------------------------------------- the split
def test_layout_places_stages_and_replicas_on_a_2d_mesh():
    lay = layout_for((1, 3), KEY, rank=3, world_size=4)  # rank = replica * P + stage
    assert (lay.stage, lay.replica, lay.first_layer) == (1, 1, 1)
    assert lay.is_last and not lay.is_first and lay.rank_of(0, 1) == 2
    assert list(lay.layer_range(1)) == [1, 2, 3]
    assert layout_for(None, KEY, 0, 4) is None and layout_for((4,), KEY, 0, 4) is None


@pytest.mark.parametrize("layers, world, expected", [
    ((1, 1), 1, "at most WORLD_SIZE=1 stages"),
    ((1, 1, 1), 4, "a stage count dividing WORLD_SIZE=4"),
    ((2, 0), 2, "at least one encoder layer per stage"),
])
def test_layout_refuses_splits_that_do_not_fit(layers, world, expected):
    with pytest.raises(LayoutError, match=f"^{KEY}: expected {expected}"):
        layout_for(layers, KEY, 0, world)


def test_owner_stage_embeddings_first_heads_last():
    lay = layout_for((1, 1), KEY, 0, 2)
    assert owner_stage("bert.embeddings.word_embeddings.weight", lay) == 0
    assert owner_stage("bert.encoder.layer.0.output.dense.bias", lay) == 0
    assert owner_stage("bert.encoder.layer.1.attention.self.query.values", lay) == 1
    assert owner_stage("cls.predictions.decoder.weight", lay) == 1
    assert owner_stage("bert.pooler.dense.weight", lay) == 1


def test_config_alias_and_schedule_keys():
    cfg = small_cfg("training.layers_per_stage=[1,1]", "training.pipeline_schedule=1f1b")
    assert cfg.training.pipeline_layers == (1, 1)
    assert small_cfg("training.layers_per_ipu=[2]").training.pipeline_layers == (2,)
    with pytest.raises(Exception, match="training.layers_per_stage: expected null or equal"):
        small_cfg("training.layers_per_ipu=[2]", "training.layers_per_stage=[1,1]")
    with pytest.raises(Exception, match="training.layers_per_stage: expected entries summing"):
        small_cfg("training.layers_per_stage=[1,2]")
    with pytest.raises(Exception, match="training.pipeline_schedule: expected one of"):
        small_cfg("training.pipeline_schedule=zero_bubble")


# ---------------------------------------------------------------- the stage module
def test_stages_in_sequence_equal_the_whole_model():
    cfg = small_cfg(*SPARSE)
    model = build_model(cfg.model, cfg.sparsity, seed=3).eval()
    b = batch()
    first = BertStage(model, 0, 1, first_stage=True, last_stage=False)
    last = BertStage(model, 1, 1, first_stage=False, last_stage=True)
    with torch.no_grad():
        mid = first(b["input_ids"], b["attention_mask"], b["masked_lm_positions"],
                    b["token_type_ids"])
        mlm, nsp = last(*mid)
        want = model(**{k: b[k] for k in ("input_ids", "masked_lm_positions", "token_type_ids",
                                          "attention_mask")})
    torch.testing.assert_close(mlm, want.mlm_logits, rtol=0, atol=0)
    torch.testing.assert_close(nsp, want.nsp_logits, rtol=0, atol=0)
    names = stage_module_names(model, last)
    assert "bert.encoder.layer.1.attention.self.query" in names
    assert not any(n.startswith("bert.encoder.layer.0") for n in names)
    # the tied decoder weight is the word embedding on both ends
    assert last.cls.predictions.decoder.weight is first.embeddings.word_embeddings.weight


def test_a_stage_builds_only_its_own_parameters_with_the_whole_models_values():
    """build_model(keep=stage_keeps(layout)): the stage's entries equal the whole
    model's (weights, patterns), every other entry is on the meta device, and the stages
    built apart, run in sequence, give the whole model's logits."""
    cfg = small_cfg(*SPARSE)
    whole = build_model(cfg.model, cfg.sparsity, seed=3).eval()
    want = whole.state_dict()
    layers = (1, 1)
    stages = []
    for s in range(len(layers)):
        layout = PipelineLayout(layers, s, 0)
        part = build_model(cfg.model, cfg.sparsity, seed=3, keep=stage_keeps(layout)).eval()
        got = part.state_dict()
        assert got.keys() == want.keys()
        mine = {k for k in want if owner_stage(k, layout) == s}
        mine |= {"bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"} \
            if s in (0, len(layers) - 1) else set()
        for k, v in got.items():
            if k in mine:
                assert torch.equal(v, want[k]), k
            else:
                assert v.is_meta and v.shape == want[k].shape, k
        stages.append(BertStage(part, layout.first_layer, 1, layout.is_first, layout.is_last))
    assert stages[-1].cls.predictions.decoder.weight is part.bert.embeddings.word_embeddings.weight
    b = batch()
    with torch.no_grad():
        mid = stages[0](b["input_ids"], b["attention_mask"], b["masked_lm_positions"],
                        b["token_type_ids"])
        mlm, nsp = stages[1](*mid)
        ref = whole(**{k: b[k] for k in ("input_ids", "masked_lm_positions", "token_type_ids",
                                         "attention_mask")})
    torch.testing.assert_close(mlm, ref.mlm_logits, rtol=0, atol=0)
    torch.testing.assert_close(nsp, ref.nsp_logits, rtol=0, atol=0)


def test_stage_controllers_with_layer_offsets_draw_the_whole_models_patterns():
    """Two controllers over halves of the layers (offset = global index) make the same
    patterns and the same combined metrics as one controller over all of them."""
    cfg = small_cfg(*SPARSE)

    def run(split: bool) -> tuple[dict, dict]:
        model = build_model(cfg.model, cfg.sparsity, seed=3)
        layers = {n: m for n, m in model.named_modules() if hasattr(m, "values")}
        names = list(layers)
        parts = [names[:6], names[6:]] if split else [names]
        ctrls = [DynSpController({n: layers[n] for n in p}, None, 10, n_updates=2, seed=5,
                                 prune_ratio=0.5, layer_offset=names.index(p[0])) for p in parts]
        for m in layers.values():
            torch.nn.init.normal_(m.values, generator=torch.Generator().manual_seed(1))
        metrics = merge_stage_metrics([c.step(c.schedule.steps[0]) for c in ctrls])
        return {n: m.rows.clone() for n, m in layers.items()}, metrics

    (whole, m_whole), (halves, m_halves) = run(False), run(True)
    assert all(torch.equal(whole[n], halves[n]) for n in whole)
    skip = ("update_time_s",)
    assert {k: v for k, v in m_whole.items() if k not in skip} == \
        {k: v for k, v in m_halves.items() if k not in skip}


# ---------------------------------------------------------------- bad input via the CLI
@pytest.mark.usefixtures("one_thread")
def test_more_stages_than_processes_fails_before_data_preparation(tiny_data, tmp_path, capsys):
    corpus, _ = tiny_data
    cache = tmp_path / "fresh-cache"
    argv = tiny_overrides(corpus, tmp_path / "out", cache, **{KEY: [1, 1]})
    assert main(argv) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {KEY}: expected at most WORLD_SIZE=1 stages"), line
    assert not cache.exists()  # refused before any data preparation


# ---------------------------------------------------------------- torchrun (gloo)
def launch(tmp_path: Path, tiny_data, name: str, nproc: int, *extra: str, check: bool = True,
           popen: bool = False, nodes: int = 1, **settings) -> Any:
    """Train the tiny config (no dropout, 2 accumulated micro-batches, 2 pattern
    updates in 6 steps) on `nproc` torchrun ranks (1: a plain process)."""
    import yaml

    from bert_ipu.schema import apply_overrides

    corpus, cache = tiny_data
    values = {"training.training_steps": 6, "checkpoint.checkpoint_steps": 3,
              "model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0,
              "sparsity.n_updates": 2, "training.gradient_accumulation": 2,
              "logging.eval_steps": 3, **settings}
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(apply_overrides(
        {}, tiny_overrides(corpus, tmp_path / name, cache, **values))))
    runner = [sys.executable] + ([] if nproc == 1 else [
        "-m", "bert_ipu.launch", "--standalone", f"--nproc_per_node={nproc}"])
    argv = [*runner, "-m", "bert_ipu.pretrain", "--config", str(config), *extra]
    if nodes > 1:  # `nodes` launchers on this machine, as a user starts one per host
        return _multi_node(argv[argv.index("bert_ipu.pretrain") - 1:], nodes, nproc // nodes, check)
    if popen:  # running in the background (the caller signals and waits)
        return subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _multi_node(program: list[str], nodes: int, per_node: int, check: bool) -> list[Any]:
    """`python -m bert_ipu.launch --nnodes N --nproc_per_node P --rdzv_backend c10d
    --rdzv_endpoint localhost:PORT ...` started N times (the README's multi-node recipe
    on one machine); waits for all, checks their exit codes."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    launcher = [sys.executable, "-m", "bert_ipu.launch", f"--nnodes={nodes}",
                f"--nproc_per_node={per_node}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint=localhost:{port}", "--rdzv_id=test-two-nodes"]
    procs = [subprocess.Popen([*launcher, *program], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(nodes)]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    if check:
        for p, _, err in results:
            assert p.returncode == 0, err[-3000:]
    return results


def final_model(out: Path) -> dict[str, torch.Tensor]:
    return ck.load_checkpoint(ck.find_latest(out / "checkpoints"))["model.pt"]


def assert_same_run(want: Path, got: Path) -> None:
    """Metrics to fp32 round-off, patterns bit for bit, weights to round-off."""
    a, b = strip_timing(load_metrics(want)), strip_timing(load_metrics(got))
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if k.endswith("update_time_s"):
                continue
            torch.testing.assert_close(rb[k], ra[k], rtol=1e-6, atol=1e-6, msg=k)
    wa, wb = final_model(want), final_model(got)
    for k in wa:
        if k.endswith((".rows", ".cols")):
            assert torch.equal(wa[k], wb[k]), k
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("schedule, regrow, sharded", [("gpipe", "random", True),
                                                      ("1f1b", "gradient", False)])
def test_two_stages_equal_the_single_process_run(tiny_data, tmp_path, schedule, regrow, sharded):
    """2 stages x 1 replica == 1 process, over 6 steps with 2 pattern updates (random
    regrowth, or RigL's gradient regrowth from X/dY captured on each stage); every
    rank writes its shard of the checkpoint (no model.pt), or with
    checkpoint.sharded=false rank 0 writes the gathered single-process files; the same
    split resumes it exactly."""
    launch(tmp_path, tiny_data, "single", 1, **{"sparsity.regrow": regrow})
    launch(tmp_path, tiny_data, "pipe", 2, **{KEY: [1, 1], "training.pipeline_schedule": schedule,
                                              "sparsity.regrow": regrow,
                                              "checkpoint.sharded": sharded})
    assert_same_run(tmp_path / "single", tmp_path / "pipe")
    last = sorted((tmp_path / "pipe" / "checkpoints").glob("step_*"))[-1]
    files = set(json.loads((last / "manifest.json").read_text())["files"])
    if sharded:
        assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "sharded.pt", "pipeline.json",
                "trainer.pt"} <= files and "model.pt" not in files
    else:
        assert {"model.pt", "optimizer.pt", "controller.pt", "pipeline.json"} <= files
        assert not any(f.endswith(".distcp") for f in files)
    both = {KEY: [1, 1], "training.pipeline_schedule": schedule, "sparsity.regrow": regrow,
            "checkpoint.sharded": sharded}
    launch(tmp_path, tiny_data, "resumed", 2, **both)
    import shutil

    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step_00000006")
    launch(tmp_path, tiny_data, "resumed", 2, "checkpoint.resume_training_from_checkpoint=latest",
           **both)
    assert strip_timing(load_metrics(tmp_path / "resumed")) == \
        strip_timing(load_metrics(tmp_path / "pipe"))
    want, got = final_model(tmp_path / "pipe"), final_model(tmp_path / "resumed")
    assert all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.slow
def test_fp16_dynamic_loss_scaling_backs_off_on_every_stage_together(tiny_data, tmp_path):
    """Issue 23: fp16 with dynamic loss scaling in a pipeline. The initial scale (2**23)
    overflows the fp16 gradients; the finite check is a collective over all ranks, so an
    overflow on either stage skips the step on both and both back the scale off: the
    skipped steps, the scale of every step and the weights equal the single-process run's,
    and both stages' checkpointed scalers agree."""
    fp16 = {"training.precision": "fp16", "training.auto_loss_scaling": True,
            "training.loss_scaling": 2.0 ** 23, "logging.log_steps": 1}
    launch(tmp_path, tiny_data, "single16", 1, **fp16)
    launch(tmp_path, tiny_data, "pipe16", 2, **{KEY: [1, 1], **fp16})
    rows = [r for r in load_metrics(tmp_path / "single16") if "loss_scale" in r]
    assert rows[0]["skipped_steps"] >= 1 and rows[-1]["loss_scale"] < 2.0 ** 23  # it backed off
    assert rows[-1]["skipped_steps"] < len(rows)                                 # and then trained
    assert_same_run(tmp_path / "single16", tmp_path / "pipe16")
    last = ck.find_latest(tmp_path / "pipe16" / "checkpoints")
    scaler = ck.load_checkpoint(last)["trainer.pt"]["scaler"]  # every rank's agreed when saved
    assert scaler["skipped_steps"] >= 1 and scaler == ck.load_checkpoint(ck.find_latest(
        tmp_path / "single16" / "checkpoints"))["trainer.pt"]["scaler"]


@pytest.mark.slow
def test_sigterm_to_a_pipelined_job_ends_it_within_a_step_with_a_resumable_checkpoint(
        tiny_data, tmp_path):
    """Issue 23: SIGTERM to torchrun during a pipelined run: the ranks finish the step in
    flight (a schedule is one collective call), save a checkpoint at that step and exit;
    resuming from it gives the uninterrupted run's metrics and weights."""
    import signal
    import time

    settings = {KEY: [1, 1], "training.training_steps": 60, "sparsity.n_updates": 4,
                "logging.log_steps": 1}
    launch(tmp_path, tiny_data, "whole", 2, **settings)
    first = launch(tmp_path, tiny_data, "cut", 2, check=False, popen=True, **settings)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if metrics.exists() and sum(1 for _ in metrics.open()) >= 8:
            break
        time.sleep(0.05)
    assert first.poll() is None, "the run ended before the signal"
    sent = time.monotonic()
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    waited = time.monotonic() - sent
    saved = ck.find_latest(tmp_path / "cut" / "checkpoints")
    step = int(saved.name.split("_")[1])
    assert 0 < step < 60 and waited < 60, (saved, waited)
    launch(tmp_path, tiny_data, "cut", 2, "checkpoint.resume_training_from_checkpoint=latest",
           **settings)
    assert_same_run(tmp_path / "whole", tmp_path / "cut")


@pytest.mark.slow
@pytest.mark.parametrize("when", ["mid-run", "mid-checkpoint"])
def test_a_stage_killed_mid_run_ends_the_job_promptly_and_keeps_the_checkpoints(tiny_data,
                                                                               tmp_path, when):
    """Issue 23, bad input: kill -9 of one stage's process mid-run, or while the ranks
    write a sharded checkpoint (rank 0's files slowed down so that the kill lands inside
    the write). The launcher ends the job (no hang) with the failing rank named, every
    checkpoint written before stays loadable (the resume point), and the unfinished one
    is never taken for a checkpoint."""
    import signal
    import time

    import psutil

    settings = {KEY: [1, 1], "training.training_steps": 200, "sparsity.n_updates": 4,
                "checkpoint.checkpoint_steps": 5, "logging.log_steps": 1}
    corpus, cache = tiny_data
    import yaml

    from bert_ipu.schema import apply_overrides

    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(apply_overrides({}, tiny_overrides(
        corpus, tmp_path / "killed", cache, **{"model.hidden_dropout_prob": 0.0,
                                                 "training.gradient_accumulation": 2,
                                                 **settings}))))
    env = {**ENV, ck.WRITE_DELAY_ENV: "0.4"} if when == "mid-checkpoint" else ENV
    job = subprocess.Popen([sys.executable, "-m", "bert_ipu.launch", "--standalone",
                            "--nproc_per_node=2", "-m", "bert_ipu.pretrain", "--config",
                            str(config)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    checkpoints = tmp_path / "killed" / "checkpoints"

    def ready() -> bool:
        if not checkpoints.exists() or len(list(checkpoints.glob("step_*"))) < 2:
            return False
        return when == "mid-run" or any(checkpoints.glob(".tmp-*/__1_0.distcp"))

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and job.poll() is None and not ready():
        time.sleep(0.02)
    assert job.poll() is None, "the run ended before the kill"
    workers = [p for p in psutil.Process(job.pid).children(recursive=True)
               if "bert_ipu.pretrain" in " ".join(p.cmdline())]
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = job.communicate(timeout=180)
    ended = time.monotonic() - killed_at
    print(f"the job ended {ended:.1f} s after the kill, exit code {job.returncode}")
    assert ended < 120 and job.returncode not in (0, None)
    assert "launch: rank" in err and "ended with exit code" in err, err[-2000:]
    saved = ck.list_checkpoints(checkpoints)
    assert len(saved) >= 2 and all(ck.load_checkpoint(path)["model.pt"] for _, path in saved)
    assert ck.find_latest(checkpoints) == saved[-1][1]
    if when == "mid-checkpoint":  # the write in flight never became a checkpoint
        assert list(checkpoints.glob(".tmp-*"))


@pytest.mark.slow
def test_two_nodes_on_localhost_train_the_2x2_layout_as_one_node(tiny_data, tmp_path):
    """Issue 23: two launcher processes with a c10d rendezvous on localhost (two 'hosts'
    of 2 ranks each) train 2 stages x 2 replicas and equal the same layout on one node."""
    launch(tmp_path, tiny_data, "one_node", 4, **{KEY: [1, 1]})
    launch(tmp_path, tiny_data, "two_nodes", 4, nodes=2, **{KEY: [1, 1]})
    assert_same_run(tmp_path / "one_node", tmp_path / "two_nodes")
    summary = json.loads((tmp_path / "two_nodes" / "summary.json").read_text())
    assert len(summary["peak_memory_mib"]) == 4 and all(m["rss"] > 0 for m in summary["peak_memory_mib"])


@pytest.mark.slow
def test_two_stages_by_two_replicas_equal_data_parallel(tiny_data, tmp_path):
    """4 ranks as 2 stages x 2 replicas == 2 data-parallel ranks (the replicas' patterns
    are verified identical by the controllers at every update). Its checkpoint resumes on
    one replica with twice the accumulation (the same sequences per step: the data
    position is re-partitioned); the micro-batches are grouped differently, so the losses
    agree only roughly."""
    launch(tmp_path, tiny_data, "ddp", 2)
    launch(tmp_path, tiny_data, "pp2x2", 4, **{KEY: [1, 1]})
    assert_same_run(tmp_path / "ddp", tmp_path / "pp2x2")
    assert len(load_updates(tmp_path / "pp2x2")) == 2
    resume_into(tmp_path, tiny_data, tmp_path / "pp2x2" / "checkpoints" / "step_00000003",
                "pp2x1", 2, **{KEY: [1, 1], "training.gradient_accumulation": 4})
    want, got = load_metrics(tmp_path / "pp2x2")[-1], load_metrics(tmp_path / "pp2x1")[-1]
    assert want["step"] == got["step"] == 6 and want["sequences"] == got["sequences"]
    assert got["eval_mlm_loss"] == pytest.approx(want["eval_mlm_loss"], rel=0.05)


def stderr_error(err: str) -> str:
    """The one `error: ` line of a torchrun job's stderr (every rank may print it; no
    traceback from the training code)."""
    assert "Traceback" not in err, err[-3000:]
    lines = {line[line.index("error: "):] for line in err.splitlines() if "error: " in line}
    assert len(lines) == 1, err[-3000:]
    return lines.pop()


def resume_into(tmp_path: Path, tiny_data, checkpoint: Path, name: str, nproc: int,
                **settings) -> None:
    """Continue `checkpoint` to the end in a new output folder on `nproc` ranks."""
    launch(tmp_path, tiny_data, name, nproc,
           f"checkpoint.resume_training_from_checkpoint={checkpoint}", **settings)


def assert_resumed_equal(want: Path, got: Path, after: int) -> dict[str, Any]:
    """The resumed run's records (steps past `after`) and final weights equal the
    uninterrupted run's within the pipeline tolerance (dynsp-bench-stages measures the
    same figures); returns them."""
    from dynsp_tools.bench_stages import resume_differences

    diff = resume_differences(want, got, after)
    assert diff["steps_equal"] and diff["patterns_equal"], diff
    assert diff["metrics_max_rel"] < 1e-5 and diff["weights_rel"] < 1e-6, diff
    assert diff["max_abs_weight_diff"] < 1e-5, diff
    return diff


@pytest.mark.slow
def test_a_two_stage_checkpoint_resumes_into_one_stage_and_into_four(tiny_data, tmp_path):
    """Issue 23: a 4-layer model trained on 2 stages, checkpointed at step 3, resumed by
    one process and by 4 stages (each reads the shards' keys of its own layers): both
    equal the uninterrupted single-process run (metrics, patterns, weights)."""
    four = {"model.num_hidden_layers": 4}
    launch(tmp_path, tiny_data, "single", 1, **four)
    launch(tmp_path, tiny_data, "pipe", 2, **{KEY: [2, 2], **four})
    step3 = tmp_path / "pipe" / "checkpoints" / "step_00000003"
    resume_into(tmp_path, tiny_data, step3, "into1", 1, **four)
    resume_into(tmp_path, tiny_data, step3, "into4", 4, **{KEY: [1, 1, 1, 1], **four})
    worst = {n: assert_resumed_equal(tmp_path / "single", tmp_path / n, after=3)
             for n in ("into1", "into4")}
    print("relative differences to the single-process run:", worst)


@pytest.mark.slow
def test_a_sharded_checkpoint_exports_and_refuses_bad_input(tiny_data, tmp_path):
    """Issue 23: a 2-stage checkpoint exports to a Hugging Face folder at the end of the
    run (checkpoint.export_dir) and in a plain process (same weights as the shards
    hold); a shard file gone makes `latest` fall back
    to the previous good checkpoint and an explicit resume fail with one line naming the
    file; a checkpoint of another model is refused with one line naming the key."""
    import transformers

    launch(tmp_path, tiny_data, "pipe", 2, **{KEY: [1, 1],
                                              "checkpoint.export_dir": str(tmp_path / "hf_end")})
    step6 = tmp_path / "pipe" / "checkpoints" / "step_00000006"
    proc = subprocess.run([sys.executable, "-m", "bert_ipu.export", str(step6),
                           str(tmp_path / "hf")], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards = ck.load_checkpoint(step6)["model.pt"]
    for folder in ("hf", "hf_end"):
        hf = transformers.BertForPreTraining.from_pretrained(tmp_path / folder)
        torch.testing.assert_close(hf.bert.embeddings.word_embeddings.weight,
                                   shards["bert.embeddings.word_embeddings.weight"], rtol=0, atol=0)

    (step6 / "__1_0.distcp").unlink()
    explicit = launch(tmp_path, tiny_data, "again", 2,
                      f"checkpoint.resume_training_from_checkpoint={step6}", check=False,
                      **{KEY: [1, 1]})
    line = stderr_error(explicit.stderr)
    assert explicit.returncode != 0 and "__1_0.distcp" in line and "missing" in line, line
    fallback = launch(tmp_path, tiny_data, "pipe", 2,
                      "checkpoint.resume_training_from_checkpoint=latest", **{KEY: [1, 1]})
    assert "resuming from the previous good checkpoint" in fallback.stderr + fallback.stdout

    other = launch(tmp_path, tiny_data, "other", 2, "checkpoint.resume_training_from_checkpoint="
                   f"{tmp_path / 'pipe' / 'checkpoints' / 'step_00000003'}", check=False,
                   **{KEY: [1, 1], "model.intermediate_size": 128})
    line = stderr_error(other.stderr)
    assert other.returncode == 2 and "does not fit this run" in line, line
    assert "intermediate_size" in line, line
