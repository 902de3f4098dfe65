"""The compressed block-sparse form of a model: `sparse/model.safetensors`.

For every sparse linear `NAME` it holds `NAME.values` [nnz, B, B] (fp32),
`NAME.rows` / `NAME.cols` [nnz] int32 block coordinates and `NAME.bias` [O]; every other
tensor is dense, the tied MLM decoder is stored once (as the word embeddings and
`cls.predictions.bias`). The safetensors metadata holds the format name, the block size
and the model / sparsity settings as JSON, so `load_compressed` rebuilds the sparse model
exactly (same patterns, bit-identical values) without the run's config file.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from bert_ipu.config import ModelConfig, SparsityConfig
from bert_ipu.model import BertForPreTraining, build_model

FORMAT = "dynsp-block-sparse-v1"
FILE = "model.safetensors"
_TIED = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
         "cls.predictions.decoder.bias": "cls.predictions.bias"}


@torch.no_grad()
def compressed_state(model: nn.Module, model_cfg: ModelConfig,
                     sparsity_cfg: SparsityConfig) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of `model` in the compressed form (CPU copies)."""
    tensors = {k: v.detach().cpu().contiguous().clone()
               for k, v in model.state_dict().items() if k not in _TIED}
    meta = {"format": FORMAT, "block_size": str(sparsity_cfg.block_size),
            "model": json.dumps(dataclasses.asdict(model_cfg)),
            "sparsity": json.dumps(dataclasses.asdict(sparsity_cfg))}
    return tensors, meta


def save_compressed(model: nn.Module, model_cfg: ModelConfig, sparsity_cfg: SparsityConfig,
                    path: Path) -> Path:
    """Write the compressed form of `model` to `path` (a .safetensors file)."""
    from safetensors.torch import save_file

    tensors, meta = compressed_state(model, model_cfg, sparsity_cfg)
    save_file(tensors, str(path), metadata=meta)
    return path


def load_compressed(path: str | Path) -> tuple[BertForPreTraining, ModelConfig, SparsityConfig]:
    """Rebuild the project's sparse model from a compressed file: (model in eval mode,
    its model settings, its sparsity settings). ValueError names what does not fit."""
    from bert_ipu.userfiles import read_safetensors

    state, meta = read_safetensors(Path(path), "compressed model")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: expected a compressed model of format {FORMAT!r}, "
                         f"got {meta.get('format')!r}")
    model_cfg = ModelConfig(**json.loads(meta["model"]))
    raw = json.loads(meta["sparsity"])
    sparsity_cfg = SparsityConfig(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in raw.items()})
    model = build_model(model_cfg, sparsity_cfg, seed=0)
    state.update({tied: state[source] for tied, source in _TIED.items()})
    model.load_state_dict(state, strict=True)
    return model.eval(), model_cfg, sparsity_cfg
