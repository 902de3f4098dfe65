"""WordPiece tokenization through `tokenizers`: a given vocab.txt or one trained on the corpus.

    tokens = read_vocab("bert-base-uncased-vocab.txt")     # DataError if unusable
    tok = load_wordpiece(tokens, lowercase=True)            # tokenizers.Tokenizer
    tok.encode("Hello world", add_special_tokens=False).ids

The pipeline is BERT's: BertNormalizer (clean text, CJK spacing, optional lower-casing
and accent stripping) -> BertPreTokenizer (whitespace and punctuation) -> WordPiece
(`##` continuations, [UNK] for words longer than 100 characters or not coverable).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from bert_ipu.data.config import SPECIAL_TOKENS, DataError, DataConfig

CONTINUATION = "##"


@dataclass(frozen=True)
class TokenizerInfo:
    """The vocabulary a prepared dataset was tokenized with; ids index `vocab_file` lines."""

    vocab_file: str
    vocab_size: int
    lowercase: bool
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int

    @property
    def special_ids(self) -> dict[str, int]:
        """{"[PAD]": id, "[UNK]": id, "[CLS]": id, "[SEP]": id, "[MASK]": id}."""
        return {"[PAD]": self.pad_id, "[UNK]": self.unk_id, "[CLS]": self.cls_id,
                "[SEP]": self.sep_id, "[MASK]": self.mask_id}

    def load(self) -> Any:
        """A `tokenizers.Tokenizer` for this vocabulary (encode with add_special_tokens=False)."""
        return load_wordpiece(read_vocab(self.vocab_file), self.lowercase)


def read_vocab(path: str | Path) -> list[str]:
    """vocab.txt (one token per line, id = line number) -> tokens.

    Raises DataError naming the file when it is missing, not UTF-8, has an empty or
    duplicated token, or lacks any of [PAD] [UNK] [CLS] [SEP] [MASK].
    """
    from bert_ipu.userfiles import UserFileError, read_text

    path = Path(path).expanduser()
    try:
        text = read_text(path, "vocabulary (vocab.txt, UTF-8)")
    except UserFileError as err:
        raise DataError(f"data.vocab_file: {err}") from None
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()  # the final newline
    tokens = [t.rstrip("\r") for t in tokens]
    seen: dict[str, int] = {}
    for line, token in enumerate(tokens, 1):
        if not token.strip():
            raise DataError(f"data.vocab_file: {path}: line {line} is empty; expected "
                            "one token per line")
        if token in seen:
            raise DataError(f"data.vocab_file: {path}: token {token!r} on lines "
                            f"{seen[token]} and {line}; expected unique tokens")
        seen[token] = line
    missing = [t for t in SPECIAL_TOKENS if t not in seen]
    if missing:
        raise DataError(f"data.vocab_file: {path}: missing special token(s) "
                        f"{' '.join(missing)}; a BERT vocabulary needs "
                        f"{' '.join(SPECIAL_TOKENS)} ({len(tokens)} tokens read)")
    return tokens


def load_wordpiece(tokens: list[str], lowercase: bool) -> Any:
    """A BERT WordPiece `tokenizers.Tokenizer` over `tokens` (ids = list positions)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {token: i for i, token in enumerate(tokens)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]",
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=CONTINUATION)
    return tok


def _alphabet(sentences: Iterable[str], lowercase: bool, limit: int) -> list[str]:
    """The `limit` most frequent non-space characters after BERT normalisation (ties by
    code point), sorted by code point."""
    from tokenizers import normalizers

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                      strip_accents=None, lowercase=lowercase)
    counts: Counter[str] = Counter()
    for sentence in sentences:
        counts.update(norm.normalize_str(sentence))
    chars = [c for c in counts if not c.isspace()]
    chars.sort(key=lambda c: (-counts[c], ord(c)))
    return sorted(chars[:limit])


def train_wordpiece(sentences: Callable[[], Iterable[str]], vocab_size: int, lowercase: bool,
                    out_file: Path, limit_alphabet: int = 1000) -> list[str]:
    """Train a WordPiece vocabulary on `sentences()` (called twice: two passes), write it
    to `out_file` (vocab.txt) and return its tokens.

    Deterministic: `tokenizers` numbers the `##c` continuation characters in hash-map
    order, which breaks merge ties differently from run to run (huggingface/tokenizers
    #1794). Registering the alphabet and every `##c` up front, in code-point order, fixes
    all ids. Vocabulary order: [PAD]=0 [UNK] [CLS] [SEP] [MASK]=4, `##c`, `c`, merges.
    """
    from tokenizers import BertWordPieceTokenizer

    alphabet = _alphabet(sentences(), lowercase, limit_alphabet)
    fixed = list(SPECIAL_TOKENS) + [CONTINUATION + c for c in alphabet]
    trainer = BertWordPieceTokenizer(lowercase=lowercase)
    trainer.train_from_iterator(iter(sentences()), vocab_size=max(vocab_size, len(fixed)),
                                min_frequency=2, limit_alphabet=len(alphabet),
                                initial_alphabet=alphabet, special_tokens=fixed,
                                show_progress=False)
    tokens = [t for t, _ in sorted(trainer.get_vocab().items(), key=lambda kv: kv[1])]
    out_file.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return read_vocab(out_file)


def tokenizer_identity(spec: DataConfig) -> dict[str, Any]:
    """What the token ids depend on: the vocab file's sha256, or the training settings."""
    if spec.vocab_file is None:
        import tokenizers

        return {"trained": True, "vocab_size": spec.vocab_size, "lowercase": spec.lowercase,
                "tokenizers": tokenizers.__version__}
    path = Path(spec.vocab_file).expanduser()
    read_vocab(path)  # fail early, naming the file
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"trained": False, "vocab_sha256": digest, "lowercase": spec.lowercase}


def tokenizer_info(vocab_file: Path, tokens: list[str], lowercase: bool) -> TokenizerInfo:
    """TokenizerInfo of a validated vocabulary."""
    ids = {t: tokens.index(t) for t in SPECIAL_TOKENS}
    return TokenizerInfo(vocab_file=str(vocab_file), vocab_size=len(tokens),
                         lowercase=lowercase, pad_id=ids["[PAD]"], unk_id=ids["[UNK]"],
                         cls_id=ids["[CLS]"], sep_id=ids["[SEP]"], mask_id=ids["[MASK]"])


def continuation_table(tokens: list[str]) -> np.ndarray:
    """[V] bool: token id -> is a `##` word continuation (whole-word masking groups them)."""
    return np.fromiter((t.startswith(CONTINUATION) for t in tokens), dtype=bool,
                       count=len(tokens))


def replacement_ids(tokens: list[str]) -> np.ndarray:
    """[V - 5] int64: ids a masked token may be replaced by at random (all but specials)."""
    special = set(SPECIAL_TOKENS)
    return np.array([i for i, t in enumerate(tokens) if t not in special], dtype=np.int64)


def encode_sentences(tok: Any, sentences: list[str], chunk: int = 16384) -> list[list[int]]:
    """Sentences -> WordPiece ids without special tokens (batched, multi-threaded; in
    chunks, so that only `chunk` Encoding objects are alive at a time)."""
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    out: list[list[int]] = []
    for begin in range(0, len(sentences), chunk):
        out.extend(e.ids for e in encode(sentences[begin:begin + chunk],
                                         add_special_tokens=False))
    return out
