"""Start a run from pre-trained weights (`checkpoint.init_from`): phase 2, or continued
pre-training on another corpus. Weights and sparsity patterns come from the source;
optimizer, schedule and data start fresh (the caller builds them afterwards).

Every mismatch is one ConfigError naming the tensor and the config field that decides
its shape, never a state-dict dump.
"""
from __future__ import annotations


import torch
from torch import Tensor, nn

from bert_ipu.config import Config, ConfigError
from bert_ipu.data.tokenizer import TokenizerInfo
from bert_ipu.hub.source import HubError, load_pretrained
from bert_ipu.model.hf import dense_state_dict
from bert_ipu.store.vocab import check_same_vocab
from bert_ipu.logs import Log

FIELD = "checkpoint.init_from"
# Tensor-name fragment -> the config field that sets its shape (first match wins).
_SHAPE_FIELDS = (
    ("word_embeddings", "model.vocab_size"), ("cls.predictions.bias", "model.vocab_size"),
    ("cls.predictions.decoder", "model.vocab_size"),
    ("position_embeddings", "model.max_position_embeddings"),
    ("token_type_embeddings", "model.type_vocab_size"),
    (".values", "sparsity.sparsity / sparsity.block_size / sparsity.distribution"),
    (".rows", "sparsity.sparsity / sparsity.block_size / sparsity.distribution"),
    (".cols", "sparsity.sparsity / sparsity.block_size / sparsity.distribution"),
    ("intermediate.dense", "model.intermediate_size"),
)


def shape_field(name: str) -> str:
    """The config field that decides the shape of tensor `name`."""
    return next((f for frag, f in _SHAPE_FIELDS if frag in name), "model.hidden_size")


def _source_state(cfg: Config, path: str) -> tuple[dict[str, Tensor], list[str] | None, str]:
    try:
        src = load_pretrained(path)
    except HubError as exc:
        raise ConfigError(f"{FIELD}: {exc}", FIELD) from None
    dense_run = cfg.sparsity.method == "dense"
    if not dense_run and src.cfg.sparsity.method == "dense":
        raise ConfigError(f"{FIELD}: {path} is a dense model, this run is sparse "
                          f"(sparsity.method={cfg.sparsity.method}); expected a sparse source "
                          "or sparsity.method=dense", FIELD)
    state = dense_state_dict(src.model) if dense_run else src.model.state_dict()
    return state, src.vocab, str(src.path)


def check_fits(target: dict[str, Tensor], source: dict[str, Tensor], where: str) -> None:
    """ConfigError naming the first tensor the source lacks, has extra, or shapes differently."""
    for name, value in target.items():
        if name not in source:
            raise ConfigError(f"{FIELD}: {where} has no tensor {name!r}; expected the same "
                              "model.num_hidden_layers and sparsity.method as this run", FIELD)
        if tuple(source[name].shape) != tuple(value.shape):
            field = shape_field(name)
            raise ConfigError(f"{FIELD}: tensor {name!r} is {tuple(source[name].shape)} in "
                              f"{where}, this run expects {tuple(value.shape)}; set {field} "
                              "as in the source", field)
    extra = sorted(set(source) - set(target))
    if extra:
        raise ConfigError(f"{FIELD}: {where} has tensor {extra[0]!r} this run lacks; expected "
                          "the same model.num_hidden_layers as this run", FIELD)


@torch.no_grad()
def init_from_pretrained(model: nn.Module, cfg: Config, tok: TokenizerInfo | None,
                         log: Log = print) -> None:
    """Load weights and patterns of `cfg.checkpoint.init_from` into `model` (in place)."""
    path = cfg.checkpoint.init_from
    state, vocab, where = _source_state(cfg, path)
    if vocab is not None and tok is not None:
        try:
            check_same_vocab(vocab, tok, where)
        except ValueError as exc:
            raise ConfigError(str(exc), "data.vocab_file") from None
    own = model.state_dict()
    check_fits(own, state, where)
    mine = {k: v for k, v in state.items() if not own[k].is_meta}  # a pipeline stage's
    model.load_state_dict(mine, strict=len(mine) == len(state))
    log(f"init: weights and sparsity patterns from {where}")
