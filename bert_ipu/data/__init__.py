"""The data pipeline: corpus -> sentences -> WordPiece -> NSP pairs -> cached -> masked batches.

    from bert_ipu.data import DataConfig, build_datasets, PretrainingLoader
    train_ds, eval_ds, info = build_datasets(DataConfig(source="builtin"))
    loader = PretrainingLoader(train_ds, batch_size=32, seed=0)

Modules: config (DataConfig: the `data:` section, DataError), text (sentence splitting,
layouts), stdlib_docs, corpus and hf (sources), tokenizer (WordPiece), pretraining (NSP
pairs, Google's algorithm), masking (whole-word masking), cache (atomic, verified
on-disk cache), prepare (corpus -> cache), batching (pairs -> rows), dataset (torch
datasets, build_datasets), loader (deterministic, resumable batches).

`DataConfig` is imported eagerly (the run config uses it); the pipeline itself (and
`tokenizers`, `datasets`) only when one of its names is first used.
"""
from __future__ import annotations

import importlib
from typing import Any

from bert_ipu.data.config import DataConfig, DataError

_LAZY = {"PretrainingDataset": "dataset", "build_datasets": "dataset",
         "PretrainingLoader": "loader", "prepare_data": "prepare", "TokenizerInfo": "tokenizer"}

__all__ = ["DataConfig", "DataError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"bert_ipu.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'bert_ipu.data' has no attribute {name!r}")
