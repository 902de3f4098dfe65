"""The project's BERT -> Hugging Face `transformers` (dense form).

    config = hf_config(cfg.model)               # transformers.BertConfig
    state = dense_state_dict(model)             # HF BertForPreTraining keys
    hf = to_transformers(model, cfg.model)      # transformers.BertForPreTraining

The dense form is the state dict of `transformers.BertForPreTraining`: every
`SparseLinear` becomes its dense `weight` [O, I] (zeros outside the active blocks) and
`bias` [O]. The compressed sparse form lives in `bert_ipu.hub.sparse`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from bert_ipu.model.bert import sparse_modules

if TYPE_CHECKING:
    from bert_ipu.config import ModelConfig

# Keys of our state dict that HF does not have (SparseLinear internals).
_SPARSE_SUFFIXES = (".values", ".rows", ".cols", ".frozen_weight")


def hf_config(model_cfg: ModelConfig, **extra: Any) -> Any:
    """The `transformers.BertConfig` of `model_cfg` (exact GELU, as the project's model)."""
    from transformers import BertConfig

    m = model_cfg
    return BertConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size,
        num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
        intermediate_size=m.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=m.hidden_dropout_prob,
        attention_probs_dropout_prob=m.attention_probs_dropout_prob,
        max_position_embeddings=m.max_position_embeddings, type_vocab_size=m.type_vocab_size,
        initializer_range=m.initializer_range, layer_norm_eps=m.layer_norm_eps,
        pad_token_id=m.pad_token_id, **extra)


@torch.no_grad()
def dense_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """HF `BertForPreTraining` state dict of `model`: sparse linears densified (their
    effective weight [O, I]), every tensor a contiguous fp32 CPU copy."""
    sparse = sparse_modules(model)
    state = {k: v for k, v in model.state_dict().items()
             if not (k.endswith(_SPARSE_SUFFIXES) and k.rsplit(".", 1)[0] in sparse)}
    for name, module in sparse.items():
        state[f"{name}.weight"] = module.to_dense_weight()
    return {k: v.detach().float().cpu().contiguous().clone() for k, v in state.items()}


def to_transformers(model: nn.Module, model_cfg: ModelConfig, **extra: Any) -> Any:
    """A `transformers.BertForPreTraining` holding `model`'s weights (strict load: a
    missing or unexpected key raises)."""
    from transformers import BertForPreTraining as HFBert

    hf = HFBert(hf_config(model_cfg, **extra)).eval()
    hf.load_state_dict(dense_state_dict(model), strict=True)
    return hf
