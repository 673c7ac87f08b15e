"""Streaming readers for corpus files: FastText, CSV/TSV, TREC label lines, CoNLL columns, CoNLL-U.

Each reader is a generator over one file that yields :class:`TextExample` (text classification)
or :class:`TaggedSentence` (sequence labelling), one at a time, so a caller never holds more than
one example. Readers are plain text parsers: they import neither torch nor numpy.

Malformed input raises :class:`kftune.core.errors.DataError` whose message starts with
``<file>:<line>:``. Options that cannot apply to the file (a column name missing from the header)
raise :class:`kftune.core.errors.ConfigError` naming the option.

Tokenisation. TREC, CoNLL and CoNLL-U are already tokenised (TREC: split on whitespace). Raw text
(FastText, CSV/TSV) is split by :func:`tokenize`: a run of word characters, with inner apostrophes or
hyphens allowed (``don't``, ``state-of-the-art``), is one token, and every other non-space character
is a token of its own (``3.5%`` -> ``3``, ``.``, ``5``, ``%``). ``\\w`` is Unicode-aware, so Hangul, accented
Latin and CJK text tokenise on spaces and punctuation.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Mapping, Sequence

from kftune.core.errors import ConfigError, DataError, Problem

TagScheme = Literal["BIO", "BIOES"]

_TOKEN = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")
_CONLLU_FIELDS = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")


def tokenize(text: str) -> list[str]:
    """Split raw text into tokens (see the module docstring for the rule)."""
    return _TOKEN.findall(text)


@dataclass(frozen=True, slots=True)
class TextExample:
    """A text classification example. ``line`` is the 1-based line of the file it came from."""

    text: str
    tokens: list[str]
    label: str
    line: int = 0

    def to_json(self) -> dict:
        return {"label": self.label, "text": self.text, "tokens": self.tokens}


@dataclass(frozen=True, slots=True)
class TaggedSentence:
    """A sequence labelling example: parallel tokens and tags. ``line`` is the sentence's first line."""

    tokens: list[str]
    tags: list[str]
    line: int = 0

    def to_json(self) -> dict:
        return {"tags": self.tags, "tokens": self.tokens}


def _err(path: Path, line: int, message: str) -> DataError:
    return DataError(f"{path}:{line}: {message}")


def _lines(path: Path, encoding: str) -> Iterator[str]:
    """The lines of ``path`` decoded one by one (line endings kept), so that a decoding error names its
    line. Works for ASCII-compatible encodings (utf-8, latin-1, cp1252, euc-kr, ...); a UTF-8 BOM is dropped."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid {encoding} text ({exc.reason} at column {exc.start + 1}); "
                                "pass the right encoding") from exc
            if n == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield line


# --------------------------------------------------------------------------- FastText
def read_fasttext(path: str | Path, *, label_prefix: str = "__label__", encoding: str = "utf-8") -> Iterator[TextExample]:
    """``__label__X some text`` lines. Blank lines are skipped; a line must carry exactly one label
    (multi-label lines are refused) followed by text."""
    path = Path(path)
    for n, raw in enumerate(_lines(path, encoding), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split(None, 1)
        head = parts[0]
        if not head.startswith(label_prefix) or len(head) == len(label_prefix):
            raise _err(path, n, f"expected '{label_prefix}LABEL text', got {line[:60]!r}")
        text = parts[1] if len(parts) > 1 else ""
        if text.startswith(label_prefix):
            raise _err(path, n, "more than one label on a line (multi-label data is not supported)")
        yield TextExample(text=text, tokens=tokenize(text), label=head[len(label_prefix):], line=n)


# --------------------------------------------------------------------------- CSV / TSV
def _column_index(spec: str | int, header: list[str] | None, option: str) -> int:
    text = str(spec)
    if text.lstrip("-").isdigit():
        return int(text)
    if header is None:
        raise ConfigError([Problem(option, f"column {text!r} is a name but the file has no header; "
                                           "give a 0-based column number or set header")])
    if text not in header:
        raise ConfigError([Problem(option, f"column {text!r} is not in the header {header}")])
    return header.index(text)


def read_delimited(path: str | Path, *, delimiter: str = ",", text_columns: Sequence[str | int] = ("text",),
                   label_column: str | int = "label", header: bool = True, quoting: str = "minimal",
                   label_map: Mapping[str, str] | None = None, encoding: str = "utf-8") -> Iterator[TextExample]:
    """CSV or TSV rows. Columns are header names or 0-based numbers (``"1"`` or ``1``); several text
    columns are joined with one space. ``quoting``: ``"minimal"`` (RFC 4180 quotes) or ``"none"``
    (every line is one row, quotes are text). ``label_map`` renames raw labels (``"1" -> "World"``);
    a raw label missing from it is an error. ``line`` is the row's last physical line."""
    path = Path(path)
    if quoting not in {"minimal", "none"}:
        raise ConfigError([Problem("quoting", f"{quoting!r} is not one of 'minimal', 'none'")])
    kind = "TSV" if delimiter == "\t" else "CSV"
    reader = csv.reader(_lines(path, encoding), delimiter=delimiter, strict=True,
                        quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL)
    try:
        names: list[str] | None = None
        if header:
            names = next(reader, None)
            if names is None:
                return
        tcols = [_column_index(c, names, "text_column") for c in text_columns]
        lcol = _column_index(label_column, names, "label_column")
        width = max([lcol, *tcols]) + 1
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            n = reader.line_num
            if len(row) < width:
                raise _err(path, n, f"expected at least {width} columns (delimiter {delimiter!r}), got {len(row)}")
            raw = row[lcol].strip()
            if not raw:
                raise _err(path, n, f"empty label in column {label_column}")
            if label_map is not None:
                if raw not in label_map:
                    raise _err(path, n, f"label {raw!r} is not one of {sorted(label_map)}")
                raw = label_map[raw]
            text = " ".join(row[c].strip() for c in tcols).strip()
            yield TextExample(text=text, tokens=tokenize(text), label=raw, line=n)
    except csv.Error as exc:
        raise _err(path, reader.line_num, f"malformed {kind}: {exc}") from exc


# --------------------------------------------------------------------------- TREC
def read_trec(path: str | Path, *, level: str = "coarse", encoding: str = "latin-1") -> Iterator[TextExample]:
    """TREC question lines ``COARSE:fine question text`` (Latin-1). ``level="coarse"`` yields ``DESC``;
    ``level="fine"`` yields the full ``DESC:manner`` (fine labels repeat across coarse classes)."""
    if level not in {"coarse", "fine"}:
        raise ConfigError([Problem("label_column", f"TREC label level {level!r} is not 'coarse' or 'fine'")])
    path = Path(path)
    for n, raw in enumerate(_lines(path, encoding), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split(None, 1)
        label = parts[0]
        coarse, sep, fine = label.partition(":")
        if not sep or not coarse or not fine or not coarse.isupper():
            raise _err(path, n, f"expected 'COARSE:fine question', got {line[:60]!r}")
        tokens = parts[1].split() if len(parts) > 1 else []
        if not tokens:
            raise _err(path, n, "a label without a question")
        yield TextExample(text=" ".join(tokens), tokens=tokens, label=coarse if level == "coarse" else label, line=n)


# --------------------------------------------------------------------------- BIO / BIOES
def split_tag(tag: str) -> tuple[str, str | None]:
    """``"B-person" -> ("B", "person")``, ``"O" -> ("O", None)``; anything else -> (tag, None)."""
    if tag == "O":
        return "O", None
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BIES":
        return tag[0], tag[2:]
    return tag, None


def detect_scheme(tags: set[str] | frozenset[str]) -> TagScheme | None:
    """The scheme a tag set is written in: ``BIOES`` if any ``E-``/``S-`` tag, ``BIO`` if ``B-``/``I-``
    tags (and ``O``) only, ``None`` for plain tags (POS, dependency relations)."""
    prefixes = {split_tag(t)[0] for t in tags}
    if not prefixes & {"B", "I", "E", "S"}:
        return None
    return "BIOES" if prefixes & {"E", "S"} else "BIO"


def check_tags(tags: Sequence[str], scheme: TagScheme | Literal["auto"]) -> str | None:
    """The first violation of ``scheme`` in one sentence's tags, or ``None`` when valid.

    Both schemes: every tag is ``O`` or ``P-type``, and ``I-X``/``E-X`` continue a ``B-X``/``I-X``.
    BIO allows no ``E-``/``S-``; BIOES also requires every ``B-X``/``I-X`` to be followed by
    ``I-X``/``E-X``. ``"auto"`` checks only what holds in both schemes.
    """
    prev_prefix, prev_type = "O", None
    for i, tag in enumerate(tags):
        prefix, typ = split_tag(tag)
        if prefix not in {"O", "B", "I", "E", "S"}:
            return f"token {i + 1}: tag {tag!r} is not O or B-/I-/E-/S-TYPE"
        if scheme == "BIO" and prefix in {"E", "S"}:
            return f"token {i + 1}: tag {tag!r} is BIOES, but the corpus is BIO"
        if prefix in {"I", "E"} and not (prev_prefix in {"B", "I"} and prev_type == typ):
            return f"token {i + 1}: {tag!r} does not continue an entity (previous tag {tags[i - 1] if i else 'none'!r})"
        if scheme == "BIOES" and prev_prefix in {"B", "I"} and not (prefix in {"I", "E"} and typ == prev_type):
            return f"token {i + 1}: {tags[i - 1]!r} must be followed by I-/E-{prev_type}, got {tag!r}"
        prev_prefix, prev_type = prefix, typ
    if scheme == "BIOES" and prev_prefix in {"B", "I"}:
        return f"last token: entity {prev_type!r} ends with {tags[-1]!r} instead of E-/S-"
    return None


def entity_types(tags: Sequence[str]) -> frozenset[str]:
    """The entity types in a sentence's BIO/BIOES tags (``frozenset()`` for plain or all-O tags)."""
    return frozenset(t for _, t in map(split_tag, tags) if t is not None)


# --------------------------------------------------------------------------- CoNLL columns
def read_conll(path: str | Path, *, token_column: int = 0, tag_column: int = -1,
               scheme: TagScheme | Literal["auto"] | None = "auto", encoding: str = "utf-8") -> Iterator[TaggedSentence]:
    """CoNLL column files: one token per line, sentences separated by blank lines, ``-DOCSTART-``
    lines skipped. Columns are split on tabs when the line has one, else on whitespace.
    ``scheme``: validate each sentence as ``"BIO"``/``"BIOES"``, ``"auto"`` (only what holds in both),
    or ``None`` (no validation, e.g. POS tags)."""
    path = Path(path)
    tokens: list[str] = []
    tags: list[str] = []
    start = 0

    def finish() -> TaggedSentence:
        if scheme is not None:
            problem = check_tags(tags, scheme)
            if problem:
                raise _err(path, start, f"sentence starting here: {problem}")
        return TaggedSentence(tokens=tokens, tags=tags, line=start)

    for n, raw in enumerate(_lines(path, encoding), 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            if tokens:
                yield finish()
                tokens, tags = [], []
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if cols[0] == "-DOCSTART-":
            continue
        try:
            token, tag = cols[token_column], cols[tag_column]
        except IndexError:
            raise _err(path, n, f"expected a token column {token_column} and a tag column {tag_column}, "
                                f"got {len(cols)} column(s): {line[:60]!r}") from None
        if not token or not tag.strip():
            raise _err(path, n, f"empty token or tag: {line[:60]!r}")
        if not tokens:
            start = n
        tokens.append(token)
        tags.append(tag.strip())
    if tokens:
        yield finish()


# --------------------------------------------------------------------------- CoNLL-U
def read_conllu(path: str | Path, *, column: str = "upos", encoding: str = "utf-8") -> Iterator[TaggedSentence]:
    """CoNLL-U (10 tab-separated columns). Tokens are the FORM column, tags the chosen ``column``
    (``upos``, ``xpos``, ``deprel``, ``lemma``, ``feats``, ``head``, ``deps``, ``misc``). Comment lines,
    multiword-token ranges (``3-4``) and empty nodes (``8.1``) are skipped."""
    col = column.lower()
    if col not in _CONLLU_FIELDS[2:]:
        raise ConfigError([Problem("label_column", f"CoNLL-U column {column!r} is not one of "
                                                   f"{', '.join(_CONLLU_FIELDS[2:])}")])
    idx = _CONLLU_FIELDS.index(col)
    path = Path(path)
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for n, raw in enumerate(_lines(path, encoding), 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            if tokens:
                yield TaggedSentence(tokens=tokens, tags=tags, line=start)
                tokens, tags = [], []
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise _err(path, n, f"expected 10 tab-separated CoNLL-U columns, got {len(cols)}")
        wid = cols[0]
        if "-" in wid or "." in wid:
            continue
        if not wid.isdigit():
            raise _err(path, n, f"word ID {wid!r} is not an integer, a range or an empty node")
        if not tokens:
            start = n
        tokens.append(cols[1])
        tags.append(cols[idx])
    if tokens:
        yield TaggedSentence(tokens=tokens, tags=tags, line=start)
