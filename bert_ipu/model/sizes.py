"""The BERT model family (Turc et al. sizes, docs/algorithm.md), by name.

>>> MODEL_SIZES["base"].hidden_size
768
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSize:
    """Shape of one BERT family member; FFN = 4H and head size 64 throughout."""

    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int

    @property
    def intermediate_size(self) -> int:
        return 4 * self.hidden_size


MODEL_SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(2, 128, 2),
    "mini": ModelSize(4, 256, 4),
    "small": ModelSize(4, 512, 8),
    "medium": ModelSize(8, 512, 8),
    "base": ModelSize(12, 768, 12),
}

VOCAB_SIZE = 30522
MAX_POSITION_EMBEDDINGS = 512
SEQUENCE_LENGTH = 128
