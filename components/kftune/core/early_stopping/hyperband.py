"""Hyperband (Li et al., "Hyperband: A Novel Bandit-Based Approach to Hyperparameter Optimization",
JMLR 18, 2018): brackets of synchronous successive halving, budgets in epochs.

With ``R = max_budget / min_budget`` (budgets in units of ``min_budget``) and
``s_max = floor(log_eta(R))`` (the largest ``s`` with ``min_budget * eta**s <= max_budget``), the search
runs the brackets ``s = s_max, s_max - 1, ..., 0`` one after another. Bracket ``s`` draws
``n = ceil((s_max + 1) / (s + 1) * eta**s)`` new configurations from the sampler and runs synchronous
successive halving over them: rung ``i`` (``i = 0 .. s``) has budget ``r_i = R * eta**(i - s)`` (times
``min_budget``: ``floor(max_budget / eta**(s - i))`` epochs, the last one ``max_budget``) and keeps the best
``floor(n_i / eta)`` of its ``n_i`` trials (at least one), which resume from their checkpoints up to
``r_{i+1}``. R = 81, eta = 3 gives the paper's table::

    s = 4: n_i 81 27 9 3 1   r_i  1  3  9 27 81
    s = 3: n_i 34 11 3 1     r_i  3  9 27 81
    s = 2: n_i 15  5 1       r_i  9 27 81
    s = 1: n_i  8  2         r_i 27 81
    s = 0: n_i  5            r_i 81

Which bracket a trial is in is a pure function of its index (its creation order, kept in every trial
record): indices ``0 .. 80`` are bracket 4, ``81 .. 114`` bracket 3, and so on; after bracket 0 the
brackets start again from ``s_max`` (the paper's outer loop), so ``maxTrialCount`` alone ends the search.
A search killed and restarted re-derives every bracket from the history and redoes nothing. When
``maxTrialCount`` is less than the brackets' sizes, the bracket it falls in is cut there (successive halving
over fewer configurations, still keeping ``max(1, floor(n_i / eta))`` per rung) and no later bracket runs.

Settings: ``eta`` (an integer >= 2, default 3), ``min_budget`` (epochs, default 1), ``max_budget`` (epochs,
default the training's ``maxEpochs``; at least ``min_budget``; equal to it, Hyperband is one bracket of
random search at the full budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Mapping, NamedTuple, Sequence

from kftune.core.algorithm_settings import SettingsReader
from kftune.core.early_stopping.base import SETTINGS_PATH, BudgetRule, Promotion
from kftune.core.early_stopping.successive_halving import (eta_and_min_budget_problems, halving_decisions,
                                                           read_halving_settings)
from kftune.core.errors import ConfigError, Problem
from kftune.core.trials import Objective, Trial, check_objective

#: Epochs of the smallest rung unless ``min_budget`` is set (the paper's unit of budget).
DEFAULT_MIN_BUDGET = 1


class HyperbandBracket(NamedTuple):
    """Bracket ``s``: ``n`` configurations, rung budgets ``rungs`` (epochs) holding ``sizes`` trials, the
    trials with indices ``[start, start + n)`` of each pass over the brackets."""

    s: int
    n: int
    rungs: tuple[int, ...]
    sizes: tuple[int, ...]
    start: int


@dataclass(frozen=True)
class Hyperband(BudgetRule):
    """Hyperband's brackets, run one after another, each a synchronous successive halving. Pure."""

    name: ClassVar[str] = "hyperband"
    synchronous: ClassVar[bool] = True
    known_settings: ClassVar[Mapping[str, str]] = {
        "eta": "int >= 2; 1/eta of the trials at a rung go on, and the brackets' budgets grow by eta (default 3)",
        "min_budget": "int >= 1; epochs of the smallest rung (default 1)",
        "max_budget": "int >= min_budget; epochs of the last rung (default: the training's maxEpochs)",
    }

    eta: int = 3
    min_budget: int = DEFAULT_MIN_BUDGET
    max_budget: int = 81

    def __post_init__(self) -> None:
        problems = eta_and_min_budget_problems(self.eta, self.min_budget)
        if not isinstance(self.min_budget, int) or isinstance(self.min_budget, bool) or self.min_budget < 1:
            pass  # max_budget is compared with a good min_budget only
        elif isinstance(self.max_budget, bool) or not isinstance(self.max_budget, int) or self.max_budget < 1:
            problems.append(Problem(f"{SETTINGS_PATH}.max_budget", f"{self.max_budget!r} must be an integer >= 1"))
        elif self.min_budget > self.max_budget:
            problems.append(Problem(f"{SETTINGS_PATH}.min_budget",
                                    f"{self.min_budget} is more than max_budget ({self.max_budget})"))
        if problems:
            raise ConfigError(problems)

    @classmethod
    def _read_settings(cls, reader: SettingsReader, *, max_epochs: int | None) -> dict[str, Any]:
        """``max_budget`` defaults to ``max_epochs`` (the training's maxEpochs)."""
        return read_halving_settings(reader, eta=cls.eta, max_epochs=max_epochs,
                                     min_budget=lambda _max_budget: DEFAULT_MIN_BUDGET)

    # -- the brackets ------------------------------------------------------------------------------
    @property
    def s_max(self) -> int:
        """``floor(log_eta(max_budget / min_budget))``, in integers."""
        s = 0
        while self.min_budget * self.eta ** (s + 1) <= self.max_budget:
            s += 1
        return s

    @cached_property
    def _brackets(self) -> tuple[HyperbandBracket, ...]:
        s_max, eta, out, start = self.s_max, self.eta, [], 0
        for s in range(s_max, -1, -1):
            n = -(-(s_max + 1) * eta ** s // (s + 1))  # ceil((s_max + 1) / (s + 1) * eta**s)
            rungs = tuple(self.max_budget // eta ** (s - i) for i in range(s + 1))
            sizes = tuple(n // eta ** i for i in range(s + 1))
            out.append(HyperbandBracket(s=s, n=n, rungs=rungs, sizes=sizes, start=start))
            start += n
        return tuple(out)

    def brackets(self) -> tuple[HyperbandBracket, ...]:
        """The brackets of one pass, in the order they run (``s = s_max .. 0``)."""
        return self._brackets

    @property
    def pass_size(self) -> int:
        """Trials of one pass over every bracket (the sum of the brackets' ``n``)."""
        last = self._brackets[-1]
        return last.start + last.n

    def bracket_at(self, index: int) -> tuple[HyperbandBracket, int]:
        """The bracket of the ``index``-th trial (0-based) and the index its bracket starts at."""
        if index < 0:
            raise ValueError(f"a trial index is >= 0, not {index}")
        passes, offset = divmod(int(index), self.pass_size)
        bracket = next(b for b in self._brackets if b.start <= offset < b.start + b.n)
        return bracket, passes * self.pass_size + bracket.start

    # -- BudgetRule --------------------------------------------------------------------------------
    def rungs(self) -> tuple[int, ...]:
        """The rungs of the first (most exploratory, ``s = s_max``) bracket; every budget any bracket uses
        is between its first and last."""
        return self._brackets[0].rungs

    def cohort(self, index: int) -> tuple[int, int]:
        bracket, start = self.bracket_at(index)
        return start, start + bracket.n

    def first_budget_of(self, index: int) -> int:
        return self.bracket_at(index)[0].rungs[0]

    def bracket_of(self, index: int) -> int:
        return self.bracket_at(index)[0].s

    # -- bookkeeping over the history --------------------------------------------------------------
    def _by_bracket(self, history: Sequence[Trial]) -> dict[int, list[Trial]]:
        """The trials of ``history`` grouped by the start index of their bracket (a trial's index is its
        record's ``index``, else its place in ``history``), in history order."""
        groups: dict[int, list[Trial]] = {}
        for pos, t in enumerate(history):
            value = t.extra.get("index")
            index = int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else pos
            groups.setdefault(self.bracket_at(index)[1], []).append(t)
        return groups

    def _decisions(self, history: Sequence[Trial], objective: Objective) -> tuple[list[Promotion], dict[str, int]]:
        check_objective(objective)
        promotions: list[Promotion] = []
        rejected: dict[str, int] = {}
        for start, trials in sorted(self._by_bracket(history).items()):
            rungs = self.bracket_at(start)[0].rungs
            promoted, against = halving_decisions(rungs, self.eta, trials, objective, synchronous=True)
            promotions.extend(promoted)
            rejected.update(against)
        return promotions, rejected

    def promotions(self, history: Sequence[Trial], objective: Objective) -> list[Promotion]:
        """The paused trials to resume now, each with the budget of its bracket's next rung (bracket by
        bracket, best first within a rung). Each is returned until the history shows it resumed."""
        return self._decisions(history, objective)[0]

    def is_pruned(self, trial: Trial, history: Sequence[Trial], objective: Objective) -> bool:
        """Whether ``trial``, paused at a rung of its bracket, is left behind (final once its rung is decided)."""
        return trial.id in self._decisions(history, objective)[1]


__all__ = ["DEFAULT_MIN_BUDGET", "Hyperband", "HyperbandBracket"]
