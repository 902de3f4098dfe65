"""The data pipeline: corpus -> sentences -> WordPiece -> NSP pairs -> cached -> masked batches.

    from bert_ipu.data import DataSpec, build_datasets, PretrainingLoader
    train_ds, eval_ds, info = build_datasets(DataSpec(source="builtin"))
    loader = PretrainingLoader(train_ds, batch_size=32, seed=0)

Modules: spec (DataSpec, DataError), text (sentence splitting, layouts), stdlib_docs and
corpus (sources), tokenizer (WordPiece), pretraining (NSP pairs, Google's algorithm),
masking (whole-word masking), cache (atomic, verified on-disk cache), prepare (corpus ->
cache), batching (pairs -> rows), dataset (torch datasets, build_datasets), loader
(deterministic, resumable batches).
"""
from bert_ipu.data.dataset import PretrainingDataset, build_datasets
from bert_ipu.data.loader import PretrainingLoader
from bert_ipu.data.prepare import prepare_data
from bert_ipu.data.spec import DataError, DataSpec
from bert_ipu.data.tokenizer import TokenizerInfo

__all__ = ["DataSpec", "DataError", "TokenizerInfo", "PretrainingDataset",
           "PretrainingLoader", "build_datasets", "prepare_data"]
