"""Samplers by Katib ``algorithmName``: ``random``, ``tpe``, ``grid``, and kftune's ``coarse-to-fine`` and ``bohb``.

Every sampler keeps the contract in :mod:`kftune.core.samplers.base`::

    get_sampler("tpe").suggest(space, history, n, seed=1, settings={"n_startup_jobs": "5"},
                               objective="maximize", max_trials=24)
"""

from __future__ import annotations

from kftune.core.errors import ConfigError, Problem
from kftune.core.samplers.base import Sampler
from kftune.core.samplers.bohb import BOHBSampler
from kftune.core.samplers.coarse_to_fine import CoarseToFineSampler
from kftune.core.samplers.grid import GridSampler
from kftune.core.samplers.random import RandomSampler
from kftune.core.samplers.tpe import TPESampler

SAMPLERS: dict[str, type[Sampler]] = {
    "random": RandomSampler,
    "tpe": TPESampler,
    "grid": GridSampler,
    "coarse-to-fine": CoarseToFineSampler,
    "bohb": BOHBSampler,
}


def get_sampler(name: str) -> Sampler:
    """The sampler for Katib ``algorithmName`` ``name``; :class:`ConfigError` listing the known names."""
    try:
        return SAMPLERS[name]()
    except (KeyError, TypeError):
        raise ConfigError([Problem("spec.search.algorithm.algorithmName",
                                   f"unknown algorithm {name!r}; known: {sorted(SAMPLERS)}")]) from None


__all__ = ["SAMPLERS", "BOHBSampler", "CoarseToFineSampler", "GridSampler", "RandomSampler", "Sampler", "TPESampler",
           "get_sampler"]
