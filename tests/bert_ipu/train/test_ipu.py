"""The IPU path (bert_ipu/train/ipu_step.py) without the Poplar SDK: the pure state handling
(bert_ipu/devices/ipu_state.py) directly, the rest with tests/bert_ipu/fake_poptorch.py
installed as `poptorch`."""
from __future__ import annotations

import importlib
import sys

import pytest
import torch

from bert_ipu.devices.ipu_state import DeviceMoments
from bert_ipu.train.signals import TrainingInterrupted
from bert_ipu.train.loop import TrainerHooks
from sparse_ops.dynsp.remap import remap_param_state
from sparse_ops.linear import SparseLinear
from tests.bert_ipu.train import fake_poptorch
from tests.bert_ipu.tiny_run import (  # noqa: F401
    final_state, load_metrics, load_updates, one_thread, run_tiny, strip_timing, tiny_data,
)

IPU = {"training.device": "ipu", "training.training_steps": 8, "sparsity.n_updates": 2,
       "checkpoint.checkpoint_steps": 0, "logging.eval_steps": 4,
       "training.layers_per_ipu": [1, 1]}


@pytest.fixture
def poptorch(monkeypatch):
    """The fake SDK as `poptorch`; bert_ipu.train.ipu_step is forgotten afterwards, so that other
    tests still see CPU runs that never import it."""
    module = fake_poptorch.make_module()
    monkeypatch.setitem(sys.modules, "poptorch", module)
    _forget_ipu_module()
    yield module
    _forget_ipu_module()


def _forget_ipu_module() -> None:
    import bert_ipu.devices

    sys.modules.pop("bert_ipu.train.ipu_step", None)
    bert_ipu.devices.__dict__.pop("ipu", None)


# ------------------------------------------------------------------ pure python
def test_device_moments_follow_a_pattern_update():
    layer = SparseLinear(16, 16, sparsity=0.5, block_size=4, seed=0)  # 8 of 16 blocks
    name = "bert.encoder.layer.1.output.dense.values"
    nnz = layer.values.shape[0]
    m = torch.arange(nnz, dtype=torch.float32).view(-1, 1, 1).expand(-1, 4, 4).clone()
    ipu_state = {f"Accl1___model.{name}": m, f"Accl2___model.{name}": m * 10,
                 f"Step___model.{name}": torch.tensor(7.0),
                 "Accl1___model.bert.encoder.layer.11.output.dense.values": m + 100,
                 "Accl1___model.bert.embeddings.word_embeddings.weight": torch.ones(3)}
    moments = DeviceMoments({name: layer.values})
    assert moments.pull(ipu_state) == 2  # m and v; not Step, not layer 11's
    source = torch.tensor([-1, 0, 2, 3, 4, 5, 6, -2])  # slots 0 and 7 are new blocks
    assert sorted(remap_param_state(moments, layer.values, source)) == [
        f"Accl1___model.{name}", f"Accl2___model.{name}"]
    out = moments.push(ipu_state)
    got = out[f"Accl1___model.{name}"][:, 0, 0]
    assert got.tolist() == [0.0, 0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]
    assert out[f"Accl2___model.{name}"][:, 0, 0].tolist() == (got * 10).tolist()
    for key in ipu_state:
        if "layer.1." not in key or key.startswith("Step"):
            assert out[key] is ipu_state[key]  # untouched
    assert moments.state == {} and ipu_state[f"Accl1___model.{name}"][0, 0, 0] == 0  # copy


def test_the_ipu_module_needs_poptorch():
    if "poptorch" in sys.modules or importlib.util.find_spec("poptorch") is not None:
        pytest.skip("PopTorch is installed here")
    _forget_ipu_module()
    with pytest.raises(ImportError, match="poptorch"):
        importlib.import_module("bert_ipu.train.ipu_step")
    _forget_ipu_module()


# ------------------------------------------------------------------ with the fake SDK
def test_options_and_optimizer_follow_the_config(poptorch):
    from bert_ipu.config import load_config
    from bert_ipu.train.ipu_step import build_ipu_optimizer, ipu_options

    opts = ipu_options(4, 2, 1, seed=3, pipelined=True, auto_loss_scaling=True)
    assert ("Training.setAutomaticLossScaling", (True,)) in opts.calls
    assert ("Training.gradientAccumulation", (4,)) in opts.calls
    assert ("setExecutionStrategy", (("PipelinedExecution", "AutoIncrement"),)) in opts.calls
    assert not any("AutomaticLossScaling" in c for c, _ in ipu_options(1, 1, 1, 0, False).calls)
    t = load_config(None, ["training.adam_betas=[0.8, 0.99]", "training.adam_eps=1e-8",
                           "training.loss_scaling=128", "training.max_grad_norm=0"]).training
    opt = build_ipu_optimizer([{"params": [torch.nn.Parameter(torch.ones(2))]}], t)
    assert opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["eps"] == 1e-8
    assert opt.loss_scaling == 128 and opt.max_grad_norm is None


@pytest.mark.usefixtures("one_thread")
def test_pattern_updates_reset_the_device_moments_of_reallocated_blocks(
        poptorch, tiny_data, tmp_path, monkeypatch):
    ipu = importlib.import_module("bert_ipu.train.ipu_step")  # the one the runner will import

    seen = []
    real = ipu.IpuRunner.pattern_update

    def spy(self, controller, t):
        if not controller.is_update_step(t):
            return real(self, controller, t)
        before = _layers(self)
        result = real(self, controller, t)
        calls = list(self.compiled.calls[-2:])
        seen.append((before, _layers(self), calls))
        return result

    monkeypatch.setattr(ipu.IpuRunner, "pattern_update", spy)
    corpus, cache = tiny_data
    run_tiny(corpus, tmp_path / "run", cache, **IPU)
    assert len(seen) == 2
    for before, after, calls in seen:
        assert calls == ["copyWeightsToHost", "copyWeightsToDevice"]
        for name, (coords, m1, v1, host) in after.items():
            old_coords, m0, v0, _ = before[name]
            old_index = {c: i for i, c in enumerate(old_coords)}
            new = [i for i, c in enumerate(coords) if c not in old_index]
            kept = [(i, old_index[c]) for i, c in enumerate(coords) if c in old_index]
            assert new and kept
            assert all(float(m1[i].abs().sum()) == 0 == float(v1[i].abs().sum()) for i in new)
            assert all(torch.equal(m1[i], m0[j]) and torch.equal(v1[i], v0[j]) for i, j in kept)
    records = load_updates(tmp_path / "run")
    assert len(records) == 2 and all(0 < r["dof_mean"] <= 1 for r in records)


def _layers(runner) -> dict:
    """Per sparse layer: block coordinates, device m and v (applied state), host values."""
    from bert_ipu.model import sparse_modules

    executor = runner.compiled
    if executor.optimizer.pending is not None:  # written to the device at the next run
        executor.write_state(executor.optimizer.pending)
        executor.optimizer.pending = None
    out = {}
    for name, m in sparse_modules(runner.model).items():
        state = executor.device_opt.state[executor.params[f"model.{name}.values"]]
        coords = list(zip(m.rows.tolist(), m.cols.tolist()))
        out[name] = (coords, state["exp_avg"].clone(), state["exp_avg_sq"].clone(),
                     m.values.detach().clone())
    return out


@pytest.mark.usefixtures("one_thread")
def test_resume_on_the_ipu_path_restores_the_device_optimizer_state(poptorch, tiny_data,
                                                                     tmp_path):
    corpus, cache = tiny_data
    run_tiny(corpus, tmp_path / "continuous", cache, **IPU)
    with pytest.raises(TrainingInterrupted):
        run_tiny(corpus, tmp_path / "resumed", cache, hooks=TrainerHooks(stop_at=(4, 0)),
                 **IPU)
    from bert_ipu.store import checkpoint as ck

    saved = ck.load_checkpoint(ck.find_latest(tmp_path / "resumed" / "checkpoints"))
    ipu_state = saved["optimizer.pt"]["ipu_state"]
    assert any(k.startswith("Accl1___model.bert.encoder") for k in ipu_state)
    run_tiny(corpus, tmp_path / "resumed", cache, **IPU,
             **{"checkpoint.resume_training_from_checkpoint": "latest"})
    assert strip_timing(load_metrics(tmp_path / "resumed")) == strip_timing(
        load_metrics(tmp_path / "continuous"))
    want, got = final_state(tmp_path / "continuous"), final_state(tmp_path / "resumed")
    assert all(torch.equal(want[k], got[k]) for k in want)
