"""The sampler contract. (The reading of Katib ``algorithmSettings`` that every algorithm shares is
:mod:`kftune.core.algorithm_settings`'s; :class:`SettingsReader` is re-exported here.)

A sampler is a pure function of its inputs (Katib's suggestion services keep the same split between
the algorithm and its transport: ``pkg/suggestion/v1beta1/hyperopt/base_service.py`` vs ``service.py``)::

    sampler.suggest(space, history, n, *, seed, settings, objective, max_trials) -> list[Assignment]

Contract, for every sampler:

* **Deterministic**: the same ``(space, history, n, seed, settings, objective, max_trials)`` gives the
  same assignments, on any machine, in any process. Different seeds give different suggestions
  (except where the algorithm is seed-free, e.g. grid).
* **Stateless over an explicit history**: everything the sampler knows about earlier trials is in
  ``history`` (see :mod:`kftune.core.trials`): oldest first, in the order the trials were suggested,
  with ``running`` trials included (they are pending points, not results). Nothing is cached between
  calls, so a search that is killed and restarted with the same history gets the same answers.
  ``history`` is never modified.
* **Feasible and typed**: every assignment is in ``space`` (``space.contains(a)``), keyed by parameter
  name in the space's order, with ``int``/``float``/``str`` values as the parameter types say.
* **Objective**: ``"maximize"`` or ``"minimize"``; samplers that learn from results prefer larger or
  smaller objective values accordingly. ``failed`` trials (and trials without a finite objective)
  count as the worst results; they never break a sampler.
* **At most n**: a sampler returns ``n`` assignments, or fewer when it cannot do better now:
  when the space is exhausted (grid), or when it must wait for running trials to finish (the round
  barrier of coarse-to-fine). An empty answer while ``history`` has no running trial means the
  sampler has nothing more to suggest; the search should stop.
* **Settings** are Katib ``algorithmSettings`` as ``{name: string}``; unknown names and bad values
  raise :class:`~kftune.core.errors.ConfigError` naming the setting. :meth:`Sampler.check` raises the
  same errors up front, before any trial runs.
* ``max_trials`` is the experiment's ``maxTrialCount`` (``None`` when unlimited); samplers that plan
  rounds use it, the others ignore it. Stopping at ``max_trials`` is the caller's job.
"""

from __future__ import annotations

import abc
import logging
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from kftune.core.algorithm_settings import ALGORITHM_SETTINGS_PATH, SettingsReader, normalize_settings
from kftune.core.errors import ConfigError, Problem
from kftune.core.space import SearchSpace
from kftune.core.trials import Assignment, Objective, Trial, check_history, check_objective

log = logging.getLogger(__name__)

#: Where the spec keeps the samplers' settings (``spec.search.algorithm.algorithmSettings``).
SETTINGS_PATH = ALGORITHM_SETTINGS_PATH


def derive_seed(*parts: int) -> int:
    """A 32-bit seed mixed from ``parts`` with ``numpy.random.SeedSequence`` (stable across platforms)."""
    return int(np.random.SeedSequence([int(p) % (2**63) for p in parts]).generate_state(1)[0])


class Sampler(abc.ABC):
    """Base class of the samplers. See the module docstring for the contract ``suggest`` keeps.

    Subclasses set :attr:`name` (Katib's ``algorithmName``) and :attr:`known_settings`
    (``{setting: description}``), and implement :meth:`_suggest`.
    """

    name: ClassVar[str]
    known_settings: ClassVar[Mapping[str, str]] = {}

    def check(self, space: SearchSpace, settings: Mapping[str, Any] | None = None, *,
              max_trials: int | None = None) -> None:
        """Raise :class:`ConfigError` if ``settings`` (or the space, for this algorithm) cannot be used."""
        self._read_settings(space, settings, max_trials)

    @abc.abstractmethod
    def _read_settings(self, space: SearchSpace, settings: Mapping[str, Any] | None,
                       max_trials: int | None) -> Any:
        """Parse and validate the settings; return what :meth:`_suggest` needs."""

    @abc.abstractmethod
    def _suggest(self, space: SearchSpace, history: Sequence[Trial], n: int, *, seed: int, config: Any,
                 objective: Objective, max_trials: int | None) -> list[Assignment]:
        """The algorithm, with validated arguments."""

    def suggest(self, space: SearchSpace, history: Sequence[Trial], n: int, *, seed: int,
                settings: Mapping[str, Any] | None = None, objective: Objective = "maximize",
                max_trials: int | None = None) -> list[Assignment]:
        """Up to ``n`` new assignments given ``history``; see the module docstring for the contract."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ConfigError([Problem("n", f"{n!r} must be a non-negative integer")])
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ConfigError([Problem("seed", f"{seed!r} must be an integer")])
        if max_trials is not None and (isinstance(max_trials, bool) or max_trials < 1):
            raise ConfigError([Problem("spec.search.maxTrialCount", f"{max_trials!r} must be a positive integer")])
        check_objective(objective)
        history = tuple(history)
        check_history(history)
        config = self._read_settings(space, settings, max_trials)
        if n == 0:
            return []
        out = self._suggest(space, history, int(n), seed=int(seed), config=config, objective=objective,
                            max_trials=max_trials)
        for a in out:  # the contract, enforced: a bug here must never reach a training pod
            problems = space.problems(a)
            if problems:
                raise RuntimeError(f"{self.name} suggested an infeasible assignment {a}: {problems}")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def usable_history(space: SearchSpace, history: Sequence[Trial]) -> list[Trial]:
    """The trials whose assignment is a point of ``space`` (others, e.g. from a wider earlier range, are
    skipped with a debug log: a model of ``space`` cannot place them)."""
    out = [t for t in history if space.contains(t.assignment)]
    if len(out) < len(history):
        log.debug("%d of %d history trials lie outside the search space and are not used",
                  len(history) - len(out), len(history))
    return out


__all__ = ["SETTINGS_PATH", "Sampler", "SettingsReader", "derive_seed", "normalize_settings", "usable_history"]
