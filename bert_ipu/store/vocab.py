"""The run keeps its tokenizer: `vocab.txt` in the output folder and in every checkpoint.

Token ids only mean something with the vocabulary they index, so a checkpoint carries
it, and resuming (or starting from weights) with any other vocabulary, even one of the
same size, is refused with an error naming `data.vocab_file`.
"""
from __future__ import annotations

from pathlib import Path

from bert_ipu.data.tokenizer import TokenizerInfo
from bert_ipu.fsutil import write_text_atomic

VOCAB = "vocab.txt"


def vocab_tokens(text: str) -> list[str]:
    """vocab.txt text -> tokens (one per line; the final newline and CRs ignored)."""
    tokens = [t.rstrip("\r") for t in text.split("\n")]
    return tokens[:-1] if tokens and tokens[-1] == "" else tokens


def vocab_text(tok: TokenizerInfo) -> str:
    """The run's vocabulary as vocab.txt text (normalised: one token and "\\n" per line)."""
    tokens = vocab_tokens(Path(tok.vocab_file).read_text(encoding="utf-8"))
    return "".join(t + "\n" for t in tokens)


def write_run_vocab(tok: TokenizerInfo, output_dir: Path) -> Path:
    """Write OUTPUT/vocab.txt atomically (a reader never sees half a file)."""
    path = Path(output_dir) / VOCAB
    write_text_atomic(path, vocab_text(tok))
    return path


def check_same_vocab(saved: list[str], tok: TokenizerInfo, where: str) -> None:
    """Raise ValueError (naming data.vocab_file and the first differing id) unless the
    run's vocabulary equals `saved`, the one `where` was trained with."""
    mine = vocab_tokens(vocab_text(tok))
    if mine == saved:
        return
    diff = next((i for i, (a, b) in enumerate(zip(saved, mine)) if a != b),
                min(len(saved), len(mine)))
    theirs = saved[diff] if diff < len(saved) else "<end>"
    ours = mine[diff] if diff < len(mine) else "<end>"
    raise ValueError(
        f"data.vocab_file / tokenizer: expected the vocabulary {where} was trained with "
        f"({len(saved)} tokens), got a different one ({len(mine)} tokens; id {diff} is "
        f"{theirs!r} there, {ours!r} here); set data.vocab_file to its vocab.txt")
