"""Run outputs: metrics files, the values the trackers get, the progress bar."""
from __future__ import annotations

import io
import re
import sys
import types

import pytest

from bert_ipu.train.metrics import MetricsWriter, Progress, read_jsonl
from tests.bert_ipu.tiny_run import one_thread, run_tiny, tiny_data  # noqa: F401


class FakeSummaryWriter:
    """Records what a real torch.utils.tensorboard.SummaryWriter would write."""

    instances: list["FakeSummaryWriter"] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeSummaryWriter.instances.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.text = text

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch):
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeSummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    FakeSummaryWriter.instances = []
    return FakeSummaryWriter.instances


class Recorder:
    """A tracker that records what it is given."""

    def __init__(self) -> None:
        self.logged, self.truncated, self.closed = [], [], False

    def log(self, step, values):
        self.logged.append((step, dict(values)))

    def truncate_after(self, step):
        self.truncated.append(step)

    def close(self):
        self.closed = True


def test_trackers_get_every_numeric_field_under_grouped_names(tmp_path):
    rec = Recorder()
    writer = MetricsWriter(tmp_path, trackers=[rec])
    writer.log({"step": 3, "loss": 1.5, "grad_norm": float("nan"), "note": "x",
                "eval_mlm_loss": None, "eval_nsp_loss": 0.5})
    writer.log_update({"step": 3, "update_index": 0, "dof/encoder.layer.0": 0.25})
    writer.truncate_after(2)
    writer.close()
    assert rec.logged[0][0] == 3 and list(rec.logged[0][1]) == [
        "train/loss", "train/grad_norm", "eval/nsp_loss"]
    assert rec.logged[1] == (3, {"dynsp/update_index": 0.0, "dynsp_layers/dof/encoder.layer.0": 0.25})
    assert rec.truncated == [2] and rec.closed
    assert MetricsWriter(tmp_path, enabled=False, trackers=[rec]).trackers == []  # rank > 0


@pytest.mark.usefixtures("one_thread")
def test_the_trainer_writes_tensorboard_scalars_when_installed(tiny_data, tmp_path,
                                                               fake_tensorboard):
    corpus, cache = tiny_data
    run_tiny(corpus, tmp_path / "run", cache, **{"logging.trackers": ["tensorboard"],
                                                 "training.training_steps": 3,
                                                 "sparsity.n_updates": 1})
    (tb,) = fake_tensorboard
    assert tb.closed
    steps = {s for tag, _, s in tb.scalars if tag == "train/loss"}
    assert steps == {1, 2, 3}
    tags = {t for t, _, _ in tb.scalars}
    assert {"train/sequences_per_second", "train/flops", "train/lr", "eval/mlm_loss",
            "dynsp/dof_mean", "dynsp/update_index"} <= tags
    assert any(t.startswith("dynsp_layers/dof/") for t in tags)
    assert all(t.split("/")[0] in ("train", "eval", "dynsp", "dynsp_layers") for t in tags)


def test_per_layer_metrics_go_to_their_own_file(tiny_data, tmp_path):
    """Issue 11: metrics.jsonl rows carried 113 keys (96 per layer)."""
    corpus, cache = tiny_data
    out = tmp_path / "run"
    run_tiny(corpus, out, cache, **{"training.training_steps": 4, "sparsity.n_updates": 1})
    rows = read_jsonl(out / "metrics.jsonl")
    assert rows and not any("/" in k for r in rows for k in r)
    assert not any("update_index" in r for r in rows)    # updates have their own rows
    update = read_jsonl(out / "dynsp_updates.jsonl")
    assert update and all("dof_mean" in r and not any("/" in k for k in r) for r in update)
    layers = read_jsonl(out / "dynsp_layers.jsonl")
    assert [r["step"] for r in layers] == [r["step"] for r in update] and len(layers) == 1
    assert any(k.startswith("dof/") for k in layers[0]) and "density/" in "".join(layers[0])


@pytest.mark.usefixtures("one_thread")
def test_logged_loss_is_the_mean_over_the_logging_interval(tiny_data, tmp_path):
    """Issue 22: one step's loss was logged (zig-zag curves) and every pattern update added
    a row; now a row every logging.log_steps (and at evaluations), its losses the mean of
    the interval's steps, updates in dynsp_updates.jsonl."""
    corpus, cache = tiny_data
    settings = {"training.training_steps": 10, "logging.eval_steps": 6}
    run_tiny(corpus, tmp_path / "each", cache, **settings)
    run_tiny(corpus, tmp_path / "four", cache, **settings, **{"logging.log_steps": 4})
    each = {r["step"]: r for r in read_jsonl(tmp_path / "each" / "metrics.jsonl") if "loss" in r}
    four = [r for r in read_jsonl(tmp_path / "four" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in four] == [4, 6, 8, 10]       # log steps, the evaluation at 6, the end
    assert [r["loss_steps"] for r in four] == [4, 2, 2, 2]
    start = 0
    for row in four:
        steps = range(start + 1, row["step"] + 1)
        for key in ("loss", "mlm_loss", "nsp_loss"):
            want = sum(each[t][key] for t in steps) / len(steps)
            assert row[key] == pytest.approx(want, rel=1e-12), (row["step"], key)
        assert row["lr"] == each[row["step"]]["lr"]          # the step's own value
        start = row["step"]
    assert [r["step"] for r in read_jsonl(tmp_path / "four" / "dynsp_updates.jsonl")] == [
        r["step"] for r in read_jsonl(tmp_path / "each" / "dynsp_updates.jsonl")] != []


class Terminal(io.StringIO):
    """A stderr that says it is a terminal (the progress bar draws itself)."""

    def isatty(self) -> bool:
        return True


def test_eval_lines_are_written_between_bar_updates(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    progress = Progress(total=10, initial=0, enabled=True)
    progress.update(1, 2.5, 10.0)
    progress.write("eval step 1: mlm_loss 2.0")
    progress.close()
    assert "eval step 1: mlm_loss 2.0\n" in screen.getvalue()


def test_progress_line_without_a_terminal_shows_loss_rate_and_eta(capsys):
    progress = Progress(total=10, initial=4, enabled=True, interval=0.0)
    progress.update(1, 2.5, 123.4)
    progress.close()
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d step 5/10 loss 2\.5000 123\.4 seq/s ETA \d\dm\d\ds", line), line


def test_progress_bar_on_a_terminal_shows_loss_rate_and_eta(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    progress = Progress(total=10, initial=0, enabled=True)
    for _ in range(3):
        progress.update(1, 2.5, 99.0)
    progress.close()
    text = screen.getvalue()
    assert "loss=2.5000" in text and "seq_s=99.0" in text
    assert re.search(r"3/10 \[\d\d:\d\d<\d\d:\d\d", text), text  # elapsed<ETA


def test_disabled_progress_prints_nothing(capsys):
    progress = Progress(total=2, initial=0, enabled=False, interval=0.0)
    progress.update(2, 1.0, 1.0)
    assert capsys.readouterr().err == ""


@pytest.mark.usefixtures("one_thread")
def test_the_trainer_feeds_the_progress_bar_a_rate_at_every_step(tiny_data, tmp_path,
                                                                 monkeypatch):
    """Between metrics records (log_steps) the bar still gets the current sequences/s."""
    import math

    from bert_ipu.train import loop as trainer

    seen = []

    class Recording(Progress):
        def update(self, steps, loss, sequences_per_second):
            seen.append((loss, sequences_per_second))
            super().update(steps, loss, sequences_per_second)

    monkeypatch.setattr(trainer, "Progress", Recording)
    corpus, cache = tiny_data
    run_tiny(corpus, tmp_path / "run", cache, **{"logging.log_steps": 5,
                                                 "logging.progress_bar": True,
                                                 "training.training_steps": 6,
                                                 "sparsity.n_updates": 1})
    assert len(seen) == 6
    assert all(math.isfinite(loss) and math.isfinite(rate) and rate > 0 for loss, rate in seen)


def test_tensorboard_is_installed_and_on_by_default(tmp_path):
    """Issue 22: TensorBoard was not installed and a run with logging.tensorboard=true
    fell back to metrics.jsonl only; it is installed by the set-up command and on by default."""
    from bert_ipu.config import load_config
    from bert_ipu.trackers import TrackerRun, open_trackers

    assert load_config(None, []).logging.trackers == ("tensorboard",)
    trackers = open_trackers(("tensorboard",), TrackerRun(tmp_path, "t", "p"))
    writer = MetricsWriter(tmp_path, trackers=trackers)
    writer.log({"step": 1, "loss": 2.5, "eval_mlm_loss": 3.0})
    writer.close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events[0].stat().st_size > 0
