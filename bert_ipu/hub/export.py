"""Write a Hugging Face model folder from a pre-trained model.

    OUT/config.json, model.safetensors     transformers.BertForPreTraining (dense form)
    OUT/vocab.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json
    OUT/README.md, dynsp_run.json          model card and its numbers
    OUT/dynsp_config.yaml                  the run config (to continue from this folder)
    OUT/sparse/model.safetensors           --sparse: active blocks only (hub/sparse.py)

The folder is written under a temporary name next to OUT and renamed into place, so a
failed export never leaves a half-written OUT and never damages an earlier one. OUT may
be new, empty, or (with `overwrite`) a previous export, recognised by its
`.dynsp-export` marker (or, written before the marker existed, its dynsp_config.yaml);
never a run, checkpoint or sweep folder, the source, or a folder holding either
(`fsutil.check_replaceable`). A lock next to OUT keeps two exports from racing for it.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import uuid
from pathlib import Path

from bert_ipu.config import save_config
from bert_ipu.fsutil import EXPORT_MARKERS, UnsafeTargetError, check_replaceable
from bert_ipu.data.config import SPECIAL_TOKENS
from bert_ipu.hub import card, sparse
from bert_ipu.hub.source import RUN_CONFIG, VOCAB, HubError, Pretrained
from bert_ipu.model.hf import to_transformers
from bert_ipu.store.runlock import OutputInUseError, RunLock
from bert_ipu.logs import Log

ARCHITECTURES = ["BertForPreTraining"]
MARKER = EXPORT_MARKERS[0]         # written into every export: what --overwrite may replace


def write_tokenizer(tokens: list[str], lowercase: bool, max_length: int, out: Path) -> None:
    """vocab.txt plus the `transformers` tokenizer files (BERT WordPiece, same ids)."""
    from transformers import BertTokenizerFast

    vocab = out / VOCAB
    vocab.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    # transformers 5 names the argument `vocab`, 4.x `vocab_file`.
    key = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters \
        else "vocab_file"
    tok = BertTokenizerFast(**{key: str(vocab)}, do_lower_case=lowercase,
                            model_max_length=max_length)
    tok.save_pretrained(str(out))
    # transformers 4.x rewrites vocab.txt from its own vocabulary; ours is the reference.
    vocab.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    names = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
    special = dict(zip(names, SPECIAL_TOKENS))  # SPECIAL_TOKENS is in this order
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=1))


def _write(src: Pretrained, tmp: Path, with_sparse: bool) -> dict[str, int]:
    """Every file of the export into `tmp`; returns {relative path: bytes}."""
    cfg = src.cfg
    hf = to_transformers(src.model, cfg.model, architectures=ARCHITECTURES)
    hf.save_pretrained(str(tmp))
    write_tokenizer(src.vocab, src.lowercase, cfg.model.max_position_embeddings, tmp)
    save_config(cfg, tmp / RUN_CONFIG)
    if with_sparse:
        (tmp / "sparse").mkdir()
        sparse.save_compressed(src.model, cfg.model, cfg.sparsity, tmp / "sparse" / sparse.FILE)
    sizes = {name: (tmp / name).stat().st_size
             for name in ("model.safetensors", f"sparse/{sparse.FILE}") if (tmp / name).is_file()}
    facts = card.run_facts(src, sum(p.numel() for p in hf.parameters()), sizes)
    (tmp / "dynsp_run.json").write_text(json.dumps(facts, indent=1))
    (tmp / "README.md").write_text(card.model_card(facts), encoding="utf-8")
    (tmp / MARKER).write_text(json.dumps({"source": str(src.path), "step": src.step}) + "\n")
    for file in tmp.rglob("*"):  # the weight writers create 0600 files; the folder is for sharing
        if file.is_file():
            file.chmod(0o644)
    return sizes


def check_target(out: str | Path, what: str, protected: tuple[str | Path, ...],
                 overwrite: bool) -> Path:
    """The resolved export folder `out`, checked before any work (HubError: one line)."""
    try:
        path = check_replaceable(out, what, EXPORT_MARKERS, protected)
    except UnsafeTargetError as exc:
        raise HubError(str(exc)) from None
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise HubError(f"{what} {str(out)!r}: holds a previous export; choose another folder "
                       "(or --overwrite to replace it)")
    return path


def _protected(src: Pretrained) -> tuple[Path, ...]:
    """The source and, for a checkpoint, its run folder (never an export target)."""
    folders = [src.path]
    if src.path.parent.name == "checkpoints":
        folders.append(src.path.parent.parent)
    return tuple(folders)


def export_folder(src: Pretrained, out: str | Path, with_sparse: bool = False,
                  overwrite: bool = False, protected: tuple[str | Path, ...] = ()) -> dict[str, int]:
    """Export `src` to `out` (see the module docstring); returns the weight file sizes.

    HubError when the source has no vocabulary, `with_sparse` is asked of a dense
    model, `out` is not a folder this function may write (`check_target`: new, empty, or
    a previous export with `overwrite`), or writing fails (nothing is replaced then)."""
    target = str(out)
    out = check_target(out, "OUT_DIR", _protected(src) + tuple(protected), overwrite)
    if src.vocab is None:
        raise HubError(f"{src.path}: holds no vocab.txt (written by runs of this version "
                       "on); cannot export a model without its tokenizer")
    if with_sparse and src.cfg.sparsity.method == "dense":
        raise HubError(f"--sparse: {src.path} is a dense model (sparsity.method=dense); "
                       "there is no compressed form to write")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out.parent, f".{out.name}.export.lock").acquire("OUT_DIR", out)
    except (OSError, OutputInUseError) as exc:
        raise HubError(str(exc) if isinstance(exc, OutputInUseError)
                       else f"OUT_DIR {target!r}: cannot create its folder: {exc.strerror or exc}") from None
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        check_target(out, "OUT_DIR", _protected(src) + tuple(protected), overwrite)  # under the lock
        tmp.mkdir()
        try:
            sizes = _write(src, tmp, with_sparse)
        except Exception as exc:  # a full disk, an unwritable folder, a writer's own error
            where = getattr(exc, "filename", None) or tmp
            first = (str(getattr(exc, "strerror", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
            raise HubError(f"OUT_DIR {target!r}: writing {where} failed: {first} (nothing was "
                           "replaced)") from None
        trash = out.with_name(f".trash-{out.name}-{uuid.uuid4().hex[:8]}")
        if out.exists():
            os.rename(out, trash)
        os.rename(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        lock.release()
    return sizes


def export_run_end(checkpoint: Path, out: str | Path, log: Log) -> None:
    """`checkpoint.export_dir`: export the run's final checkpoint (dense form, plus the
    compressed form for a sparse run), replacing an earlier export of the same run."""
    from bert_ipu.hub.source import load_pretrained
    from bert_ipu.store.checkpoint import CheckpointError

    try:
        src = load_pretrained(checkpoint)
        sizes = export_folder(src, out, src.cfg.sparsity.method != "dense", overwrite=True,
                              protected=(src.cfg.output_dir, src.cfg.checkpoint.checkpoint_output_dir))
    except (HubError, OSError) as exc:
        raise CheckpointError(f"checkpoint.export_dir: the export failed: {exc} (the run "
                              f"and its checkpoint {checkpoint} are complete)") from None
    log(f"export: {out} (" + ", ".join(f"{k} {v:,} bytes" for k, v in sizes.items()) + ")")
