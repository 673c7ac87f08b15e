"""Tree-structured Parzen Estimator, ``hyperopt.tpe.suggest``, fed from the explicit history.

As Katib's hyperopt service (``pkg/suggestion/v1beta1/hyperopt/base_service.py``), the history becomes
a ``hyperopt.Trials`` object whose documents carry each trial's assignment in ``misc['vals']``
(choice indices for lists) and its objective as ``loss``, negated when maximizing (hyperopt only
minimizes). Unlike Katib's service, nothing is kept between calls: the ``Trials`` object is rebuilt
from ``history`` every time, so the answer depends only on the arguments.

How trial states reach hyperopt (the way ``hyperopt.fmin`` itself records them):

* ``completed`` -> ``STATUS_OK`` with ``loss`` (= -objective when maximizing);
* ``pruned`` -> ``STATUS_OK`` with the last objective it reported, as Ray Tune's HyperOpt searcher
  is told the last result of a trial its scheduler stopped (if it has none: as failed);
* ``failed`` -> ``STATUS_FAIL`` without a loss, which TPE treats as an infinite loss;
* ``running`` -> a pending document (``JOB_STATE_RUNNING``, no result), which TPE also treats as an
  infinite loss: new points are steered away from points still being evaluated.

A batch of ``n`` is produced one point at a time, each added as pending before the next is asked
for (as ``fmin`` queues points), each with its own seed: no two points of a batch coincide.
Trials whose assignment lies outside ``space`` are not shown to TPE.

Settings (Katib's names, hyperopt's defaults): ``random_state``, ``gamma`` (0.25),
``n_EI_candidates`` (24), ``prior_weight`` (1.0), ``n_startup_jobs`` (20: the first 20 trials of the
history, in any state, are random).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from kftune.core import limits
from kftune.core.samplers.base import Sampler, SettingsReader, derive_seed, usable_history
from kftune.core.space import SearchSpace
from kftune.core.trials import Assignment, Objective, Trial, sign

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TPEConfig:
    """Validated TPE settings."""

    random_state: int | None = None
    gamma: float = 0.25
    n_EI_candidates: int = 24
    prior_weight: float = 1.0
    n_startup_jobs: int = 20


def history_to_hyperopt(space: SearchSpace, history: Sequence[Trial], objective: Objective) -> Any:
    """A ``hyperopt.Trials`` holding ``history`` (trials in ``space`` only), tids ``0..`` in history order."""
    import hyperopt

    domain = space.hyperopt_domain
    trials = hyperopt.Trials()
    s = sign(objective)
    docs = []
    for tid, t in enumerate(usable_history(space, history)):
        vals = space.encode(t.assignment)
        misc = {"tid": tid, "cmd": domain.cmd, "workdir": domain.workdir,
                "idxs": {k: [tid] for k in vals}, "vals": vals}
        if t.state == "running":
            result: dict[str, Any] = {"status": hyperopt.STATUS_RUNNING}
            state = hyperopt.JOB_STATE_RUNNING
        elif t.state in ("completed", "pruned") and t.has_objective:
            result = {"status": hyperopt.STATUS_OK, "loss": -s * float(t.objective)}  # type: ignore[arg-type]
            state = hyperopt.JOB_STATE_DONE
        else:
            result = {"status": hyperopt.STATUS_FAIL}
            state = hyperopt.JOB_STATE_DONE
        doc = trials.new_trial_docs([tid], [None], [result], [misc])[0]
        doc["state"] = state
        docs.append(doc)
    if docs:
        trials.insert_trial_docs(docs)
    trials.refresh()
    return trials


class TPESampler(Sampler):
    """Katib ``tpe``: hyperopt's TPE over the explicit history."""

    name = "tpe"
    known_settings = {
        "random_state": "int; seeds the suggestions instead of the search seed",
        "gamma": "float in (0, 1); fraction of trials modelled as 'good' (default 0.25)",
        "n_EI_candidates": "int >= 1; candidates drawn from the good model per suggestion (default 24)",
        "prior_weight": "float > 0; weight of the prior in the Parzen estimators (default 1.0)",
        "n_startup_jobs": "int >= 0; random trials before TPE starts modelling (default 20)",
    }

    def _read_settings(self, space: SearchSpace, settings: Mapping[str, Any] | None,
                       max_trials: int | None) -> TPEConfig:
        r = SettingsReader(settings, known=self.known_settings, algorithm=self.name)
        d = TPEConfig()
        cfg = TPEConfig(
            random_state=r.seed("random_state"),
            gamma=r.float("gamma", d.gamma, low=0, high=1, high_open=True),  # type: ignore[arg-type]
            n_EI_candidates=r.int("n_EI_candidates", d.n_EI_candidates, minimum=1, maximum=100_000, unit="candidates"),  # type: ignore[arg-type]
            prior_weight=r.float("prior_weight", d.prior_weight, low=0),  # type: ignore[arg-type]
            n_startup_jobs=r.int("n_startup_jobs", d.n_startup_jobs, minimum=0, maximum=limits.MAX_TRIALS, unit="trials"),  # type: ignore[arg-type]
        )
        r.done()
        return cfg

    def _suggest(self, space: SearchSpace, history: Sequence[Trial], n: int, *, seed: int, config: Any,
                 objective: Objective, max_trials: int | None) -> list[Assignment]:
        from hyperopt import tpe

        cfg: TPEConfig = config
        base = seed if cfg.random_state is None else cfg.random_state
        trials = history_to_hyperopt(space, history, objective)
        domain = space.hyperopt_domain
        out: list[Assignment] = []
        next_tid = len(trials.trials)
        for i in range(n):
            docs = tpe.suggest(
                [next_tid], domain, trials, derive_seed(base, len(history), i),
                prior_weight=cfg.prior_weight, n_startup_jobs=cfg.n_startup_jobs,
                n_EI_candidates=cfg.n_EI_candidates, gamma=cfg.gamma, verbose=False,
            )
            out.append(space.decode(docs[0]["misc"]["vals"]))
            trials.insert_trial_docs(docs)  # pending: the next point of the batch avoids it
            trials.refresh()
            next_tid += 1
        return out


suggest = TPESampler().suggest
"""The sampler as a plain function: ``suggest(space, history, n, *, seed, settings, objective, max_trials)``."""
