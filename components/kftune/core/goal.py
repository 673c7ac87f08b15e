"""The objective's ``goal``: Katib ends an experiment once a trial's objective reaches it."""

from __future__ import annotations

import math
from typing import Sequence

from kftune.core.errors import ConfigError, Problem
from kftune.core.trials import Objective, Trial, best_trial, check_objective


def goal_reached(history: Sequence[Trial], objective_type: Objective, goal: float | None) -> bool:
    """Whether some trial's objective reached ``goal`` (``>=`` when maximizing, ``<=`` when minimizing).

    Completed and pruned trials count (a pruned trial's objective was measured too, at a smaller
    budget); failed and running ones do not. ``goal=None`` (no goal set) is never reached.
    """
    check_objective(objective_type)
    if goal is None:
        return False
    if isinstance(goal, bool) or not isinstance(goal, (int, float)) or not math.isfinite(goal):
        raise ConfigError([Problem("spec.search.objective.goal",
                                   f"{goal!r} must be a finite number (or left out for no goal)")])
    best = best_trial(history, objective_type, states=("completed", "pruned"))
    if best is None:
        return False
    value = float(best.objective)  # type: ignore[arg-type]
    return value >= goal if objective_type == "maximize" else value <= goal
