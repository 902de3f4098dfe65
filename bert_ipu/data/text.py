"""Plain text -> documents -> sentences: a deterministic, rule-based splitter (no downloads).

A *document* is a list of sentences (non-empty strings). Layouts of a text:

  file        the whole text is one document
  blank_line  documents are separated by blank lines (Google BERT's sample_text.txt: one
              sentence per line)
  paragraphs  the whole text is one document of paragraphs separated by blank lines, the
              lines of a paragraph wrapped prose (README files, manuals, articles)
  wikitext    articles start at top-level ` = Title = ` lines (WikiText-2/103);
              ` = = Section = = ` headings are dropped
  auto        wikitext if a top-level heading is present; else, when the text has a blank
              line between non-empty lines, blank_line if it is one sentence per line (at
              least 70 % of its lines end a sentence) and paragraphs otherwise; else file

Sentences: in every layout but paragraphs, every line break ends a sentence (paragraphs
joins the lines of a paragraph first); inside a line, a sentence ends at `.`, `?`
or `!` (optionally followed by closing quotes/brackets) followed by whitespace and then a
capital letter or an opening quote/bracket, unless the word before the period is a known
abbreviation ("Mr.", "e.g.") or letters with periods (initials: "H. americanus", "U.S.").

>>> split_sentences("It rained. Gold, surely! Mr. Beard stopped.")
['It rained.', 'Gold, surely!', 'Mr. Beard stopped.']
>>> parse_documents("a b.\\nc d.\\n\\ne f.\\ng h.\\n", "blank_line")
[['a b.', 'c d.'], ['e f.', 'g h.']]
>>> parse_documents("It is a\\ntool. It runs.\\n\\nInstall it\\nfirst.\\n")
[['It is a tool.', 'It runs.', 'Install it first.']]
"""
from __future__ import annotations

import re
from typing import Iterable, Iterator

FORMATS = ("auto", "file", "blank_line", "paragraphs", "wikitext")
SENTENCE_PER_LINE = 0.7
"""auto: the least fraction of non-empty lines ending a sentence for blank_line."""

_BOUNDARY = re.compile(r"[.!?][\"')\]\u201d\u2019]*\s+(?=[\"'(\[\u201c\u2018]*(\w))")
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "cf",
    "no", "fig", "gen", "gov", "sen", "rep", "col", "capt", "lt", "mt", "inc", "ltd",
    "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "approx", "dept", "est", "vol", "op",
})
_WIKI_TITLE = re.compile(r"^\s*= (?!=)(.*\S)(?<!=) =\s*$")
_WIKI_HEADING = re.compile(r"^\s*(= )+.*( =)+\s*$")
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
_LINE_END = re.compile(r"[.!?][\"')\]\u201d\u2019]*\s*$")


def _is_abbreviation(text: str, period_at: int) -> bool:
    """True when the word ending at `period_at` (a '.') is an abbreviation or an initial."""
    start = period_at
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    word = text[start:period_at].lstrip("\"'([").lower()
    if word in _ABBREVIATIONS:
        return True
    # Initials and dotted abbreviations: "H.", "U.S.", "a.m."
    return all(len(part) == 1 and part.isalpha() for part in word.split("."))


def split_sentences(line: str) -> list[str]:
    """One line of text -> its sentences (stripped, non-empty), by the rules above."""
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(line):
        if not match.group(1).isupper():
            continue
        if line[match.start()] == "." and _is_abbreviation(line, match.start()):
            continue
        end = match.end()
        piece = line[start:end].strip()
        if piece:
            sentences.append(piece)
        start = end
    tail = line[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def sentences_of(lines: Iterable[str]) -> list[str]:
    """Lines -> sentences of all of them, in order (a line break always ends a sentence)."""
    out: list[str] = []
    for line in lines:
        out.extend(split_sentences(line))
    return out


def detect_format(text: str) -> str:
    """The layout of `text` (see the module docstring): wikitext, blank_line or file."""
    if any(_WIKI_TITLE.match(line) for line in text.splitlines()):
        return "wikitext"
    if _BLANK_LINE.search(text.strip()):
        lines = [line for line in text.splitlines() if line.strip()]
        ends = sum(1 for line in lines if _LINE_END.search(line))
        return "blank_line" if ends >= SENTENCE_PER_LINE * len(lines) else "paragraphs"
    return "file"


def _blank_line_documents(lines: Iterable[str]) -> Iterator[list[str]]:
    current: list[str] = []
    for line in lines:
        if line.strip():
            current.append(line)
        elif current:
            yield current
            current = []
    if current:
        yield current


def _paragraph_lines(lines: Iterable[str]) -> list[list[str]]:
    """One document; each paragraph (lines between blank lines) joined into one line."""
    return [[" ".join(line.strip() for line in group)
             for group in _blank_line_documents(lines)]]


def _wikitext_documents(lines: Iterable[str]) -> Iterator[list[str]]:
    """Articles between top-level titles; text before the first title is its own article."""
    current: list[str] = []
    for line in lines:
        if _WIKI_TITLE.match(line):
            if current:
                yield current
            current = []
        elif line.strip() and not _WIKI_HEADING.match(line):
            current.append(line)
    if current:
        yield current


def iter_documents(lines: Iterable[str], layout: str) -> Iterator[list[str]]:
    """Lines of text in a concrete layout (not auto) -> documents as lists of sentences."""
    if layout == "file":
        groups: Iterable[list[str]] = [list(lines)]
    elif layout == "blank_line":
        groups = _blank_line_documents(lines)
    elif layout == "paragraphs":
        groups = _paragraph_lines(lines)
    elif layout == "wikitext":
        groups = _wikitext_documents(lines)
    else:
        raise ValueError(f"iter_documents: layout must be one of {FORMATS[1:]}, got {layout!r}")
    for group in groups:
        sentences = sentences_of(group)
        if sentences:
            yield sentences


def parse_documents(text: str, layout: str = "auto") -> list[list[str]]:
    """A whole text -> its documents (lists of sentences); `auto` detects the layout."""
    if layout == "auto":
        layout = detect_format(text)
    return list(iter_documents(text.splitlines(), layout))
