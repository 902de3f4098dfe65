"""Issue 22: experiment trackers (logging.trackers), each run for real and offline:
TensorBoard event files, a wandb offline run, an MLflow file store, metrics.csv."""
from __future__ import annotations

import csv
import importlib.util
import time

import pytest

from bert_ipu.config import ConfigError, config_from_dict, load_config
from bert_ipu.schema import flatten_tree
from bert_ipu.trackers import TrackerError, TrackerRun, check_trackers, open_trackers
from tests.bert_ipu.tiny_run import error_line, one_thread, run_tiny, tiny_data, tiny_overrides  # noqa: F401

needs = {name: pytest.mark.skipif(importlib.util.find_spec(name) is None,
                                  reason=f"{name} is not installed (pip install -e '.[trackers]')")
         for name in ("wandb", "mlflow")}


@pytest.fixture
def offline(monkeypatch):
    for key in ("WANDB_MODE", "MLFLOW_TRACKING_URI", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)


def _tiny_run_with(tiny_data, out, trackers, **extra):
    corpus, cache = tiny_data
    return run_tiny(corpus, out, cache, **{"logging.trackers": trackers,
                                           "training.training_steps": 4,
                                           "sparsity.n_updates": 1, **extra})


@pytest.mark.usefixtures("one_thread")
def test_csv_has_every_value_and_survives_a_resume(tiny_data, tmp_path):
    from bert_ipu.train.loop import TrainerHooks
    from bert_ipu.train.signals import TrainingInterrupted

    _tiny_run_with(tiny_data, tmp_path / "full", ["csv"])
    with pytest.raises(TrainingInterrupted):
        _tiny_run_with(tiny_data, tmp_path / "cut", ["csv"], hooks=TrainerHooks(stop_at=(3, 0)),
                       **{"checkpoint.checkpoint_steps": 2})
    _tiny_run_with(tiny_data, tmp_path / "cut", ["csv"],
                   **{"checkpoint.checkpoint_steps": 2,
                      "checkpoint.resume_training_from_checkpoint": "latest"})

    def rows(run):
        with open(run / "metrics.csv", newline="") as handle:
            table = list(csv.reader(handle))
        assert table[0] == ["step", "name", "value"]
        return [r for r in table[1:] if not r[1].endswith(("sequences_per_second", "update_time_s"))]

    full = rows(tmp_path / "full")
    names = {r[1] for r in full}
    assert {"train/loss", "train/flops", "eval/mlm_loss", "dynsp/dof_mean"} <= names
    assert any(n.startswith("dynsp_layers/dof/") for n in names)
    assert rows(tmp_path / "cut") == full       # the steps after the checkpoint once, not twice


def wandb_records(blob: bytes) -> list[bytes]:
    """The records of a wandb offline `.wandb` file: a 7-byte header (":W&B", magic,
    version), then LevelDB-log blocks of 32 KiB whose chunks have a 7-byte header (crc32,
    little-endian length, type: 1 full, 2 first, 3 middle, 4 last)."""
    assert blob[:4] == b":W&B"
    out, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(blob):
        if block - pos % block < 7:          # the tail of a block too short for a header
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(blob[pos + 4:pos + 6], "little"), blob[pos + 6]
        data, pos = blob[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            out.append(pending)
    return out


@needs["wandb"]
@pytest.mark.usefixtures("one_thread", "offline")
def test_wandb_offline_run_with_group_config_and_metrics(tiny_data, tmp_path):
    _tiny_run_with(tiny_data, tmp_path / "run", ["wandb"],
                   **{"logging.tracker_group": "sweep-a", "logging.tracker_dir": str(tmp_path / "t"),
                      "name": "tiny_w"})
    (folder,) = (tmp_path / "t" / "wandb").glob("offline-run-*")
    (log,) = folder.glob("run-*.wandb")
    from wandb.proto import wandb_internal_pb2

    for _ in range(100):   # wandb's service process may still be writing after finish()
        kinds, history_keys, run_record = set(), set(), None
        for data in wandb_records(log.read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            kinds.add(kind)
            if kind == "history":
                history_keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
            if kind == "run":
                run_record = record.run
        if run_record is not None and "exit" in kinds:
            break
        time.sleep(0.1)
    assert run_record is not None and run_record.run_group == "sweep-a"
    assert run_record.display_name == "tiny_w"
    config_keys = {item.key for item in run_record.config.update}
    assert "sparsity.sparsity" in config_keys and "training.learning_rate" in config_keys
    assert {"train/loss", "eval/mlm_loss", "dynsp/dof_mean"} <= history_keys, history_keys


@needs["mlflow"]
@pytest.mark.usefixtures("one_thread", "offline")
def test_mlflow_file_store_experiment_params_and_metrics(tiny_data, tmp_path):
    store = tmp_path / "store"
    for run in ("a", "b"):   # two runs of one sweep: one experiment
        _tiny_run_with(tiny_data, tmp_path / run, ["mlflow"],
                       **{"logging.tracker_group": "sweep-b", "logging.tracker_dir": str(store),
                          "name": f"run_{run}"})
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=(store / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("sweep-b")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run_a", "run_b"]
    run = runs[0]
    used = load_config(tmp_path / ("a" if run.info.run_name == "run_a" else "b") / "config.yaml", [])
    assert run.data.params["sparsity.sparsity"] == str(used.sparsity.sparsity)
    assert run.data.params["training.learning_rate"] == str(used.training.learning_rate)
    assert {"train/loss", "eval/mlm_loss", "dynsp/dof_mean"} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4]


def test_a_missing_tracker_package_is_one_line_before_any_work(tiny_data, tmp_path, monkeypatch,
                                                               capsys):
    from bert_ipu.pretrain import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(TrackerError, match="'wandb' needs the package 'wandb'"):
        check_trackers(("csv", "wandb"))
    corpus, cache = tiny_data
    out = tmp_path / "run"
    args = tiny_overrides(corpus, out, cache)
    assert main(args + ["logging.trackers=[csv, wandb]"]) == 2
    line = error_line(capsys)
    assert "logging.trackers" in line and "'wandb'" in line and "pip install" in line
    assert not out.exists()              # nothing was prepared or created


def test_tracker_names_are_checked_and_the_old_key_still_reads():
    with pytest.raises(ConfigError, match=r"logging.trackers\[1\].*'tensorboard'"):
        load_config(None, ["logging.trackers=[csv, neptune]"])
    base = {"logging": {"tensorboard": False}}   # config.yaml of runs before logging.trackers
    assert config_from_dict(base).logging.trackers == ()
    assert config_from_dict({"logging": {"tensorboard": True}}).logging.trackers == ("tensorboard",)
    assert config_from_dict({"logging": {"tensorboard": True, "trackers": ["csv"]}}
                            ).logging.trackers == ("csv",)


def test_flatten_and_no_trackers(tmp_path):
    assert flatten_tree({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "[1, 2]", "d": None}
    assert open_trackers((), TrackerRun(tmp_path, "x", "p")) == []


@needs["mlflow"]
@pytest.mark.usefixtures("one_thread", "offline")
def test_a_resume_continues_its_tracker_run_and_a_fresh_start_gets_a_new_one(tiny_data, tmp_path):
    """The tracker run id is drawn at a fresh start and checkpointed: a fresh start over
    an earlier run's folder (which archives that run) must not report into its run."""
    import mlflow

    from bert_ipu.train.loop import TrainerHooks
    from bert_ipu.train.signals import TrainingInterrupted

    store = {"logging.tracker_dir": str(tmp_path / "store"), "checkpoint.checkpoint_steps": 2}
    with pytest.raises(TrainingInterrupted):
        _tiny_run_with(tiny_data, tmp_path / "run", ["mlflow", "csv"],
                       hooks=TrainerHooks(stop_at=(3, 0)), **store)
    _tiny_run_with(tiny_data, tmp_path / "run", ["mlflow", "csv"], **store,
                   **{"checkpoint.resume_training_from_checkpoint": "latest"})
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "store" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("dynsp-bert").experiment_id
    assert len(client.search_runs([experiment])) == 1          # the resume continued it
    _tiny_run_with(tiny_data, tmp_path / "run", ["mlflow", "csv"], **store)   # fresh start
    assert len(client.search_runs([experiment])) == 2
    (archived,) = (tmp_path / "run" / "checkpoints").glob("previous-*")
    assert (archived / "metrics.csv").is_file() and (archived / "dynsp_updates.jsonl").is_file()


def test_a_sweep_groups_its_runs(tmp_path):
    from bert_ipu.sweep.spec import expand_sweep

    (tmp_path / "base.yaml").write_text("model:\n  size: tiny\nsparsity:\n  method: dynamic\n")
    (tmp_path / "s.yaml").write_text(f"config: base.yaml\noutput_root: {tmp_path / 'out'}\n"
                                     "grid:\n  sparsity.sparsity: [0.5, 0.9]\n")
    runs = expand_sweep(tmp_path / "s.yaml")
    for run in runs:
        assert "logging.tracker_group=s" in run.overrides
        assert f"logging.tracker_dir={tmp_path / 'out'}" in run.overrides
