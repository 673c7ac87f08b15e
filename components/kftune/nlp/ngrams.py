"""Hashed n-gram features for the fastText-style document encoder (Joulin et al. 2017).

A document becomes a bag of feature ids: every token n-gram of order 1..``word_ngrams`` and every
character n-gram of length ``char_min``..``char_max`` of each space-separated word of the raw text,
the word wrapped in ``<`` and ``>`` as fastText does (so prefixes and suffixes are features of their
own). Each feature string is hashed with CRC-32 (stable across processes and platforms, unlike
Python's ``hash``) into ``buckets`` rows of one ``EmbeddingBag``. Token and character features get
different prefixes, so the token ``가`` and the character ``가`` are different features.

With Korean morpheme tokens (``영화/NNG``, ``었/EP``) the token n-grams carry the morphology and the
character n-grams of the raw text carry what the analyser gets wrong (spacing errors, typos, slang):
the two views together are what a strong linear baseline uses, inside the neural model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence
from zlib import crc32

import numpy as np


@dataclass(frozen=True)
class NgramSpec:
    """Which features a document yields and how many hash buckets they share."""

    word_ngrams: int = 2        # token n-grams of order 1..word_ngrams (0: none)
    char_min: int = 2           # character n-grams of length char_min..char_max (char_max 0: none)
    char_max: int = 4
    buckets: int = 1 << 20
    min_count: int = 1          # >= 2: a vocabulary of the features in that many training documents (NgramVocabulary)

    def hashes(self, tokens: Sequence[str], text: str | None = None) -> list[int]:
        """The 32-bit CRC of each feature string of one document, in order (repeats kept)."""
        out: list[int] = []
        append = out.append
        for n in range(1, self.word_ngrams + 1):
            prefix = f"w{n}\x1f"
            for i in range(len(tokens) - n + 1):
                append(crc32((prefix + "\x1f".join(tokens[i:i + n])).encode("utf-8")))
        if self.char_max > 0:
            words = (text if text is not None else " ".join(tokens)).split()
            for word in words:
                wrapped = f"<{word}>"
                for n in range(self.char_min, self.char_max + 1):
                    for i in range(len(wrapped) - n + 1):
                        append(crc32(("c\x1f" + wrapped[i:i + n]).encode("utf-8")))
        return out

    def ids(self, tokens: Sequence[str], text: str | None = None) -> list[int]:
        """The hashed feature ids of one document, each in ``[0, buckets)`` (empty when it has no tokens
        and no text)."""
        buckets = self.buckets
        return [h % buckets for h in self.hashes(tokens, text)]


class NgramVocabulary:
    """The features seen in at least ``min_count`` training documents, one row each (fastText's
    ``minCount``, applied to n-grams): no hash collisions among the kept features, and the rare ones,
    which a bag can only memorise, are left out (a document may then have no feature: its bag is the
    zero vector). On full NSMC, 0.83 M of 3.07 M morpheme and character n-grams are in two or more
    reviews, so the table is smaller than the 2**20 hashed buckets and a rare n-gram no longer shares
    a row with a frequent one.

    Stored as the sorted 32-bit CRCs of the kept feature strings (:meth:`NgramSpec.hashes`); two feature
    strings with the same CRC share a row (about one pair in 10**4 at a million features)."""

    def __init__(self, kept: np.ndarray):
        self.kept = np.asarray(kept, dtype=np.int64)
        if self.kept.ndim != 1 or (self.kept.size > 1 and not bool(np.all(self.kept[1:] > self.kept[:-1]))):
            raise ValueError("an n-gram vocabulary is a sorted array of distinct feature hashes")

    @classmethod
    def build(cls, documents: Iterable[Sequence[int]], min_count: int) -> "NgramVocabulary":
        """The vocabulary of ``documents`` (each one document's :meth:`NgramSpec.hashes`): the hashes found
        in at least ``min_count`` of them (counted once per document)."""
        chunks = [np.unique(np.asarray(doc, dtype=np.uint32)) for doc in documents if len(doc)]
        if not chunks:
            return cls(np.zeros(0, dtype=np.int64))
        values, counts = np.unique(np.concatenate(chunks), return_counts=True)
        return cls(values[counts >= max(1, min_count)].astype(np.int64))

    def __len__(self) -> int:
        return int(self.kept.size)

    def rows(self, hashes: Sequence[int]) -> np.ndarray:
        """The rows of the kept features among ``hashes`` (in order; others dropped)."""
        if not len(hashes) or not self.kept.size:
            return np.zeros(0, dtype=np.int64)
        h = np.asarray(hashes, dtype=np.int64)
        at = np.searchsorted(self.kept, h)
        at[at == self.kept.size] = 0
        return at[self.kept[at] == h]


def feature_weights(docs: Sequence[Sequence[int]], labels: Sequence[int], buckets: int, num_labels: int,
                    kind: str) -> np.ndarray:
    """One weight per bucket for the bag's weighted mean, from the training documents' feature ids and
    label indices (``kind`` ``none``: all 1).

    - ``idf``: ``log((n + 1) / (df + 1)) + 1``, scikit-learn's smoothed IDF over documents.
    - ``nb-idf``: the IDF times the feature's naive-Bayes log-count ratio in absolute value,
      ``max_k |log(p(f | k) / p(f | not k))|`` with add-one smoothing of the document counts (Wang and
      Manning 2012's NBSVM weighting, taken one-vs-rest so it holds for any number of classes): a feature
      that separates the classes weighs more, whichever class it points to; the bag learns the direction.
      A bucket never seen in training gets the weight of a feature seen in no document of any class.

    The weights are a statistic of the training split, like a vocabulary: computed once, saved with the
    model, never refitted on dev or test."""
    if kind == "none":
        return np.ones(buckets, dtype=np.float32)
    counts = np.zeros((max(num_labels, 1), buckets), dtype=np.float64)
    per_class = np.zeros(max(num_labels, 1), dtype=np.float64)
    for ids, label in zip(docs, labels):
        unique = np.unique(np.asarray(ids, dtype=np.int64))
        counts[label, unique] += 1
        per_class[label] += 1
    n = len(docs)
    df = counts.sum(axis=0)
    idf = np.log((n + 1) / (df + 1)) + 1.0
    if kind == "idf":
        return idf.astype(np.float32)
    present = [k for k in range(len(per_class)) if per_class[k] > 0]
    ratio = np.zeros(buckets, dtype=np.float64)
    total = counts.sum(axis=0)
    for k in present:
        inside = (counts[k] + 1) / (counts[k].sum() + buckets)
        rest = total - counts[k]
        outside = (rest + 1) / (rest.sum() + buckets)
        ratio = np.maximum(ratio, np.abs(np.log(inside / outside)))
    if not math.isfinite(float(ratio.max(initial=0.0))):  # pragma: no cover - counts are finite
        raise ValueError("non-finite feature weights")
    return (ratio * idf).astype(np.float32)
