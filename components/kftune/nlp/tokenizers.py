"""The tokenizers that turn raw text into tokens: one object, chosen in the spec, saved with the model.

The corpus step tokenizes every split with it and records it in ``corpus.json``; training puts it into the
:class:`~kftune.nlp.data.TextEncoder`, which the model file saves, so evaluation, ``kftune predict`` and a
server split text exactly as training did. The choices, their options and the packages they need are
:mod:`kftune.core.tokenization`; this module implements them (and imports no torch):

- ``regex``: :func:`kftune.nlp.corpora.tokenize` (words and single punctuation marks);
- ``whitespace``: ``text.split()``;
- ``char``: one token per character, whitespace dropped; with ``boundaries=True`` a ``▁`` token stands
  between words (``"좋은 영화"`` -> ``좋 은 ▁ 영 화``), so a model can still see where words end;
- ``morpheme``: Korean morphemes from kiwipiepy (imported on first use), ``form/TAG`` tokens
  (``영화/NNG``, ``었/EP``) that keep homographs apart, or the forms alone with ``tags=False``;
- ``subword``: SentencePiece (unigram or BPE) trained by :meth:`SubwordTokenizer.train` on the train
  split's texts; the trained model travels inside :meth:`~Tokenizer.to_dict` as base64 text.

``to_dict()`` is plain JSON (it goes into ``corpus.json`` and into the model file, which loads with
``torch.load(weights_only=True)``) and :func:`tokenizer_from_dict` recreates the same tokenizer from it.
"""

from __future__ import annotations

import base64
import logging
import os
from collections import deque
from itertools import islice
from typing import Any, ClassVar, Iterable, Iterator, Mapping

from kftune.core.errors import ConfigError, DataError, Problem
from kftune.core.tokenization import TOKENIZERS, TokenizerChoice, missing_package_problem, parse_tokenizer

log = logging.getLogger(__name__)

BOUNDARY = "\u2581"  # ▁, the word-boundary token of ``char`` with boundaries (SentencePiece's marker)


class Tokenizer:
    """Raw text -> tokens. Subclasses set ``kind`` and implement :meth:`tokenize`."""

    kind: ClassVar[str] = ""

    def tokenize(self, text: str) -> list[str]:
        raise NotImplementedError

    def tokenize_many(self, texts: Iterable[str]) -> Iterator[list[str]]:
        """The tokens of each text, in order, streaming (a tokenizer may read a bounded batch ahead)."""
        for text in texts:
            yield self.tokenize(text)

    def options(self) -> dict[str, Any]:
        """The options that shape the output (snake_case, as in :class:`~kftune.core.tokenization.TokenizerChoice`)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, and enough for :func:`tokenizer_from_dict` to recreate this tokenizer."""
        return {"type": self.kind, **self.options()}

    def describe(self) -> str:
        """One line for the corpus card and logs."""
        opts = ", ".join(f"{k}={v}" for k, v in self.options().items())
        return f"{self.kind}" + (f" ({opts})" if opts else "")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.kind)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class RegexTokenizer(Tokenizer):
    """Words (runs of ``\\w`` with inner ``'``/``-``) and single punctuation marks."""

    kind = "regex"

    def tokenize(self, text: str) -> list[str]:
        from kftune.nlp.corpora import tokenize

        return tokenize(text)


class WhitespaceTokenizer(Tokenizer):
    """``text.split()``: what pre-tokenized corpora (TREC, CoNLL, CoNLL-U) are."""

    kind = "whitespace"

    def tokenize(self, text: str) -> list[str]:
        return text.split()


class CharTokenizer(Tokenizer):
    """One token per character, whitespace dropped; ``boundaries`` puts a ``▁`` token between words."""

    kind = "char"

    def __init__(self, boundaries: bool = False):
        self.boundaries = bool(boundaries)

    def options(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries}

    def tokenize(self, text: str) -> list[str]:
        if not self.boundaries:
            return [c for c in text if not c.isspace()]
        out: list[str] = []
        for word in text.split():
            if out:
                out.append(BOUNDARY)
            out.extend(word)
        return out


def _workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


_KIWIS: dict[str | None, Any] = {}  # one analyzer per model type and process (each holds ~300 MB)


def _require(kind: str) -> None:
    problem = missing_package_problem(kind, "tokenizer")
    if problem is not None:
        raise ConfigError([problem])


class MorphemeTokenizer(Tokenizer):
    """Korean morphemes from kiwipiepy (``Kiwi``, loaded on first use: about 1 s and 300 MB).

    Tokens are ``form/TAG`` (``먹/VV``, ``었/EP``), or the forms alone with ``tags=False``. Text kiwi
    leaves without morphemes (it should not happen for non-blank text) falls back to whitespace tokens.
    ``model_type`` and ``version`` record the analyzer that produced a corpus; a model loaded where
    another kiwipiepy version is installed logs a warning (its tokens may differ slightly).
    """

    kind = "morpheme"

    def __init__(self, tags: bool = True, model_type: str | None = None, version: str | None = None):
        self.tags = bool(tags)
        self.model_type = model_type
        self.version = version
        self._kiwi: Any = None

    def options(self) -> dict[str, Any]:
        return {"tags": self.tags}

    @property
    def kiwi(self) -> Any:
        if self._kiwi is None:
            _require("morpheme")
            import kiwipiepy
            from kiwipiepy import Kiwi

            installed = getattr(kiwipiepy, "__version__", None)
            if self.version is not None and installed != self.version:
                log.warning("this text was tokenized with kiwipiepy %s at training time; kiwipiepy %s is "
                            "installed, so some morphemes may differ", self.version, installed)
            kiwi = _KIWIS.get(self.model_type)
            if kiwi is None:
                kwargs = {"model_type": self.model_type} if self.model_type else {}
                kiwi = Kiwi(num_workers=_workers(), **kwargs)
                _KIWIS[self.model_type] = _KIWIS[getattr(kiwi, "model_type", None)] = kiwi
            self._kiwi = kiwi
            self.model_type = self.model_type or getattr(self._kiwi, "model_type", None)
            self.version = self.version or installed
        return self._kiwi

    def to_dict(self) -> dict[str, Any]:
        if self.version is None or self.model_type is None:
            _ = self.kiwi  # records the analyzer that produces the tokens
        return {"type": self.kind, **self.options(), "analyzer": "kiwipiepy", "version": self.version,
                "model_type": self.model_type}

    def _tokens(self, morphs: Iterable[Any], text: str) -> list[str]:
        out = [f"{m.form}/{m.tag}" if self.tags else m.form for m in morphs]
        return out or text.split()

    def tokenize(self, text: str) -> list[str]:
        if not text.strip():
            return []
        return self._tokens(self.kiwi.tokenize(text), text)

    def tokenize_many(self, texts: Iterable[str]) -> Iterator[list[str]]:
        kiwi = self.kiwi
        if kiwi.num_workers <= 1:  # kiwi's streaming analysis needs worker threads
            yield from super().tokenize_many(texts)
            return
        ahead: deque[str] = deque()  # the texts kiwi has read and not yet answered (a few dozen)

        def feed() -> Iterator[str]:
            for text in texts:
                ahead.append(text)
                yield text

        for morphs in kiwi.tokenize(feed()):
            text = ahead.popleft()
            yield self._tokens(morphs, text) if text.strip() else []


class SubwordTokenizer(Tokenizer):
    """SentencePiece subwords. Build one with :meth:`train` (on the train split only) or from a saved model."""

    kind = "subword"

    def __init__(self, model: bytes, vocab_size: int = 8000, model_type: str = "unigram"):
        _require("subword")
        import sentencepiece as spm

        self.model, self.vocab_size, self.model_type = model, int(vocab_size), model_type
        self._sp = spm.SentencePieceProcessor(model_proto=model)

    def options(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "model_type": self.model_type}

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, **self.options(), "model": base64.b64encode(self.model).decode("ascii")}

    def describe(self) -> str:
        return f"subword (SentencePiece {self.model_type}, {self._sp.get_piece_size()} pieces)"

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, model_type: str = "unigram") -> "SubwordTokenizer":
        """Train on ``texts`` (streamed). Deterministic: one thread, no sampling or shuffling of the input,
        so the same texts give a byte-identical model. ``vocab_size`` is an upper bound on a small corpus."""
        _require("subword")
        import io

        import sentencepiece as spm

        count = 0

        def sentences() -> Iterator[str]:
            nonlocal count
            for text in texts:
                text = " ".join(text.split())
                if text:
                    count += 1
                    yield text

        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences(), model_writer=buf, vocab_size=int(vocab_size), model_type=model_type,
                hard_vocab_limit=False, input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
                character_coverage=0.9995, minloglevel=2)
        except RuntimeError as exc:
            raise DataError(f"training the subword tokenizer on {count} train sentence(s) failed: {exc}") from None
        return cls(buf.getvalue(), vocab_size=vocab_size, model_type=model_type)

    def tokenize(self, text: str) -> list[str]:
        return list(self._sp.encode(text, out_type=str))

    def tokenize_many(self, texts: Iterable[str]) -> Iterator[list[str]]:
        it = iter(texts)
        while True:
            chunk = list(islice(it, 1000))
            if not chunk:
                return
            yield from (list(p) for p in self._sp.encode(chunk, out_type=str))


TOKENIZER_CLASSES: Mapping[str, type[Tokenizer]] = {c.kind: c for c in (
    RegexTokenizer, WhitespaceTokenizer, CharTokenizer, MorphemeTokenizer, SubwordTokenizer)}
assert tuple(TOKENIZER_CLASSES) == tuple(TOKENIZERS), "kftune.core.tokenization lists the same kinds"


def _unknown(kind: Any) -> ConfigError:
    return ConfigError([Problem("tokenizer.type", f"{kind!r} is not a tokenizer (choices: {', '.join(TOKENIZERS)})")])


def build_tokenizer(choice: TokenizerChoice | str | Mapping[str, Any], *,
                    train_texts: Iterable[str] | None = None) -> Tokenizer:
    """The tokenizer of a choice (a :class:`TokenizerChoice`, a name, or the spec's mapping). ``subword``
    is trained on ``train_texts`` (required for it)."""
    parsed, problems = parse_tokenizer(choice, "tokenizer")
    if problems or parsed is None:
        raise ConfigError(problems or [Problem("tokenizer", "no tokenizer given")])
    opts = dict(parsed.options)
    if parsed.type == "subword":
        if train_texts is None:
            raise ConfigError([Problem("tokenizer", "a subword tokenizer is trained on the train split's texts")])
        return SubwordTokenizer.train(train_texts, **opts)
    cls = TOKENIZER_CLASSES[parsed.type]
    if parsed.type == "morpheme":
        _require("morpheme")
    return cls(**opts)


def tokenizer_from_dict(data: Mapping[str, Any] | None) -> Tokenizer:
    """The tokenizer a :meth:`Tokenizer.to_dict` describes; ``None`` (old corpora and models) is whitespace."""
    if data is None:
        return WhitespaceTokenizer()
    if not isinstance(data, Mapping):
        raise DataError(f"a tokenizer is described by a mapping with a type, not {type(data).__name__}")
    kind = data.get("type")
    if kind not in TOKENIZER_CLASSES:
        raise _unknown(kind)
    if kind == "char":
        return CharTokenizer(boundaries=bool(data.get("boundaries", False)))
    if kind == "morpheme":
        return MorphemeTokenizer(tags=bool(data.get("tags", True)), model_type=data.get("model_type"),
                                 version=data.get("version"))
    if kind == "subword":
        try:
            model = base64.b64decode(str(data["model"]).encode("ascii"), validate=True)
        except (KeyError, ValueError) as exc:
            raise DataError(f"a subword tokenizer needs its SentencePiece model (base64): {exc}") from None
        return SubwordTokenizer(model, vocab_size=int(data.get("vocab_size", 8000)),
                                model_type=str(data.get("model_type", "unigram")))
    return TOKENIZER_CLASSES[kind]()
