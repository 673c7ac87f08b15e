"""Katib's ``medianstop``: the median stopping rule of Google Vizier (Golovin et al., KDD 2017).

The rule, as Katib documents it (kubeflow/website ``docs/components/katib/user-guides/early-stopping.md``):
a running trial is stopped at step ``S`` if its best objective value by step ``S`` is worse than the
median of the running averages of all completed trials' objectives reported up to step ``S``.

Settings, with Katib's names and defaults (``kubeflow/katib:
pkg/earlystopping/v1beta1/medianstop/service.py``):

``min_trials_required`` (3, > 0)
    the rule applies only once this many trials have completed (Katib counts Succeeded trials;
    pruned and failed trials do not count, nor do running ones).
``start_step`` (4, >= 1)
    a trial is never stopped before it has reported this many intermediate values.

Katib's service implements the rule as a fixed threshold handed to its metrics collector: the
*mean*, over completed trials, of each one's average of its first ``start_step`` values, compared with
each newly reported value. This module implements the documented rule itself (a true median, running
averages up to the current step, the trial's best value so far), evaluated whenever a trial reports;
with one report per step and a trial at step ``start_step`` the two agree up to mean vs median.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

from kftune.core import limits
from kftune.core.algorithm_settings import SettingsReader
from kftune.core.early_stopping.base import SETTINGS_PATH, StopDecision, StoppingRule
from kftune.core.trials import Objective, Trial, check_objective, is_better


@dataclass(frozen=True)
class MedianStop(StoppingRule):
    """The median stopping rule with Katib's settings. Pure: decisions depend only on the arguments."""

    name: ClassVar[str] = "medianstop"
    known_settings: ClassVar[Mapping[str, str]] = {
        "min_trials_required": "int > 0; completed trials needed before any trial is stopped (default 3)",
        "start_step": "int >= 1; intermediate values a trial reports before it can be stopped (default 4)",
    }

    min_trials_required: int = 3
    start_step: int = 4

    @classmethod
    def _read_settings(cls, reader: SettingsReader, *, max_epochs: int | None) -> dict[str, Any]:
        return {"min_trials_required": reader.int("min_trials_required", 3, minimum=1, maximum=limits.MAX_TRIALS,
                                                  unit="trials"),
                "start_step": reader.int("start_step", 4, minimum=1, maximum=limits.MAX_EPOCHS, unit="epochs")}

    def median_at(self, history: Sequence[Trial], step: int, exclude: str | None = None) -> tuple[float, int] | None:
        """The median over completed trials of their running average up to ``step``, and how many.

        ``None`` while fewer than ``min_trials_required`` completed trials have a value by ``step``.
        """
        averages = []
        for t in history:
            if t.state != "completed" or t.id == exclude:
                continue
            values = t.values_upto(step)
            if values:
                averages.append(sum(values) / len(values))
        if len(averages) < self.min_trials_required:
            return None
        return statistics.median(averages), len(averages)

    def decide(self, trial: Trial, history: Sequence[Trial], objective: Objective) -> StopDecision:
        """Apply the rule to ``trial`` at its last reported step (see the module docstring)."""
        check_objective(objective)
        step = trial.last_step
        if step is None:
            return StopDecision(False, "no intermediate value reported yet")
        if len(trial.intermediate) < self.start_step:
            return StopDecision(False, f"{len(trial.intermediate)} of start_step={self.start_step} values reported")
        med = self.median_at(history, step, exclude=trial.id)
        if med is None:
            return StopDecision(False, f"fewer than min_trials_required={self.min_trials_required} completed trials")
        median, count = med
        values = trial.values_upto(step)
        best = max(values) if objective == "maximize" else min(values)
        if is_better(median, best, objective):
            return StopDecision(True, f"medianstop at step {step}: best value {best:.6g} is worse than the median "
                                      f"{median:.6g} of {count} completed trials' running averages")
        return StopDecision(False, f"best value {best:.6g} is not worse than the median {median:.6g}")


__all__ = ["SETTINGS_PATH", "MedianStop", "StopDecision"]
