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

from dataclasses import dataclass
from typing import Sequence
from zlib import crc32


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
