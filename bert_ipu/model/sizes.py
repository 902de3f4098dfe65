"""The BERT model family (Turc et al. sizes, docs/algorithm.md), by name.

>>> MODEL_SIZES["base"].hidden_size
768
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSize:
    """Shape of one BERT family member: every shape field of `model` (config) a preset
    fills, read by the config and nowhere else (FFN 4H and head size 64 for all of them)."""

    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int


MODEL_SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(2, 128, 2, 512),
    "mini": ModelSize(4, 256, 4, 1024),
    "small": ModelSize(4, 512, 8, 2048),
    "medium": ModelSize(8, 512, 8, 2048),
    "base": ModelSize(12, 768, 12, 3072),
}
