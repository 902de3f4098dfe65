"""Helpers for trainer tests: a synthetic corpus and a tiny 2-layer H=64 config."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

WORDS = ("the cat dog bird sat ran flew over under near house tree river stone red green "
         "blue small large quick slow happy old young morning evening rain sun wind "
         "walked jumped sang looked found took gave made water bread garden window door "
         "city road field mountain friend teacher child mother father brother sister").split()


def write_corpus(folder: Path, documents: int = 40, sentences: int = 14, seed: int = 0) -> Path:
    """One document per file; sentences follow a few patterns, so MLM can learn."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(documents):
        lines = []
        for _ in range(sentences):
            n = rng.randint(5, 11)
            words = [rng.choice(WORDS[: 12 + d % 30]) for _ in range(n)]
            lines.append(("The " + " ".join(words)).capitalize() + ".")
        (folder / f"doc{d:03d}.txt").write_text(" ".join(lines) + "\n")
    return folder


def tiny_overrides(corpus: Path, out: Path, cache: Path, **extra: Any) -> list[str]:
    """key=value overrides for a 2-layer, H=64 DynSp model on `corpus`."""
    values: dict[str, Any] = {
        "name": "tiny_test",
        "output_dir": str(out),
        "model.size": None, "model.hidden_size": 64, "model.num_hidden_layers": 2,
        "model.num_attention_heads": 2, "model.max_position_embeddings": 64,
        "model.hidden_dropout_prob": 0.1, "model.attention_probs_dropout_prob": 0.1,
        "sparsity.method": "dynamic", "sparsity.sparsity": 0.5, "sparsity.block_size": 8,
        "sparsity.n_updates": 3, "sparsity.prune_ratio": 0.5,
        "data.source": "files", "data.input_files": [str(corpus / "*.txt")],
        "data.vocab_size": 200, "data.sequence_length": 32, "data.mask_tokens": 5,
        "data.eval_fraction": 0.1, "data.cache_dir": str(cache),
        "training.micro_batch_size": 4, "training.gradient_accumulation": 1,
        "training.training_steps": 12, "training.learning_rate": 2e-3,
        "training.lr_warmup": 2, "training.precision": "fp32", "training.device": "cpu",
        "checkpoint.checkpoint_steps": 4, "checkpoint.keep_last": 10,
        "logging.log_steps": 1, "logging.eval_steps": 6, "logging.eval_batches": 2,
        "logging.progress_bar": False, "logging.trackers": [],
    }
    values.update(extra)
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def load_metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def load_updates(out: Path) -> list[dict[str, Any]]:
    """The pattern-update rows (dynsp_updates.jsonl; empty without one)."""
    path = out / "dynsp_updates.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def strip_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from bert_ipu.train.metrics import TIMING_FIELDS

    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def final_state(out: Path) -> dict[str, torch.Tensor]:
    """Model state dict of the newest checkpoint of a finished run."""
    from bert_ipu.store import checkpoint as ck

    path = ck.find_latest(out / "checkpoints")
    return ck.load_checkpoint(path)["model.pt"]


def run_tiny(corpus: Path, out: Path, cache: Path, hooks: Any = None, **extra: Any):
    """Train the tiny config in-process; returns the summary."""
    from bert_ipu.config import load_config
    from bert_ipu.train.loop import train

    cfg = load_config(None, tiny_overrides(corpus, out, cache, **extra))
    return train(cfg, hooks=hooks, log=lambda s: None)


def error_line(capsys) -> str:
    """The one `error: ...` line a CLI printed to stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


SHORT = {"training.training_steps": 2, "checkpoint.checkpoint_steps": 2,
         "logging.eval_steps": 0, "sparsity.n_updates": 1}
"""A run of two steps with one pattern update and no evaluation (CLI tests)."""


# ---------------------------------------------------------------- pytest fixtures
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus folder, prepared-data cache folder) shared by the trainer tests."""
    base = tmp_path_factory.mktemp("tiny_data")
    return write_corpus(base / "corpus"), base / "cache"


@pytest.fixture
def one_thread():
    """Tiny models run fastest (and steadiest on a shared machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
