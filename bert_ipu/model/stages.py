"""One pipeline stage of BertForPreTraining: the same modules, cut by encoder layer.

Stage s of P holds encoder layers [first, first + n); stage 0 also the embeddings,
the last stage the pooler and the MLM/NSP heads (whose decoder weight is the word
embedding: both ends keep a copy and their gradients are summed by the step runner).
The stage shares its modules with the full model it was cut from (no copies).

Shapes: B batch, S sequence, H hidden, P masked positions, V vocabulary.
    stage 0 input   (input_ids (B,S), attention_mask (B,S), positions (B,P), token_type_ids (B,S))
    between stages  (hidden (B,S,H), attention_mask (B,S), positions (B,P))
    last output     (mlm_logits (B,P,V), nsp_logits (B,2))
The integer tensors travel along so that every stage's forward needs only what it
receives (torch.distributed.pipelining passes positional tensors between stages).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bert_ipu.model.bert import BertForPreTraining


class BertStage(nn.Module):
    """Encoder layers [first, first + count) of `model`, with the embeddings when
    `first_stage` and the pooler + heads when `last_stage`."""

    def __init__(self, model: BertForPreTraining, first: int, count: int,
                 first_stage: bool, last_stage: bool) -> None:
        super().__init__()
        self.embeddings = model.bert.embeddings if first_stage else None
        self.layers = nn.ModuleList(model.bert.encoder.layer[first:first + count])
        self.pooler = model.bert.pooler if last_stage else None
        self.cls = model.cls if last_stage else None
        self.layer_names = [f"bert.encoder.layer.{i}" for i in range(first, first + count)]

    def forward(self, x: Tensor, attention_mask: Tensor, positions: Tensor,
                token_type_ids: Tensor | None = None) -> tuple[Tensor, ...]:
        """See the module docstring for the shapes of each stage's inputs and outputs."""
        if self.embeddings is not None:
            types = torch.zeros_like(x) if token_type_ids is None else token_type_ids
            x = self.embeddings(x, types)                                          # (B, S, H)
        mask = attention_mask.bool()[:, None, None, :]                              # (B,1,1,S)
        for layer in self.layers:
            x = layer(x, mask)
        if self.cls is None:
            return x, attention_mask, positions
        # torch.distributed.pipelining infers shapes with one forward on uninitialised
        # buffers: keep its gather in range (a no-op on real positions, all < S).
        positions = positions.clamp(0, x.shape[1] - 1)
        return self.cls(x, self.pooler(x), positions)                              # (B,P,V) (B,2)


def stage_module_names(model: BertForPreTraining, stage: BertStage) -> dict[str, nn.Module]:
    """Full model name -> module for every module of `stage` (SparseLinears keep the
    names they have in the single-process model: metrics and checkpoints agree)."""
    inside = {id(m) for m in stage.modules()}
    return {name: m for name, m in model.named_modules() if id(m) in inside and name}
