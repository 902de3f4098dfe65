"""Data preparation throughput against the number of preparation processes
(`data.num_proc`), and what it means for a large corpus.

    dynsp-bench-data --input-files ../corpus1 ../corpus2 --vocab-file vocab.txt
        [--num-proc 1 2] [--repeats 3] [--shard-documents 16] [--json out.json]
        [--pages README.md]
    dynsp-bench-data --render out.json --pages README.md   # the page block from a JSON

Each repeat prepares the corpus once per num_proc value, interleaved (1, 2, 1, 2, ...),
from scratch into its own temporary cache (removed afterwards), with the whole pipeline
of `prepare_data`: reading and sentence splitting, WordPiece tokenisation, NSP pairs,
the held-out masks, the checksummed cache. Reported per num_proc: min and median wall
seconds, words and MB of text per second (median), the speed-up over the first value,
and the time the median rate implies for the BERT paper's pre-training corpus
(BooksCorpus 800M words + English Wikipedia 2,500M words, Devlin et al. 2019, section 3.1;
`--extrapolate-words` to change). The cache is the same for every num_proc (tested);
`--shard-documents` sets data.shard_documents so that a small corpus has several shards
to spread (a large corpus with the default 100,000 has many). `--pages` rewrites the
`data-prep` block of the given pages (tools/pages.py) from the measurement.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bert_ipu.data.config import DataConfig
from bert_ipu.data.corpus import open_corpus
from bert_ipu.data.prepare import prepare_data
from dynsp_tools.benchlib.layers import format_table, machine_info
from dynsp_tools.pages import replace_block

BERT_CORPUS_WORDS = 3_300_000_000   # BooksCorpus 800M + English Wikipedia 2,500M words


def corpus_size(spec: DataConfig) -> dict[str, int]:
    """Documents, words and UTF-8 bytes of the documents' sentences."""
    docs = words = nbytes = 0
    for doc in open_corpus(spec, lambda m: None).documents():
        docs += 1
        for sentence in doc:
            words += len(sentence.split())
            nbytes += len(sentence.encode("utf-8")) + 1
    return {"documents": docs, "words": words, "bytes": nbytes}


def time_preparation(spec: DataConfig, num_procs: list[int], repeats: int) -> dict[int, list[float]]:
    """Wall seconds of a from-scratch preparation per num_proc, interleaved."""
    seconds: dict[int, list[float]] = {n: [] for n in num_procs}
    for _ in range(repeats):
        for n in num_procs:
            scratch = Path(tempfile.mkdtemp(prefix="bench-data-"))
            try:
                start = time.perf_counter()
                prepare_data(replace(spec, num_proc=n, cache_dir=str(scratch)), lambda m: None)
                seconds[n].append(time.perf_counter() - start)
            finally:
                shutil.rmtree(scratch)   # its own temporary folder
    return seconds


def report(size: dict[str, int], seconds: dict[int, list[float]], words: int) -> list[dict[str, Any]]:
    rows, base = [], None
    for n, values in seconds.items():
        median = statistics.median(values)
        base = base or median
        rate = size["words"] / median
        rows.append({"num_proc": n, "min_s": min(values), "median_s": median,
                     "words_per_s": rate, "mb_per_s": size["bytes"] / median / 1e6,
                     "speedup": base / median, "extrapolated_hours": words / rate / 3600,
                     "seconds": values})
    return rows


def markdown(data: dict[str, Any]) -> str:
    """The `data-prep` page block: the table and the settings it was measured with."""
    m, size, rows = data["machine"], data["corpus"], data["rows"]
    flags = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if m.get(f))
    words = data.get("extrapolate_words", BERT_CORPUS_WORDS)
    names = ", ".join(f"`{Path(p).name}`" for p in data["input_files"])  # not the machine's paths
    lines = [f"Measured by `dynsp-bench-data` on {names}: "
             f"{size['documents']} documents, {size['words']:,} words, {size['bytes'] / 1e6:.1f} MB "
             f"of text; data.shard_documents {data['shard_documents']}, {data['repeats']} "
             f"interleaved repeats from scratch; CPU {m['cpu']} ({m['cpus']} cores; {flags}), "
             f"torch {m['torch']}. The last column extrapolates the median rate linearly (not "
             "measured on those corpora).", "",
             f"| data.num_proc | min s | median s | words/s | MB/s | speed-up | hours for "
             f"{words / 1e9:.1f}B words (BERT's corpus) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['num_proc']} | {r['min_s']:.2f} | {r['median_s']:.2f} | "
                     f"{r['words_per_s']:,.0f} | {r['mb_per_s']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['extrapolated_hours']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-files", nargs="+")
    parser.add_argument("--vocab-file")
    parser.add_argument("--num-proc", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-documents", type=int, default=16)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--extrapolate-words", type=int, default=BERT_CORPUS_WORDS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--render", type=Path, help="a JSON of an earlier measurement")
    parser.add_argument("--pages", nargs="*", type=Path, default=[])
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
    else:
        if not args.input_files or not args.vocab_file:
            parser.error("--input-files and --vocab-file are required (or --render)")
        data = measure(args)
    print(markdown(data))
    for page in args.pages:
        if not replace_block(page, "data-prep", markdown(data)):
            parser.error(f"--pages: {page} has no <!-- data-prep:begin/end --> block")
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    spec = DataConfig(source="files", input_files=tuple(args.input_files),
                      vocab_file=args.vocab_file, shard_documents=args.shard_documents,
                      sequence_length=args.sequence_length)
    size = corpus_size(spec)
    rows = report(size, time_preparation(spec, args.num_proc, args.repeats), args.extrapolate_words)
    data = {"machine": machine_info(torch.device("cpu")), "corpus": size,
            "input_files": args.input_files, "shard_documents": args.shard_documents,
            "repeats": args.repeats, "extrapolate_words": args.extrapolate_words, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return data


if __name__ == "__main__":
    raise SystemExit(main())
