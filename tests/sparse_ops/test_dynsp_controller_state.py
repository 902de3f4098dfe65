"""DynSpController: determinism, checkpoint round trip, placements, RigL, sync, errors."""
from __future__ import annotations

import io
import os

import pytest
import torch
from torch import nn

from sparse_ops.dynsp.controller import DynSpController
from sparse_ops.linear import SparseLinear
from tests.sparse_ops.test_dynsp_controller import batch, make_run, patterns, tiny_model, train


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(all(torch.equal(x, y) for x, y in zip(pa, pb)) for pa, pb in zip(a, b))


# ---- determinism -----------------------------------------------------------------------
@pytest.mark.parametrize("regrow", ["random", "gradient"])
def test_same_seed_same_patterns_other_seed_differs(regrow):
    runs = {}
    for name, ctrl_seed in (("a", 7), ("b", 7), ("c", 8)):
        model, opt, ctrl = make_run(ctrl_seed=ctrl_seed, regrow=regrow, regrow_init="normal")
        runs[name] = train(model, opt, ctrl, 0, 40)
    assert len(runs["a"]) == 8 and _same(runs["a"], runs["b"])
    if regrow == "random":
        assert not _same(runs["a"], runs["c"])


@pytest.mark.parametrize("regrow", ["random", "gradient"])
def test_host_and_device_placement_give_identical_patterns(regrow):
    out = {}
    for placement in ("host", "device"):
        model, opt, ctrl = make_run(regrow=regrow, placement=placement, regrow_init="normal")
        out[placement] = (train(model, opt, ctrl, 0, 40), [p.detach().clone() for p in model.parameters()])
    assert _same(out["host"][0], out["device"][0])
    assert all(torch.equal(a, b) for a, b in zip(out["host"][1], out["device"][1]))


@pytest.mark.gpu
@pytest.mark.parametrize("regrow", ["random", "gradient"])
def test_cuda_host_and_device_placement_identical(regrow):
    out = {}
    for placement in ("host", "device"):
        model, opt, ctrl = make_run(regrow=regrow, placement=placement, device="cuda", regrow_init="normal")
        log: list = []
        pats = train(model, opt, ctrl, 0, 40, log=log)
        assert len(log) == 8 and all(log[-1][k] == v for k, v in log[0].items() if k.startswith("density/"))
        out[placement] = (pats, [p.detach().cpu() for p in model.parameters()],
                          [{k: v.cpu() for k, v in s.items()} for s in opt.state.values()])
    assert _same(out["host"][0], out["device"][0])
    assert all(torch.equal(a, b) for a, b in zip(out["host"][1], out["device"][1]))
    for sa, sb in zip(out["host"][2], out["device"][2]):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- checkpoints -----------------------------------------------------------------------
def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("regrow", ["random", "gradient"])
def test_state_dict_round_trip_continues_identical_pattern_sequence(regrow):
    kwargs = dict(regrow=regrow, regrow_init="normal", ctrl_seed=3)
    model, opt, ctrl = make_run(**kwargs)
    continuous = train(model, opt, ctrl, 0, 40)

    model_a, opt_a, ctrl_a = make_run(**kwargs)
    resumed = train(model_a, opt_a, ctrl_a, 0, 20)
    ckpt = _roundtrip({"model": model_a.state_dict(), "opt": opt_a.state_dict(), "dynsp": ctrl_a.state_dict()})
    model_b = tiny_model(seed=99)  # different initial pattern and values: all must come from the checkpoint
    opt_b = torch.optim.AdamW(model_b.parameters(), lr=1e-2, weight_decay=0.01)
    model_b.load_state_dict(ckpt["model"])
    opt_b.load_state_dict(ckpt["opt"])
    ctrl_b = DynSpController(model_b, opt_b, total_steps=40, n_updates=8, seed=3, regrow=regrow,
                             regrow_init="normal")
    ctrl_b.load_state_dict(ckpt["dynsp"])
    resumed += train(model_b, opt_b, ctrl_b, 20, 40)
    assert len(continuous) == 8 and _same(continuous, resumed)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model_b.parameters()))
    for name in ctrl.layers:
        assert torch.equal(ctrl.trackers[name].ever_active, ctrl_b.trackers[name].ever_active)
        assert torch.equal(ctrl.trackers[name].prev_grown, ctrl_b.trackers[name].prev_grown)
    assert ctrl_b.state_dict()["rng"] == ctrl.state_dict()["rng"] == {"seed": 3, "updates_done": 8}
    assert ctrl_b.last_metrics["dof_mean"] == ctrl.last_metrics["dof_mean"] > 0


def test_load_state_dict_rejects_other_config_or_layers():
    model, opt, ctrl = make_run()
    state = ctrl.state_dict()
    other = DynSpController(model, opt, total_steps=40, n_updates=9)
    with pytest.raises(ValueError, match="'state'.*n_updates"):
        other.load_state_dict(state)
    single = DynSpController({"x": SparseLinear(8, 8, block_size=4, sparsity=0.5)}, None, 40, n_updates=8)
    with pytest.raises(ValueError, match="'state'.*same sparse layers"):
        single.load_state_dict(state)


# ---- gradient (RigL) regrowth ----------------------------------------------------------
def test_gradient_regrowth_takes_largest_dense_gradient_blocks():
    layer = SparseLinear(32, 24, sparsity=0.75, block_size=4, seed=1)
    opt = torch.optim.AdamW([layer.values, layer.bias], lr=1e-2)
    ctrl = DynSpController({"fc": layer}, opt, total_steps=4, n_updates=1, regrow="gradient",
                           grad_chunk_elems=1)  # update at step 2; one block row per chunk
    for t in range(3):  # no before_step calls: step(t) arms the capture for t + 1
        w, b = layer.to_dense_weight().requires_grad_(), layer.bias.detach().clone()
        for mb in range(2):  # gradient accumulation: the batch gradient is the sum
            x = batch(t, mb)
            layer(x).pow(2).sum().backward()
            (x @ w.T + b).pow(2).sum().backward()
        old_lin = layer.rows * layer.n_block_cols + layer.cols
        opt.step()
        opt.zero_grad()
        ctrl.step(t)
    new_lin = layer.rows * layer.n_block_cols + layer.cols
    grown = new_lin[~torch.isin(new_lin, old_lin)]
    norms = w.grad.reshape(6, 4, 8, 4).abs().sum(dim=(1, 3)).reshape(-1)
    candidates = [i for i in range(48) if i not in set(old_lin.tolist())]
    expected = sorted(sorted(candidates, key=lambda i: (-float(norms[i]), i))[:grown.numel()])
    assert grown.numel() == round(0.5 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 2 / 4)).item()) * 12)
    assert grown.tolist() == expected
    assert not ctrl._capture.armed  # nothing kept after the update


def test_gradient_regrowth_without_captured_batch_raises():
    layer = SparseLinear(8, 8, sparsity=0.5, block_size=4, seed=0)
    ctrl = DynSpController({"fc": layer}, None, total_steps=4, n_updates=1, regrow="gradient")
    with pytest.raises(RuntimeError, match="before_step"):
        ctrl.step(2)


# ---- data-parallel agreement -----------------------------------------------------------
def test_verify_fn_sees_new_patterns_and_can_stop_an_update():
    seen = []
    model, opt, ctrl = make_run(verify_fn=lambda pats: seen.append({k: v.clone() for k, v in pats.items()}))
    pats = train(model, opt, ctrl, 0, 40)
    assert len(seen) == 8 and list(seen[0]) == list(ctrl.layers)
    assert all(torch.equal(a, b) for a, b in zip(seen[-1].values(), pats[-1]))

    def refuse(_):
        raise RuntimeError("ranks disagree")
    model, opt, ctrl = make_run(verify_fn=refuse)
    before = patterns(model)
    with pytest.raises(RuntimeError, match="ranks disagree"):
        train(model, opt, ctrl, 0, 40)
    assert _same([before], [patterns(model)])  # nothing applied


SYNC_CASES = ("verify-same", "verify", "broadcast")


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for case in SYNC_CASES:  # one process group for all cases: spawning is the slow part
            model, opt, ctrl = make_run(ctrl_seed=0 if case == "verify-same" else rank,
                                        sync="verify" if case == "verify-same" else case)
            try:
                torch.save(train(model, opt, ctrl, 0, 20), os.path.join(out_dir, f"{case}-{rank}.pt"))
            except RuntimeError as exc:
                with open(os.path.join(out_dir, f"{case}-{rank}.err"), "w") as f:
                    f.write(str(exc))
    finally:
        torch.distributed.barrier()  # tear down together (gloo aborts on a lopsided exit)
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_agree_or_fail_loudly(tmp_path):
    torch.multiprocessing.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    # Different seeds per rank: the checksum all-gather must catch the divergence.
    assert all("disagree" in (tmp_path / f"verify-{r}.err").read_text() for r in range(2))
    # Same seed; or different seeds but rank 0 decides and broadcasts.
    for case in ("verify-same", "broadcast"):
        a, b = (torch.load(tmp_path / f"{case}-{r}.pt") for r in range(2))
        assert len(a) == 4 and _same(a, b)


# ---- argument errors -------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, arg", [
    (dict(placement="ipu"), "placement"),
    (dict(regrow="magnitude"), "regrow"),
    (dict(regrow_init="ones"), "regrow_init"),
    (dict(seed="0"), "seed"),
    (dict(sync="allgather"), "sync"),
    (dict(grad_chunk_elems=0), "grad_chunk_elems"),
    (dict(prune_ratio=2.0), "prune_ratio"),
    (dict(prune_schedule="exp"), "prune_schedule"),
    (dict(total_steps=0), "total_steps"),
    (dict(n_updates=-1), "n_updates"),
    (dict(regrow_pruned=1), "regrow_pruned"),
])
def test_bad_arguments_name_the_argument(kwargs, arg):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters())
    full = dict(total_steps=40, n_updates=8)
    full.update(kwargs)
    with pytest.raises(ValueError, match=rf"(DynSpSettings\.{arg}: expected|'{arg}')"):
        DynSpController(model, opt, **full)


def test_modules_and_optimizer_are_checked():
    with pytest.raises(ValueError, match="'modules'.*at least one SparseLinear"):
        DynSpController(nn.Linear(4, 4), None, 10, n_updates=2)
    with pytest.raises(ValueError, match="'modules'"):
        DynSpController({"fc": nn.Linear(4, 4)}, None, 10, n_updates=2)
    model = tiny_model()
    with pytest.raises(ValueError, match="'optimizer'"):
        DynSpController(model, torch.optim.AdamW(list(model.parameters())[:1]), 10, n_updates=2)
