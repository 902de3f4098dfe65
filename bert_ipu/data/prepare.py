"""Corpus -> prepared cache: vocabulary, tokenized shards, NSP pairs, held-out fixed masks.

    folder, meta = prepare_data(DataConfig(...), log=print)   # builds or reuses the cache

Documents are processed `shard_documents` at a time (the last shard absorbs a short
remainder): tokenize, drop documents too short for NSP (fewer than 2 sentences with
tokens), hold out a deterministic `eval_fraction` of the documents (at least 2), build
the pairs of each part (random-next B segments from the same part of the same shard),
append them to the split's arrays. The held-out pairs get fixed whole-word masks, drawn
once from the seed and stored.
"""
from __future__ import annotations

import collections
import itertools
import math
import multiprocessing
import os
import random
import shutil
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from bert_ipu.data import cache
from bert_ipu.data.batching import SplitArrays, assemble
from bert_ipu.data.corpus import Corpus, open_corpus
from bert_ipu.data.masking import EVAL_STREAM, UNIFORMS_PER_TOKEN, counter_uniforms, mask_batch
from bert_ipu.data.pretraining import TokenizedDocs, create_pairs, gather_pairs
from bert_ipu.data.config import DataError, DataConfig
from bert_ipu.data.tokenizer import (
    continuation_table, encode_sentences, load_wordpiece, read_vocab, replacement_ids,
    tokenizer_identity, tokenizer_info, train_wordpiece,
)
from bert_ipu.logs import Log

HOLDOUT_STREAM = 3
SPLITS = ("train", "eval")
_NOT_IN_KEY = ("cache_dir", "verify_checksums", "num_workers", "num_proc")


def cache_location(spec: DataConfig) -> tuple[str, dict[str, Any]]:
    """(folder prefix, settings) for `spec`: everything but where the cache lives."""
    settings = {k: v for k, v in vars(spec).items() if k not in _NOT_IN_KEY}
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    # Relative paths name different files from different working directories.
    settings["input_files"] = [_absolute(p) for p in spec.input_files]
    settings["vocab_file"] = spec.vocab_file and _absolute(spec.vocab_file)
    return f"{spec.source}-{cache.digest(settings)[:16]}", settings


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def prepare_data(spec: DataConfig, log: Log = print) -> tuple[Path, dict[str, Any]]:
    """Build (or reuse) the prepared cache of `spec`; returns (folder, meta)."""
    start = time.perf_counter()
    corpus = open_corpus(spec, log)
    prefix, settings = cache_location(spec)
    identity = {"corpus": corpus.identity(), "tokenizer": tokenizer_identity(spec)}
    key = cache.digest({"settings": settings, **identity, "version": cache.CACHE_VERSION})
    folder, meta, built = cache.ensure(
        Path(spec.cache_dir).expanduser(), prefix, key,
        lambda tmp: build_cache(spec, corpus, tmp, log) | {"identity": identity},
        verify_checksums=spec.verify_checksums, log=log)
    c = meta["counts"]
    verb = "prepared" if built else "reusing prepared data (skipped preparation):"
    log(f"data: {verb} {folder} from {meta['corpus']}: {c['documents']} documents "
        f"({c['too_short']} too short for NSP), {c['train_pairs']} train / "
        f"{c['eval_pairs']} held-out pairs [{time.perf_counter() - start:.1f} s]")
    return folder, meta


def _vocabulary(spec: DataConfig, corpus: Corpus, folder: Path, log: Log) -> list[str]:
    """Validated vocabulary written to folder/vocab.txt: copied, or trained on the corpus."""
    out = folder / "vocab.txt"
    if spec.vocab_file is not None:
        tokens = read_vocab(spec.vocab_file)
        shutil.copyfile(Path(spec.vocab_file).expanduser(), out)
        return tokens
    start = time.perf_counter()
    def sentences() -> Iterator[str]:
        return (s for doc in _limited(corpus.documents(), spec) for s in doc)

    tokens = train_wordpiece(sentences, spec.vocab_size, spec.lowercase, out)
    log(f"data: trained a WordPiece vocabulary of {len(tokens)} tokens "
        f"[{time.perf_counter() - start:.1f} s]")
    return tokens


def _limited(docs: Iterator[list[str]], spec: DataConfig) -> Iterator[list[str]]:
    return itertools.islice(docs, spec.max_documents) if spec.max_documents else docs


def _shards(docs: Iterable[list[str]], size: int) -> Iterator[list[list[str]]]:
    """Chunks of `size` documents; the last chunk takes a remainder (< 2 * size)."""
    buffer: list[list[str]] = []
    for doc in docs:
        buffer.append(doc)
        if len(buffer) == 2 * size:
            yield buffer[:size]
            buffer = buffer[size:]
    if buffer:
        yield buffer


def _tokenize(tok: Any, docs: list[list[str]]) -> tuple[TokenizedDocs, int]:
    """Shard -> (usable documents (>= 2 non-empty sentences), number too short)."""
    ids = iter(encode_sentences(tok, [s for doc in docs for s in doc]))
    tokenized = [[s for s in (next(ids) for _ in doc) if s] for doc in docs]
    usable = [doc for doc in tokenized if len(doc) >= 2]
    return TokenizedDocs.from_lists(usable), len(docs) - len(usable)


def _holdout(n: int, fraction: float, seed: int, shard: int) -> np.ndarray:
    """[n] bool: documents of a shard held out: ceil(fraction * n), at least 2, leaving at
    least 2 for training (none when fraction is 0 or the shard has fewer than 4)."""
    n_eval = 0 if fraction == 0 or n < 4 else min(n - 2, max(2, math.ceil(fraction * n)))
    keys = counter_uniforms(seed, HOLDOUT_STREAM, shard, np.arange(n), 1)[:, 0]
    held = np.zeros(n, dtype=bool)
    held[np.argsort(keys, kind="stable")[:n_eval]] = True
    return held


Pairs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""tokens, offsets (from 0, with the leading 0), a_len, nsp of one split of one shard."""


class _SplitWriter:
    """Appends gathered pairs of one split to its four arrays."""

    def __init__(self, folder: Path, split: str, token_dtype: Any) -> None:
        self.split, self.count, self.tokens = split, 0, 0
        self.w = {"tokens": cache.ArrayWriter(folder, f"{split}_tokens", token_dtype),
                  "offsets": cache.ArrayWriter(folder, f"{split}_offsets", np.int64),
                  "a_len": cache.ArrayWriter(folder, f"{split}_a_len", np.uint16),
                  "nsp": cache.ArrayWriter(folder, f"{split}_nsp", np.uint8)}
        self.w["offsets"].append(np.zeros(1, dtype=np.int64))

    def add(self, pairs: Pairs) -> None:
        tokens, offsets, a_len, nsp = pairs
        for name, values in (("tokens", tokens), ("offsets", offsets[1:] + self.tokens),
                             ("a_len", a_len), ("nsp", nsp)):
            self.w[name].append(values)
        self.count, self.tokens = self.count + len(nsp), self.tokens + len(tokens)

    def finish(self) -> dict[str, Any]:
        return {f"{self.split}_{n}": w.finish() for n, w in self.w.items()}


@dataclass
class ShardResult:
    """What one shard adds: the pairs of each split (None: fewer than 2 documents) and
    its document counts."""

    pairs: dict[str, Pairs | None]
    documents: int
    too_short: int
    unpaired: int


_WORKER: dict[str, Any] = {}
"""The tokenizer of a preparation worker process (set by `_init_worker`)."""


def _init_worker(tokens: list[str], lowercase: bool) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the main process's to handle
    _WORKER["tok"] = load_wordpiece(tokens, lowercase)


def process_shard(tok: Any, spec: DataConfig, shard: int, docs: list[list[str]]) -> ShardResult:
    """Shard `shard` -> its pairs: tokenize, drop documents too short for NSP, hold out,
    pair each split with its own seeded RNG. Depends only on its arguments, so shards
    can be processed in any process and in any order."""
    tdocs, short = _tokenize(tok, docs)
    held = _holdout(tdocs.num_documents, spec.eval_fraction, spec.seed_value, shard)
    pairs: dict[str, Pairs | None] = {}
    unpaired = 0
    for split, members in (("train", ~held), ("eval", held)):
        part = tdocs.select(np.flatnonzero(members))
        if part.num_documents < 2:
            unpaired += part.num_documents
            pairs[split] = None
            continue
        rng = random.Random(f"{spec.seed_value}/{shard}/{split}")
        pairs[split] = gather_pairs(part, create_pairs(part, spec.sequence_length,
                                                       spec.short_seq_prob, rng))
    return ShardResult(pairs, len(docs), short, unpaired)


def _worker_shard(spec: DataConfig, shard: int, docs: list[list[str]]) -> ShardResult:
    return process_shard(_WORKER["tok"], spec, shard, docs)


def shard_results(spec: DataConfig, tokens: list[str], shards: Iterable[list[list[str]]]
                  ) -> Iterator[ShardResult]:
    """`process_shard` of every shard, in shard order: in this process with
    data.num_proc = 1, else in a pool of that many worker processes, at most 2 shards per
    worker in flight (memory stays bounded). The output is the same for any num_proc.

    Workers are forked where the platform allows (no re-import of the calling script, no
    start-up cost; each builds its own single-threaded tokenizer), spawned elsewhere."""
    if spec.num_proc == 1:
        tok = load_wordpiece(tokens, spec.lowercase)
        for shard, docs in enumerate(shards):
            yield process_shard(tok, spec, shard, docs)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    # the tokenizers library warns in a forked child when the parent used its threads
    ours = "TOKENIZERS_PARALLELISM" not in os.environ
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    pool = ProcessPoolExecutor(spec.num_proc, mp_context=multiprocessing.get_context(method),
                               initializer=_init_worker, initargs=(tokens, spec.lowercase))
    try:
        pending: collections.deque = collections.deque()
        for shard, docs in enumerate(shards):
            pending.append(pool.submit(_worker_shard, spec, shard, docs))
            if len(pending) >= 2 * spec.num_proc:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # a stop or an error: the shards not started are dropped, not waited for
        pool.shutdown(wait=True, cancel_futures=True)
        if ours:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)   # set here, not by the user


def build_cache(spec: DataConfig, corpus: Corpus, folder: Path, log: Log) -> dict[str, Any]:
    """Fill `folder` with vocab.txt and the arrays of both splits; return the meta dict."""
    start = time.perf_counter()
    tokens = _vocabulary(spec, corpus, folder, log)
    dtype = np.uint16 if len(tokens) <= 65536 else np.int32
    writers = {s: _SplitWriter(folder, s, dtype) for s in SPLITS}
    counts = {"documents": 0, "too_short": 0, "unpaired": 0}
    shards = _shards(_limited(corpus.documents(), spec), spec.shard_documents)
    for result in shard_results(spec, tokens, shards):
        counts["documents"] += result.documents
        counts["too_short"] += result.too_short
        counts["unpaired"] += result.unpaired
        for split, pairs in result.pairs.items():
            if pairs is not None:
                writers[split].add(pairs)
    _check_counts(spec, corpus, counts, writers)
    arrays = {k: v for w in writers.values() for k, v in w.finish().items()}
    info = tokenizer_info(folder / "vocab.txt", tokens, spec.lowercase)
    if writers["eval"].count:
        arrays |= _fixed_masks(spec, folder, tokens, info.special_ids)
    counts |= {f"{s}_pairs": w.count for s, w in writers.items()}
    counts |= {f"{s}_tokens": w.tokens for s, w in writers.items()}
    tok_meta = {"vocab_size": len(tokens), "lowercase": spec.lowercase,
                "special_ids": info.special_ids}
    return {"counts": counts, "arrays": arrays, "tokenizer": tok_meta,
            "settings": cache_location(spec)[1], "corpus": corpus.description,
            "prepare_seconds": round(time.perf_counter() - start, 3)}


def _check_counts(spec: DataConfig, corpus: Corpus, counts: dict[str, int],
                  writers: dict[str, _SplitWriter]) -> None:
    """DataError when the corpus is empty or gives no pair (or no held-out pair)."""
    where = corpus.description
    if counts["documents"] == 0:
        raise DataError(f"{where}: the corpus is empty (no document with text)")
    usable = counts["documents"] - counts["too_short"]
    if writers["train"].count == 0:
        raise DataError(
            f"{where}: no NSP pair can be made: {counts['documents']} document(s), "
            f"{counts['too_short']} too short (fewer than 2 sentences), {usable} usable; "
            f"pairs need at least 2 documents of 2+ sentences"
            + ("" if spec.eval_fraction == 0 else
               f" for training plus 2 held out (data.eval_fraction={spec.eval_fraction})"))
    if spec.eval_fraction > 0 and writers["eval"].count == 0:
        raise DataError(f"data.eval_fraction={spec.eval_fraction}: no held-out pair can "
                        f"be made from {usable} usable document(s) of {where}; need at "
                        "least 4 (2 held out), or set eval_fraction to 0")


def _fixed_masks(spec: DataConfig, folder: Path, tokens: list[str],
                 special: dict[str, int]) -> dict[str, Any]:
    """Draw the held-out split's masks once (EVAL_STREAM, epoch 0) and store them."""
    split = SplitArrays(folder, "eval")
    s, p = spec.sequence_length, spec.mask_tokens
    cont, repl = continuation_table(tokens), replacement_ids(tokens)
    pos_w = cache.ArrayWriter(folder, "eval_mask_positions", np.uint16, width=p)
    rep_w = cache.ArrayWriter(folder, "eval_mask_replacements",
                              split["tokens"].dtype, width=p)
    for begin in range(0, len(split), 4096):
        index = np.arange(begin, min(begin + 4096, len(split)))
        rows = assemble(split, index, s, special, cont)
        u = counter_uniforms(spec.seed_value, EVAL_STREAM, 0, index,
                             UNIFORMS_PER_TOKEN * s).reshape(-1, UNIFORMS_PER_TOKEN, s)
        masked = mask_batch(rows.input_ids, rows.lengths, rows.candidate, rows.word_start,
                            u, mask_id=special["[MASK]"], replacement_ids=repl,
                            max_predictions=p, masked_lm_prob=spec.masked_lm_prob)
        pos_w.append(masked.positions)
        rep_w.append(np.take_along_axis(masked.input_ids, masked.positions, axis=1))
    return {"eval_mask_positions": pos_w.finish(), "eval_mask_replacements": rep_w.finish()}
