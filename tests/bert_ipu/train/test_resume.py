"""Resume equals continuous: bit-identical metrics and final weights on CPU.

The tiny model runs with dropout 0.1 and gradient accumulation 2, with pattern
updates right after 0-based steps 3, 6 and 9. A run is stopped (as by SIGTERM) at
a position (steps done, micro-batches of the next step), checkpointed there, and a
second run resumes from `latest`.
"""
from __future__ import annotations

import pytest
import torch

from bert_ipu.train.signals import TrainingInterrupted
from bert_ipu.train.loop import TrainerHooks
from tests.bert_ipu.tiny_run import (  # noqa: F401
    final_state, load_metrics, load_updates, one_thread, run_tiny, strip_timing, tiny_data,
)

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = {"training.gradient_accumulation": 2, "training.micro_batch_size": 2,
            "checkpoint.checkpoint_steps": 0, "logging.eval_steps": 4,
            "logging.log_steps": 3}   # stops inside a logging interval: its loss sums resume too


@pytest.fixture(scope="module")
def continuous(tiny_data, tmp_path_factory):
    corpus, cache = tiny_data
    out = tmp_path_factory.mktemp("continuous")
    torch.set_num_threads(1)
    run_tiny(corpus, out, cache, **SETTINGS)
    return strip_timing(load_metrics(out)) + load_updates_untimed(out), final_state(out)


def load_updates_untimed(out):
    return strip_timing(load_updates(out))


def _interrupted_then_resumed(tiny_data, out, stop_at):
    corpus, cache = tiny_data
    with pytest.raises(TrainingInterrupted) as info:
        run_tiny(corpus, out, cache, hooks=TrainerHooks(stop_at=stop_at), **SETTINGS)
    assert info.value.exit_code == 143 and "resume_training_from_checkpoint=latest" in str(
        info.value)
    torch.manual_seed(1234)  # the resumed run must not depend on the process RNG state
    run_tiny(corpus, out, cache, **SETTINGS,
             **{"checkpoint.resume_training_from_checkpoint": "latest"})


def _assert_same(continuous, out):
    metrics, state = continuous
    assert strip_timing(load_metrics(out)) + load_updates_untimed(out) == metrics
    resumed = final_state(out)
    assert resumed.keys() == state.keys()
    for key in state:
        assert torch.equal(resumed[key], state[key]), key


@pytest.mark.parametrize("stop_at", [(5, 1), (3, 0), (4, 0), (3, 1), (10, 0)],
                         ids=["mid_accumulation", "before_update", "after_update",
                              "mid_accumulation_of_update_step", "late"])
def test_resume_equals_continuous(continuous, tiny_data, tmp_path, stop_at):
    _interrupted_then_resumed(tiny_data, tmp_path, stop_at)
    name = f"step_{stop_at[0]:08d}" + (f"_m{stop_at[1]:04d}" if stop_at[1] else "")
    assert (tmp_path / "checkpoints" / name).is_dir()
    _assert_same(continuous, tmp_path)


def test_a_resume_of_a_finished_run_changes_nothing(continuous, tiny_data, tmp_path):
    corpus, cache = tiny_data
    run_tiny(corpus, tmp_path, cache, **SETTINGS)
    before = load_metrics(tmp_path)
    run_tiny(corpus, tmp_path, cache, **SETTINGS,
             **{"checkpoint.resume_training_from_checkpoint": "latest"})
    assert load_metrics(tmp_path) == before


def test_loader_workers_never_touch_the_global_rng(tiny_data, tmp_path):
    """DataLoader seeds its workers from a dedicated generator: the global torch RNG
    (dropout) moves exactly as without workers."""
    from bert_ipu.config import load_config
    from bert_ipu.data import PretrainingLoader, build_datasets
    from tests.bert_ipu.tiny_run import tiny_overrides

    corpus, cache = tiny_data
    spec = load_config(None, tiny_overrides(corpus, tmp_path, cache)).data
    train, _, _ = build_datasets(spec, log=lambda s: None)
    plain = list(PretrainingLoader(train, 8, seed=1))
    loader = PretrainingLoader(train, 8, seed=1, num_workers=1)
    torch.manual_seed(99)
    before = torch.get_rng_state()
    workers = list(loader)
    assert torch.equal(torch.get_rng_state(), before)
    assert len(workers) == len(plain) and all(
        torch.equal(a[k], b[k]) for a, b in zip(plain, workers) for k in a)
    seeds = [loader.worker_generator(e).initial_seed() for e in (0, 0, 1)]
    assert seeds[0] == seeds[1] != seeds[2]


def test_resume_equals_continuous_with_dataloader_workers(tiny_data, tmp_path):
    corpus, cache = tiny_data
    settings = {**SETTINGS, "data.num_workers": 1, "training.training_steps": 8}
    run_tiny(corpus, tmp_path / "continuous", cache, **settings)
    with pytest.raises(TrainingInterrupted):
        run_tiny(corpus, tmp_path / "resumed", cache, hooks=TrainerHooks(stop_at=(3, 1)),
                 **settings)
    run_tiny(corpus, tmp_path / "resumed", cache, **settings,
             **{"checkpoint.resume_training_from_checkpoint": "latest"})
    assert strip_timing(load_metrics(tmp_path / "resumed")) == strip_timing(
        load_metrics(tmp_path / "continuous"))
    want, got = final_state(tmp_path / "continuous"), final_state(tmp_path / "resumed")
    assert all(torch.equal(want[k], got[k]) for k in want)
