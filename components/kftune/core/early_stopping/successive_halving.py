"""Successive halving (synchronous) and ASHA (asynchronous successive halving), budgets in epochs.

A trial starts with the smallest budget, the first *rung*. When it has trained that many epochs it
stops (state ``pruned``, its checkpoint kept) and the rule decides whether it is *promoted*: resumed
from its checkpoint up to the next rung's budget. Rungs are ``min_budget * eta**k`` below
``max_budget``, then ``max_budget`` itself (eta=3, budgets 1..9: rungs 1, 3, 9). At each rung the top
``1/eta`` of the trials that reached it go on.

``asha`` (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020): decisions
are made as results arrive. A trial is promoted from rung ``k`` when it is among the best
``floor(n_k / eta)`` of the ``n_k`` trials that reached rung ``k`` so far and has not been promoted
yet; higher rungs are served first. No one waits, and a trial that was not promoted may be later,
when more trials have reached its rung.

``successive-halving`` (synchronous; Jamieson & Talwalkar 2016): rung ``k`` is decided only when no
trial of the history can still reach it (nothing running below it, no promotion into it pending);
then the best ``max(1, floor(n_k / eta))`` go on and the rest are pruned for good. The caller passes
the cohort as the history (a round of coarse-to-fine, or the whole search once all its trials ran).

The rung math lives in :class:`_Bracket` (as Ray Tune's ``async_hyperband.py`` keeps its ``_Bracket``),
apart from the bookkeeping over the history. A trial's value at a rung is its last intermediate value
at a step ``<=`` the rung's budget, provided it trained at least that budget; failed and completed
trials that reached a rung count towards it (they take places in the top ``1/eta`` but are never
resumed). Ties go to the older trial.

Settings: ``eta`` (an integer >= 2; 2 for ``successive-halving``, 3 for ``asha``), ``min_budget`` (2 epochs, or 1 when ``max_budget`` is 2),
``max_budget`` (epochs; defaults to the training's ``maxEpochs``).

Why a 2-epoch first rung by default: after one epoch of training from scratch the ranking mostly says
which trials *start* fast (high learning rates), not which end best, and synchronous halving prunes 2
of 3 trials on it. On TREC_6 (``benchmarks/results/search_efficiency_reduced.md``) moving the first rung
from 1 to 2 epochs raised the chosen configuration's retrained dev accuracy by 1.2 points and test by 2.6.
Why ``eta`` 2 for synchronous halving (halving proper, as Jamieson & Talwalkar ran it): with budgets of
a few epochs, ``eta`` 3 sends one trial in 9 to the full budget and decides the rest on 2-epoch scores,
where the fastest starters lead; keeping half at each rung lets more trials reach the later rungs, where
the comparison is closer to the full budget's. On TREC_6 at full scale (3 search seeds, same epochs) the
chosen configuration retrained to test accuracy 90.47 with ``eta`` 2 against 89.33 with ``eta`` 3
(``benchmarks/results/search_efficiency_full_experiments.md``). ASHA keeps 3: it never waits for a rung to fill, so a
slow starter is not judged against a full cohort at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

from kftune.core import limits
from kftune.core.algorithm_settings import SettingsReader
from kftune.core.early_stopping.base import SETTINGS_PATH, BudgetRule, Promotion
from kftune.core.errors import ConfigError, Problem
from kftune.core.trials import Objective, Trial, check_objective, sign

#: Epochs of the first rung unless ``min_budget`` is set (see the module docstring for why not 1).
DEFAULT_MIN_BUDGET = 2


def default_min_budget(max_budget: int | None) -> int:
    """``min_budget`` when the settings leave it out: :data:`DEFAULT_MIN_BUDGET`, or 1 when ``max_budget``
    leaves no room above it (a 2-epoch search halves at 1 epoch)."""
    return DEFAULT_MIN_BUDGET if max_budget is None or max_budget > DEFAULT_MIN_BUDGET else 1


@dataclass(frozen=True)
class _Bracket:
    """Rungs and cut-offs of one successive-halving bracket; no knowledge of trials."""

    min_budget: int
    max_budget: int
    eta: int

    @property
    def rungs(self) -> tuple[int, ...]:
        out, b = [], self.min_budget
        while b < self.max_budget:
            out.append(b)
            b *= self.eta
        return (*out, self.max_budget)

    def next_rung(self, budget: int) -> int | None:
        """The first rung budget above ``budget``; ``None`` at or past ``max_budget``."""
        for r in self.rungs:
            if r > budget:
                return r
        return None

    def quota(self, reached: int, synchronous: bool) -> int:
        """How many of the ``reached`` trials at a rung go on: ``floor(reached / eta)``; synchronous
        halving keeps at least one so that some trial reaches ``max_budget``."""
        q = reached // self.eta
        return max(q, 1) if synchronous and reached > 0 else q

    def top(self, scored: Sequence[tuple[int, float]], objective: Objective, synchronous: bool) -> list[int]:
        """Of ``(key, value)`` pairs at one rung, the keys of the best ``quota``, best first
        (ties: smaller key, i.e. older trial, first)."""
        s = sign(objective)
        ordered = sorted(scored, key=lambda kv: (-s * kv[1], kv[0]))
        return [k for k, _ in ordered[: self.quota(len(scored), synchronous)]]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def eta_and_min_budget_problems(eta: Any, min_budget: Any) -> list[Problem]:
    """The checks every halving rule (successive halving, ASHA, Hyperband) makes of ``eta`` and ``min_budget``."""
    problems = []
    if not _is_int(eta) or eta < 2:
        problems.append(Problem(f"{SETTINGS_PATH}.eta", f"{eta!r} must be an integer >= 2"))
    if not _is_int(min_budget) or min_budget < 1:
        problems.append(Problem(f"{SETTINGS_PATH}.min_budget", f"{min_budget!r} must be an integer >= 1"))
    return problems


def read_halving_settings(reader: SettingsReader, *, eta: int, max_epochs: int | None,
                          min_budget: Callable[[int | None], int]) -> dict[str, Any]:
    """``eta``, ``min_budget`` and ``max_budget`` as every halving rule reads them: ``eta`` defaults to ``eta``,
    ``max_budget`` to ``max_epochs`` (the training's maxEpochs), ``min_budget`` to ``min_budget(max_budget)``."""
    eta = reader.int("eta", eta, minimum=2, maximum=limits.MAX_TRIALS, unit="reduction factor")
    max_budget = reader.int("max_budget", max_epochs, minimum=1, maximum=limits.MAX_EPOCHS, unit="epochs")
    first = reader.int("min_budget", min_budget(max_budget), minimum=1, maximum=limits.MAX_EPOCHS, unit="epochs")
    if max_budget is None and not reader.problems:  # reported alone, once the settings themselves are good
        reader.problems.append(Problem(f"{SETTINGS_PATH}.max_budget",
                                       "not set: give max_budget (epochs) or the training's maxEpochs"))
    return {"eta": eta, "min_budget": first, "max_budget": max_budget}


@dataclass(frozen=True)
class SuccessiveHalving(BudgetRule):
    """Synchronous successive halving over an explicit history. Pure: no state between calls."""

    name: ClassVar[str] = "successive-halving"
    synchronous: ClassVar[bool] = True
    known_settings: ClassVar[Mapping[str, str]] = {
        "eta": "int >= 2; 1/eta of the trials at a rung go on (default 2)",
        "min_budget": "int >= 1; epochs of the first rung (default 2, or 1 when max_budget is 2)",
        "max_budget": "int > min_budget; epochs of the last rung (default: the training's maxEpochs)",
    }

    eta: int = 2
    min_budget: int = DEFAULT_MIN_BUDGET
    max_budget: int = 9

    def __post_init__(self) -> None:
        problems = eta_and_min_budget_problems(self.eta, self.min_budget)
        if not _is_int(self.min_budget) or self.min_budget < 1:
            pass  # max_budget is compared with a good min_budget only
        elif (isinstance(self.max_budget, bool) or not isinstance(self.max_budget, int)
              or self.max_budget <= self.min_budget):
            problems.append(Problem(f"{SETTINGS_PATH}.max_budget",
                                    f"{self.max_budget!r} must be an integer > min_budget ({self.min_budget}); "
                                    "with a single budget there is nothing to halve"))
        if problems:
            raise ConfigError(problems)

    @classmethod
    def _read_settings(cls, reader: SettingsReader, *, max_epochs: int | None) -> dict[str, Any]:
        """``max_budget`` defaults to ``max_epochs`` (the training's maxEpochs)."""
        return read_halving_settings(reader, eta=cls.eta, max_epochs=max_epochs,  # eta: 2, ASHA's 3
                                     min_budget=default_min_budget)

    # -- rung math ------------------------------------------------------------------------------
    @property
    def _bracket(self) -> _Bracket:
        return _Bracket(self.min_budget, self.max_budget, self.eta)

    def rungs(self) -> tuple[int, ...]:
        """The rung budgets in epochs, ascending, the last one ``max_budget``."""
        return self._bracket.rungs

    def next_budget(self, budget: int) -> int | None:
        """The rung above ``budget`` epochs (where a promoted trial stops next), or ``None`` at the top."""
        return self._bracket.next_rung(budget)

    # -- bookkeeping over the history --------------------------------------------------------------
    @staticmethod
    def rung_value(trial: Trial, budget: int) -> float | None:
        """The trial's value at rung ``budget``: its last intermediate value at a step ``<= budget``,
        if it trained at least ``budget`` epochs."""
        if trial.budget_used < budget:
            return None
        values = trial.values_upto(budget)
        return values[-1] if values else None

    def _decisions(self, history: Sequence[Trial], objective: Objective) -> tuple[list[Promotion], dict[str, int]]:
        """(promotions to make now, {trial id: rung budget} of the trials decided against)."""
        return halving_decisions(self.rungs(), self.eta, history, objective, self.synchronous)

    def promotions(self, history: Sequence[Trial], objective: Objective) -> list[Promotion]:
        """The paused trials to resume now, each with the budget to train up to (higher rungs first
        for ASHA, best first within a rung). Each is returned until the history shows it resumed."""
        return self._decisions(history, objective)[0]

    def is_pruned(self, trial: Trial, history: Sequence[Trial], objective: Objective) -> bool:
        """Whether ``trial``, paused at a rung below ``max_budget``, is (as of ``history``) not to go on.

        Synchronous: final once its rung is decided. ASHA: it may still be promoted if more trials
        reach its rung; at the end of a search it is final.
        """
        return trial.id in self._decisions(history, objective)[1]


def halving_decisions(rungs: Sequence[int], eta: int, history: Sequence[Trial], objective: Objective,
                      synchronous: bool) -> tuple[list[Promotion], dict[str, int]]:
    """Successive halving over ``history`` (one cohort) with rung budgets ``rungs`` (ascending): (the
    promotions to make now, ``{trial id: rung budget}`` of the paused trials decided against). The rung
    math of :class:`SuccessiveHalving` and ASHA, shared with Hyperband's brackets."""
    check_objective(objective)
    bracket = _Bracket(rungs[0], rungs[-1], eta)
    promotions: list[Promotion] = []
    rejected: dict[str, int] = {}
    order = range(len(rungs) - 1) if synchronous else reversed(range(len(rungs) - 1))
    for k in order:
        budget = rungs[k]
        if synchronous and any(t.state == "running" and t.budget_used < budget for t in history):
            break  # rung k (and every rung above) can still gain members
        scored = [(i, v) for i, t in enumerate(history) if (v := SuccessiveHalving.rung_value(t, budget)) is not None]
        best = bracket.top(scored, objective, synchronous)
        top = set(best)
        pending = [Promotion(history[i].id, rungs[k + 1]) for i in best if _paused_at(history[i], budget)]
        for i, _ in scored:
            if i not in top and _paused_at(history[i], budget):
                rejected[history[i].id] = budget
        promotions.extend(pending)
        if synchronous and pending:
            break  # rung k+1 waits for these
    return promotions, rejected


def _paused_at(trial: Trial, budget: int) -> bool:
    return trial.state == "pruned" and trial.budget_used == budget


@dataclass(frozen=True)
class ASHA(SuccessiveHalving):
    """Asynchronous successive halving: promote a trial as soon as it is in the top 1/eta of its rung."""

    name: ClassVar[str] = "asha"
    synchronous: ClassVar[bool] = False
    known_settings: ClassVar[Mapping[str, str]] = {
        **SuccessiveHalving.known_settings, "eta": "int >= 2; 1/eta of the trials at a rung go on (default 3)"}

    eta: int = 3


__all__ = ["ASHA", "DEFAULT_MIN_BUDGET", "SETTINGS_PATH", "Promotion", "SuccessiveHalving", "default_min_budget",
           "read_halving_settings",
           "halving_decisions"]
