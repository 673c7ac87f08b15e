"""The trial record as the search algorithms see it, and the few comparisons they share.

A :class:`Trial` is what samplers and early-stopping rules read: which assignment was tried, in which
state it is, the objective it reached and the intermediate objective values it reported per step
(an epoch, i.e. a unit of budget). It is deliberately small and pure; the trial step stores more
(seconds, device, spread over training runs) in ``extra``, which the algorithms ignore.

A *history* is a sequence of trials in the order they were created (suggested), oldest first.
Samplers and rules are functions of the history they are given and never mutate it.

States:

``running``
    created and not finished (training, queued, or resumed after a promotion).
``completed``
    trained to the end of its budget; ``objective`` is its final objective.
``pruned``
    stopped early by an early-stopping rule (median stop, or paused at a successive-halving rung
    where it may still be promoted and resumed); ``objective`` is the value it last reported.
``failed``
    crashed, ran out of memory or diverged; ``objective`` is ``None`` and ``reason`` says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence, Union

from kftune.core.errors import ConfigError, DataError, Problem

Value = Union[int, float, str]
"""A typed parameter value: ``int`` for int parameters, ``float`` for double, ``str`` for categorical,
``int`` or ``float`` for discrete (as the list's items read)."""

Assignment = dict[str, Value]
"""Parameter name -> typed value, in the search space's parameter order."""

Objective = Literal["maximize", "minimize"]
TrialState = Literal["running", "completed", "pruned", "failed"]

OBJECTIVES: tuple[str, ...] = ("maximize", "minimize")
TRIAL_STATES: tuple[str, ...] = ("running", "completed", "pruned", "failed")


def check_objective(objective: str, path: str = "spec.search.objective.type") -> Objective:
    """Return ``objective`` if it is ``maximize`` or ``minimize``, else raise :class:`ConfigError`."""
    if objective not in OBJECTIVES:
        raise ConfigError([Problem(path, f"objective type {objective!r} is not one of {list(OBJECTIVES)}; "
                                         "use 'maximize' (accuracy, F1) or 'minimize' (loss)")])
    return objective  # type: ignore[return-value]


def sign(objective: Objective) -> float:
    """``+1`` when maximizing, ``-1`` when minimizing: ``sign * value`` is larger for better values."""
    return 1.0 if check_objective(objective) == "maximize" else -1.0


def is_better(a: float, b: float, objective: Objective) -> bool:
    """Whether objective value ``a`` is strictly better than ``b``."""
    return a > b if check_objective(objective) == "maximize" else a < b


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Trial:
    """One trial, as samplers and early-stopping rules read it.

    ``intermediate`` holds ``(step, value)`` pairs in increasing step order, one per reported
    evaluation; a step is an epoch, so the step of a value is also the budget spent when it was
    reported. ``budget`` is the budget (epochs) the trial has consumed so far; when ``None`` it is
    the last reported step.
    """

    id: str
    assignment: Mapping[str, Value]
    state: TrialState
    objective: float | None = None
    intermediate: tuple[tuple[int, float], ...] = ()
    budget: int | None = None
    reason: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.state not in TRIAL_STATES:
            raise DataError(f"trial {self.id!r}: state {self.state!r} is not one of {list(TRIAL_STATES)}")
        steps = [s for s, _ in self.intermediate]
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise DataError(f"trial {self.id!r}: intermediate steps must increase strictly, got {steps}")
        object.__setattr__(self, "intermediate", tuple((int(s), float(v)) for s, v in self.intermediate))

    # -- reading intermediate values -------------------------------------------------------------
    @property
    def last_step(self) -> int | None:
        """The step of the last reported intermediate value, or ``None`` when none was reported."""
        return self.intermediate[-1][0] if self.intermediate else None

    @property
    def budget_used(self) -> int:
        """``budget`` if set, else the last reported step, else 0."""
        if self.budget is not None:
            return int(self.budget)
        return self.last_step or 0

    def value_at(self, step: int) -> float | None:
        """The intermediate value reported at exactly ``step``, or ``None``."""
        for s, v in self.intermediate:
            if s == step:
                return v
        return None

    def values_upto(self, step: int) -> list[float]:
        """The intermediate values reported at steps ``<= step``, in order."""
        return [v for s, v in self.intermediate if s <= step]

    @property
    def has_objective(self) -> bool:
        """Whether ``objective`` is a finite number."""
        return _finite(self.objective)

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``extra`` merged in under its own keys)."""
        out: dict[str, Any] = dict(self.extra)
        out.update({
            "id": self.id,
            "assignment": dict(self.assignment),
            "state": self.state,
            "objective": self.objective,
            "intermediate": [[s, v] for s, v in self.intermediate],
            "budget": self.budget,
            "reason": self.reason,
        })
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Trial":
        """Read :meth:`to_dict`'s form back; keys it does not know go to ``extra``.

        Raises :class:`DataError` naming the field when the record cannot be a trial.
        """
        if not isinstance(data, Mapping):
            raise DataError(f"a trial record must be a JSON object, got {type(data).__name__}")
        tid = data.get("id")
        if not isinstance(tid, str) or not tid:
            raise DataError(f"trial record: 'id' must be a non-empty string, got {tid!r}")
        assignment = data.get("assignment")
        if not isinstance(assignment, Mapping):
            raise DataError(f"trial {tid!r}: 'assignment' must be an object, got {assignment!r}")
        objective = data.get("objective")
        if objective is not None and (isinstance(objective, bool) or not isinstance(objective, (int, float))):
            raise DataError(f"trial {tid!r}: 'objective' must be a number or null, got {objective!r}")
        raw = data.get("intermediate") or []
        try:
            intermediate = tuple((int(s), float(v)) for s, v in raw)
        except (TypeError, ValueError) as exc:
            raise DataError(f"trial {tid!r}: 'intermediate' must be [[step, value], ...], got {raw!r}") from exc
        budget = data.get("budget")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))):
            raise DataError(f"trial {tid!r}: 'budget' must be a number or null, got {budget!r}")
        known = {"id", "assignment", "state", "objective", "intermediate", "budget", "reason"}
        return cls(
            id=tid,
            assignment=dict(assignment),
            state=data.get("state"),  # type: ignore[arg-type]  # checked in __post_init__
            objective=None if objective is None else float(objective),
            intermediate=intermediate,
            budget=None if budget is None else int(budget),
            reason=data.get("reason"),
            extra={k: v for k, v in data.items() if k not in known},
        )


def ranked(history: Iterable[Trial], objective: Objective,
           states: Sequence[str] = ("completed",)) -> list[Trial]:
    """Trials in ``states`` with a finite objective, best first.

    Ties keep history order (the earlier trial first).
    """
    s = sign(objective)
    pool = [t for t in history if t.state in states and t.has_objective]
    return sorted(pool, key=lambda t: -s * float(t.objective))  # type: ignore[arg-type]


def best_trial(history: Iterable[Trial], objective: Objective,
               states: Sequence[str] = ("completed",)) -> Trial | None:
    """The best trial among ``states`` with a finite objective, or ``None``."""
    best = ranked(history, objective, states)
    return best[0] if best else None


def check_history(history: Sequence[Trial]) -> None:
    """Raise :class:`ConfigError` if ``history`` is not a sequence of :class:`Trial` with unique ids."""
    seen: set[str] = set()
    problems: list[Problem] = []
    for i, t in enumerate(history):
        if not isinstance(t, Trial):
            problems.append(Problem(f"history[{i}]", f"expected a Trial, got {type(t).__name__}"))
            continue
        if t.id in seen:
            problems.append(Problem(f"history[{i}].id", f"duplicate trial id {t.id!r}; ids must be unique"))
        seen.add(t.id)
    if problems:
        raise ConfigError(problems)
