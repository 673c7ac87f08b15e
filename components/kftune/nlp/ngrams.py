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
from typing import Sequence
from zlib import crc32

import numpy as np


@dataclass(frozen=True)
class NgramSpec:
    """Which features a document yields and how many hash buckets they share."""

    word_ngrams: int = 2        # token n-grams of order 1..word_ngrams (0: none)
    char_min: int = 2           # character n-grams of length char_min..char_max (char_max 0: none)
    char_max: int = 4
    buckets: int = 1 << 20

    def ids(self, tokens: Sequence[str], text: str | None = None) -> list[int]:
        """The feature ids of one document (empty when it has no tokens and no text)."""
        buckets = self.buckets
        out: list[int] = []
        append = out.append
        for n in range(1, self.word_ngrams + 1):
            prefix = f"w{n}\x1f"
            for i in range(len(tokens) - n + 1):
                append(crc32((prefix + "\x1f".join(tokens[i:i + n])).encode("utf-8")) % buckets)
        if self.char_max > 0:
            words = (text if text is not None else " ".join(tokens)).split()
            for word in words:
                wrapped = f"<{word}>"
                for n in range(self.char_min, self.char_max + 1):
                    for i in range(len(wrapped) - n + 1):
                        append(crc32(("c\x1f" + wrapped[i:i + n]).encode("utf-8")) % buckets)
        return out


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
