"""The early-stopping contract: what every rule keeps, and the two shapes a rule takes.

A rule is a frozen dataclass configured from Katib ``earlyStopping.algorithmSettings`` by
:meth:`EarlyStoppingRule.from_settings` and, like a sampler, a pure function of what it is handed:

* **Settings**: :attr:`~EarlyStoppingRule.known_settings` names and describes every setting; unknown names
  and bad values raise :class:`~kftune.core.errors.ConfigError` with the path
  ``spec.search.earlyStopping.algorithmSettings.<name>``, every problem at once.
* **Stateless over an explicit history**: decisions depend only on the arguments. ``history`` is the
  search's trials (see :mod:`kftune.core.trials`), oldest first; it is never modified. A search killed and
  restarted with the same history gets the same decisions.
* **Objective**: ``"maximize"`` or ``"minimize"``, checked; ties go to the older trial.

The two shapes, for the two ways a search runs a trial (:class:`kftune.core.search_policy.SearchPolicy`
asks which one a rule is with ``isinstance``):

* :class:`StoppingRule` (``medianstop``): a trial trains its full budget unless the rule, asked after each
  report, stops it: :meth:`~StoppingRule.decide`.
* :class:`BudgetRule` (``successive-halving``, ``asha``, ``hyperband``): a new trial
  trains :attr:`~BudgetRule.first_budget` epochs and pauses; :meth:`~BudgetRule.promotions` lists the
  paused trials to resume and up to which budget; :meth:`~BudgetRule.is_pruned` says which are (now) left
  behind. Budgets are epochs, :attr:`~BudgetRule.max_budget` the most any trial trains.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, NamedTuple, Sequence, TypeVar

from kftune.core.algorithm_settings import EARLY_STOPPING_SETTINGS_PATH, SettingsReader
from kftune.core.trials import Objective, Trial

#: Where the spec keeps the rule's settings (``spec.search.earlyStopping.algorithmSettings``).
SETTINGS_PATH = EARLY_STOPPING_SETTINGS_PATH

Settings = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
_R = TypeVar("_R", bound="EarlyStoppingRule")


@dataclass(frozen=True)
class StopDecision:
    """Whether to stop a trial now, and why (a sentence for the trial record)."""

    stop: bool
    reason: str


class Promotion(NamedTuple):
    """Resume trial ``trial_id`` from its checkpoint and train it up to ``budget`` epochs in total."""

    trial_id: str
    budget: int


class EarlyStoppingRule(abc.ABC):
    """Base class of the early-stopping rules (see the module docstring for the contract).

    Subclasses are frozen dataclasses whose fields are the settings; they set :attr:`name` (the
    ``earlyStopping.algorithmName``) and :attr:`known_settings` (``{setting: description}``), and implement
    :meth:`_read_settings`.
    """

    name: ClassVar[str]
    known_settings: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def from_settings(cls: type[_R], settings: Settings = None, *, max_epochs: int | None = None) -> _R:
        """The rule configured from Katib ``algorithmSettings`` (a ``{name: value}`` mapping or Katib's
        ``[{name, value}, ...]`` list). ``max_epochs`` (the training's maxEpochs) is there for rules whose
        defaults depend on it. Raises :class:`~kftune.core.errors.ConfigError` naming every bad setting."""
        reader = SettingsReader(settings, known=cls.known_settings, algorithm=cls.name, path=SETTINGS_PATH)
        values = cls._read_settings(reader, max_epochs=max_epochs)
        reader.done()
        return cls(**values)

    @classmethod
    @abc.abstractmethod
    def _read_settings(cls, reader: SettingsReader, *, max_epochs: int | None) -> dict[str, Any]:
        """The constructor's arguments, read with ``reader`` (its problems are raised after this returns)."""


class StoppingRule(EarlyStoppingRule):
    """A rule that judges a running trial after each report; trials are never paused."""

    @abc.abstractmethod
    def decide(self, trial: Trial, history: Sequence[Trial], objective: Objective) -> StopDecision:
        """Whether ``trial`` (running, with its intermediate values so far) stops now, and why, judged
        against ``history``."""

    def should_stop(self, trial: Trial, history: Sequence[Trial], objective: Objective) -> bool:
        """Whether ``trial`` (running, with its intermediate values so far) should be stopped now."""
        return self.decide(trial, history, objective).stop


class BudgetRule(EarlyStoppingRule):
    """A rule that gives trials budgets (epochs) by rung: trials pause at a rung, the promoted ones resume.

    Subclasses have a ``max_budget`` field (the last rung) and set :attr:`synchronous`: whether a rung is
    decided only once no trial can still reach it (the planner then runs the search cohort by cohort) or
    as results arrive.
    """

    synchronous: ClassVar[bool]
    max_budget: int

    @abc.abstractmethod
    def rungs(self) -> tuple[int, ...]:
        """The rung budgets in epochs, ascending, the last one ``max_budget``."""

    @property
    def first_budget(self) -> int:
        """The budget a new trial trains for before its first decision."""
        return self.rungs()[0]

    def next_budget(self, budget: int) -> int | None:
        """The rung above ``budget`` epochs (where a promoted trial stops next), or ``None`` at the top."""
        return next((r for r in self.rungs() if r > budget), None)

    def cohort(self, index: int) -> tuple[int, int] | None:
        """``[start, end)`` (trial indices, before ``maxTrialCount`` caps it) of the trials decided together
        with trial ``index``, for a rule that groups trials itself (Hyperband's brackets); ``None``: the
        planner's cohorts (the whole search, or a coarse-to-fine round)."""
        return None

    def first_budget_of(self, index: int) -> int:
        """The budget the ``index``-th trial of the search (0-based) trains for before its first decision."""
        return self.first_budget

    def bracket_of(self, index: int) -> int | None:
        """The bracket the ``index``-th trial belongs to (Hyperband's ``s``), or ``None`` for a rule without
        brackets. A pure function of the index, so a resumed search re-derives it from the history."""
        return None

    @abc.abstractmethod
    def promotions(self, history: Sequence[Trial], objective: Objective) -> list[Promotion]:
        """The paused trials to resume now, each with the budget to train up to. Each is returned until
        the history shows it resumed."""

    @abc.abstractmethod
    def is_pruned(self, trial: Trial, history: Sequence[Trial], objective: Objective) -> bool:
        """Whether ``trial``, paused at a rung below ``max_budget``, is (as of ``history``) not to go on."""


__all__ = ["SETTINGS_PATH", "BudgetRule", "EarlyStoppingRule", "Promotion", "StopDecision", "StoppingRule"]
