"""Sharded checkpoints (issue 23): the single-process-name shard format round-trips a
trained model, optimizer and DynSp controller, and a sharded save by one rank (a world of
one on gloo) is atomic, checksummed, read back whole or key by key, and refuses bad
content with one line."""
from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist

from bert_ipu.model import build_model
from bert_ipu.store import checkpoint as ck
from bert_ipu.store import sharded
from bert_ipu.train.optim import build_optimizer, parameter_groups
from sparse_ops.dynsp.controller import DynSpController
from tests.bert_ipu.model.test_model import SPARSE, batch, small_cfg


def trained() -> tuple[torch.nn.Module, torch.optim.Optimizer, DynSpController, list[list[str]]]:
    """A small DynSp model after one AdamW step and one pattern update."""
    cfg = small_cfg(*SPARSE)
    model = build_model(cfg.model, cfg.sparsity, seed=0)
    opt = build_optimizer(parameter_groups(model, 0.01), 1e-3)
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "values")}
    ctl = DynSpController(layers, opt, 10, n_updates=2, seed=5, prune_ratio=0.5)
    b = batch()
    model(**b).loss.backward()
    opt.step()
    ctl.step(ctl.schedule.steps[0])
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = [[name_of[id(p)] for p in g["params"]] for g in opt.param_groups]
    return model, opt, ctl, names


def assert_same_tree(a, b, where: str = "") -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_the_shard_format_round_trips_model_optimizer_and_controller():
    model, opt, ctl, names = trained()
    flat = [n for g in names for n in g]
    shard = sharded.shard_of(model.state_dict(), opt.state_dict(), flat, ctl.state_dict())
    assert all(torch.is_tensor(v) for v in shard.values())  # DCP stores every entry as a tensor
    assert any(k.startswith("optim/bert.encoder.layer.1.intermediate.dense.values/") for k in shard)
    files = sharded.classic_from_shard(shard, sharded.common_of(opt.state_dict(), names,
                                                                ctl.state_dict()))
    assert_same_tree(model.state_dict(), files["model.pt"], "model")
    assert_same_tree(opt.state_dict(), files["optimizer.pt"], "optimizer")
    assert_same_tree(ctl.state_dict(), files["controller.pt"]["controller"], "controller")


@pytest.fixture
def world_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_sharded_save_is_atomic_checksummed_and_read_back(tmp_path, world_of_one):
    model, opt, ctl, names = trained()
    shard = sharded.shard_of(model.state_dict(), opt.state_dict(), [n for g in names for n in g],
                             ctl.state_dict())
    common = sharded.common_of(opt.state_dict(), names, ctl.state_dict())
    root = tmp_path / "checkpoints"
    path = ck.save_sharded_checkpoint(root, ck.CheckpointId(3), {
        sharded.COMMON: common, "trainer.pt": {"state": {"step": 3}}, "config.yaml": "name: x\n"},
        shard)
    manifest = json.loads((path / ck.MANIFEST).read_text())
    assert manifest["sharded"] and {"__0_0.distcp", ".metadata", "sharded.pt"} <= set(manifest["files"])
    assert not list(root.glob(".tmp-*"))
    loaded = ck.load_checkpoint(path)  # consolidated: the single-process files
    assert_same_tree(model.state_dict(), loaded["model.pt"], "model")
    assert_same_tree(opt.state_dict(), loaded["optimizer.pt"], "optimizer")
    assert ck.find_latest(root, ("model.pt", "optimizer.pt", "controller.pt", "trainer.pt")) == path

    key = "model/bert.encoder.layer.0.attention.self.query.values"
    part = sharded.read(path, [key])  # one key, no collective
    assert torch.equal(part[key], shard[key])
    with pytest.raises(sharded.ShardError, match=r"query.values is \(\d+, 8, 8\), this run's is \(1, 8, 8\)"):
        sharded.read(path, [key], {key: torch.Size([1, 8, 8])})
    with pytest.raises(sharded.ShardError, match="holds no model/bert.encoder.layer.9"):
        sharded.read(path, ["model/bert.encoder.layer.9.output.dense.values"])

    (path / "__0_0.distcp").write_bytes(b"damaged")
    with pytest.raises(ck.ChecksumError, match="__0_0.distcp"):
        ck.load_checkpoint(path)


def test_a_sharded_save_refuses_non_finite_weights_and_leaves_nothing(tmp_path, world_of_one):
    model, opt, ctl, names = trained()
    state = model.state_dict()
    state["bert.pooler.dense.bias"] = torch.full_like(state["bert.pooler.dense.bias"], float("nan"))
    shard = sharded.shard_of(state, opt.state_dict(), [n for g in names for n in g], None)
    with pytest.raises(ck.NonFiniteWeightsError, match="bert.pooler.dense.bias"):
        ck.save_sharded_checkpoint(tmp_path, ck.CheckpointId(1), {}, shard)
    assert not [p.name for p in tmp_path.iterdir() if "step_" in p.name]
