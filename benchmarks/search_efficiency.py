"""Search efficiency on TREC_6: kftune's default search against the usual peers (issue 7).

Every method searches the same space with the same trial function (the kftune trainer, Kim-style CNN,
the model and training settings of ``examples/trec6.yaml``), side by side in one run:

==================  ===========================================================================
``random``          full-budget random search (Katib's default): ``hyperopt.rand`` through ``fmin``,
                    every trial trained ``max_epochs`` epochs
``hyperopt-tpe``    hyperopt TPE with fixed epochs (Flair's ``param_selection``): ``fmin(tpe.suggest)``
``optuna-median``   Optuna ``TPESampler`` + ``MedianPruner`` (defaults; in-memory storage)
``optuna-sha``      Optuna ``TPESampler`` + ``SuccessiveHalvingPruner`` (defaults)
``ray-asha``        Ray Tune ``HyperOptSearch`` + ``ASHAScheduler`` (``max_t = max_epochs``, other
                    settings Ray's defaults), one trial at a time, Ray on loopback only
``kftune``          kftune's own steps: ``kftune lr-find`` (Smith's LR range test; its range
                    replaces the learning rate's), then ``kftune search`` (coarse-to-fine with
                    synchronous successive halving, finalists re-trained with an extra seed), with
                    ``maxTrialCount`` the largest that keeps LR test + search + finalists within one
                    third of random search's nominal budget (``trials * max_epochs / 3``)
==================  ===========================================================================

A trial of a peer trains one assignment with training seed = the search seed (kftune's trials do the
same: ``train.seed`` is set to the search seed) and reports the dev accuracy after every epoch to the
method's pruner; the trial's value is Flair's objective, the mean of its last 3 dev evaluations
(:func:`kftune.core.search_policy.run_objective`, what kftune's trials report). Patience is
``max_epochs`` (no early stopping inside the budget), so a full trial is exactly ``max_epochs`` epochs.

Per method and search seed the run records: training epochs spent (search + finalist re-runs + the
LR range test's batches as a fraction of an epoch), the best dev objective found, best dev found
against cumulative epochs (the curve: after every training epoch, the best objective any trial has
reached so far, a trial's objective being the mean of its last <= 3 dev values at that point), the
chosen configuration, and that configuration re-trained from scratch with 3 training seeds
(``max_epochs`` epochs, the best-dev epoch's weights, as ``kftune train`` keeps them): dev and test
accuracy, mean and spread. Target (issue 7): kftune's epochs <= 1/3 of random's and its chosen
configuration's retrained mean dev and mean test >= every peer's (medians over the search seeds).

Scales: ``smoke`` (tiny downsample, 4 trials, 2 epochs, 1 search seed: checks the plumbing in minutes),
``reduced`` (TREC_6 train downsampled to 50 %, 24 trials, 8 epochs, 2 search seeds: fits about an hour on
2 cores), ``full`` (the issue's protocol: full TREC_6, 24 trials, 8 epochs, 3 search seeds; a bigger
machine, ``--workers N``). Usage::

    python benchmarks/search_efficiency.py --scale smoke
    nohup python benchmarks/search_efficiency.py --scale reduced --workers 2 &
    python benchmarks/search_efficiency.py --scale full --methods kftune --seeds 4,5,6 --work DIR

``--seeds`` replaces the scale's search seeds: run a change on seeds it was not chosen on before
believing it (the report, ``search_efficiency_<scale>_seeds-4-5-6.*``, covers those seeds only).
``--retrain-seeds 1001,...,1010`` retrains every job's chosen configuration with those seeds instead
of the scale's 3 (searches already done are reused; each job keeps its 3-seed ``retrain.json`` and adds
``retrain_<seeds>.json``; the report is ``..._retrain-1001to1010.*``): a finer measure of how good each
method's choice is than the issue's 3 seeds give.
``--render REPORT.json`` rewrites a saved report's Markdown and plot with this version's layout.

The report's section "How large a difference means something" splits the retrained scores of the
chosen configurations into seed-to-seed noise and true differences between configurations (see
:func:`resolution`): read the gaps between methods against it.

Each (method, search seed) is one job in its own process (torch threads 1); ``--workers`` jobs run at
once. Jobs write their results under ``--work`` (default ``/tmp/kftune-search-efficiency/<scale>``) as
they finish, and the report (``benchmarks/results/search_efficiency_<scale>.{json,md,png}``) is rewritten
after every job, so a killed run keeps what it has; rerun the same command and finished jobs are skipped
(kftune's own search resumes from its store). Ray runs in a private network namespace with only loopback
up (``unshare -n``) when the machine allows it, else with ``_node_ip_address=127.0.0.1`` and a check that
nothing listens elsewhere (the job is skipped when that check fails).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODULE = "search_efficiency"

log = logging.getLogger(MODULE)

METHODS = ("random", "hyperopt-tpe", "optuna-median", "optuna-sha", "ray-asha", "kftune")
PEERS = tuple(m for m in METHODS if m != "kftune")
LABELS = {
    "random": "random, full budget (Katib default)",
    "hyperopt-tpe": "hyperopt TPE, fixed epochs (Flair)",
    "optuna-median": "Optuna TPE + MedianPruner",
    "optuna-sha": "Optuna TPE + SuccessiveHalvingPruner",
    "ray-asha": "Ray Tune HyperOpt + ASHA",
    "kftune": "kftune (LR range test, coarse-to-fine, successive halving, finalists)",
}


@dataclass(frozen=True)
class Scale:
    """One benchmark size. ``downsample``: share of TREC_6's training questions kept (the corpus step,
    stratified, seed 1; dev is 10 % of what is kept; test is always the 500 official questions)."""

    name: str
    downsample: float
    trials: int
    max_epochs: int
    search_seeds: tuple[int, ...]
    retrain_seeds: tuple[int, ...]
    note: str


SCALES = {
    "smoke": Scale("smoke", 0.05, 4, 2, (1,), (1001, 1002),
                   "plumbing check only: tiny corpus, 4 trials of 2 epochs; kftune cannot fit its budget rule here"),
    "reduced": Scale("reduced", 0.5, 24, 8, (1, 2), (1001, 1002, 1003),
                     "REDUCED: TREC_6 train downsampled to 50 % (dev 10 % of it), 2 search seeds instead of 3; "
                     "otherwise the issue's protocol (24 trials, at most 8 epochs, 3 retraining seeds)"),
    "full": Scale("full", 1.0, 24, 8, (1, 2, 3), (1001, 1002, 1003),
                  "the issue's protocol: full TREC_6 train (dev 10 % of it), 24 trials, at most 8 epochs, "
                  "3 search seeds, 3 retraining seeds"),
}

# The space and the model of examples/trec6.yaml (its search space, unchanged).
PARAMETERS = [
    {"name": "learning_rate", "parameterType": "double",
     "feasibleSpace": {"min": "1e-4", "max": "1e-2", "distribution": "logUniform"}},
    {"name": "dropout", "parameterType": "double", "feasibleSpace": {"min": "0.1", "max": "0.6"}},
    {"name": "embedding_dim", "parameterType": "categorical", "feasibleSpace": {"list": ["64", "128", "256"]}},
    {"name": "mini_batch_size", "parameterType": "discrete", "feasibleSpace": {"list": ["16", "32", "64"]}},
]
MODEL = {"document_encoder": "cnn", "cnn_kernel_sizes": [3, 4, 5], "cnn_filters": 100, "optimizer": "adamw",
         "mini_batch_size": 32, "weight_decay": 0.0, "scheduler": "plateau", "anneal_factor": 0.5,
         "word_dropout": 0.05, "max_length": 64}
LR_RANGE_TEST = {"enabled": True, "applyTo": "learning_rate", "startLR": 1.0e-6, "endLR": 1.0, "iterations": 100,
                 "mode": "exponential", "smoothing": 0.98, "method": "minimum"}
# kftune's defaults (coarse-to-fine rounds/top_k/shrink, halving eta/min_budget), finalists trimmed to fit.
KFTUNE_C2F = {"rounds": 3, "top_k": 3, "shrink": 0.5}


def kftune_halving(scale: "Scale") -> dict[str, int]:
    """kftune's successive-halving defaults for this scale's budget, as the code defaults them."""
    from kftune.core.early_stopping import SuccessiveHalving
    rule = SuccessiveHalving.from_settings({}, max_epochs=scale.max_epochs)
    return {"eta": rule.eta, "min_budget": rule.min_budget}

KFTUNE_FINALISTS = ((2, 2), (0, 1))  # (finalists, finalistRuns), first that fits
RANDOM_STREAM = 10_000  # random search's hyperopt seed offset (see run_hyperopt)


# --------------------------------------------------------------------------------------------------
# The spec every method shares
# --------------------------------------------------------------------------------------------------

def base_spec(scale: Scale, seed: int) -> dict[str, Any]:
    """The TuningJob spec of a search with seed ``seed`` (peers read the model and train blocks from it)."""
    return {
        "apiVersion": "kftune.dev/v1alpha1", "kind": "TuningJob",
        "metadata": {"name": f"bench-seed-{seed}"},
        "spec": {
            "corpus": {"name": "TREC_6", "downsample": scale.downsample, "devFraction": 0.1, "seed": 1},
            "task": {"type": "text_classification", "labelType": "question_class"},
            "model": dict(MODEL),
            "lrRangeTest": dict(LR_RANGE_TEST),
            "search": {
                "objective": {"type": "maximize", "objectiveMetricName": "dev_score"},
                "algorithm": {"algorithmName": "random"},
                "parallelTrialCount": 1, "maxTrialCount": scale.trials, "maxFailedTrialCount": scale.trials,
                "parameters": PARAMETERS,
            },
            "train": {"maxEpochs": scale.max_epochs, "patience": scale.max_epochs, "trainingRuns": 1, "seed": seed,
                      "device": "cpu", "numThreads": 1},
            "resources": {"trialGPU": 0, "finalGPU": 0},
        },
    }


def halving_epochs(cohort: int, rungs: Sequence[int], eta: int) -> int:
    """Epochs synchronous successive halving spends on a cohort of ``cohort`` trials (kftune's rule:
    the best ``max(1, n // eta)`` go on at each rung, a promoted trial resumes from its checkpoint)."""
    total, reached, done = cohort * rungs[0], cohort, rungs[0]
    for r in rungs[1:]:
        reached = max(1, reached // eta)
        total += reached * (r - done)
        done = r
    return total


def kftune_plan(scale: Scale, lr_epochs: float) -> dict[str, Any]:
    """kftune's settings: the largest ``maxTrialCount`` (<= the peers' trials) whose planned epochs (LR
    range test + halving cohorts + finalist re-runs) fit one third of random search's nominal budget."""
    from kftune.core.early_stopping.successive_halving import _Bracket

    cap = scale.trials * scale.max_epochs / 3
    halving = kftune_halving(scale)
    rungs = _Bracket(halving["min_budget"], scale.max_epochs, halving["eta"]).rungs
    rounds = KFTUNE_C2F["rounds"]
    best = None
    for finalists, runs in KFTUNE_FINALISTS:
        for t in range(scale.trials, min(rounds, scale.trials) - 1, -1):
            size = math.ceil(t / rounds)
            cohorts = [size] * (rounds - 1) + [t - size * (rounds - 1)]
            search = sum(halving_epochs(c, rungs, halving["eta"]) for c in cohorts if c > 0)
            planned = lr_epochs + search + finalists * (runs - 1) * scale.max_epochs
            if planned <= cap:
                return {"max_trials": t, "finalists": finalists, "finalist_runs": runs, "rungs": list(rungs),
                        "planned_epochs": round(planned, 3), "cap": cap, "fits": True}
            if best is None or planned < best["planned_epochs"]:
                best = {"max_trials": t, "finalists": finalists, "finalist_runs": runs, "rungs": list(rungs),
                        "planned_epochs": round(planned, 3), "cap": cap, "fits": False}
    assert best is not None
    return best


def kftune_spec(scale: Scale, seed: int, plan: Mapping[str, Any]) -> dict[str, Any]:
    spec = base_spec(scale, seed)
    s = spec["spec"]["search"]
    s["algorithm"] = {"algorithmName": "coarse-to-fine",
                      "algorithmSettings": [{"name": k, "value": str(v)} for k, v in KFTUNE_C2F.items()]}
    s["earlyStopping"] = {"algorithmName": "successive-halving", "algorithmSettings": [
        *({"name": k, "value": str(v)} for k, v in kftune_halving(scale).items()),
        {"name": "max_budget", "value": str(scale.max_epochs)}]}
    s["maxTrialCount"] = s["maxFailedTrialCount"] = int(plan["max_trials"])
    s["finalists"] = int(plan["finalists"])
    s["finalistRuns"] = int(plan["finalist_runs"])
    return spec


# --------------------------------------------------------------------------------------------------
# The trial function (every peer) and retraining (every method)
# --------------------------------------------------------------------------------------------------

class Stop(Exception):
    """Raised out of a trial when the method's pruner stops it."""


class TrialFunction:
    """Train one assignment with the kftune trainer, exactly as ``kftune trial`` does (same spec model
    defaults, same encoder, same trainer config with ``max_epochs`` the search's maximum budget).

    ``__call__(assignment, epochs, seed, on_epoch)``: ``on_epoch(epoch, dev_score) -> bool`` after every
    epoch, ``True`` stops the training. Returns the per-epoch dev scores. Every epoch is also appended to
    ``events`` as ``(trial, epoch, dev_score)`` (the curve is computed from them).
    """

    def __init__(self, corpus: str, spec: Mapping[str, Any]):
        from kftune.core.space import SearchSpace
        from kftune.core.spec import parse_spec
        from kftune.steps.trial import load_corpus

        self.corpus = corpus
        self.job = parse_spec(dict(spec))
        self.space = SearchSpace.from_parameters(self.job.spec.search.parameters)
        self.info, self.task, self.splits = load_corpus(corpus)
        self.events: list[tuple[int, int, float]] = []
        self.trials = 0

    def typed(self, raw: Mapping[str, Any], space: Any = None) -> dict[str, Any]:
        """``raw`` as typed values, checked against ``space`` (default: the spec's space)."""
        from kftune.steps.trial import typed_assignment

        space = space if space is not None else self.space
        return typed_assignment(space, {k: (str(v) if not isinstance(v, str) and space[k].type in (
            "categorical", "discrete") else v) for k, v in raw.items()})

    def _setup(self, assignment: Mapping[str, Any], seed: int) -> tuple[Any, Any, Any, Any, Any]:

        import torch

        from kftune.io.store import open_store
        from kftune.nlp.checkpoint import seed_everything
        from kftune.nlp.config import settings_from_job
        from kftune.nlp.models import build_model
        # the very encoding step kftune's trials use (cached per process), so that inputs are identical
        from kftune.steps.trial import _encoded

        torch.set_num_threads(1)
        hp, tcfg = settings_from_job(self.job, self.task.type, assignment=assignment, path="trial.hyperparameters")
        encoder, train, dev, weights = _encoded(self.corpus, self.task, self.splits, hp)
        seed_everything(seed)
        model = build_model(self.task.type, hp, encoder, pretrained_weights=weights,
                            storage_mode=tcfg.embeddings_storage_mode, open_store=open_store)
        return hp, tcfg, encoder, (train, dev), model

    def __call__(self, assignment: Mapping[str, Any], epochs: int, seed: int,
                 on_epoch: Callable[[int, float], bool] | None = None) -> list[float]:
        from kftune.nlp.trainer import Trainer

        self.trials += 1
        number = self.trials
        hp, tcfg, encoder, (train, dev), model = self._setup(assignment, seed)
        scores: list[float] = []

        def callback(epoch: int, result: Any) -> bool:
            scores.append(float(result.dev_score))
            self.events.append((number, epoch, float(result.dev_score)))
            return bool(on_epoch(epoch, float(result.dev_score))) if on_epoch is not None else False

        trainer = Trainer(model, encoder, train, dev, hp, tcfg, seed=seed, device=None, callbacks=[callback],
                          show_progress=False)
        trainer.fit(until_epoch=epochs, resume=False)
        return scores

    def retrain(self, assignment: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """Train from scratch for ``max_epochs`` with ``seed``; dev and test accuracy of the best-dev weights."""
        from kftune.nlp.data import example_from_json
        from kftune.nlp.trainer import Trainer

        hp, tcfg, encoder, (train, dev), model = self._setup(assignment, seed)
        trainer = Trainer(model, encoder, train, dev, hp, tcfg, seed=seed, device=None, show_progress=False)
        started = time.perf_counter()
        fit = trainer.fit(resume=False)
        test_path = Path(self.corpus) / "test.jsonl"
        rows = [example_from_json(json.loads(line), self.task.type, f"{test_path}:{i}")
                for i, line in enumerate(test_path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
        test = encoder.encode(rows, "test")
        if fit.best_state is not None:
            trainer.model.load_state_dict(fit.best_state)
        _, test_score, _ = trainer.evaluate(test)
        return {"seed": seed, "dev": float(fit.best_score), "test": float(test_score), "epochs": fit.epochs,
                "best_epoch": fit.best_epoch, "status": fit.status, "seconds": round(time.perf_counter() - started, 2),
                "dev_history": [round(h.dev_score, 4) for h in fit.history]}


def objective_of(scores: Sequence[float]) -> float:
    from kftune.core.search_policy import run_objective

    return run_objective(scores)[0]


def curve_from_events(events: Sequence[tuple[Any, int, float | None]], start: float = 0.0) -> list[list[float]]:
    """``[[cumulative epochs, best objective so far], ...]`` after every epoch; an event whose score is
    ``None`` (a finalist re-run) spends an epoch without changing the best."""
    seen: dict[Any, list[float]] = {}
    best = -math.inf
    out: list[list[float]] = []
    spent = start
    for trial, _epoch, score in events:
        spent += 1
        if score is not None and math.isfinite(score):
            values = seen.setdefault(trial, [])
            values.append(score)
            best = max(best, sum(values[-3:]) / len(values[-3:]))
        out.append([round(spent, 4), round(best, 6) if math.isfinite(best) else None])
    return out


# --------------------------------------------------------------------------------------------------
# The methods (each returns the job's search record)
# --------------------------------------------------------------------------------------------------

def run_hyperopt(fn: TrialFunction, scale: Scale, seed: int, algo: str) -> dict[str, Any]:
    """``random`` (``rand.suggest``) or ``hyperopt-tpe`` (``tpe.suggest``), each trial ``max_epochs``."""
    import hyperopt
    import numpy as np
    from hyperopt import STATUS_FAIL, STATUS_OK, Trials, fmin, rand, tpe

    from kftune.core.errors import TrialFailedError

    def objective(point: Mapping[str, Any]) -> dict[str, Any]:
        assignment = fn.space.check({p.name: p.from_hyperopt(point[p.name]) for p in fn.space})
        try:
            scores = fn(assignment, scale.max_epochs, seed)
        except TrialFailedError as exc:
            return {"status": STATUS_FAIL, "reason": str(exc), "assignment": assignment}
        value = objective_of(scores)
        return {"loss": -value, "status": STATUS_OK, "objective": value, "assignment": assignment,
                "epochs": len(scores)}

    # hyperopt's TPE draws its first n_startup_jobs (20) points at random from the same stream as
    # rand.suggest: with one seed for both, random search would repeat TPE's first 20 trials. Random
    # search therefore draws from its own stream (seed + RANDOM_STREAM).
    trials = Trials()
    rstate = np.random.default_rng(seed + RANDOM_STREAM if algo == "random" else seed)
    fmin(objective, fn.space.hyperopt_space, algo=rand.suggest if algo == "random" else tpe.suggest,
         max_evals=scale.trials, trials=trials, rstate=rstate, show_progressbar=False)
    best = trials.best_trial["result"]
    return {"chosen": {"assignment": best["assignment"], "search_objective": best["objective"]},
            "trials": len(trials.trials), "library": f"hyperopt {hyperopt.__version__}"}


def _optuna_params(trial: Any, space: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in space:
        if p.is_numeric_range and p.type == "double" and p.step is None:
            out[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.is_log)
        elif p.is_numeric_range:
            out[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.is_log)
        else:
            out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return out


def run_optuna(fn: TrialFunction, scale: Scale, seed: int, pruner_name: str) -> dict[str, Any]:
    """Optuna ``TPESampler(seed)`` with ``MedianPruner()`` or ``SuccessiveHalvingPruner()`` (defaults),
    reporting the dev score after every epoch; the trial's value is the Flair objective."""
    import optuna

    from kftune.core.errors import TrialFailedError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner() if pruner_name == "median" else optuna.pruners.SuccessiveHalvingPruner()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)

    def objective(trial: Any) -> float:
        assignment = fn.typed(_optuna_params(trial, fn.space))
        pruned = []

        def on_epoch(epoch: int, score: float) -> bool:
            trial.report(score, epoch)
            if trial.should_prune():
                pruned.append(epoch)
                return True
            return False

        scores = fn(assignment, scale.max_epochs, seed, on_epoch)
        trial.set_user_attr("assignment", assignment)
        trial.set_user_attr("objective", objective_of(scores))
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {pruned[0]}")
        return objective_of(scores)

    study.optimize(objective, n_trials=scale.trials, catch=(TrialFailedError,))
    best = study.best_trial
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    return {"chosen": {"assignment": best.user_attrs["assignment"], "search_objective": best.value},
            "trials": len(study.trials), "states": states, "library": f"optuna {optuna.__version__}",
            "pruner": type(pruner).__name__}


_RAY_FN: TrialFunction | None = None


def _ray_trainable(config: Mapping[str, Any], ctx: Mapping[str, Any]) -> None:
    """Ray Tune function trainable: one trial, a report per epoch (``dev_score`` drives ASHA)."""
    global _RAY_FN
    from ray import tune

    if _RAY_FN is None or _RAY_FN.corpus != ctx["corpus"] or _RAY_FN.job.spec.train.seed != ctx["seed"]:
        _RAY_FN = TrialFunction(ctx["corpus"], ctx["spec"])
    fn = _RAY_FN
    assignment = fn.typed(config)
    scores: list[float] = []

    def on_epoch(epoch: int, score: float) -> bool:
        scores.append(score)
        tune.report({"dev_score": score, "objective": objective_of(scores), "epoch": epoch, "t": time.time(),
                     "assignment": json.dumps(assignment)})
        return False

    fn(assignment, int(ctx["max_epochs"]), int(ctx["seed"]), on_epoch)


def listening_sockets() -> list[str]:
    """Local addresses of listening TCP/UDP sockets in this network namespace (``ss -ltnu``)."""
    out = subprocess.run(["ss", "-Hltnu"], capture_output=True, text=True, check=False).stdout
    return [line.split()[4] for line in out.splitlines() if len(line.split()) > 4]


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    host = host.split("%")[0]
    return host.startswith("127.") or host in ("::1", "localhost") or host.startswith("::ffff:127.")


def run_ray(fn: TrialFunction, scale: Scale, seed: int, spec: Mapping[str, Any], work: Path) -> dict[str, Any]:
    """Ray Tune ``HyperOptSearch(random_state_seed=seed)`` + ``ASHAScheduler(max_t=max_epochs)`` (grace
    period, reduction factor: Ray's defaults), one trial at a time, Ray bound to 127.0.0.1. The chosen
    configuration is ``get_best_result(metric='objective', scope='last')``."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    bench_dir = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join([bench_dir, os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
    before = listening_sockets()
    temp_dir = f"/tmp/ray-se-{os.getpid()}"  # short: Ray's AF_UNIX socket paths must stay under 108 bytes
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.hyperopt import HyperOptSearch

    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", num_cpus=1,
             log_to_driver=False, configure_logging=False, _temp_dir=temp_dir)
    try:
        listening = sorted(set(listening_sockets()) - set(before))
        outside = [a for a in listening if not _is_loopback(a)]
        namespace = os.environ.get("KFTUNE_BENCH_NETNS") == "1"
        if outside:
            raise RuntimeError(f"Ray listens on non-loopback addresses {outside}; refusing to run it")
        param_space: dict[str, Any] = {}
        for p in fn.space:
            if p.is_numeric_range and p.type == "double":
                param_space[p.name] = (tune.loguniform if p.is_log else tune.uniform)(p.low, p.high)
            elif p.is_numeric_range:
                param_space[p.name] = tune.randint(int(p.low), int(p.high) + 1)
            else:
                param_space[p.name] = tune.choice([str(c) for c in p.choices])
        ctx = {"corpus": fn.corpus, "spec": dict(spec), "max_epochs": scale.max_epochs, "seed": seed}
        tuner = tune.Tuner(
            tune.with_parameters(_ray_trainable, ctx=ctx), param_space=param_space,
            tune_config=tune.TuneConfig(metric="dev_score", mode="max", num_samples=scale.trials,
                                        search_alg=HyperOptSearch(random_state_seed=seed),
                                        scheduler=ASHAScheduler(max_t=scale.max_epochs), max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(work / "ray-results"), name=f"seed-{seed}", verbose=0))
        grid = tuner.fit()
        best = grid.get_best_result(metric="objective", mode="max", scope="last")
        events: list[tuple[Any, float, int, float]] = []
        stopped = 0
        for i, result in enumerate(grid):
            df = result.metrics_dataframe
            if df is None or df.empty:
                continue
            for _, row in df.iterrows():
                events.append((float(row["t"]), i, int(row["epoch"]), float(row["dev_score"])))
            if int(df["epoch"].max()) < scale.max_epochs:
                stopped += 1
        events.sort()
        return {"chosen": {"assignment": json.loads(best.metrics["assignment"]),
                           "search_objective": float(best.metrics["objective"])},
                "trials": len(grid), "stopped_early": stopped, "errors": len(grid.errors),
                "events": [(i, e, s) for _, i, e, s in events], "library": f"ray {ray.__version__}",
                "loopback": {"network_namespace": namespace, "listening": listening, "non_loopback": outside}}
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def run_kftune(corpus: str, scale: Scale, seed: int, work: Path) -> dict[str, Any]:
    """``kftune lr-find`` then ``kftune search`` (inline executor, one trial at a time) on the spec of
    :func:`kftune_spec`; epochs and the curve are read back from the search's stored rounds and records."""
    from kftune.io.store import get_json, open_store
    from kftune.steps import lr_find, search
    from kftune.steps.trial import load_corpus

    info, _task, splits = load_corpus(corpus)
    n_train = len(splits["train"])
    steps = math.ceil(n_train / MODEL["mini_batch_size"])
    lr_epochs_est = min(LR_RANGE_TEST["iterations"], steps) / steps
    plan = kftune_plan(scale, lr_epochs_est)
    spec = kftune_spec(scale, seed, plan)
    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / "spec.yaml"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    lr_out = work / "lr_find"
    lr = lr_find.run(lr_find.LrFindConfig(corpus=corpus, out=str(lr_out), spec=str(spec_path), seed=seed,
                                          num_threads=1))
    lr_epochs = lr.iterations / steps
    store_uri = str(work / "store")
    result = search.run(search.SearchConfig(spec=str(spec_path), corpus=corpus, store=store_uri, run_id="bench",
                                            seed=seed, lr_find=str(lr_out), parallel=1, executor="inline",
                                            show_progress=False))
    store = open_store(store_uri)
    prefix = "runs/bench/search"
    records = {r["id"]: r for r in get_json(store, f"{prefix}/trials.json")}
    rounds = sorted((get_json(store, k) for k in store.list(f"{prefix}/rounds") if k.endswith(".json")),
                    key=lambda r: int(r["round"]))
    events: list[tuple[Any, int, float | None]] = []
    trained: dict[str, int] = {}
    for rnd in rounds:
        for req in rnd["requests"]:
            rec = records.get(req["trial_id"])
            if rec is None:
                continue
            values = {int(e): float(v) for e, v in rec.get("intermediate") or []}
            upto = min(int(req["budget"]), int(rec.get("budget") or 0))
            for e in range(trained.get(req["trial_id"], 0) + 1, upto + 1):
                events.append((req["trial_id"], e, values.get(e)))
            trained[req["trial_id"]] = max(trained.get(req["trial_id"], 0), upto)
    finalist_epochs = 0
    for key in store.list(f"{prefix}/finalists"):
        if key.endswith(".json"):
            rec = get_json(store, key)
            n = int(rec.get("epochs_trained") or rec.get("budget") or 0)
            finalist_epochs += n
            events.extend((f"finalist-{rec.get('id')}", e, None) for e in range(1, n + 1))
    best = result.best or {}
    space = get_json(store, f"{prefix}/space.json")
    return {"space": space["parameters"], "space_notes": space.get("notes"),
            "chosen": {"assignment": best.get("assignment"), "search_objective": best.get("search_objective"),
                       "finalist_mean": best.get("objective"), "finalist_spread": best.get("spread"),
                       "chosen_on": best.get("chosen_on"), "trial_id": best.get("trial_id")},
            "trials": sum(result.trials.values()), "states": result.trials, "stop_reason": result.stop_reason,
            "search_epochs": result.search_epochs, "finalist_epochs": result.finalist_epochs,
            "lr_range_test": {"iterations": lr.iterations, "epochs": round(lr_epochs, 4), "suggested_lr": lr.suggested_lr,
                              "lr_range": list(lr.lr_range) if lr.lr_range else None, "method": lr.method},
            "plan": plan, "settings": {"coarse_to_fine": KFTUNE_C2F, "successive_halving": {
                **kftune_halving(scale), "max_budget": scale.max_epochs}},
            "events": events, "lr_epochs": lr_epochs, "finalist_epochs_counted": finalist_epochs}


# --------------------------------------------------------------------------------------------------
# One job: search, then retrain the chosen configuration
# --------------------------------------------------------------------------------------------------

def job_dir(work: Path, method: str, seed: int) -> Path:
    return work / "jobs" / method / f"seed-{seed}"


def retrain_file_name(scale: Scale) -> str:
    """``retrain.json``, or ``retrain_<seeds>.json`` when ``--retrain-seeds`` replaced the scale's
    retraining seeds (so a job keeps both, and the issue's 3-seed record is never overwritten)."""
    other = other_seeds(scale.name, "retrain_seeds", scale.retrain_seeds)
    return "retrain.json" if other is None else f"retrain_{seeds_tag(other)}.json"


def run_job(scale: Scale, method: str, seed: int, work: Path, corpus: str) -> None:
    """Search (unless ``search.json`` exists), then retrain (unless :func:`retrain_file_name` exists)."""
    import torch

    torch.set_num_threads(1)
    out = job_dir(work, method, seed)
    out.mkdir(parents=True, exist_ok=True)
    search_file = out / "search.json"
    spec = base_spec(scale, seed)
    if not search_file.exists():
        started = time.perf_counter()
        fn = None
        if method == "kftune":
            rec = run_kftune(corpus, scale, seed, out / "kftune")
            events = rec.pop("events")
            lr_epochs = rec.pop("lr_epochs")
            curve = curve_from_events(events, start=lr_epochs)
            epochs = lr_epochs + len(events)
        else:
            fn = TrialFunction(corpus, spec)
            if method in ("random", "hyperopt-tpe"):
                rec = run_hyperopt(fn, scale, seed, method)
            elif method == "optuna-median":
                rec = run_optuna(fn, scale, seed, "median")
            elif method == "optuna-sha":
                rec = run_optuna(fn, scale, seed, "sha")
            elif method == "ray-asha":
                rec = run_ray(fn, scale, seed, spec, out)
            else:
                raise ValueError(f"unknown method {method!r}")
            events = rec.pop("events", None) or fn.events
            curve = curve_from_events(events)
            epochs = float(len(events))
        record = {"method": method, "seed": seed, "scale": scale.name, "epochs": round(epochs, 4),
                  "best_dev_found": curve[-1][1] if curve else None, "curve": curve,
                  "seconds": round(time.perf_counter() - started, 1), **rec}
        tmp = search_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(search_file)
        log.info("%s seed %d: %.1f epochs, best dev found %.4f, chosen %s", method, seed, epochs,
                 record["best_dev_found"] or float("nan"), json.dumps(record["chosen"]["assignment"]))
    record = json.loads(search_file.read_text(encoding="utf-8"))
    retrain_file = out / retrain_file_name(scale)
    if not retrain_file.exists():
        fn = TrialFunction(corpus, spec)
        space = None
        if record.get("space"):  # kftune's own space: the LR range test replaced the learning rate's range
            from kftune.core.space import SearchSpace

            space = SearchSpace.from_katib(record["space"])
        assignment = fn.typed(record["chosen"]["assignment"], space)
        runs = []
        for s in scale.retrain_seeds:
            digest = hashlib.sha1(json.dumps(assignment, sort_keys=True).encode()).hexdigest()[:16]
            cache = work / "retrain-cache" / f"{digest}-seed-{s}.json"
            if cache.exists():
                runs.append(json.loads(cache.read_text(encoding="utf-8")))
                continue
            r = fn.retrain(assignment, s)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(r), encoding="utf-8")
            runs.append(r)
        dev = [r["dev"] for r in runs]
        test = [r["test"] for r in runs]
        out_rec = {"assignment": assignment, "runs": runs, "dev_mean": statistics.fmean(dev),
                   "dev_sd": statistics.stdev(dev) if len(dev) > 1 else 0.0, "test_mean": statistics.fmean(test),
                   "test_sd": statistics.stdev(test) if len(test) > 1 else 0.0}
        tmp = retrain_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(out_rec, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(retrain_file)
        log.info("%s seed %d retrained: dev %.4f +- %.4f, test %.4f +- %.4f", method, seed, out_rec["dev_mean"],
                 out_rec["dev_sd"], out_rec["test_mean"], out_rec["test_sd"])


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------

def _median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def collect(scale: Scale, work: Path, methods: Sequence[str]) -> dict[str, Any]:
    per_method: dict[str, Any] = {}
    for m in methods:
        seeds = []
        for s in scale.search_seeds:
            d = job_dir(work, m, s)
            if not (d / "search.json").exists():
                continue
            rec = json.loads((d / "search.json").read_text(encoding="utf-8"))
            retrain_file = d / retrain_file_name(scale)
            if retrain_file.exists():
                rec["retrain"] = json.loads(retrain_file.read_text(encoding="utf-8"))
            seeds.append(rec)
        done = [r for r in seeds if "retrain" in r]
        per_method[m] = {
            "label": LABELS[m], "seeds": seeds, "search_seeds_done": [r["seed"] for r in seeds],
            "epochs_median": _median([r["epochs"] for r in seeds]),
            "best_dev_found_median": _median([r["best_dev_found"] for r in seeds]),
            "retrained_seeds": [r["seed"] for r in done],
            "dev_mean_median": _median([r["retrain"]["dev_mean"] for r in done]),
            "dev_sd_median": _median([r["retrain"]["dev_sd"] for r in done]),
            "test_mean_median": _median([r["retrain"]["test_mean"] for r in done]),
            "test_sd_median": _median([r["retrain"]["test_sd"] for r in done]),
        }
    target = None
    k = per_method.get("kftune")
    r = per_method.get("random")
    # the target compares kftune with every peer: a run without all of them cannot decide it
    complete = (set(PEERS) <= set(methods)
                and all(len(per_method[m]["retrained_seeds"]) == len(scale.search_seeds) for m in methods))
    if k and k["dev_mean_median"] is not None:
        cap = scale.trials * scale.max_epochs / 3
        peers = {m: v for m, v in per_method.items() if m != "kftune" and v["dev_mean_median"] is not None}
        dev_gap = {m: k["dev_mean_median"] - v["dev_mean_median"] for m, v in peers.items()}
        test_gap = {m: k["test_mean_median"] - v["test_mean_median"] for m, v in peers.items()}
        random_epochs = r["epochs_median"] if r and r["epochs_median"] is not None else None
        epochs_ok = k["epochs_median"] <= (random_epochs / 3 if random_epochs else cap) + 1e-9
        target = {"complete": complete, "cap_epochs": cap, "random_epochs_median": random_epochs,
                  "kftune_epochs_median": k["epochs_median"], "epochs_ok": epochs_ok,
                  "dev_gap_vs_peer": dev_gap, "test_gap_vs_peer": test_gap,
                  "dev_ok": all(g >= 0 for g in dev_gap.values()), "test_ok": all(g >= 0 for g in test_gap.values())}
        target["met"] = bool(epochs_ok and target["dev_ok"] and target["test_ok"] and complete)
    return {"per_method": per_method, "target": target, "complete": complete, "resolution": resolution(per_method)}


def resolution(per_method: Mapping[str, Any]) -> dict[str, Any] | None:
    """How finely the retrained scores can tell configurations apart, from this run's own retrainings.

    Over the distinct chosen configurations (each retrained with the same seeds), a one-way random-effects
    split of the per-seed scores: ``within_sd`` (one configuration, seed to seed), ``noise_sd`` of an
    ``n``-seed mean (``within_sd / sqrt(n)``, what every retrained mean in the table carries), and
    ``between_sd`` (how much the configurations' true means differ: the variance of their means less the
    noise variance, floored at 0). ``None`` with fewer than 2 configurations, or unless all of them were
    retrained with the same number (at least 2) of seeds.
    """
    runs: dict[str, dict[int, Mapping[str, Any]]] = {}
    for v in per_method.values():
        for r in v["seeds"]:
            rt = r.get("retrain")
            if rt:
                key = json.dumps(rt["assignment"], sort_keys=True)
                runs.setdefault(key, {}).update({int(x["seed"]): x for x in rt["runs"]})
    sizes = {len(x) for x in runs.values()}
    if len(runs) < 2 or len(sizes) != 1 or min(sizes) < 2:
        return None
    n = sizes.pop()
    out: dict[str, Any] = {"configurations": len(runs), "seeds": n}
    for metric in ("dev", "test"):
        scores = [[float(x[metric]) for x in by_seed.values()] for by_seed in runs.values()]
        within = statistics.fmean(statistics.variance(s) for s in scores)
        means = [statistics.fmean(s) for s in scores]
        between = max(0.0, statistics.variance(means) - within / n)
        out[metric] = {"within_sd": within ** 0.5, "noise_sd": (within / n) ** 0.5, "between_sd": between ** 0.5}
    return out


def _fmt(x: float | None, pct: bool = True, digits: int = 2) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.{digits}f}" if pct else f"{x:.{digits}f}"


def other_seeds(scale_name: str, kind: str, seeds: Sequence[int]) -> tuple[int, ...] | None:
    """``seeds`` when ``--seeds`` (``kind`` ``"search_seeds"``) or ``--retrain-seeds`` (``"retrain_seeds"``)
    replaced the scale's seeds of that kind with them, else ``None``."""
    seeds = tuple(int(s) for s in seeds)
    return None if seeds == tuple(getattr(SCALES[scale_name], kind)) else seeds


def seeds_tag(seeds: Sequence[int]) -> str:
    """Seeds in a file name: ``4-5-6``; a run of 4 or more consecutive seeds as ``1001to1010``."""
    seeds = [int(x) for x in seeds]
    if len(seeds) >= 4 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}to{seeds[-1]}"
    return "-".join(map(str, seeds))


def report_name(scale: Mapping[str, Any]) -> str:
    """The report's file stem: ``search_efficiency_<scale>``, plus ``_seeds-<search seeds>`` and
    ``_retrain-<retraining seeds>`` where ``--seeds`` / ``--retrain-seeds`` replaced the scale's."""
    other = other_seeds(scale["name"], "search_seeds", scale["search_seeds"])
    other_rt = other_seeds(scale["name"], "retrain_seeds", scale["retrain_seeds"])
    return (f"search_efficiency_{scale['name']}" + (f"_seeds-{seeds_tag(other)}" if other else "")
            + (f"_retrain-{seeds_tag(other_rt)}" if other_rt else ""))


def render_markdown(report: dict[str, Any]) -> str:
    scale = report["scale"]
    other = other_seeds(scale["name"], "search_seeds", scale["search_seeds"])
    other_rt = other_seeds(scale["name"], "retrain_seeds", scale["retrain_seeds"])
    title = (f"{scale['name']} scale" + (f", search seeds {', '.join(map(str, other))}" if other else "")
             + (f", {len(other_rt)} retraining seeds" if other_rt else ""))
    lines = [f"# Search efficiency on TREC_6 ({title})", ""]
    if scale["name"] != "full":
        lines += [f"**{scale['note']}.** Not the issue's full protocol; see `--scale full`.", ""]
    c = report["corpus"]
    lines += [f"Corpus: TREC_6 through the corpus step, train downsampled to {scale['downsample']:g} "
              f"({c['train']} train / {c['dev']} dev / {c['test']} test questions). Search space: "
              "`examples/trec6.yaml` (learning_rate 1e-4..1e-2 log, dropout 0.1..0.6, embedding_dim {64,128,256}, "
              "mini_batch_size {16,32,64}); Kim-style CNN, AdamW, plateau annealing. "
              f"{scale['trials']} trials of at most {scale['max_epochs']} epochs for the peers "
              f"(random's nominal budget {scale['trials'] * scale['max_epochs']} epochs); search seeds "
              f"{', '.join(map(str, scale['search_seeds']))}; chosen configurations retrained with seeds "
              f"{', '.join(map(str, scale['retrain_seeds']))}. Dev/test: accuracy in %, retrained = mean ± sd over "
              "the retraining seeds; every column is the median over search seeds.", ""]
    lines += ["| method | epochs spent | best dev found | retrained dev | retrained test | seeds done |",
              "| --- | ---: | ---: | ---: | ---: | --- |"]
    for m, v in report["per_method"].items():
        lines.append(f"| {v['label']} | {_fmt(v['epochs_median'], pct=False, digits=1)} | "
                     f"{_fmt(v['best_dev_found_median'])} | {_fmt(v['dev_mean_median'])} ± {_fmt(v['dev_sd_median'])} | "
                     f"{_fmt(v['test_mean_median'])} ± {_fmt(v['test_sd_median'])} | "
                     f"{', '.join(map(str, v['retrained_seeds'])) or '–'} |")
    t = report["target"]
    lines += [""]
    if t:
        verdict = "MET" if t["met"] else ("NOT MET" if t["complete"] else "not decided yet (run incomplete)")
        lines += [f"**Target** (kftune's epochs <= 1/3 of random's, and its retrained mean dev and mean test >= every "
                  f"peer's, medians over search seeds): **{verdict}**.", "",
                  f"- epochs: kftune {_fmt(t['kftune_epochs_median'], pct=False, digits=1)} vs random "
                  f"{_fmt(t['random_epochs_median'], pct=False, digits=1)} / 3 = "
                  f"{_fmt((t['random_epochs_median'] or 3 * t['cap_epochs']) / 3, pct=False, digits=1)}: "
                  f"{'ok' if t['epochs_ok'] else 'over'}",
                  "- retrained dev, kftune minus peer (points): " + ", ".join(
                      f"{m} {100 * g:+.2f}" for m, g in t["dev_gap_vs_peer"].items()),
                  "- retrained test, kftune minus peer (points): " + ", ".join(
                      f"{m} {100 * g:+.2f}" for m, g in t["test_gap_vs_peer"].items()), ""]
    res = report.get("resolution")
    if res:
        d, te = res["dev"], res["test"]
        lines += ["## How large a difference means something", "",
                  f"Over the {res['configurations']} distinct configurations chosen above, each retrained with the same "
                  f"{res['seeds']} seeds: one configuration's score moves by {_fmt(d['within_sd'])} points (dev) and "
                  f"{_fmt(te['within_sd'])} (test) sd from seed to seed, so a retrained mean carries a noise sd of "
                  f"{_fmt(d['noise_sd'])} (dev) and {_fmt(te['noise_sd'])} (test), and the gap between two of them a noise sd of "
                  f"{_fmt(d['noise_sd'] * 2 ** 0.5)} (dev) and {_fmt(te['noise_sd'] * 2 ** 0.5)} (test); the configurations' true means differ "
                  f"by an estimated sd of {_fmt(d['between_sd'])} (dev) and {_fmt(te['between_sd'])} (test). A gap between "
                  "two methods' retrained means well inside that sd says little about which search is better (each "
                  "method's row above is the median over search seeds of such means).", ""]
    lines += ["## Per search seed", "", "| method | seed | epochs | best dev found | chosen configuration | "
              "retrained dev | retrained test |", "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for m, v in report["per_method"].items():
        for r in v["seeds"]:
            a = r["chosen"]["assignment"] or {}
            conf = ", ".join(f"{k}={(f'{x:.3g}' if isinstance(x, float) else x)}" for k, x in a.items())
            rt = r.get("retrain")
            lines.append(f"| {m} | {r['seed']} | {r['epochs']:.1f} | {_fmt(r['best_dev_found'])} | {conf} | "
                         + (f"{_fmt(rt['dev_mean'])} ± {_fmt(rt['dev_sd'])} | {_fmt(rt['test_mean'])} ± "
                            f"{_fmt(rt['test_sd'])} |" if rt else "– | – |"))
    k = report["per_method"].get("kftune", {}).get("seeds") or []
    if k:
        p = k[0]["plan"]
        lines += ["", "## kftune's settings", "",
                  f"coarse-to-fine {json.dumps(KFTUNE_C2F)}, successive halving {json.dumps(k[0]['settings']['successive_halving'])} "
                  f"(rungs {p['rungs']}), maxTrialCount {p['max_trials']} (the largest <= {scale['trials']} whose planned "
                  f"epochs fit the cap of {p['cap']:g}: planned {p['planned_epochs']:g}{'' if p['fits'] else ', DOES NOT FIT'}), "
                  f"finalists {p['finalists']} x finalistRuns {p['finalist_runs']}; LR range test "
                  f"{LR_RANGE_TEST['iterations']} batches at most (one epoch cap), method {LR_RANGE_TEST['method']}.", ""]
        for r in k:
            lt = r["lr_range_test"]
            lr_fs = next((q["feasibleSpace"] for q in r.get("space") or [] if q.get("name") == "learning_rate"), {})
            suggested = f"{lt['suggested_lr']:.3g}" if lt.get("suggested_lr") else "none"
            lines.append(f"- seed {r['seed']}: LR range test {lt['iterations']} batches ({lt['epochs']:.2f} epochs), "
                         f"suggested lr {suggested}, learning-rate space searched [{lr_fs.get('min')}, {lr_fs.get('max')}] "
                         f"(the test's [base_lr, max_lr]: "
                         f"{'[%.3g, %.3g]' % tuple(lt['lr_range']) if lt['lr_range'] else 'none'}); "
                         f"search epochs {r['search_epochs']}, finalist epochs "
                         f"{r['finalist_epochs']}; trials {r['states']}; stop {r['stop_reason']}; winner chosen on "
                         f"{r['chosen']['chosen_on']} (finalist mean {_fmt(r['chosen']['finalist_mean'])})")
    ray = report["per_method"].get("ray-asha", {}).get("seeds") or []
    if ray:
        lb = ray[0].get("loopback", {})
        lines += ["", f"Ray: {'in a private network namespace with only loopback up; ' if lb.get('network_namespace') else ''}"
                      f"listening sockets while it ran: {', '.join(lb.get('listening', [])) or 'none'}; non-loopback: "
                      f"{lb.get('non_loopback') or 'none'}."]
    env = report["environment"]
    lines += ["", f"Environment: {env['python']}, torch {env['torch']}, {env['libraries']}, {env['cpu']}; "
                  f"{report['workers']} job(s) at a time, 1 torch thread each.", "",
              f"Plot: `{Path(report['plot']).name}`. Raw records: `{Path(report['json']).name}`.", ""]
    return "\n".join(lines)


def render_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    colors = dict(zip(METHODS, ("#7f7f7f", "#1f77b4", "#2ca02c", "#17becf", "#ff7f0e", "#d62728")))
    styles = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))  # one per search seed, up to 6
    for m, v in report["per_method"].items():
        for i, r in enumerate(v["seeds"]):
            pts = [(x, y) for x, y in r["curve"] if y is not None]
            if not pts:
                continue
            ax.step([p[0] for p in pts], [100 * p[1] for p in pts], where="post", color=colors[m],
                    linestyle=styles[i % len(styles)], linewidth=1.6 if m == "kftune" else 1.1,
                    label=f"{m}" if i == 0 else None)
    tops = [y for v in report["per_method"].values() for r in v["seeds"] for _, y in r["curve"] if y is not None]
    if tops:  # zoom on the last 8 points below the best: where the methods differ
        ax.set_ylim(max(100 * min(tops), 100 * max(tops) - 8) - 0.5, 100 * max(tops) + 0.5)
    sc = report["scale"]
    cap = sc["trials"] * sc["max_epochs"] / 3
    ax.axvline(cap, color="black", linewidth=0.8, linestyle="-.")
    ax.text(cap, ax.get_ylim()[0], " 1/3 of random", fontsize=8, va="bottom")
    ax.set_xlabel("cumulative training epochs (search + finalists)")
    ax.set_ylabel("best dev objective found (%)")
    ax.set_title(f"best dev vs epochs (line style: search seed) — {sc['name']} scale, "
                 f"seeds {', '.join(map(str, sc['search_seeds']))}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    names = [m for m, v in report["per_method"].items() if v["dev_mean_median"] is not None]
    xs = range(len(names))
    dev = [100 * report["per_method"][m]["dev_mean_median"] for m in names]
    test = [100 * report["per_method"][m]["test_mean_median"] for m in names]
    dsd = [100 * report["per_method"][m]["dev_sd_median"] for m in names]
    tsd = [100 * report["per_method"][m]["test_sd_median"] for m in names]
    bx.errorbar([x - 0.12 for x in xs], dev, yerr=dsd, fmt="o", label="dev", capsize=3)
    bx.errorbar([x + 0.12 for x in xs], test, yerr=tsd, fmt="s", label="test", capsize=3)
    bx.set_xticks(list(xs))
    bx.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    bx.set_ylabel("accuracy (%)")
    bx.set_title(f"chosen configuration retrained with {len(sc['retrain_seeds'])} seeds "
                 "\n(mean ± sd; median over search seeds)", fontsize=9)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def environment() -> dict[str, Any]:
    import torch

    libs = []
    for name in ("hyperopt", "optuna", "ray"):
        try:
            mod = __import__(name)
            libs.append(f"{name} {mod.__version__}")
        except ImportError:
            libs.append(f"{name} missing")
    return {"python": f"Python {platform.python_version()}", "torch": torch.__version__,
            "libraries": ", ".join(libs), "cpu": f"{os.cpu_count()} CPU core(s) ({platform.machine()})"}


def write_report(scale: Scale, work: Path, methods: Sequence[str], corpus: str, workers: int, started: float,
                 results_dir: Path, env: Mapping[str, Any]) -> dict[str, Any]:
    info = json.loads((Path(corpus) / "corpus.json").read_text(encoding="utf-8"))
    report = {"scale": {**asdict(scale), "search_seeds": list(scale.search_seeds),
                        "retrain_seeds": list(scale.retrain_seeds)},
              "corpus": {k: info["splits"][k]["examples"] for k in ("train", "dev", "test")},
              "methods": list(methods), "workers": workers, "wall_seconds": time.time() - started,
              "environment": dict(env), "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **collect(scale, work, methods)}
    results_dir.mkdir(parents=True, exist_ok=True)
    base = results_dir / report_name(report["scale"])  # --seeds / --retrain-seeds: never over the scale's own
    report["json"], report["plot"] = str(base.with_suffix(".json")), str(base.with_suffix(".png"))
    base.with_suffix(".json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    base.with_suffix(".md").write_text(render_markdown(report), encoding="utf-8")
    render_plot(report, base.with_suffix(".png"))
    return report


def _in_methods_order(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` keyed by method in :data:`METHODS`' order (a saved report's keys are sorted)."""
    return {m: d[m] for m in METHODS if m in d}


def rerender(path: Path) -> None:
    """Rewrite ``path``'s Markdown and plot (and its derived fields) from the records it holds."""
    report = json.loads(path.read_text(encoding="utf-8"))
    report["per_method"] = _in_methods_order(report["per_method"])
    for gaps in ("dev_gap_vs_peer", "test_gap_vs_peer"):
        if report.get("target"):
            report["target"][gaps] = _in_methods_order(report["target"][gaps])
    report["resolution"] = resolution(report["per_method"])
    path = path.resolve()
    report["json"], report["plot"] = str(path), str(path.with_suffix(".png"))
    path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(render_markdown(report), encoding="utf-8")
    render_plot(report, path.with_suffix(".png"))


# --------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------

def prepare_corpus(scale: Scale, work: Path) -> str:
    from kftune.steps.corpus import CorpusConfig, run

    out = work / "corpus"
    if not (out / "corpus.json").exists():
        os.environ.setdefault("KFTUNE_CORPUS_MIRROR", str(REPO.parent / "shared" / "corpora"))
        os.environ.setdefault("KFTUNE_CACHE_DIR", str(work / "cache"))
        run(CorpusConfig(out=str(out), name="TREC_6", seed=1, dev_fraction=0.1, downsample=scale.downsample))
    return str(out)


def netns_available() -> bool:
    """Whether ``unshare -n`` can give a job a private network namespace with loopback up."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    try:
        r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up && ip -o addr"], capture_output=True,
                           text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and all(" lo " in f" {line.split()[1]} " for line in r.stdout.splitlines() if line)


# Expected epochs per job (for scheduling the longest first).
_COST = {"random": 10, "hyperopt-tpe": 10, "optuna-median": 6, "ray-asha": 5, "kftune": 4, "optuna-sha": 4}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="smoke")
    p.add_argument("--workers", type=int, default=2, help="jobs at once (one process each, 1 torch thread)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--work", help="scratch directory (default /tmp/kftune-search-efficiency/<scale>)")
    p.add_argument("--results", default=str(RESULTS), help="where the report goes (default benchmarks/results)")
    p.add_argument("--seeds", help="comma-separated search seeds instead of the scale's (e.g. 4,5,6 to check "
                                   "that a change is not tuned to the scale's seeds)")
    p.add_argument("--retrain-seeds", help="comma-separated retraining seeds instead of the scale's (more seeds: a "
                                           "finer measure of each choice; searches already done are reused)")
    p.add_argument("--render", metavar="REPORT_JSON", help="rewrite the .md and .png of a saved report with this "
                                                           "version's layout (no training)")
    p.add_argument("--job", nargs=2, metavar=("METHOD", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kftune.nlp.trainer", "kftune.steps.trial"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("KFTUNE_PROGRESS", "log")
    if args.render:
        try:
            rerender(Path(args.render))
        except (OSError, ValueError, KeyError) as exc:
            p.error(f"--render {args.render}: not a saved report of this benchmark ({exc!r})")
        return 0
    scale = SCALES[args.scale]

    def seed_list(option: str, text: str, example: str) -> tuple[int, ...]:
        try:
            seeds = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            p.error(f"{option} {text!r}: give integers separated by commas, e.g. {example}")
        if not seeds:
            p.error(f"{option}: give at least one seed")
        if len(set(seeds)) != len(seeds):
            p.error(f"{option} {text!r}: a seed is repeated")
        return seeds

    if args.seeds:
        scale = replace(scale, search_seeds=seed_list("--seeds", args.seeds, "4,5,6"))
    if args.retrain_seeds:
        scale = replace(scale, retrain_seeds=seed_list("--retrain-seeds", args.retrain_seeds, "1001,1002,1003,1004"))
    work = Path(args.work or f"/tmp/kftune-search-efficiency/{scale.name}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.job:
        method, seed = args.job[0], int(args.job[1])
        run_job(scale, method, seed, work, str(work / "corpus"))
        return 0
    started = time.time()
    corpus = prepare_corpus(scale, work)
    env = environment()
    netns = netns_available()
    log.info("scale %s, work %s, methods %s, %d worker(s); Ray %s", scale.name, work, ",".join(methods),
             args.workers, "in a private network namespace" if netns else "bound to 127.0.0.1 (no unshare)")
    jobs = sorted(((m, s) for s in scale.search_seeds for m in methods), key=lambda j: (-_COST[j[0]], j[1]))
    lock = threading.Lock()
    failures: list[str] = []
    script = str(Path(__file__).resolve())

    def launch(job: tuple[str, int]) -> None:
        method, seed = job
        d = job_dir(work, method, seed)
        if (d / "search.json").exists() and (d / retrain_file_name(scale)).exists():
            return
        d.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, script, "--scale", scale.name, "--work", str(work), "--job", method, str(seed),
               "--retrain-seeds", ",".join(map(str, scale.retrain_seeds))]
        env_vars = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "KFTUNE_PROGRESS": "log"}
        if method == "ray-asha" and netns:
            cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
            env_vars["KFTUNE_BENCH_NETNS"] = "1"
        log.info("start %s seed %d", method, seed)
        t0 = time.time()
        with open(d / "job.log", "a", encoding="utf-8") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env_vars, check=False).returncode
        with lock:
            try:
                write_report(scale, work, methods, corpus, args.workers, started, Path(args.results), env)
            except Exception:  # noqa: BLE001 - a partial report must not stop the other jobs
                log.exception("could not write the partial report")
            if rc != 0:
                failures.append(f"{method} seed {seed} (exit {rc}; see {d / 'job.log'})")
                log.error("%s seed %d failed (exit %d); see %s", method, seed, rc, d / "job.log")
            else:
                log.info("done %s seed %d in %.0f s", method, seed, time.time() - t0)

    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        list(pool.map(launch, jobs))
    report = write_report(scale, work, methods, corpus, args.workers, started, Path(args.results), env)
    log.info("report: %s (.md, .png)", report["json"])
    if failures:
        log.error("failed jobs: %s", "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    # Jobs import this file as a module, so that Ray pickles the trainable by reference.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import search_efficiency as _self

    sys.exit(_self.main())
