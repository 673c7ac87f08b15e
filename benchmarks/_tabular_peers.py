"""The peers of the tabular benchmark (``search_tabular.py``), each driven through its own library's ask/tell.

Every peer sees the table's grid as its library's own space with the same types (a ``discrete`` list is
ordinal, a ``categorical`` one categorical; the ConfigSpace object of SMAC, DEHB and hpbandster is the same,
:func:`configspace`), the same simulated trainings (:class:`search_tabular.Simulator`: a trial draws one
recorded seed, epochs cost, a configuration trained again at a larger budget resumes from its checkpoint)
and the same budget of epochs. Per peer:

=====================  ==========================================================================================
``optuna-tpe-hyperband``  Optuna ``TPESampler`` + ``HyperbandPruner(min_resource=1, max_resource=E,
                       reduction_factor=3)``: ``study.ask()``, ``trial.report(dev, epoch)`` after every epoch,
                       ``should_prune()``, ``study.tell``. Ordinal lists are ``suggest_int`` over their positions.
``hyperopt-tpe``       hyperopt ``fmin(tpe.suggest)`` (its defaults), every trial the full ``E`` epochs (Flair's
                       ``param_selection``), ``max_evals`` = the full trainings that fit the budget; ordinal lists
                       are ``hp.uniformint`` over their positions, categorical ones ``hp.choice``.
``smac-mf``            SMAC3 ``MultiFidelityFacade`` (random forest, Hyperband intensifier, eta 3, budgets 1..E
                       epochs rounded to whole epochs) through ``smac.ask()`` / ``smac.tell()``.
``syne-asha``          Syne Tune ``ASHA`` (random searcher, grace period 1, reduction factor 3, one bracket)
``syne-hyperband``     Syne Tune ``ASHA`` with every bracket (asynchronous Hyperband)
``syne-bohb``          Syne Tune ``BOHB`` (KDE searcher on ASHA)
``syne-asha-bore``     Syne Tune ``ASHABORE``; ``syne-asha-cqr``: ``ASHACQR``
``syne-median``        Syne Tune ``MedianStoppingRule`` over ``RandomSearch``
                       (Syne Tune schedulers: ``suggest()``, ``on_trial_add``, ``on_trial_result`` after every
                       epoch, ``on_trial_remove`` on STOP, ``on_trial_complete``; ordinal lists are
                       ``ordinal(kind="equal")``, categorical ones ``choice``)
``hpbandster-bohb``    hpbandster's BOHB config generator driven by its own successive-halving iterations
                       (``BOHB.get_next_iteration``, ``get_next_run``, ``register_result``, ``new_result``), in
                       process, no Pyro name server; hpbandster refuses ordinal parameters, so ordinal lists are
                       integers over their positions, as its error message asks.
``dehb``               DEHB ``ask()`` / ``tell()`` (eta 3, fidelities 1..E epochs rounded to whole epochs).
=====================  ==========================================================================================

A peer stops when the budget is spent; its choice is the incumbent (the module docstring of
``search_tabular.py``).
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np


@dataclass(frozen=True)
class Peer:
    library: str
    label: str
    modules: tuple[str, ...]
    run: str   # the name of this module's function that replays it


PEERS: dict[str, Peer] = {p_name: p for p_name, p in (
    ("optuna-tpe-hyperband", Peer("optuna", "Optuna TPESampler + HyperbandPruner (ask/tell, per-epoch reports)",
                                  ("optuna",), "_optuna")),
    ("hyperopt-tpe", Peer("hyperopt", "hyperopt TPE (fmin, tpe.suggest), full epochs per trial", ("hyperopt",),
                          "_hyperopt")),
    ("smac-mf", Peer("smac", "SMAC3 MultiFidelityFacade (random forest + Hyperband intensifier), ask/tell",
                     ("smac", "ConfigSpace"), "_smac")),
    ("syne-asha", Peer("syne_tune", "Syne Tune ASHA (random search, one bracket)", ("syne_tune",), "_syne")),
    ("syne-hyperband", Peer("syne_tune", "Syne Tune ASHA with every bracket (asynchronous Hyperband)",
                            ("syne_tune",), "_syne")),
    ("syne-bohb", Peer("syne_tune", "Syne Tune BOHB (KDE searcher on ASHA)", ("syne_tune",), "_syne")),
    ("syne-asha-bore", Peer("syne_tune", "Syne Tune ASHABORE (BORE classifier on ASHA)", ("syne_tune",), "_syne")),
    ("syne-asha-cqr", Peer("syne_tune", "Syne Tune ASHACQR (conformal quantile regression on ASHA)",
                           ("syne_tune",), "_syne")),
    ("syne-median", Peer("syne_tune", "Syne Tune MedianStoppingRule over RandomSearch", ("syne_tune",), "_syne")),
    ("hpbandster-bohb", Peer("hpbandster", "hpbandster BOHB (its config generator and successive-halving "
                                           "iterations, in process)", ("hpbandster", "ConfigSpace"), "_hpbandster")),
    ("dehb", Peer("dehb", "DEHB (differential evolution + Hyperband), ask/tell", ("dehb", "ConfigSpace"), "_dehb")),
)}


#: Peers run only when named (``--methods``): their model fits cost 25-60 s per replay on these machines, so 100
#: repeats on three tables would take hours on two shared cores.
SLOW = {"syne-asha-bore": "Syne Tune ASHABORE fits its classifier for every suggestion",
        "syne-asha-cqr": "Syne Tune ASHACQR fits gradient-boosted quantile regressors for every suggestion"}
DEFAULT = tuple(name for name in PEERS if name not in SLOW)


_IMPORTS: dict[str, str | None] = {}


def available(name: str) -> str | None:
    """Why peer ``name`` cannot run here (its library is not installed or does not import), or ``None``. The
    import is tried in a child process, so that the caller (which forks the replay workers) stays free of the
    libraries' threads."""
    for module in PEERS[name].modules:
        if module not in _IMPORTS:
            if importlib.util.find_spec(module) is None:
                _IMPORTS[module] = f"{module} is not installed"
            else:
                try:
                    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                                          timeout=300)
                    last = (proc.stderr.strip().splitlines() or [""])[-1]
                    _IMPORTS[module] = None if proc.returncode == 0 else f"`import {module}` failed: {last}"
                except subprocess.TimeoutExpired:
                    _IMPORTS[module] = f"`import {module}` did not finish within 300 s"
        if _IMPORTS[module] is not None:
            return _IMPORTS[module]
    return None


def describe(name: str) -> dict[str, Any]:
    peer = PEERS[name]
    return {"library": peer.library, "label": peer.label}


def run_peer(name: str, table: Any, sim: Any, seed: int) -> dict[str, Any]:
    """Replay peer ``name`` on ``table`` with ``seed`` through ``sim`` (a ``search_tabular.Simulator``) until the
    budget is spent; returns what it wants reported (``trials``; ``stopped``: why it ended before the budget)."""
    np.random.seed(seed % (2**32))  # some libraries draw from numpy's global generator
    fn: Callable[..., dict[str, Any]] = globals()[PEERS[name].run]
    return fn(name, table, sim, seed)


# --------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------

def _bench(sim: Any) -> Any:
    """The benchmark module the simulator comes from (its ``BudgetExhausted`` and ``objective_at``), however it
    was imported."""
    return sys.modules[type(sim).__module__]


def labels(table: Any) -> list[list[str]]:
    """Each parameter's values as the table's strings."""
    return [[str(v) for v in p.spec.feasible_space.list] for p in table.space]


def configspace(table: Any, seed: int, ordinal_as_int: bool = False) -> Any:
    """The grid as a ConfigSpace: ``discrete`` lists as ``OrdinalHyperparameter`` over the table's strings (or,
    ``ordinal_as_int``, an integer over the positions), ``categorical`` as ``CategoricalHyperparameter``."""
    import ConfigSpace as CS

    cs = CS.ConfigurationSpace(seed=int(seed) % (2**31))
    hps = []
    for p, items in zip(table.space, labels(table)):
        if p.type == "discrete" and ordinal_as_int:
            hps.append(CS.UniformIntegerHyperparameter(p.name, 0, len(items) - 1))
        elif p.type == "discrete":
            hps.append(CS.OrdinalHyperparameter(p.name, items))
        else:
            hps.append(CS.CategoricalHyperparameter(p.name, items))
    cs.add(hps)
    return cs


def point_of(table: Any, values: Mapping[str, Any]) -> tuple[int, ...]:
    """The grid point of a peer's configuration: positions given as ints, or the table's strings."""
    out = []
    for p, items in zip(table.space, labels(table)):
        v = values[p.name]
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out.append(int(v))
        else:
            out.append(items.index(str(v)))
    return tuple(out)


def _value_or_none(sim: Any, key: Any, point: tuple[int, ...], budget: int) -> tuple[float | None, int]:
    """Evaluate ``point`` at ``budget`` under ``key``: (objective or ``None`` for a failed run, epochs charged)."""
    before = sim.spent
    value = sim.evaluate(key, point, budget)
    return value, sim.spent - before


class _Resume:
    """A library's configuration identities -> the simulator's trial keys: the same identity at a larger
    budget continues its trial (from its checkpoint); at a budget it already reached it starts a new trial."""

    def __init__(self, sim: Any):
        self.sim = sim
        self.keys: dict[Any, tuple[Any, int]] = {}

    def key(self, identity: Any, budget: int) -> Any:
        key, n = self.keys.get(identity, (None, -1))
        if key is not None:
            t = self.sim.trials.get(key)
            if t is not None and t.reached[0] < budget:
                return key
        n += 1
        key = (identity, n)
        self.keys[identity] = (key, n)
        return key


def _epoch_by_epoch(sim: Any, t: Any, epochs: int, *, report: Callable[[int, float], Any],
                    stop: Callable[[], bool]) -> bool:
    """Train trial ``t`` one epoch at a time up to ``epochs`` (a shorter, failed recorded curve ends it), calling
    ``report(epoch, dev score)`` after each; unless that spent the budget, ``stop()`` then says whether the
    library stops the trial there. True when ``stop`` ended it (the per-epoch loop of the pruning peers)."""
    try:
        for epoch in range(1, epochs + 1):
            dev = sim.train(t, epoch)
            if len(dev) < epoch:
                return False
            report(epoch, dev[-1])
            if sim.exhausted:
                return False
            if stop():
                return True
    except _bench(sim).BudgetExhausted:
        pass
    return False


def _loss(table: Any, value: float | None) -> float:
    """The value as a loss to minimize (``inf`` for a failed run)."""
    if value is None:
        return math.inf
    return -value if table.objective == "maximize" else value


# --------------------------------------------------------------------------------------------------
# Optuna
# --------------------------------------------------------------------------------------------------

def _optuna(name: str, table: Any, sim: Any, seed: int) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    bench = _bench(sim)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    E = table.max_epochs
    # a named study: HyperbandPruner puts a trial in a bracket by a hash of the study's name, which Optuna
    # otherwise draws at random (the replays would not repeat with their seeds)
    study = optuna.create_study(study_name=f"tabular-{seed}", direction=table.objective,
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=E,
                                                                      reduction_factor=3))
    items = labels(table)
    n = 0
    while sim.remaining > 0:
        trial = study.ask()
        point = tuple(trial.suggest_int(p.name, 0, len(its) - 1) if p.type == "discrete"
                      else its.index(trial.suggest_categorical(p.name, its))
                      for p, its in zip(table.space, items))
        t = sim.trial(("optuna", trial.number), point)
        run = sim.run_of(t, 0)
        pruned = _epoch_by_epoch(sim, t, E, report=lambda epoch, dev: trial.report(dev, epoch),
                                 stop=trial.should_prune)
        reached = t.reached[0]
        if reached == 0:
            study.tell(trial, state=TrialState.FAIL)
            break
        n += 1
        if run.failed:
            study.tell(trial, state=TrialState.FAIL)
            sim.observe(t.config, reached, None)
        else:
            value = bench.objective_at(run.dev, reached)
            if pruned or reached < E:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, value)
            sim.observe(t.config, reached, value)
        if sim.exhausted:
            break
    return {"trials": n}


# --------------------------------------------------------------------------------------------------
# hyperopt
# --------------------------------------------------------------------------------------------------

def _hyperopt(name: str, table: Any, sim: Any, seed: int) -> dict[str, Any]:
    from hyperopt import STATUS_FAIL, STATUS_OK, Trials, fmin, hp, tpe

    bench = _bench(sim)
    E = table.max_epochs
    items = labels(table)
    space = {p.name: hp.uniformint(p.name, 0, len(its) - 1) if p.type == "discrete" else hp.choice(p.name, its)
             for p, its in zip(table.space, items)}
    count = [0]

    def objective(params: Mapping[str, Any]) -> dict[str, Any]:
        point = tuple(int(params[p.name]) if p.type == "discrete" else its.index(params[p.name])
                      for p, its in zip(table.space, items))
        count[0] += 1
        value = sim.evaluate(("hyperopt", count[0]), point, E)
        if value is None:
            return {"status": STATUS_FAIL}
        return {"loss": _loss(table, value), "status": STATUS_OK}

    max_evals = max(1, sim.remaining // E)
    try:
        fmin(objective, space, algo=tpe.suggest, max_evals=max_evals, trials=Trials(),
             rstate=np.random.default_rng(seed), show_progressbar=False)
    except bench.BudgetExhausted:
        pass
    return {"trials": count[0]}


# --------------------------------------------------------------------------------------------------
# SMAC3
# --------------------------------------------------------------------------------------------------

def _smac(name: str, table: Any, sim: Any, seed: int) -> dict[str, Any]:
    from smac import MultiFidelityFacade, Scenario
    from smac.main.exceptions import ConfigurationSpaceExhaustedException
    from smac.runhistory.dataclasses import TrialValue
    from smac.runhistory.enumerations import StatusType

    bench = _bench(sim)
    E = table.max_epochs
    cs = configspace(table, seed)
    resume = _Resume(sim)
    n = 0
    stopped = None
    with tempfile.TemporaryDirectory(prefix="kftune-tabular-smac-") as tmp:
        scenario = Scenario(cs, name="tabular", output_directory=Path(tmp) / "smac", n_trials=max(1, sim.remaining),
                            min_budget=1, max_budget=E, seed=int(seed) % (2**31))
        smac = MultiFidelityFacade(scenario, target_function=_never_called,
                                   intensifier=MultiFidelityFacade.get_intensifier(scenario, eta=3),
                                   overwrite=True, logging_level=40)
        while sim.remaining > 0:
            try:
                info = smac.ask()
            except ConfigurationSpaceExhaustedException:
                stopped = "SMAC: configuration space exhausted"
                break
            budget = max(1, int(round(info.budget if info.budget is not None else E)))
            point = point_of(table, dict(info.config))
            try:
                value, _ = _value_or_none(sim, resume.key(point, budget), point, budget)
            except bench.BudgetExhausted:
                break
            n += 1
            if value is None:
                smac.tell(info, TrialValue(cost=math.inf, status=StatusType.CRASHED))
            else:
                smac.tell(info, TrialValue(cost=_loss(table, value)))
            if sim.exhausted:
                break
    return {"trials": n, **({"stopped": stopped} if stopped else {})}


def _never_called(config: Any, seed: int = 0, budget: float = 0.0) -> float:
    raise RuntimeError("the tabular replay drives SMAC through ask/tell")


# --------------------------------------------------------------------------------------------------
# DEHB
# --------------------------------------------------------------------------------------------------

def _dehb(name: str, table: Any, sim: Any, seed: int) -> dict[str, Any]:
    from dehb import DEHB

    bench = _bench(sim)
    E = table.max_epochs
    cs = configspace(table, seed)
    resume = _Resume(sim)
    n = 0
    with tempfile.TemporaryDirectory(prefix="kftune-tabular-dehb-") as tmp:
        dehb = DEHB(cs=cs, min_fidelity=1, max_fidelity=E, eta=3, n_workers=1, seed=int(seed) % (2**31),
                    output_path=tmp, save_freq="end", log_level="ERROR")
        while sim.remaining > 0:
            job = dehb.ask()
            budget = max(1, int(round(job["fidelity"])))
            point = point_of(table, dict(job["config"]))
            try:
                value, cost = _value_or_none(sim, resume.key(("dehb", int(job["config_id"])), budget), point, budget)
            except bench.BudgetExhausted:
                break
            n += 1
            dehb.tell(job, {"fitness": _loss(table, value), "cost": float(cost)})
            if sim.exhausted:
                break
    return {"trials": n}


# --------------------------------------------------------------------------------------------------
# hpbandster
# --------------------------------------------------------------------------------------------------

def _hpbandster(name: str, table: Any, sim: Any, seed: int) -> dict[str, Any]:
    from types import SimpleNamespace

    from hpbandster.core.dispatcher import Job
    from hpbandster.optimizers.bohb import BOHB
    from hpbandster.optimizers.config_generators.bohb import BOHB as BOHBConfigGenerator

    bench = _bench(sim)
    E = table.max_epochs
    cs = configspace(table, seed, ordinal_as_int=True)
    cg = BOHBConfigGenerator(configspace=cs)  # hpbandster's defaults (top_n_percent 15, num_samples 64, ...)
    eta, min_budget, max_budget = 3, 1.0, float(E)
    # the optimizer's own bracket schedule (BOHB.__init__ would start Pyro; the iterations need only these)
    max_sh_iter = -int(np.log(min_budget / max_budget) / np.log(eta)) + 1
    master = SimpleNamespace(eta=eta, max_SH_iter=max_sh_iter, config_generator=cg,
                             budgets=max_budget * np.power(eta, -np.linspace(max_sh_iter - 1, 0, max_sh_iter)))
    iterations: list[Any] = []
    resume = _Resume(sim)
    n = 0
    while sim.remaining > 0:
        nxt = None
        for it in iterations:
            if not it.is_finished:
                nxt = it.get_next_run()
                if nxt is not None:
                    break
        if nxt is None:
            iterations.append(BOHB.get_next_iteration(master, len(iterations), {}))
            continue
        config_id, config, budget = nxt
        epochs = max(1, int(round(budget)))
        point = point_of(table, config)
        try:
            value, _ = _value_or_none(sim, resume.key(("hpbandster", tuple(config_id)), epochs), point, epochs)
        except bench.BudgetExhausted:
            break
        n += 1
        job = Job(config_id, config=config, budget=budget)
        job.timestamps = {"submitted": float(n), "started": float(n), "finished": float(n)}
        job.result = None if value is None else {"loss": _loss(table, value), "info": {}}
        iterations[config_id[0]].register_result(job)
        cg.new_result(job)
        if sim.exhausted:
            break
    return {"trials": n}


# --------------------------------------------------------------------------------------------------
# Syne Tune
# --------------------------------------------------------------------------------------------------

def _syne_scheduler(name: str, table: Any, seed: int) -> Any:
    import syne_tune.config_space as sp
    from syne_tune.optimizer import baselines

    E = table.max_epochs
    space = {}
    for p, its in zip(table.space, labels(table)):
        space[p.name] = sp.ordinal(list(its), kind="equal") if p.type == "discrete" else sp.choice(list(its))
    common = {"metric": "objective", "do_minimize": table.objective == "minimize", "random_seed": int(seed) % (2**31)}
    mf = {"time_attr": "epoch", "max_t": E, "grace_period": 1, "reduction_factor": 3}
    if name == "syne-asha":
        return baselines.ASHA(space, **common, **mf)
    if name == "syne-hyperband":
        brackets = int(math.floor(math.log(E) / math.log(3) + 1e-9)) + 1
        return baselines.ASHA(space, **common, **mf, brackets=brackets)
    if name == "syne-bohb":
        return baselines.BOHB(space, **common, **mf)
    if name == "syne-asha-bore":
        return baselines.ASHABORE(space, **common, **mf)
    if name == "syne-asha-cqr":
        return baselines.ASHACQR(space, **common, **mf)
    if name == "syne-median":
        from syne_tune.optimizer.schedulers.median_stopping_rule import MedianStoppingRule

        inner = baselines.RandomSearch(space, metrics=["objective"], do_minimize=common["do_minimize"],
                                       random_seed=common["random_seed"])
        return MedianStoppingRule(inner, time_attr="epoch", metric="objective", random_seed=common["random_seed"],
                                  do_minimize=common["do_minimize"])
    raise KeyError(name)


def _syne(name: str, table: Any, sim: Any, seed: int) -> dict[str, Any]:
    from syne_tune.backend.trial_status import Trial as SyneTrial
    from syne_tune.optimizer.scheduler import SchedulerDecision

    bench = _bench(sim)
    E = table.max_epochs
    scheduler = _syne_scheduler(name, table, seed)
    n = 0
    stopped = None
    while sim.remaining > 0:
        suggestion = scheduler.suggest()
        if suggestion is None:
            stopped = "Syne Tune: the searcher has no more configurations"
            break
        trial = SyneTrial(trial_id=n, config=dict(suggestion.config), creation_time=datetime.datetime.now())
        scheduler.on_trial_add(trial=trial)
        point = point_of(table, trial.config)
        t = sim.trial(("syne", n), point)
        run = sim.run_of(t, 0)
        n += 1
        last: dict[str, Any] | None = None

        def report(epoch: int, dev: float) -> None:
            nonlocal last
            last = {"objective": dev, "epoch": epoch}

        def stop() -> bool:
            return scheduler.on_trial_result(trial=trial, result=last) == SchedulerDecision.STOP

        decided = _epoch_by_epoch(sim, t, E, report=report, stop=stop)
        if decided:
            scheduler.on_trial_remove(trial=trial)
        reached = t.reached[0]
        if run.failed:
            scheduler.on_trial_error(trial=trial)
            sim.observe(t.config, reached, None)
        elif reached > 0:
            if not decided and last is not None and not sim.exhausted:
                scheduler.on_trial_complete(trial=trial, result=last)
            sim.observe(t.config, reached, bench.objective_at(run.dev, reached))
        if sim.exhausted or reached == 0:
            break
    return {"trials": n, **({"stopped": stopped} if stopped else {})}
