"""Corpus splits, vocabularies, label dictionaries, encoding and batching.

Reads the corpus step's output (``train.jsonl``/``dev.jsonl``/``test.jsonl`` + ``corpus.json``),
builds a word vocabulary (``<pad>`` = 0, ``<unk>`` = 1, a minimum frequency), a character
vocabulary and a label dictionary, and turns examples into padded, length-bucketed mini-batches.

Bad input is handled, never a crash:
- a dev/test label (or tag) never seen in training maps to the explicit ``<unk>`` label (index 0),
  with one warning per split naming the labels;
- empty sentences are skipped in training (one warning) and kept in dev/test/prediction, where they
  get a defined output (see :mod:`kftune.nlp.predict`);
- sentences longer than ``max_length`` tokens are truncated (one warning per split).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from kftune.core.errors import ConfigError, DataError, Problem
from kftune.nlp.ngrams import NgramSpec, NgramVocabulary
from kftune.nlp.tokenizers import Tokenizer, tokenizer_from_dict

log = logging.getLogger(__name__)

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
UNK_LABEL = "<unk>"
MAX_WORD_CHARS = 50  # characters per token seen by the char encoders (longer tokens are cut)
SPLITS = ("train", "dev", "test")


#: The word-shape classes of :func:`casing_class` (id 0 is padding, so class ``i`` has id ``i + 1``).
CASING_CLASSES = ("lower", "initial_upper", "all_upper", "mixed", "numeric", "has_digit", "punctuation",
                  "mention", "hashtag", "url", "other")


def casing_class(token: str) -> int:
    """The id (1-based, 0 is padding) of ``token``'s shape class in :data:`CASING_CLASSES`: a word's
    capitalisation (all lower, Initial cap, ALL CAPS, mIxed), numbers, words with a digit, punctuation,
    Twitter-style @mentions, #hashtags and URLs, else ``other`` (e.g. words of a script without case).
    The strongest signal of named entities when words are rare (Lample et al. 2016, Flair)."""
    if len(token) > 1 and token[0] == "@":
        name = "mention"
    elif len(token) > 1 and token[0] == "#":
        name = "hashtag"
    elif token.lower().startswith(("http://", "https://", "www.")):
        name = "url"
    elif any(c.isalpha() for c in token):
        letters = [c for c in token if c.isalpha()]
        if any(c.isdigit() for c in token):
            name = "has_digit"
        elif all(c.islower() for c in letters):
            name = "lower"
        elif all(c.isupper() for c in letters):
            name = "initial_upper" if len(letters) == 1 else "all_upper"
        elif letters[0].isupper() and all(c.islower() for c in letters[1:]):
            name = "initial_upper"
        elif not any(c.isupper() or c.islower() for c in letters):
            name = "other"
        else:
            name = "mixed"
    elif any(c.isdigit() for c in token):
        name = "numeric"
    elif token and all(not c.isalnum() for c in token):
        name = "punctuation"
    else:
        name = "other"
    return CASING_CLASSES.index(name) + 1


def tokenize(text: str) -> list[str]:
    """Whitespace split: the tokens of a JSONL line that has ``text`` but no ``tokens``, and of raw text
    for an encoder without a tokenizer (models and corpora from before tokenizers were recorded)."""
    return text.split()


# ------------------------------------------------------------------------------------------------
# Examples and corpus metadata


@dataclass(frozen=True)
class Example:
    """One sentence: its tokens and, for training data, its gold label (classification) or tags.
    ``text`` is the raw sentence where there is one (the JSONL ``text``; the string given to ``predict``);
    ``corpus`` names the source corpus in a split prepared from several (the JSONL ``corpus``; ``None`` for
    one corpus). Neither is compared (two examples are equal when their tokens and gold annotations are)."""

    tokens: tuple[str, ...]
    label: str | None = None
    tags: tuple[str, ...] | None = None
    text: str | None = field(default=None, compare=False)
    corpus: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TaskInfo:
    """What the model predicts: the task type, the label type and the tag scheme (from corpus.json).

    ``tokenizer`` is the corpus' tokenizer as corpus.json records it (``None`` for corpora from before
    tokenizers were recorded: whitespace); :func:`kftune.nlp.embeddings.encode_corpus` gives it to the
    encoder, which saves it with the model. It is not part of :meth:`to_dict` (the encoder's is)."""

    type: str                         # text_classification | sequence_labeling
    label_type: str | None = None     # e.g. question_class, ner, upos
    tag_scheme: str | None = None     # BIO | BIOES | None (POS-like tags: token accuracy)
    corpus_name: str | None = None
    tokenizer: Any = field(default=None, compare=False, repr=False)  # corpus.json's "tokenizer" dict

    @property
    def is_classification(self) -> bool:
        return self.type == "text_classification"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "label_type": self.label_type, "tag_scheme": self.tag_scheme,
                "corpus_name": self.corpus_name}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaskInfo":
        return cls(type=data["type"], label_type=data.get("label_type"), tag_scheme=data.get("tag_scheme"),
                   corpus_name=data.get("corpus_name"))


def read_corpus_info(path: str | Path) -> dict[str, Any]:
    """The parsed ``corpus.json`` of a corpus directory (``path`` is the directory or the file)."""
    p = Path(path)
    if p.is_dir():
        p = p / "corpus.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{p}: no corpus.json; point --corpus at the output directory of `kftune corpus`") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: not valid JSON ({exc})") from None
    if data.get("task") not in ("text_classification", "sequence_labeling"):
        raise DataError(f"{p}: 'task' is {data.get('task')!r}; expected text_classification or sequence_labeling")
    return data


def task_from_corpus_info(info: dict[str, Any]) -> TaskInfo:
    return TaskInfo(type=info["task"], label_type=info.get("label_type"), tag_scheme=info.get("tag_scheme"),
                    corpus_name=info.get("name"), tokenizer=info.get("tokenizer"))


def parse_split(lines: Iterable[str], task_type: str, where: str) -> list[Example]:
    """Examples from the lines of one JSONL split (shared corpus format); blank lines are skipped.
    Malformed lines raise :class:`DataError` naming ``where`` and the line number."""
    examples: list[Example] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}:{number}: not valid JSON ({exc.msg})") from None
        examples.append(example_from_json(obj, task_type, f"{where}:{number}"))
    return examples


def read_split(path: str | Path, task_type: str) -> list[Example]:
    """Read one JSONL split file in the shared corpus format (see :func:`parse_split`)."""
    p = Path(path)
    try:
        handle = p.open(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{p}: split file not found") from None
    with handle:
        return parse_split(handle, task_type, str(p))


def read_corpus_from_store(store: Any, uri: str, splits: Sequence[str]) -> tuple[dict[str, Any], dict[str, list[Example]]]:
    """``(corpus.json, {split: examples})`` of the corpus step's output in an artifact store
    (:class:`kftune.io.store.ArtifactStore`; ``uri`` names it in messages). :class:`DataError` when it
    is not a corpus or lacks one of ``splits``."""
    from kftune.core.errors import ArtifactNotFoundError

    try:
        info = json.loads(store.get_bytes("corpus.json").decode("utf-8"))
    except ArtifactNotFoundError as exc:
        raise DataError(f"{uri}: no corpus.json; point --corpus at the output of `kftune corpus`") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{store.uri_for('corpus.json')}: not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("task") not in ("text_classification", "sequence_labeling"):
        task = info.get("task") if isinstance(info, dict) else None
        raise DataError(f"{store.uri_for('corpus.json')}: 'task' is {task!r}; "
                        "expected text_classification or sequence_labeling")
    out: dict[str, list[Example]] = {}
    for split in splits:
        key = f"{split}.jsonl"
        try:
            text = store.get_bytes(key).decode("utf-8")
        except ArtifactNotFoundError as exc:
            raise DataError(f"{uri}: the corpus has no {key}") from exc
        out[split] = parse_split(text.splitlines(), info["task"], store.uri_for(key))
    return info, out


def example_from_json(obj: Any, task_type: str, where: str = "") -> Example:
    """One example from its JSON object (see the shared corpus format)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    tokens = obj.get("tokens")
    if tokens is None and "text" in obj:
        tokens = tokenize(str(obj["text"]))
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise DataError(f"{where}: 'tokens' must be a list of strings")
    text = obj.get("text")
    text = text if isinstance(text, str) else None
    corpus = obj.get("corpus")
    corpus = corpus if isinstance(corpus, str) and corpus else None
    if task_type == "text_classification":
        label = obj.get("label")
        if not isinstance(label, str) or not label:
            raise DataError(f"{where}: 'label' must be a non-empty string")
        return Example(tuple(tokens), label=label, text=text, corpus=corpus)
    tags = obj.get("tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DataError(f"{where}: 'tags' must be a list of strings")
    if len(tags) != len(tokens):
        raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
    return Example(tuple(tokens), tags=tuple(tags), text=text, corpus=corpus)


# ------------------------------------------------------------------------------------------------
# Vocabularies


class Vocabulary:
    """Token <-> index, with ``<pad>`` at 0 and ``<unk>`` at 1. Deterministic order: by frequency,
    then alphabetically."""

    def __init__(self, itos: Sequence[str]):
        if len(itos) < 2 or itos[0] != PAD or itos[1] != UNK:
            raise DataError("a vocabulary must start with <pad>, <unk>")
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}

    @classmethod
    def build(cls, counts: Counter[str], min_freq: int = 1, max_size: int | None = None) -> "Vocabulary":
        items = sorted(((w, c) for w, c in counts.items() if c >= min_freq and w not in (PAD, UNK)),
                       key=lambda wc: (-wc[1], wc[0]))
        if max_size is not None:
            items = items[:max_size]
        return cls([PAD, UNK] + [w for w, _ in items])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def index(self, token: str) -> int:
        return self.stoi.get(token, UNK_ID)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        get = self.stoi.get
        return [get(t, UNK_ID) for t in tokens]


class PretrainedVocabulary(Vocabulary):
    """The vocabulary of pretrained vectors: exact lookup, then lower-cased (as GloVe is uncased)."""

    def index(self, token: str) -> int:
        i = self.stoi.get(token)
        if i is None:
            i = self.stoi.get(token.lower(), UNK_ID)
        return i

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.index(t) for t in tokens]


class LabelDictionary:
    """Label <-> index. Index 0 is the explicit ``<unk>`` label: dev/test labels never seen in
    training map to it (with one warning per split), so an unknown label never crashes training."""

    def __init__(self, itos: Sequence[str]):
        if not itos or itos[0] != UNK_LABEL:
            raise DataError("a label dictionary must start with <unk>")
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}

    @classmethod
    def build(cls, labels: Iterable[str]) -> "LabelDictionary":
        return cls([UNK_LABEL] + sorted(set(labels) - {UNK_LABEL}))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, labels: Iterable[str], unseen: Counter[str] | None = None) -> list[int]:
        """Indices of ``labels``; unseen ones map to 0 and are counted in ``unseen``."""
        out = []
        for label in labels:
            i = self.stoi.get(label)
            if i is None:
                i = 0
                if unseen is not None:
                    unseen[label] += 1
            out.append(i)
        return out

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]


# ------------------------------------------------------------------------------------------------
# Encoding


@dataclass
class EncodedDataset:
    """A split as tensors, one entry per example (in the split's order).

    ``usable`` lists the positions of non-empty examples: only those go into batches. ``name`` keys
    the frozen-embedding cache (two datasets with the same name must hold the same sentences).
    """

    name: str
    examples: list[Example]
    tokens: list[tuple[str, ...]]            # after truncation
    words: list[torch.Tensor]                # [T_i] long
    chars: list[torch.Tensor] | None         # [T_i, C_i] long
    pretrained: list[torch.Tensor] | None    # [T_i] long
    labels: list[torch.Tensor] | None        # classification: [] long; tagging: [T_i] long
    usable: list[int]
    is_classification: bool
    ngrams: list[torch.Tensor] | None = None  # hashed n-gram feature ids per example (fastText-style bag)
    casing: list[torch.Tensor] | None = None  # [T_i] long: casing_class() ids (the word-shape feature)
    truncated: int = 0
    unseen_labels: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def num_usable(self) -> int:
        return len(self.usable)

    def gold(self) -> list[Any]:
        """The gold labels (classification) or tag sequences (tagging) as strings, in order."""
        if self.is_classification:
            return [e.label for e in self.examples]
        return [list(e.tags or ()) for e in self.examples]


class TextEncoder:
    """Everything that turns text into model inputs: the tokenizer, the vocabularies, the labels, ``max_length``.

    Saved inside the model file, so prediction tokenizes and encodes text exactly as training did.
    ``tokenizer`` is the corpus' (:mod:`kftune.nlp.tokenizers`); ``None`` means whitespace split.
    ``casing``: also encode each token's :func:`casing_class` (the word-shape feature); ``lowercase``:
    the word vocabulary holds lower-cased words (the casing feature then carries the case).
    """

    def __init__(self, task: TaskInfo, words: Vocabulary, labels: LabelDictionary, max_length: int,
                 chars: Vocabulary | None = None, pretrained: PretrainedVocabulary | None = None,
                 tokenizer: Tokenizer | None = None, ngrams: NgramSpec | None = None,
                 casing: bool = False, lowercase: bool = False, ngram_vocab: NgramVocabulary | None = None):
        self.task, self.words, self.labels, self.max_length = task, words, labels, max_length
        self.chars, self.pretrained = chars, pretrained
        self.tokenizer = tokenizer
        self.ngrams = ngrams
        self.ngram_vocab = ngram_vocab   # with ngrams.min_count >= 2: the kept features (fitted by encode(train))
        self.casing, self.lowercase = casing, lowercase

    @property
    def ngram_rows(self) -> int:
        """Rows of the n-gram bag: one per kept feature with a vocabulary, else the hash buckets."""
        if self.ngram_vocab is not None:
            return max(1, len(self.ngram_vocab))
        return self.ngrams.buckets if self.ngrams is not None else 0

    def _ngram_ids(self, tokens: Sequence[str], text: str | None) -> list[int] | np.ndarray:
        assert self.ngrams is not None
        if self.ngram_vocab is not None:
            return self.ngram_vocab.rows(self.ngrams.hashes(tokens, text))
        if self.ngrams.min_count > 1:
            raise ValueError("the n-gram vocabulary is fitted by encoding the training split first "
                             "(encode(train, training=True))")
        return self.ngrams.ids(tokens, text)

    def tokenize(self, text: str) -> list[str]:
        """Raw text to tokens, as the training corpus was tokenized."""
        return self.tokenizer.tokenize(text) if self.tokenizer is not None else tokenize(text)

    def tokenize_many(self, texts: Iterable[str]) -> Iterator[list[str]]:
        """:meth:`tokenize` of each text, in order (batched where the tokenizer can)."""
        if self.tokenizer is not None:
            return self.tokenizer.tokenize_many(texts)
        return (tokenize(t) for t in texts)

    @classmethod
    def build(cls, task: TaskInfo, train: Sequence[Example], *, min_word_freq: int, max_length: int,
              use_chars: bool, tokenizer: Tokenizer | None = None,
              ngrams: NgramSpec | None = None, use_casing: bool = False,
              lowercase: bool = False) -> "TextEncoder":
        """Vocabularies from the training examples. The label dictionary holds only labels seen in
        training (they are the only ones a model can learn); any other maps to ``<unk>``."""
        counts: Counter[str] = Counter()
        char_counts: Counter[str] = Counter()
        label_set: set[str] = set()
        for ex in train:
            counts.update([t.lower() for t in ex.tokens] if lowercase else ex.tokens)
            if use_chars:
                for tok in ex.tokens:
                    char_counts.update(tok[:MAX_WORD_CHARS])
            if task.is_classification:
                label_set.add(ex.label or "")
            else:
                label_set.update(ex.tags or ())
        if not label_set:
            raise DataError("the training split has no labels")
        return cls(task, Vocabulary.build(counts, min_word_freq), LabelDictionary.build(label_set),
                   max_length, chars=Vocabulary.build(char_counts) if use_chars else None, tokenizer=tokenizer,
                   ngrams=ngrams, casing=use_casing, lowercase=lowercase)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task.to_dict(), "words": self.words.itos, "labels": self.labels.itos,
                "max_length": self.max_length, "chars": self.chars.itos if self.chars else None,
                "pretrained": self.pretrained.itos if self.pretrained else None,
                "tokenizer": self.tokenizer.to_dict() if self.tokenizer is not None else None,
                "ngrams": dataclasses.asdict(self.ngrams) if self.ngrams is not None else None,
                "ngram_vocab": (torch.from_numpy(self.ngram_vocab.kept) if self.ngram_vocab is not None else None),
                "casing": self.casing, "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TextEncoder":
        """The encoder of :meth:`to_dict`; one saved without a tokenizer (older files) splits on whitespace."""
        return cls(TaskInfo.from_dict(data["task"]), Vocabulary(data["words"]), LabelDictionary(data["labels"]),
                   int(data["max_length"]), chars=Vocabulary(data["chars"]) if data.get("chars") else None,
                   pretrained=PretrainedVocabulary(data["pretrained"]) if data.get("pretrained") else None,
                   tokenizer=tokenizer_from_dict(data["tokenizer"]) if data.get("tokenizer") else None,
                   ngrams=NgramSpec(**data["ngrams"]) if data.get("ngrams") else None,
                   casing=bool(data.get("casing", False)), lowercase=bool(data.get("lowercase", False)),
                   ngram_vocab=(NgramVocabulary(np.asarray(data["ngram_vocab"]))
                                if data.get("ngram_vocab") is not None else None))

    def _char_ids(self, chars: Vocabulary, tokens: Sequence[str]) -> torch.Tensor:
        rows = [chars.encode(tok[:MAX_WORD_CHARS]) or [UNK_ID] for tok in tokens]
        width = max((len(r) for r in rows), default=1)
        out = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def encode(self, examples: Sequence[Example], name: str, *, training: bool = False,
               with_labels: bool = True) -> EncodedDataset:
        """Encode a split. Training: empty sentences are left out of ``usable`` (one warning).
        Evaluation: they stay in ``examples`` (for aligned outputs) but not in ``usable``.

        With ``ngrams.min_count >= 2`` the first training split encoded fits the n-gram vocabulary
        (:class:`~kftune.nlp.ngrams.NgramVocabulary`) from the hashes this pass computes anyway."""
        fit_vocab = (training and self.ngrams is not None and self.ngrams.min_count > 1
                     and self.ngram_vocab is None)
        hashes: list[np.ndarray] = []   # fit_vocab: each document's feature hashes, mapped to rows at the end
        tokens_out, words, chars, pre, labels, usable, grams, casing = [], [], [], [], [], [], [], []
        unseen: Counter[str] = Counter()
        truncated = empty = 0
        for i, ex in enumerate(examples):
            toks = ex.tokens
            if len(toks) > self.max_length:
                truncated += 1
                toks = toks[:self.max_length]
            if toks:
                usable.append(i)
            else:
                empty += 1
            tokens_out.append(toks)
            words.append(torch.tensor(self.words.encode([t.lower() for t in toks] if self.lowercase else toks),
                                      dtype=torch.long))
            if self.casing:
                casing.append(torch.tensor([casing_class(t) for t in toks], dtype=torch.long))
            if self.chars is not None:
                chars.append(self._char_ids(self.chars, toks))
            if self.pretrained is not None:
                pre.append(torch.tensor(self.pretrained.encode(toks), dtype=torch.long))
            if self.ngrams is not None:
                text = ex.text if len(toks) == len(ex.tokens) else None
                if fit_vocab:
                    hashes.append(np.asarray(self.ngrams.hashes(toks, text), dtype=np.uint32))
                else:
                    grams.append(torch.as_tensor(self._ngram_ids(toks, text), dtype=torch.long))
            if with_labels:
                if self.task.is_classification:
                    labels.append(torch.tensor(self.labels.encode([ex.label or ""], unseen)[0], dtype=torch.long))
                else:
                    labels.append(torch.tensor(self.labels.encode((ex.tags or ())[:len(toks)], unseen),
                                               dtype=torch.long))
        if fit_vocab:
            assert self.ngrams is not None
            self.ngram_vocab = NgramVocabulary.build(hashes, self.ngrams.min_count)
            log.info("n-gram vocabulary: %d features in %d or more training documents", len(self.ngram_vocab),
                     self.ngrams.min_count)
            grams = [torch.as_tensor(self.ngram_vocab.rows(h), dtype=torch.long) for h in hashes]
        if truncated:
            log.warning("%s: %d of %d sentences are longer than max_length=%d tokens and were truncated "
                        "(raise max_length to keep them whole)", name, truncated, len(examples), self.max_length)
        if empty:
            if training:
                log.warning("%s: skipped %d empty sentence(s) (no tokens) for training", name, empty)
            else:
                log.warning("%s: %d empty sentence(s) (no tokens); they get a defined empty prediction",
                            name, empty)
        if unseen:
            listed = ", ".join(f"{k!r} ({v}x)" for k, v in sorted(unseen.items()))
            log.warning("%s: %d label(s) never seen in training map to %s: %s", name, len(unseen), UNK_LABEL, listed)
        return EncodedDataset(name=name, examples=list(examples), tokens=tokens_out, words=words,
                              chars=chars if self.chars is not None else None,
                              pretrained=pre if self.pretrained is not None else None,
                              labels=labels if with_labels else None, usable=usable,
                              ngrams=grams if self.ngrams is not None else None,
                              casing=casing if self.casing else None,
                              is_classification=self.task.is_classification, truncated=truncated,
                              unseen_labels=unseen)


# ------------------------------------------------------------------------------------------------
# Batches


@dataclass
class Batch:
    """A padded mini-batch. ``lengths`` stays on the CPU (packing needs it there).

    ``count`` is the number of items the loss is normalised by (sentences for classification,
    tokens for tagging); ``indices`` are positions in the dataset; ``cache_key`` names the dataset
    for the frozen-embedding cache (``None``: do not cache).
    """

    words: torch.Tensor
    lengths: torch.Tensor
    mask: torch.Tensor
    chars: torch.Tensor | None
    pretrained: torch.Tensor | None
    labels: torch.Tensor | None
    indices: list[int]
    tokens: list[tuple[str, ...]]
    count: int
    cache_key: str | None = None
    ngrams: torch.Tensor | None = None          # flat hashed n-gram ids of the batch (EmbeddingBag input)
    ngram_offsets: torch.Tensor | None = None   # [B] start of each example's ids in ``ngrams``
    casing: torch.Tensor | None = None          # [B, T] casing_class() ids (0 at padding)

    @property
    def size(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> "Batch":
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        if device.type == "cpu":
            return self
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, fn: Any) -> "Batch":
        def f(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else fn(t)
        return Batch(words=f(self.words), lengths=self.lengths, mask=f(self.mask), chars=f(self.chars),
                     pretrained=f(self.pretrained), labels=f(self.labels), indices=self.indices,
                     tokens=self.tokens, count=self.count, cache_key=self.cache_key,
                     ngrams=f(self.ngrams), ngram_offsets=f(self.ngram_offsets), casing=f(self.casing))

    def chunks(self, chunk_size: int | None) -> list["Batch"]:
        """Split along the batch dimension (gradient accumulation); each chunk trimmed to its longest."""
        if not chunk_size or chunk_size >= self.size:
            return [self]
        out = []
        for start in range(0, self.size, chunk_size):
            sl = slice(start, start + chunk_size)
            lengths = self.lengths[sl]
            width = int(lengths.max())
            labels = self.labels
            if labels is not None:
                labels = labels[sl] if labels.dim() == 1 else labels[sl, :width]
            count = len(lengths) if self.labels is None or self.labels.dim() == 1 else int(lengths.sum())
            grams = offsets = None
            if self.ngrams is not None and self.ngram_offsets is not None:
                ends = torch.cat([self.ngram_offsets[1:], torch.tensor([self.ngrams.numel()],
                                                                        device=self.ngram_offsets.device)])
                lo, hi = int(self.ngram_offsets[start]), int(ends[sl][-1])
                grams, offsets = self.ngrams[lo:hi], self.ngram_offsets[sl] - lo
            out.append(Batch(
                words=self.words[sl, :width], lengths=lengths, mask=self.mask[sl, :width],
                chars=None if self.chars is None else self.chars[sl, :width],
                pretrained=None if self.pretrained is None else self.pretrained[sl, :width],
                labels=labels, indices=self.indices[sl], tokens=self.tokens[sl], count=count,
                cache_key=self.cache_key, ngrams=grams, ngram_offsets=offsets,
                casing=None if self.casing is None else self.casing[sl, :width]))
        return out


def collate(dataset: EncodedDataset, indices: Sequence[int], cache: bool = False) -> Batch:
    """Pad the examples at ``indices`` into a :class:`Batch` (all on the CPU)."""
    words = pad_sequence([dataset.words[i] for i in indices], batch_first=True, padding_value=PAD_ID)
    lengths = torch.tensor([len(dataset.words[i]) for i in indices], dtype=torch.long)
    mask = torch.arange(words.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    chars = None
    if dataset.chars is not None:
        rows = [dataset.chars[i] for i in indices]
        width = max(r.shape[1] for r in rows)
        chars = torch.zeros(len(rows), words.shape[1], width, dtype=torch.long)
        for b, r in enumerate(rows):
            chars[b, :r.shape[0], :r.shape[1]] = r
    pretrained = None
    if dataset.pretrained is not None:
        pretrained = pad_sequence([dataset.pretrained[i] for i in indices], batch_first=True, padding_value=PAD_ID)
    labels = None
    if dataset.labels is not None:
        if dataset.is_classification:
            labels = torch.stack([dataset.labels[i] for i in indices])
        else:
            labels = pad_sequence([dataset.labels[i] for i in indices], batch_first=True, padding_value=0)
    count = len(indices) if dataset.is_classification else int(lengths.sum())
    casing = None
    if dataset.casing is not None:
        casing = pad_sequence([dataset.casing[i] for i in indices], batch_first=True, padding_value=PAD_ID)
    grams = offsets = None
    if dataset.ngrams is not None:
        rows = [dataset.ngrams[i] for i in indices]
        grams = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        offsets = torch.tensor([0] + [len(r) for r in rows[:-1]], dtype=torch.long).cumsum(0)
    return Batch(words=words, lengths=lengths, mask=mask, chars=chars, pretrained=pretrained, labels=labels,
                 indices=list(indices), tokens=[dataset.tokens[i] for i in indices], count=count,
                 cache_key=dataset.name if cache else None, ngrams=grams, ngram_offsets=offsets, casing=casing)


def batch_order(dataset: EncodedDataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                bucket_factor: int = 50) -> list[list[int]]:
    """The batches of one pass as lists of example positions.

    ``shuffle=True`` (training): a seeded shuffle, then examples sorted by length inside pools of
    ``batch_size * bucket_factor`` (less padding), then the batches shuffled. The same ``seed`` gives
    the same order, which is what makes a resumed epoch identical. ``shuffle=False``: sorted by
    length (evaluation; predictions are put back in order by position).
    """
    if batch_size < 1:
        raise ConfigError([Problem("mini_batch_size", f"{batch_size} must be >= 1")])
    idx = list(dataset.usable)
    lengths = [len(dataset.words[i]) for i in range(len(dataset.words))]
    if not shuffle:
        idx.sort(key=lambda i: (lengths[i], i))
        return [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(idx)
    pool = batch_size * bucket_factor
    batches: list[list[int]] = []
    for s in range(0, len(idx), pool):
        chunk = sorted(idx[s:s + pool], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def iterate_batches(dataset: EncodedDataset, order: Sequence[Sequence[int]], device: torch.device,
                    cache: bool = False) -> Iterator[Batch]:
    """Collate and move batches to ``device``; on CUDA through pinned memory with non-blocking copies."""
    cuda = device.type == "cuda"
    for indices in order:
        batch = collate(dataset, indices, cache=cache)
        if cuda:
            batch = batch.pin_memory().to(device, non_blocking=True)
        yield batch
