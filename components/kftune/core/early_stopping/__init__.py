"""Early-stopping rules by ``earlyStopping.algorithmName``: Katib's ``medianstop``, and kftune's
``successive-halving`` (synchronous), ``asha`` (asynchronous) and ``hyperband`` (brackets of synchronous
successive halving), which pause trials at rungs and resume the promoted ones from their checkpoints.

Every rule keeps the contract of :class:`~kftune.core.early_stopping.base.EarlyStoppingRule` and takes one of
its two shapes, for the two ways a search runs a trial:

* a :class:`StoppingRule` (:class:`MedianStop`) judges a running trial after each report:
  ``should_stop(trial, history, objective)``.
* a :class:`BudgetRule` (:class:`SuccessiveHalving`, :class:`ASHA`, :class:`Hyperband`) gives a budget per rung:
  a new trial trains ``first_budget`` epochs (Hyperband: its bracket's first rung) and pauses;
  ``promotions(history, objective)`` lists the paused trials to resume and up to which budget; ``is_pruned``
  says which are (now) left behind.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from kftune.core.early_stopping.base import BudgetRule, EarlyStoppingRule, Promotion, StopDecision, StoppingRule
from kftune.core.early_stopping.hyperband import Hyperband
from kftune.core.early_stopping.medianstop import MedianStop
from kftune.core.early_stopping.successive_halving import ASHA, SuccessiveHalving
from kftune.core.errors import ConfigError, Problem

#: Any rule (the name earlier code used; the base class itself).
EarlyStopping = EarlyStoppingRule

EARLY_STOPPING: dict[str, type[EarlyStoppingRule]] = {
    "medianstop": MedianStop,
    "successive-halving": SuccessiveHalving,
    "asha": ASHA,
    "hyperband": Hyperband,
}


def get_early_stopping(name: str, settings: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None, *,
                       max_epochs: int | None = None) -> EarlyStoppingRule:
    """The rule for ``earlyStopping.algorithmName`` ``name`` configured from its ``algorithmSettings``.

    ``max_epochs`` (the training's maxEpochs) is the default ``max_budget`` of the halving rules.
    Raises :class:`ConfigError` for an unknown name (listing the known ones) or bad settings.
    """
    try:
        cls = EARLY_STOPPING[name]
    except (KeyError, TypeError):
        raise ConfigError([Problem("spec.search.earlyStopping.algorithmName",
                                   f"unknown early stopping algorithm {name!r}; known: {sorted(EARLY_STOPPING)}")]
                          ) from None
    return cls.from_settings(settings, max_epochs=max_epochs)


__all__ = ["ASHA", "EARLY_STOPPING", "BudgetRule", "EarlyStopping", "EarlyStoppingRule", "Hyperband", "MedianStop",
           "Promotion", "StopDecision", "StoppingRule", "SuccessiveHalving", "get_early_stopping"]
