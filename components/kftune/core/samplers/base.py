"""The sampler contract, and the reading of Katib ``algorithmSettings`` that every algorithm shares.

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
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np

from kftune.core import limits
from kftune.core.errors import ConfigError, Problem
from kftune.core.space import SearchSpace
from kftune.core.trials import Assignment, Objective, Trial, check_history, check_objective

log = logging.getLogger(__name__)

SETTINGS_PATH = "spec.search.algorithm.algorithmSettings"
#: The upper bound of a float setting that names none of its own (e.g. TPE's ``prior_weight``).
_MAX_FLOAT_SETTING = 1e6


def normalize_settings(settings: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
                       path: str = SETTINGS_PATH) -> dict[str, str]:
    """``{name: value}`` from a mapping or Katib's ``[{name, value}, ...]`` list; values as strings."""
    if settings is None:
        return {}
    if isinstance(settings, Mapping):
        items = list(settings.items())
    else:
        items = []
        for i, item in enumerate(settings):
            if not isinstance(item, Mapping) or "name" not in item:
                raise ConfigError([Problem(f"{path}[{i}]", f"expected {{name, value}}, got {item!r}")])
            items.append((item["name"], item.get("value")))
    out: dict[str, str] = {}
    for name, value in items:
        if value is None or isinstance(value, bool):
            raise ConfigError([Problem(f"{path}.{name}", f"{value!r} is not a value; give a string such as \"3\"")])
        out[str(name)] = value if isinstance(value, str) else str(value)
    return out


class SettingsReader:
    """Reads typed values out of ``algorithmSettings``, collecting every problem before raising.

    >>> r = SettingsReader({"gamma": "0.25"}, known=("gamma",), algorithm="tpe")
    >>> r.float("gamma", 0.25, low=0, high=1)
    0.25
    >>> r.done()
    """

    def __init__(self, settings: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None, *,
                 known: Iterable[str], algorithm: str, path: str = SETTINGS_PATH):
        self.path, self.algorithm = path, algorithm
        self.problems: list[Problem] = []
        try:
            self.values = normalize_settings(settings, path)
        except ConfigError as exc:
            self.values = {}
            self.problems.extend(exc.problems)
        known = tuple(known)
        for name in self.values:
            if name not in known:
                self.problems.append(Problem(f"{path}.{name}", f"unknown setting for {algorithm}; "
                                             f"known settings: {sorted(known) or 'none'}"))

    def _bad(self, name: str, message: str) -> None:
        self.problems.append(Problem(f"{self.path}.{name}", f"{self.values[name]!r}: {message}"))

    def int(self, name: str, default: int | None, *, minimum: int | None = None, maximum: int | None = None,
            unit: str = "") -> int | None:
        """The setting as an int (``default`` when absent) in ``[minimum, maximum]``; ``unit`` for the message."""
        if name not in self.values:
            return default
        try:
            value = int(self.values[name])
        except ValueError:  # also for more digits than Python converts
            self._bad(name, "is not an integer")
            return default
        units = f" (units: {unit})" if unit else ""
        if minimum is not None and value < minimum:
            self._bad(name, f"must be >= {minimum}{units}")
            return default
        if maximum is not None and value > maximum:
            self._bad(name, f"must be <= {maximum}{units}")
            return default
        return value

    def seed(self, name: str) -> int | None:
        """A seed setting (``random_state``): an int in ``[0, 2**32-1]``, ``None`` when absent."""
        return self.int(name, None, minimum=0, maximum=limits.MAX_SEED, unit="seed (32-bit)")

    def float(self, name: str, default: float | None, *, low: float | None = None, high: float | None = None,
              low_open: bool = True, high_open: bool = False) -> float | None:
        """The setting as a finite float in the interval given (open or closed ends)."""
        if name not in self.values:
            return default
        try:
            value = float(self.values[name])
        except ValueError:
            self._bad(name, "is not a number")
            return default
        if high is None:
            high, high_open = _MAX_FLOAT_SETTING, False
        ok = np.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            lb = "(" if low_open else "["
            hb = ")" if high_open else "]"
            self._bad(name, f"must be a number in {lb}{'-inf' if low is None else low}, "
                            f"{'inf' if high is None else high}{hb}")
            return default
        return value

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        """The setting as one of ``choices``."""
        if name not in self.values:
            return default
        if self.values[name] not in choices:
            self._bad(name, f"must be one of {list(choices)}")
            return default
        return self.values[name]

    def done(self) -> None:
        """Raise :class:`ConfigError` with every problem found so far, if any."""
        if self.problems:
            raise ConfigError(self.problems)


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
