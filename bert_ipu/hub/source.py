"""Read a pre-trained model from wherever it lives: a checkpoint folder, a run folder
(its newest valid checkpoint) or a folder written by `python -m bert_ipu.export`.

    src = load_pretrained(path)      # HubError (one line naming the path) when unusable
    src.model, src.cfg, src.vocab, src.lowercase, src.step, src.summary
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bert_ipu.config import Config, ConfigError, config_from_dict, config_to_dict
from bert_ipu.model import BertForPreTraining, build_model
from bert_ipu.store import checkpoint as ck
from bert_ipu.store.jsonl import METRICS_FILE, UPDATES_FILE, read_run_jsonl
from bert_ipu.store.vocab import VOCAB, vocab_tokens
from bert_ipu.userfiles import UserFileError, read_safetensors, read_text

RUN_CONFIG = "dynsp_config.yaml"   # the run config inside an exported folder


class HubError(ValueError):
    """A model folder cannot be used (message: one line naming the path and why)."""


@dataclass
class Pretrained:
    """A pre-trained model with everything needed to export or continue it."""

    path: Path
    cfg: Config
    model: BertForPreTraining
    vocab: list[str] | None
    """The tokens of the run's vocabulary (id = position); None if the source lacks it."""
    step: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    """The run's summary.json when it belongs to this step (model card numbers)."""

    @property
    def lowercase(self) -> bool:
        return self.cfg.data.lowercase


def _config(text: str, where: Path) -> Config:
    try:
        return config_from_dict(yaml.safe_load(text))
    except (ConfigError, yaml.YAMLError, TypeError, ValueError) as exc:
        raise HubError(f"{where}: the saved run config is not usable: {exc}") from None


def load_pretrained(path: str | Path) -> Pretrained:
    """The model at `path` (checkpoint, run folder or exported folder), on CPU, eval mode."""
    path = Path(path).expanduser()
    if not path.exists():
        raise HubError(f"{path}: does not exist; expected a checkpoint folder, a run folder "
                       "or an exported model folder")
    if (path / ck.MANIFEST).is_file():
        return _from_checkpoint(path)
    if (path / RUN_CONFIG).is_file():
        return _from_export(path)
    latest = _latest(path / "checkpoints") if path.is_dir() else None
    if latest is not None:
        return _from_checkpoint(latest)
    raise HubError(f"{path}: not a checkpoint folder (no {ck.MANIFEST}), a run folder (no "
                   f"checkpoints/step_*) or an exported model folder (no {RUN_CONFIG})")


def _latest(root: Path) -> Path | None:
    try:
        return ck.find_latest(root)
    except ck.CheckpointError as exc:
        raise HubError(str(exc)) from None


def _from_checkpoint(path: Path) -> Pretrained:
    try:
        loaded = ck.load_checkpoint(path)
    except ck.CheckpointError as exc:
        raise HubError(str(exc)) from None
    if "model.pt" not in loaded or "config.yaml" not in loaded:
        raise HubError(f"{path}: checkpoint lacks model.pt or config.yaml")
    cfg = _config(loaded["config.yaml"], path / "config.yaml")
    model = build_model(cfg.model, cfg.sparsity, seed=0)
    try:
        model.load_state_dict(loaded["model.pt"])
    except RuntimeError as exc:
        raise HubError(f"{path}: model.pt does not fit its config.yaml: "
                       f"{str(exc).splitlines()[0]}") from None
    vocab = vocab_tokens(loaded[VOCAB]) if VOCAB in loaded else None
    step = loaded["manifest"].get("step")
    return Pretrained(path, cfg, model.eval(), vocab, step, _run_summary(cfg, step))


def _run_summary(cfg: Config, step: int | None) -> dict[str, Any]:
    """summary.json of the run when it describes `step`; for a mid-run checkpoint, the same
    numbers as of `step` from the run's metrics.jsonl (cumulative FLOPs, the latest
    evaluation and DOF at or before it, the pattern updates so far; `eval_step` says when)."""
    file = Path(cfg.output_dir) / "summary.json"
    try:
        summary = json.loads(file.read_text())
    except (OSError, ValueError):
        summary = {}
    if summary.get("steps") == step:
        return summary
    return _metrics_as_of(Path(cfg.output_dir), step) if step is not None else {}


def _metrics_as_of(run_dir: Path, step: int) -> dict[str, Any]:
    def upto(name: str) -> list[dict[str, Any]]:
        return [r for r in read_run_jsonl(run_dir, name)
                if isinstance(r.get("step"), int) and r["step"] <= step]

    records, updates = upto(METRICS_FILE), upto(UPDATES_FILE)
    if not records and not updates:
        return {}
    out: dict[str, Any] = {"steps": step}
    at_step = [r for r in records if r["step"] == step and "flops" in r]
    if at_step:
        out["total_flops"] = at_step[-1]["flops"]
    evals = [r for r in records if "eval_mlm_loss" in r]
    if evals:
        out["final_eval"] = {k[len("eval_"):]: v for k, v in evals[-1].items() if k.startswith("eval_")}
        out["eval_step"] = evals[-1]["step"]
    if updates:
        out["dof_mean"] = updates[-1].get("dof_mean")
    out["pattern_updates"] = len(updates)
    return out


def _from_export(path: Path) -> Pretrained:
    """An exported folder: the compressed sparse form when present, else the dense one."""
    from bert_ipu.hub import sparse

    cfg = _config(_text(path / RUN_CONFIG, "run config"), path / RUN_CONFIG)
    card = _read_json(path / "dynsp_run.json")
    compressed = path / "sparse" / sparse.FILE
    if compressed.is_file():
        try:
            model, _, _ = sparse.load_compressed(compressed)
        except (UserFileError, ValueError, KeyError, RuntimeError) as exc:
            raise HubError(f"{compressed}: not a usable compressed model: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    else:
        if cfg.sparsity.method != "dense":  # densified weights: continue as a dense model
            cfg = config_from_dict(config_to_dict(cfg), ["sparsity.method=dense",
                                                        "sparsity.sparsity=0"])
        model = build_model(cfg.model, cfg.sparsity, seed=0)
        _load_dense(model, path / "model.safetensors")
    vocab_file = path / VOCAB
    vocab = vocab_tokens(_text(vocab_file, "vocabulary")) if vocab_file.is_file() else None
    return Pretrained(path, cfg, model.eval(), vocab, card.get("steps"), card)


def _text(file: Path, what: str) -> str:
    try:
        return read_text(file, what)
    except UserFileError as exc:
        raise HubError(str(exc)) from None


def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return {}


def _load_dense(model: BertForPreTraining, file: Path) -> None:
    """Load HF-named dense weights (the tied decoder restored from the embeddings)."""
    if not file.is_file():
        raise HubError(f"{file}: missing; expected the exported dense weights")
    try:
        state, _ = read_safetensors(file, "exported dense weights")
    except UserFileError as exc:
        raise HubError(str(exc)) from None
    state.setdefault("cls.predictions.decoder.weight",
                     state.get("bert.embeddings.word_embeddings.weight"))
    state.setdefault("cls.predictions.decoder.bias", state.get("cls.predictions.bias"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise HubError(f"{file}: does not fit {RUN_CONFIG}: {str(exc).splitlines()[0]}") from None
