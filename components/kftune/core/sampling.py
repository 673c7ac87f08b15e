"""Seeded, stratified carving and downsampling of a split, on keys only (never on the examples).

A caller streams a split once and keeps one *stratification key* per example (its label, or
``None`` for no stratification); these functions return example *indices*, so the examples
themselves are read again only when written out.

Contract (every function here):

- Deterministic: the same keys, fraction and seed give the same indices, on every platform
  (NumPy's ``PCG64`` via ``numpy.random.default_rng([seed, stream])``).
- Stratified: each stratum (distinct key) contributes ``n_k * fraction`` examples, rounded by the
  largest-remainder method so the strata add up exactly to :func:`target_count`; label proportions
  therefore stay within one example per stratum of the source's.
- Nested: for a fixed seed, the examples kept at a smaller fraction are a subset of those kept at
  a larger one (each stratum is permuted once, independently of the fraction, and a prefix is kept).
- Returned index arrays are sorted ascending (file order), as ``numpy.int64``.

Rounding: ``target_count(n, f) = floor(n * f + 0.5)`` (round half up), but at least 1 when ``n > 0``
and ``f > 0``, and at most ``n``. E.g. 5,452 * 0.1 -> 545; 4,907 * 0.1 -> 491; 545 * 0.1 -> 55.
"""

from __future__ import annotations

import math
from typing import Hashable, Sequence

import numpy as np

# Separate random streams so that carving and downsampling never share draws.
STREAM_DEV = 1
STREAM_TEST = 2
STREAM_DOWNSAMPLE = 3


def target_count(n: int, fraction: float) -> int:
    """How many of ``n`` examples a ``fraction`` keeps (see the module docstring for the rounding)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    if n <= 0 or fraction == 0.0:
        return 0
    return min(n, max(1, math.floor(n * fraction + 0.5)))


def allocate(counts: dict[Hashable, int], total: int) -> dict[Hashable, int]:
    """Split ``total`` over strata proportionally to ``counts`` (largest remainder, Hamilton's method).

    Ties of the remainder go to the larger stratum, then to the stratum that sorts first by
    ``repr`` of its key, so the result does not depend on dict order.
    """
    n = sum(counts.values())
    if not 0 <= total <= n:
        raise ValueError(f"total must be in [0, {n}], got {total}")
    if n == 0:
        return {k: 0 for k in counts}
    exact = {k: c * total / n for k, c in counts.items()}
    quota = {k: math.floor(v) for k, v in exact.items()}
    left = total - sum(quota.values())
    order = sorted(counts, key=lambda k: (-(exact[k] - quota[k]), -counts[k], repr(k)))
    for k in order[:left]:
        quota[k] += 1
    return quota


def _strata(keys: Sequence[Hashable | None]) -> dict[Hashable | None, np.ndarray]:
    groups: dict[Hashable | None, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in sorted(groups.items(), key=lambda kv: repr(kv[0]))}


def _permuted_strata(keys: Sequence[Hashable | None], seed: int, stream: int) -> dict[Hashable | None, np.ndarray]:
    rng = np.random.default_rng([int(seed), stream])
    return {k: idx[rng.permutation(len(idx))] for k, idx in _strata(keys).items()}


def sample_indices(keys: Sequence[Hashable | None], fraction: float, seed: int, *,
                   stream: int = STREAM_DOWNSAMPLE) -> np.ndarray:
    """Indices of a stratified sample of ``target_count(len(keys), fraction)`` examples.

    Pass ``keys = [None] * n`` for a plain (unstratified) seeded sample.
    """
    total = target_count(len(keys), fraction)
    if total == len(keys):
        return np.arange(len(keys), dtype=np.int64)
    strata = _permuted_strata(keys, seed, stream)
    quota = allocate({k: len(v) for k, v in strata.items()}, total)
    picked = [v[: quota[k]] for k, v in strata.items()]
    out = np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)
    out.sort()
    return out


def split_indices(keys: Sequence[Hashable | None], fraction: float, seed: int, *,
                  stream: int = STREAM_DEV) -> tuple[np.ndarray, np.ndarray]:
    """Carve ``fraction`` of the examples off (stratified): returns ``(kept, carved)``, disjoint and
    together covering ``range(len(keys))``."""
    carved = sample_indices(keys, fraction, seed, stream=stream)
    mask = np.ones(len(keys), dtype=bool)
    mask[carved] = False
    return np.flatnonzero(mask).astype(np.int64), carved


def tagging_strata(type_sets: Sequence[frozenset[str]]) -> list[str]:
    """A stratification key per sentence for sequence labelling: the sentence's *rarest* entity type.

    ``type_sets[i]`` is the set of entity types in sentence ``i`` (``frozenset()`` for a sentence of
    ``O`` tags only). Rarity is the number of sentences that contain the type. Each sentence lands in
    exactly one stratum (``"O"`` when it has no entity), so the proportion of sentences that mention
    each type - and of sentences with no entity at all - is kept under downsampling, and rare types
    are not lost. Ties in rarity go to the type that sorts first.
    """
    freq: dict[str, int] = {}
    for types in type_sets:
        for t in types:
            freq[t] = freq.get(t, 0) + 1
    return ["O" if not types else min(types, key=lambda t: (freq[t], t)) for types in type_sets]
