"""What a trainer checkpoint holds (issue 4, item 1) and what one optimizer step with
gradient accumulation computes (issue 3, item 5)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from bert_ipu.store import checkpoint as ck
from bert_ipu.config import load_config
from tests.bert_ipu.tiny_run import (  # noqa: F401
    one_thread, run_tiny, tiny_data, tiny_overrides,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_checkpoint_holds_every_piece_of_the_run(tiny_data, tmp_path):
    corpus, cache = tiny_data
    out = tmp_path / "run"
    run_tiny(corpus, out, cache, **{"training.training_steps": 4, "sparsity.n_updates": 1,
                                    "checkpoint.checkpoint_steps": 4})
    path = out / "checkpoints" / "step_00000004"
    loaded = ck.load_checkpoint(path)
    manifest = json.loads((path / "manifest.json").read_text())
    for name, entry in manifest["files"].items():  # a checksum of every file
        assert entry["sha256"] == hashlib.sha256((path / name).read_bytes()).hexdigest()
    assert set(manifest["files"]) == {"model.pt", "optimizer.pt", "controller.pt",
                                      "trainer.pt", "config.yaml", "vocab.txt"}
    model, name = loaded["model.pt"], "bert.encoder.layer.0.attention.self.query"
    values, rows = model[f"{name}.values"], model[f"{name}.rows"]
    assert values.shape == (len(rows), 8, 8) and f"{name}.cols" in model
    assert f"{name}.weight" not in model  # compressed: no dense weight
    blocks = [s for s in loaded["optimizer.pt"]["state"].values()
              if s["exp_avg"].shape[1:] == (8, 8) == s["exp_avg_sq"].shape[1:]]
    assert len(blocks) == 12  # Adam m, v per active block of each of the 12 sparse linears
    ctrl = loaded["controller.pt"]["controller"]
    assert ctrl["rng"]["updates_done"] == 1 and ctrl["last_update_step"] == 2
    assert "ever_active_bits" in ctrl["trackers"][name]
    trainer = loaded["trainer.pt"]
    assert trainer["state"]["step"] == 4 and trainer["state"]["pattern_updates"] == 1
    assert trainer["schedule"] == {"base_lr": 2e-3, "total_steps": 4, "warmup_steps": 2,
                                   "kind": "linear"}
    assert set(trainer["scaler"]) == {"mode", "scale", "good_steps", "skipped_steps"}
    assert (trainer["data"]["epoch"], trainer["data"]["batch"]) == (0, 4)
    assert trainer["data"]["seed"] == load_config(out / "config.yaml").data.seed
    assert set(trainer["rng"][0]) >= {"torch", "numpy", "python"}
    assert load_config(path / "config.yaml") == load_config(out / "config.yaml")


def test_one_step_applies_the_mean_gradient_of_its_micro_batches(tiny_data, tmp_path,
                                                                  monkeypatch):
    """accumulation 2: optimizer.step() runs once per step, on (g1 + g2) / 2."""
    from bert_ipu.data import PretrainingLoader, build_datasets
    from bert_ipu.model import build_model

    corpus, cache = tiny_data
    settings = {"training.gradient_accumulation": 2, "training.micro_batch_size": 2,
                "training.training_steps": 2, "training.max_grad_norm": 0.0,
                "model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0,
                "sparsity.n_updates": 1, "logging.eval_steps": 0}
    applied: list[list[torch.Tensor]] = []
    real_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        applied.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    summary = run_tiny(corpus, tmp_path / "run", cache, **settings)
    assert len(applied) == 2 and summary["sequences"] == 2 * 2 * 2
    # The same first step by hand: the initial model, the first two batches.
    cfg = load_config(None, tiny_overrides(corpus, tmp_path / "x", cache, **settings))
    model = build_model(cfg.model, cfg.sparsity, seed=cfg.training.seed)
    from bert_ipu.train.optim import parameter_groups

    params = [p for g in parameter_groups(model, 0.01) for p in g["params"]]
    train, _, _ = build_datasets(cfg.data, log=lambda s: None)
    batches = iter(PretrainingLoader(train, 2, seed=cfg.data.seed))
    for _ in range(2):
        (model(**next(batches)).loss / 2).backward()
    assert len(params) == len(applied[0])
    for p, got in zip(params, applied[0]):
        torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-7)
