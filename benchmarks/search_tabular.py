"""Search methods replayed over recorded training curves ("tabular" benchmark, issue 20).

A *table* (``benchmarks/results/tabular/<name>.json``, written by ``search_tabular.py record``, i.e.
:mod:`benchmarks._tabular_record`) holds, for every configuration of a grid (or a uniform random sample of
it), the dev score after every epoch and the test score after the last epoch of real trainings with
several seeds. A search method is then replayed over the table instead of training: a trial looks its
configuration up, draws one of the recorded seeds at random (kept for that trial across promotions) and
reads its dev curve up to the budget it was given. Replaying is a matter of milliseconds to seconds, so
every method runs 100 times with different seeds, and seed noise is part of the game.

Methods
    kftune's own searches, replayed through kftune's one planner
    (:class:`kftune.core.search_policy.SearchPolicy`, rounds of :meth:`~SearchPolicy.plan_round`, the
    finalists of :meth:`~SearchPolicy.finalist_requests`, the winner of :meth:`~SearchPolicy.select_best`),
    with the spec of the table's example and the table's grid as the search space; and the peers through
    their own libraries' ask/tell interfaces (:mod:`benchmarks._tabular_peers`): Optuna (TPE + Hyperband
    pruner), hyperopt TPE, SMAC3's multi-fidelity facade, Syne Tune's multi-fidelity schedulers,
    hpbandster's BOHB and DEHB. A kftune method is written ``ALGORITHM[settings]+EARLYSTOPPING[settings]``
    with optional spec fields in braces, e.g. ``coarse-to-fine[top_k=3,shrink=0.3]+successive-halving[eta=3]``
    or ``random+hyperband[eta=2]{finalists=0}`` (:func:`parse_method`), so any setting can be replayed;
    ``spec`` is the search the table's example spec itself runs (:func:`spec_method`).

Cost and budget
    Cost is training epochs. A trial resumed at a larger budget (a kftune promotion, a peer's
    configuration re-evaluated at a larger fidelity) continues from its checkpoint: only new epochs
    cost. Finalist re-runs cost their epochs. Every method gets the same budget of ``B`` cumulative
    epochs per replay (default: 24 full trainings, the trial count of the search-efficiency benchmark, or
    three passes over the brackets of kftune's Hyperband with eta 3 and min_budget 1 if that is more;
    ``--budget-trainings`` sets it in full trainings).
    Peers run until the budget is spent (an evaluation that would cross it is cut at ``B``). A kftune
    method runs as a user would configure it for ``B`` epochs: ``maxTrialCount`` is the largest whose
    nominal cost (the planner on made-up results, no stopping beyond the schedule's own, plus the
    finalists' re-runs) fits ``B``; a search that saves epochs (median stopping) ends early.

Regret and the incumbent
    A trial's value at budget ``b`` is Flair's objective (the mean of its last 3 dev values up to ``b``,
    :func:`kftune.core.search_policy.run_objective`), what kftune's trial records and what every peer is
    told; pruners that judge per epoch see the epoch's dev score. After every trial result the anytime
    curve records ``(cumulative epochs, regret of the incumbent)``; the incumbent, for every method alike,
    is the configuration with the best value among the evaluations at the largest budget reached so
    far. A kftune method's final choice is :meth:`SearchPolicy.select_best` (after its finalists); a
    peer's is its incumbent at the end. Regret = the table's best mean test score (over its seeds) minus
    the chosen configuration's mean test score.

Partial tables: proposals always lie on the grid; a configuration missing from the table is replaced by
the nearest recorded one (per parameter: distance of the positions in the value list divided by the
list's length minus one; a categorical mismatch counts 1; ties broken at random), and the results report
the fraction of exact hits.

Usage::

    python benchmarks/search_tabular.py                         # all tables there, all methods, 100 repeats
    python benchmarks/search_tabular.py replay --tables trec6 --methods random+asha optuna-tpe-hyperband \\
        --repeats 20 --workers 2 --out /tmp/try
    python benchmarks/search_tabular.py replay --methods 'coarse-to-fine[top_k=3,shrink=0.3]+successive-halving'
    python benchmarks/search_tabular.py --render benchmarks/results/search_tabular.json
    python benchmarks/search_tabular.py record ...               # the recorder (benchmarks/_tabular_record.py)

Outputs: ``benchmarks/results/search_tabular.{json,md,png}`` (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import multiprocessing
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TABLES_DIR = RESULTS / "tabular"
DEFAULT_OUT = RESULTS / "search_tabular"
TABLE_NAMES = ("trec6", "nsmc-0.1", "ud-pos")
DEFAULT_REPEATS = 100
BUDGET_PASSES = 3
#: Full trainings of the default budget (the trial count of the search-efficiency benchmark, issue 7).
BUDGET_TRAININGS = 24
#: Budget fractions the report's tables show.
FRACTIONS = (0.25, 0.5, 1.0)
#: Points of the aggregated anytime curve (log-spaced up to the budget, plus the fractions).
CURVE_POINTS = 60
BOOTSTRAP = 2000

log = logging.getLogger("search_tabular")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_tabular_peers.py and quality.py
try:
    import kftune  # noqa: F401
except ImportError:  # not installed: the checkout's package
    sys.path.insert(0, str(REPO / "components"))
from quality import set_path  # noqa: E402 - after the paths are set


def _peers() -> Any:
    import _tabular_peers

    return _tabular_peers


class BudgetExhausted(Exception):
    """The replay's budget of epochs is spent: nothing more can be trained."""


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One recorded training of a configuration with one seed: dev score per epoch, test after the last."""

    seed: int
    dev: tuple[float, ...]
    test: float | None
    failed: bool = False


@dataclass(frozen=True)
class Config:
    id: int
    point: tuple[int, ...]          # the position of each parameter's value in its list
    assignment: Mapping[str, Any]
    runs: tuple[Run, ...]
    mean_test: float | None


class Table:
    """A recorded table (see the module docstring for the format), with look-ups by grid point."""

    def __init__(self, data: Mapping[str, Any], source: str = "<table>"):
        from kftune.core.space import SearchSpace

        self.data = data
        self.source = source
        self.name = str(data.get("name") or Path(source).stem)
        self.objective = str(data.get("objective", "maximize"))
        if self.objective not in ("maximize", "minimize"):
            raise ValueError(f"{source}: objective {self.objective!r} is not maximize or minimize")
        self.metric = str(data.get("metric", "dev_score"))
        self.test_metric = data.get("test_metric")
        self.max_epochs = int(data["max_epochs"])
        self.seeds = tuple(int(s) for s in data.get("seeds") or ())
        self.katib_space = [dict(p) for p in data["space"]]
        self.space = SearchSpace.from_katib(self.katib_space)
        for p in self.space:
            if p.type not in ("discrete", "categorical"):
                raise ValueError(f"{source}: parameter {p.name!r} is {p.type}; a table's space is a grid of "
                                 "discrete or categorical parameters")
        self.names = tuple(self.space.names)
        self.lengths = tuple(len(p.choices) for p in self.space)
        self.ordinal = tuple(p.type == "discrete" for p in self.space)
        self.grid_size = int(np.prod(self.lengths))
        configs: list[Config] = []
        by_point: dict[tuple[int, ...], int] = {}
        for raw in data["configs"]:
            point = self.point_of(raw["assignment"])
            if point is None:
                raise ValueError(f"{source}: config {raw.get('id')}: {raw['assignment']} is not on the grid")
            runs = tuple(Run(seed=int(r.get("seed", 0)), dev=tuple(float(v) for v in r.get("dev") or ()),
                             test=None if r.get("test") is None else float(r["test"]),
                             failed=bool(r.get("failed", False)) or not r.get("dev"))
                         for r in raw.get("runs") or ())
            tests = [r.test for r in runs if not r.failed and r.test is not None and math.isfinite(r.test)]
            if point in by_point:
                raise ValueError(f"{source}: configs {configs[by_point[point]].id} and {raw.get('id')} are the same "
                                 "grid point")
            by_point[point] = len(configs)
            configs.append(Config(id=int(raw.get("id", len(configs))), point=point,
                                  assignment=self.assignment_of(point), runs=runs,
                                  mean_test=float(np.mean(tests)) if tests else None))
        usable = [i for i, c in enumerate(configs) if c.mean_test is not None and any(not r.failed for r in c.runs)]
        if not usable:
            raise ValueError(f"{source}: no configuration has a successful run with a test score")
        self.configs = configs
        self.by_point = by_point
        self.usable = usable
        self.usable_set = set(usable)
        self.best_index = max(usable, key=lambda i: (configs[i].mean_test, -i))
        self.best_mean_test = float(configs[self.best_index].mean_test)  # type: ignore[arg-type]
        self.points = np.array([c.point for c in configs], dtype=float)
        self._nearest: dict[tuple[int, ...], list[int]] = {}
        recorded = data.get("recorded") or {}
        self.complete = bool(recorded.get("complete", len(configs) == self.grid_size))

    @classmethod
    def load(cls, path: str | Path) -> "Table":
        path = Path(path)
        return cls(json.loads(path.read_text(encoding="utf-8")), source=str(path))

    # -- grid points --------------------------------------------------------------------------------
    def point_of(self, assignment: Mapping[str, Any]) -> tuple[int, ...] | None:
        """The grid point (value positions) of an assignment (typed values or the list's strings)."""
        out = []
        for p in self.space:
            if p.name not in assignment:
                return None
            k = _position(p, assignment[p.name])
            if k is None:
                return None
            out.append(k)
        return tuple(out)

    def assignment_of(self, point: Sequence[int]) -> dict[str, Any]:
        """The typed assignment of a grid point (what kftune's samplers propose)."""
        return {p.name: p.choices[int(k)] for p, k in zip(self.space, point)}

    def labels_of(self, point: Sequence[int]) -> dict[str, str]:
        """The grid point as the table's strings (``feasibleSpace.list`` items)."""
        return {p.name: str(p.spec.feasible_space.list[int(k)]) for p, k in zip(self.space, point)}

    def lookup(self, point: Sequence[int], rng: np.random.Generator | None = None) -> tuple[int, bool]:
        """``(config index, exact)``: the recorded configuration at ``point``, else the nearest one (see the
        module docstring; ties broken with ``rng``, else the first)."""
        point = tuple(int(k) for k in point)
        i = self.by_point.get(point)
        if i is not None and i in self.usable_set:
            return i, True
        near = self._nearest.get(point)
        if near is None:
            near = self._nearest_of(point)
            self._nearest[point] = near
        if len(near) == 1 or rng is None:
            return near[0], False
        return near[int(rng.integers(len(near)))], False

    def _nearest_of(self, point: tuple[int, ...]) -> list[int]:
        x = np.array(point, dtype=float)
        cand = self.points[self.usable]
        dist = np.zeros(len(cand))
        for j, (n, ordinal) in enumerate(zip(self.lengths, self.ordinal)):
            if ordinal:
                dist += np.abs(cand[:, j] - x[j]) / max(1, n - 1)
            else:
                dist += (cand[:, j] != x[j]).astype(float)
        best = dist.min()
        return [self.usable[k] for k in np.flatnonzero(np.isclose(dist, best, rtol=0, atol=1e-12))]

    def regret(self, index: int | None) -> float:
        """The table's best mean test score minus that of configuration ``index`` (``inf`` for none)."""
        if index is None:
            return math.inf
        value = self.configs[index].mean_test
        return math.inf if value is None else self.best_mean_test - value

    def describe(self) -> dict[str, Any]:
        best = self.configs[self.best_index]
        tests = [c.mean_test for c in self.configs if c.mean_test is not None]
        return {"name": self.name, "source": _rel(self.source), "spec": self.data.get("spec"),
                "overrides": self.data.get("overrides") or {}, "objective": self.objective, "metric": self.metric,
                "test_metric": self.test_metric, "max_epochs": self.max_epochs, "seeds": list(self.seeds),
                "grid_size": self.grid_size, "configs": len(self.configs), "usable": len(self.usable),
                "complete": self.complete, "parameters": {p.name: [str(v) for v in p.spec.feasible_space.list]
                                                           for p in self.space},
                "best_mean_test": self.best_mean_test, "best_assignment": self.labels_of(best.point),
                "median_mean_test": float(np.median(tests)), "recorded": self.data.get("recorded") or {}}


def _position(p: Any, value: Any) -> int | None:
    """The position of ``value`` in parameter ``p``'s list (typed value, or the list's string), or ``None``."""
    items = p.spec.feasible_space.list
    for k, (typed, text) in enumerate(zip(p.choices, items)):
        if isinstance(value, str):
            if value == text or value == str(typed):
                return k
            continue
        if isinstance(value, bool):
            return None
        if isinstance(typed, (int, float)) and isinstance(value, (int, float)):
            if typed == value or math.isclose(float(typed), float(value), rel_tol=1e-9, abs_tol=0.0):
                return k
        elif str(value) == text:
            return k
    if isinstance(value, str):  # a number written differently ("1e-3" for "0.001")
        try:
            x = float(value)
        except ValueError:
            return None
        return _position(p, x) if p.type == "discrete" else None
    return None


def _rel(path: str | Path) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def objective_at(dev: Sequence[float], budget: int) -> float:
    """Flair's objective after ``budget`` epochs (what kftune's trial records and every peer is told)."""
    from kftune.core.search_policy import run_objective

    return run_objective(list(dev[:budget]))[0]


# --------------------------------------------------------------------------------------------------
# The simulator: one replay's trainings, costs, observations and anytime curve
# --------------------------------------------------------------------------------------------------

@dataclass
class _Trial:
    config: int
    exact: bool
    runs: list[int]                 # indices into the config's runs (one per training run)
    reached: list[int]              # epochs trained so far, per training run
    others: list[int] = field(default_factory=list)   # the config's other runs, for finalists (shuffled)


class Simulator:
    """Trainings looked up in a table for one replay: seeds drawn per trial, epochs charged (new ones only),
    and the anytime curve of the incumbent (see the module docstring)."""

    def __init__(self, table: Table, budget: int, rng: np.random.Generator):
        self.table, self.budget, self.rng = table, int(budget), rng
        self.cap = self.budget
        self.spent = 0
        self.trials: dict[Any, _Trial] = {}
        self.curve: list[tuple[int, float]] = []
        self._level = -1
        self._best: tuple[float, int] | None = None    # (signed value, config) at the largest budget so far
        self.lookups = 0
        self.exact = 0
        self.exhausted = False
        self.sign = 1.0 if table.objective == "maximize" else -1.0

    @property
    def remaining(self) -> int:
        return max(0, self.cap - self.spent)

    # -- trials ------------------------------------------------------------------------------------
    def trial(self, key: Any, point: Sequence[int], runs: int = 1) -> _Trial:
        """The trial ``key`` (created on first use: its configuration looked up, ``runs`` seeds drawn)."""
        t = self.trials.get(key)
        if t is not None:
            return t
        config, exact = self.table.lookup(point, self.rng)
        self.lookups += 1
        self.exact += bool(exact)
        n = len(self.table.configs[config].runs)
        order = [int(i) for i in self.rng.permutation(n)]
        picked = [order[j % n] for j in range(runs)]
        t = _Trial(config=config, exact=exact, runs=picked, reached=[0] * runs,
                   others=[i for i in order if i not in picked] or order)
        self.trials[key] = t
        return t

    def run_of(self, t: _Trial, k: int) -> Run:
        return self.table.configs[t.config].runs[t.runs[k]]

    def train(self, t: _Trial, until: int, k: int = 0) -> list[float]:
        """Train run ``k`` of trial ``t`` up to ``until`` epochs (resuming from what it reached; a run whose
        curve ends earlier stops there): charges the new epochs, cut at the budget. Returns the dev values
        up to where it got. :class:`BudgetExhausted` when not one more epoch fits."""
        run = self.run_of(t, k)
        target = min(int(until), len(run.dev))
        new = self._charge(max(0, target - t.reached[k]))
        t.reached[k] += new
        return list(run.dev[:t.reached[k]])

    def fresh_run(self, t: _Trial, j: int, until: int) -> tuple[Run, int]:
        """A finalist's extra run ``j`` (another recorded seed of the same configuration), trained from scratch
        to ``until`` epochs: ``(run, epochs reached)``; charges them."""
        idx = t.others[j % len(t.others)]
        run = self.table.configs[t.config].runs[idx]
        return run, self._charge(min(int(until), len(run.dev)))

    def _charge(self, new: int) -> int:
        """Spend ``new`` epochs, cut at the budget (then :attr:`exhausted`): the epochs spent.
        :class:`BudgetExhausted` when not one more epoch fits."""
        if new > self.remaining:
            if self.remaining <= 0:
                self.exhausted = True
                raise BudgetExhausted()
            new = self.remaining
            self.exhausted = True
        self.spent += new
        return new

    # -- observations --------------------------------------------------------------------------------
    def observe(self, config: int, budget: int, value: float | None) -> None:
        """A result: configuration ``config`` reached ``value`` at ``budget`` epochs. Updates the incumbent and
        appends a point to the anytime curve."""
        if value is not None and math.isfinite(value):
            v = self.sign * float(value)
            if budget > self._level:
                self._level, self._best = budget, (v, config)
            elif budget == self._level and (self._best is None or v > self._best[0]):
                self._best = (v, config)
        self.curve.append((self.spent, self.table.regret(self.incumbent)))

    @property
    def incumbent(self) -> int | None:
        return self._best[1] if self._best is not None else None

    def finish(self, chosen: int | None) -> None:
        """The method's final choice (a kftune winner after its finalists): the curve's last point."""
        self.curve.append((self.spent, self.table.regret(chosen)))

    def evaluate(self, key: Any, point: Sequence[int], budget: int) -> float | None:
        """A multi-fidelity evaluation: train trial ``key`` (configuration ``point``) to ``budget`` epochs and
        return its objective (``None`` for a failed run); records the observation."""
        t = self.trial(key, point)
        if self.run_of(t, 0).failed:
            self.train(t, budget)
            self.observe(t.config, t.reached[0], None)
            return None
        dev = self.train(t, budget)
        value = objective_at(dev, len(dev))
        self.observe(t.config, len(dev), value)
        return value


# --------------------------------------------------------------------------------------------------
# kftune methods
# --------------------------------------------------------------------------------------------------

#: Spec fields a method may set in braces (``{finalists=0}``), and where they live.
SPEC_FIELDS = {"finalists": "spec.search.finalists", "finalistRuns": "spec.search.finalistRuns",
               "parallelTrialCount": "spec.search.parallelTrialCount", "trainingRuns": "spec.train.trainingRuns"}


@dataclass(frozen=True)
class KftuneMethod:
    """A kftune search: Katib ``algorithmName`` and settings, early stopping (``none``) and settings, and spec
    fields (:data:`SPEC_FIELDS`) that differ from the table's example spec."""

    algorithm: str
    algorithm_settings: tuple[tuple[str, str], ...] = ()
    early_stopping: str = "none"
    early_stopping_settings: tuple[tuple[str, str], ...] = ()
    spec: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        def part(n: str, s: Sequence[tuple[str, Any]]) -> str:
            return n + (f"[{','.join(f'{k}={v}' for k, v in s)}]" if s else "")

        out = part(self.algorithm, self.algorithm_settings) + "+" + part(self.early_stopping,
                                                                        self.early_stopping_settings)
        if self.spec:
            out += "{" + ",".join(f"{k}={v}" for k, v in self.spec) + "}"
        return out


_METHOD = re.compile(r"^(?P<alg>[a-z][a-z0-9-]*)(?:\[(?P<algs>[^\]]*)\])?"
                     r"(?:\+(?P<es>[a-z][a-z0-9-]*)(?:\[(?P<ess>[^\]]*)\])?)?(?:\{(?P<spec>[^}]*)\})?$")


def _pairs(text: str | None, what: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise ValueError(f"{what}: {item!r} is not NAME=VALUE")
        out.append((k.strip(), v.strip()))
    return tuple(out)


def parse_method(text: str) -> KftuneMethod:
    """``ALGORITHM[k=v,...]+EARLYSTOPPING[k=v,...]{specField=v,...}`` -> :class:`KftuneMethod` (early stopping
    ``none`` when left out). ``ValueError`` naming what is wrong."""
    m = _METHOD.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a method: write ALGORITHM[k=v,...]+EARLYSTOPPING[k=v,...]{{field=v}}, "
                         "e.g. tpe[n_startup_jobs=10]+hyperband[eta=3]{finalists=0}")
    spec = []
    for k, v in _pairs(m["spec"], "spec fields"):
        if k not in SPEC_FIELDS:
            raise ValueError(f"{text!r}: spec field {k!r} is not one of {sorted(SPEC_FIELDS)}")
        spec.append((k, int(v)))
    return KftuneMethod(algorithm=m["alg"], algorithm_settings=_pairs(m["algs"], "algorithm settings"),
                        early_stopping=m["es"] or "none",
                        early_stopping_settings=_pairs(m["ess"], "early-stopping settings"), spec=tuple(spec))


#: The method name that stands for the table's example spec's own search (:func:`spec_method`).
SPEC_METHOD = "spec"

#: The kftune methods of the default run (``bohb`` ones only once kftune registers the sampler).
KFTUNE_DEFAULTS = (SPEC_METHOD, "random+none", "random+medianstop", "random+successive-halving", "random+asha",
                   "random+hyperband", "tpe+none", "tpe+asha", "tpe+hyperband", "grid+none", "coarse-to-fine+none",
                   "coarse-to-fine+successive-halving", "bohb+hyperband", "bohb+asha")


def spec_method(table: Table) -> KftuneMethod:
    """The search the table's example spec runs: its algorithm and early stopping with their settings, less
    ``random_state`` (it would give every replay the same draws) and with ``max_budget`` at most the table's
    epochs (as the recording lowered it)."""
    search = example_spec(table)["spec"].get("search") or {}
    alg = search.get("algorithm") or {}
    es = search.get("earlyStopping") or {}

    def settings(block: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        out = []
        for item in block.get("algorithmSettings") or ():
            name, value = str(item["name"]), str(item["value"])
            if name == "random_state":
                continue
            if name == "max_budget" and int(float(value)) > table.max_epochs:
                value = str(table.max_epochs)
            out.append((name, value))
        return tuple(out)

    return KftuneMethod(algorithm=str(alg.get("algorithmName", "random")), algorithm_settings=settings(alg),
                        early_stopping=str(es.get("algorithmName", "none")) if es else "none",
                        early_stopping_settings=settings(es) if es else ())


def method_for(table: Table, name: str) -> KftuneMethod:
    """The kftune method ``name`` (:func:`parse_method`, or :data:`SPEC_METHOD`) on ``table``."""
    return spec_method(table) if name == SPEC_METHOD else parse_method(name)


def kftune_available(method: KftuneMethod) -> str | None:
    """Why ``method`` cannot run here (its sampler or rule is not registered), or ``None``."""
    from kftune.core.early_stopping import EARLY_STOPPING
    from kftune.core.samplers import SAMPLERS

    if method.algorithm not in SAMPLERS:
        return f"kftune has no sampler {method.algorithm!r} (registered: {', '.join(sorted(SAMPLERS))})"
    if method.early_stopping != "none" and method.early_stopping not in EARLY_STOPPING:
        return f"kftune has no early-stopping rule {method.early_stopping!r}"
    return None


def example_spec(table: Table) -> dict[str, Any]:
    """The table's example spec (``spec``, relative to the repository) with the table's overrides applied
    (dotted paths; a path that starts with neither ``spec.`` nor ``metadata.`` is under ``spec``)."""
    import yaml

    path = Path(str(table.data.get("spec") or ""))
    if not path.is_absolute():
        path = REPO / path
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in (table.data.get("overrides") or {}).items():
        key = str(key)
        if not key.startswith(("spec.", "metadata.", "apiVersion", "kind")):
            key = "spec." + key
        if key.startswith(METHOD_OWNED):
            continue  # the method's and the grid's, set by job_dict
        set_path(data, key, value)
    return data


#: Spec paths a replayed method sets itself (a table's overrides of them are the recording's, not the method's).
METHOD_OWNED = ("spec.search.algorithm", "spec.search.earlyStopping", "spec.search.parameters",
                "spec.search.maxTrialCount")


def job_dict(table: Table, method: KftuneMethod, max_trials: int) -> dict[str, Any]:
    """The TuningJob (as a YAML-shaped dict) that ``method`` runs on ``table``: the example spec with the
    table's overrides, the grid as the search space, the method's algorithm and early stopping, ``max_trials``
    trials; no LR range test (the grid is the space)."""
    data = example_spec(table)
    spec = data.setdefault("spec", {})
    spec.setdefault("train", {})["maxEpochs"] = table.max_epochs
    spec.setdefault("lrRangeTest", {})["enabled"] = False
    search = spec.setdefault("search", {})
    search["parameters"] = copy.deepcopy(table.katib_space)
    search["objective"] = {**(search.get("objective") or {}), "type": table.objective,
                           "objectiveMetricName": table.metric}
    search["objective"].pop("goal", None)
    search["algorithm"] = {"algorithmName": method.algorithm,
                           "algorithmSettings": [{"name": k, "value": str(v)} for k, v in method.algorithm_settings]}
    if method.early_stopping == "none":
        search.pop("earlyStopping", None)
    else:
        search["earlyStopping"] = {"algorithmName": method.early_stopping,
                                   "algorithmSettings": [{"name": k, "value": str(v)}
                                                         for k, v in method.early_stopping_settings]}
    search["maxTrialCount"] = int(max_trials)
    search["maxFailedTrialCount"] = int(max_trials)  # a replay never stops for failures
    for k, v in method.spec:
        set_path(data, SPEC_FIELDS[k], v)
    return data


def fewest_trials(table: Table, method: KftuneMethod) -> int:
    """The smallest ``maxTrialCount`` the spec accepts: at least ``parallelTrialCount`` and ``finalists``."""
    search = job_dict(table, method, 1)["spec"]["search"]
    return max(1, int(search.get("parallelTrialCount") or 1), int(search.get("finalists") or 0))


def _parse_job(data: Mapping[str, Any]) -> Any:
    from kftune.core.spec import parse_spec

    return parse_spec(copy.deepcopy(dict(data)), source="tabular replay")


@dataclass(frozen=True)
class Prepared:
    """A kftune method made ready for a table: the job, ``maxTrialCount``, the rounds of the planner (as
    ``kftune search`` pins them) and the nominal cost that chose them."""

    method: str
    job: Mapping[str, Any]
    max_trials: int
    rounds: int
    nominal_epochs: int
    finalist_epochs: int
    budget: int


def _nominal(policy: Any, rounds: int, width: bool = False) -> int:
    """Epochs the search costs on made-up results (completed at the last rung, paused below it; no medianstop
    stop): the planner's ``rounds`` (``width``: rounds of ``parallelTrialCount`` requests until the plan is
    empty, an estimate that needs no ``rounds_needed``), new epochs only."""
    import random as _random

    from kftune.core.trials import Trial

    history: list[Any] = []
    by_id: dict[str, int] = {}
    cost = 0
    for r in range(rounds):
        requests = policy.plan(history, r, policy.parallel) if width else policy.plan_round(history, r, rounds)
        if not requests:
            break
        for q in requests:
            prev = history[by_id[q.trial_id]].budget_used if q.trial_id in by_id else 0
            cost += max(0, q.budget - prev) * policy.job.spec.train.training_runs
            value = _random.Random(q.index).uniform(0.2, 0.8)
            state = "completed" if q.budget >= policy.max_budget else "pruned"
            t = Trial(id=q.trial_id, assignment=dict(q.assignment), state=state, objective=value,
                      intermediate=tuple((e, value) for e in range(1, q.budget + 1)), budget=q.budget,
                      extra={"index": q.index, "budget_asked": q.budget})
            if q.trial_id in by_id:
                history[by_id[q.trial_id]] = t
            else:
                by_id[q.trial_id] = len(history)
                history.append(t)
    return cost


def _twin(method: KftuneMethod) -> KftuneMethod:
    """The method with a random sampler where the sampler's choices cannot change the plan's shape (the
    nominal cost and the rounds depend on the sampler only when it runs out, grid, or sets cohorts,
    coarse-to-fine): planning on made-up results is then fast."""
    if method.algorithm in ("grid", "coarse-to-fine"):
        return method
    return replace(method, algorithm="random", algorithm_settings=())


def prepare(table: Table, method: KftuneMethod, budget: int) -> Prepared:
    """``maxTrialCount`` for ``method`` on ``table``: the largest whose nominal cost plus the finalists' re-runs
    fits ``budget`` (see the module docstring), with the planner's rounds for it (``rounds_needed``, as
    ``kftune search`` pins them)."""
    from kftune.core.search_policy import MAX_ROUNDS, SearchPolicy

    twin = _twin(method)
    policies: dict[int, Any] = {}

    def policy_for(m: int) -> Any:
        if m not in policies:
            policies[m] = SearchPolicy.from_job(_parse_job(job_dict(table, twin, m)), space=table.space)
        return policies[m]

    def extra(m: int) -> int:
        policy = policy_for(m)
        finalists = min(int(policy.search.finalists), m)
        return finalists * len(policy.finalist_seeds) * policy.max_budget if finalists > 0 else 0

    def quick(m: int) -> int:  # the search to its end, rounds as wide as parallelTrialCount (the estimate)
        return _nominal(policy_for(m), 100 * MAX_ROUNDS, width=True) + extra(m)

    lo = fewest_trials(table, method)
    hi = max(lo, budget)  # at least one epoch per trial
    if method.algorithm == "grid":
        hi = max(lo, min(hi, table.grid_size))
    if quick(lo) > budget:
        raise ValueError(f"{method.name}: even {lo} trial(s) ({quick(lo)} epochs) do not fit the budget of "
                         f"{budget} epochs")
    while lo < hi:  # the largest m whose estimate fits (the cost grows with m)
        mid = (lo + hi + 1) // 2
        if quick(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    while True:  # the planner's own rounds for it, and the cost with them
        rounds = policy_for(lo).rounds_needed()
        nominal = _nominal(policy_for(lo), rounds)
        if nominal + extra(lo) <= budget or lo <= fewest_trials(table, method):
            break
        lo -= 1
    data = job_dict(table, method, lo)
    if twin != method:  # the real sampler must accept the settings too
        SearchPolicy.from_job(_parse_job(data), space=table.space)
    return Prepared(method=method.name, job=data, max_trials=lo, rounds=rounds, nominal_epochs=nominal,
                    finalist_epochs=extra(lo), budget=int(budget))


def replay_kftune(table: Table, prepared: Prepared, seed: int) -> dict[str, Any]:
    """One replay of a kftune method (see the module docstring): the planner's rounds, each request looked up
    in the table, then the finalists and :meth:`SearchPolicy.select_best`. Returns the replay's record."""
    from kftune.core.search_policy import SearchPolicy
    from kftune.core.trials import Trial

    started = time.perf_counter()
    job = _job_cached(prepared)
    policy = SearchPolicy.from_job(job, space=table.space, seed=seed)
    rng = np.random.default_rng([seed, 20])
    sim = Simulator(table, prepared.budget, rng)
    sim.cap = prepared.budget - prepared.finalist_epochs
    runs = int(job.spec.train.training_runs)
    rule = policy.median_stop
    objective = policy.objective_type
    max_budget = policy.max_budget
    history: list[Trial] = []
    by_id: dict[str, int] = {}

    def execute(q: Any, judged: Sequence[Trial]) -> Trial:
        point = table.point_of(q.assignment)
        if point is None:
            raise ValueError(f"{prepared.method} proposed {dict(q.assignment)}, which is not on the table's grid")
        t = sim.trial(q.trial_id, point, runs)
        curves: list[list[float]] = []
        stopped_reason = None
        failed = False
        for k in range(runs):
            if sim.run_of(t, k).failed:
                failed = True
                sim.train(t, q.budget, k)
                break
            if rule is not None and k == 0:
                dev = list(sim.run_of(t, 0).dev[:t.reached[0]])
                while t.reached[0] < min(q.budget, len(sim.run_of(t, 0).dev)):
                    dev = sim.train(t, t.reached[0] + 1, 0)
                    running = Trial(id=q.trial_id, assignment=dict(q.assignment), state="running",
                                    intermediate=tuple((e + 1, v) for e, v in enumerate(dev)))
                    if rule.should_stop(running, judged, objective):
                        stopped_reason = rule.decide(running, judged, objective).reason
                        break
                    if sim.exhausted:
                        break
                curves.append(dev)
                if stopped_reason is not None:
                    break
            else:
                curves.append(sim.train(t, q.budget, k))
        reached = max(t.reached)
        extra = {"index": q.index, "budget_asked": q.budget, "seeds": list(policy.training_seeds[:len(curves)]),
                 "table_config": t.config}
        if failed or not curves or not curves[0]:
            return Trial(id=q.trial_id, assignment=dict(q.assignment), state="failed", objective=None,
                         budget=reached, reason="the recorded run failed", extra={**extra, "objective_runs": []})
        objectives = [objective_at(c, len(c)) for c in curves]
        n = min(len(c) for c in curves)
        intermediate = tuple((e + 1, float(np.mean([c[e] for c in curves]))) for e in range(n))
        ended = all(len(c) >= len(sim.run_of(t, k).dev) for k, c in enumerate(curves))
        if stopped_reason is not None:
            state, reason = "pruned", stopped_reason
        elif reached >= max_budget or ended:
            state, reason = "completed", None
        else:
            state, reason = "pruned", "paused at a rung"
        return Trial(id=q.trial_id, assignment=dict(q.assignment), state=state,
                     objective=float(np.mean(objectives)), intermediate=intermediate, budget=reached, reason=reason,
                     extra={**extra, "objective_runs": objectives})

    rounds = prepared.rounds
    for r in range(rounds):
        if sim.exhausted:
            break
        requests = policy.plan_round(history, r, rounds)
        if not requests:
            break
        judged = [t for t in history if t.state == "completed"] if rule is not None else []
        for q in requests:
            try:
                trial = execute(q, judged)
            except BudgetExhausted:
                break
            if q.trial_id in by_id:
                history[by_id[q.trial_id]] = trial
            else:
                by_id[q.trial_id] = len(history)
                history.append(trial)
            sim.observe(trial.extra["table_config"], trial.budget_used,
                        trial.objective if trial.state != "failed" else None)
            if sim.exhausted:
                break
    # the finalists' round: each extra seed is another recorded run of the finalist's configuration
    sim.cap = sim.budget
    sim.exhausted = False
    finalist_records = []
    for q in policy.finalist_requests(history, rounds):
        t = sim.trials[q.trial_id]
        j = policy.finalist_seeds.index(q.seeds[0]) if q.seeds else 0
        try:
            run, reached = sim.fresh_run(t, j, q.budget)
        except BudgetExhausted:
            break
        ok = not run.failed and reached > 0
        finalist_records.append({"id": q.trial_id, "kind": "finalist", "seeds": list(q.seeds or ()),
                                 "state": "completed" if ok else "failed", "budget": reached,
                                 "objective": objective_at(run.dev, reached) if ok else None})
    winner = policy.select_best(history, finalist_records)
    chosen = None
    if winner is not None:
        chosen = sim.trials[winner.trial_id].config
    sim.finish(chosen)
    states: dict[str, int] = {}
    for t in history:
        states[t.state] = states.get(t.state, 0) + 1
    return _record(sim, chosen, started, trials=len(history), extra={"states": states,
                                                                       "finalist_runs": len(finalist_records)})


_JOBS: dict[str, Any] = {}


def _job_cached(prepared: Prepared) -> Any:
    key = json.dumps(prepared.job, sort_keys=True, default=str)
    if key not in _JOBS:
        if len(_JOBS) > 64:
            _JOBS.clear()
        _JOBS[key] = _parse_job(prepared.job)
    return _JOBS[key]


def _record(sim: Simulator, chosen: int | None, started: float, *, trials: int,
            extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    table = sim.table
    return {"curve": [[int(c), float(r)] for c, r in sim.curve], "final_regret": table.regret(chosen),
            "chosen": table.labels_of(table.configs[chosen].point) if chosen is not None else None,
            "epochs": int(sim.spent), "trials": int(trials), "lookups": sim.lookups,
            "exact": sim.exact, "seconds": time.perf_counter() - started, **(extra or {})}


# --------------------------------------------------------------------------------------------------
# Methods: kftune's and the peers'
# --------------------------------------------------------------------------------------------------

def default_budget(table: Table, passes: int = BUDGET_PASSES, trainings: int = BUDGET_TRAININGS) -> int:
    """``trainings`` full trainings, or more if ``passes`` passes over the brackets of kftune's Hyperband (eta 3,
    min_budget 1, max_budget the table's epochs) need more (rounded up to whole full trainings)."""
    from kftune.core.early_stopping import get_early_stopping

    hb = get_early_stopping("hyperband", {}, max_epochs=table.max_epochs)
    one = 0
    for b in hb.brackets():  # type: ignore[attr-defined]
        prev = 0
        for rung, size in zip(b.rungs, b.sizes):
            one += size * (rung - prev)
            prev = rung
    return max(int(trainings), math.ceil(passes * one / table.max_epochs)) * table.max_epochs


def method_names(requested: Sequence[str] | None) -> list[str]:
    """The methods to run: every kftune default that is available and every peer, or those requested."""
    peers = _peers()

    if requested:
        out: list[str] = []
        for item in requested:
            out.extend(_split_top(item))
        return out
    return list(KFTUNE_DEFAULTS) + list(peers.DEFAULT)


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets and braces."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            if cur.strip():
                out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def is_peer(name: str) -> bool:
    peers = _peers()

    return name in peers.PEERS


def replay(table: Table, method: str, seed: int, budget: int, prepared: Prepared | None = None) -> dict[str, Any]:
    """One replay of ``method`` (a peer's name or a kftune method) on ``table`` with ``seed``."""
    peers = _peers()

    if is_peer(method):
        started = time.perf_counter()
        sim = Simulator(table, budget, np.random.default_rng([seed, 20]))
        info = peers.run_peer(method, table, sim, seed)
        sim.finish(sim.incumbent)
        return _record(sim, sim.incumbent, started, trials=len(sim.trials),
                       extra={"evaluations": int(info.pop("trials", 0)), **info})
    if prepared is None:
        prepared = prepare(table, method_for(table, method), budget)
    return replay_kftune(table, prepared, seed)


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------

def regret_at(curve: Sequence[Sequence[float]], x: float) -> float:
    """The regret of the last curve point at or below ``x`` cumulative epochs (``inf`` before the first)."""
    value = math.inf
    for c, r in curve:
        if c <= x:
            value = r
        else:
            break
    return value


def budget_grid(budget: int, first: int = 1) -> list[float]:
    xs = set(np.geomspace(max(1, first), budget, CURVE_POINTS).round(3).tolist())
    xs.update(f * budget for f in FRACTIONS)
    return sorted(xs)


def _quantiles(values: np.ndarray, qs: Sequence[float]) -> list[float | None]:
    """Quantiles with ``inf`` (no choice yet) counted as the worst; ``None`` where the quantile is one."""
    finite = np.where(np.isfinite(values), values, 1e9)
    out = []
    for q in qs:
        v = float(np.quantile(finite, q))
        out.append(None if v >= 1e8 else v)
    return out


def bootstrap_median_ci(values: Sequence[float], seed: int = 0,
                        n: int = BOOTSTRAP) -> tuple[float | None, float | None]:
    """A percentile bootstrap 95 % interval of the median (``inf`` values counted as the worst)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return None, None
    x = np.where(np.isfinite(x), x, 1e9)
    rng = np.random.default_rng(seed)
    meds = np.median(x[rng.integers(0, len(x), size=(n, len(x)))], axis=1)
    lo, hi = np.quantile(meds, [0.025, 0.975])
    return (None if lo >= 1e8 else float(lo)), (None if hi >= 1e8 else float(hi))


def summarize(records: Sequence[Mapping[str, Any]], budget: int) -> dict[str, Any]:
    """Median and interquartile range of regret over the replays on the budget grid, and at the fractions
    with a bootstrap interval of the median."""
    ok = [r for r in records if "error" not in r]
    out: dict[str, Any] = {"repeats": len(records), "errors": len(records) - len(ok)}
    if len(records) > len(ok):
        out["error_examples"] = sorted({str(r["error"])[:300] for r in records if "error" in r})[:3]
    if not ok:
        return out
    grid = budget_grid(budget)
    mat = np.array([[regret_at(r["curve"], x) for x in grid] for r in ok])
    q = [_quantiles(mat[:, j], (0.25, 0.5, 0.75)) for j in range(len(grid))]
    out["curve"] = {"x": grid, "q25": [a for a, _, _ in q], "median": [b for _, b, _ in q],
                    "q75": [c for _, _, c in q]}
    at = {}
    for f in FRACTIONS:
        vals = np.array([regret_at(r["curve"], f * budget) for r in ok])
        q25, med, q75 = _quantiles(vals, (0.25, 0.5, 0.75))
        lo, hi = bootstrap_median_ci(vals, seed=int(f * 1000))
        finite = vals[np.isfinite(vals)]
        at[str(f)] = {"median": med, "q25": q25, "q75": q75, "ci95": [lo, hi],
                      "mean": float(np.mean(finite)) if finite.size else None,
                      "no_choice": int(np.sum(~np.isfinite(vals))), "found_best": float(np.mean(vals <= 1e-12))}
    out["at"] = at
    finals = np.array([r["final_regret"] for r in ok], dtype=float)
    out["final"] = {"median": _quantiles(finals, (0.5,))[0], "found_best": float(np.mean(finals <= 1e-12))}
    out["epochs_used"] = {"median": float(np.median([r["epochs"] for r in ok])),
                          "max": int(max(r["epochs"] for r in ok))}
    out["trials"] = float(np.median([r["trials"] for r in ok]))
    lookups = sum(r["lookups"] for r in ok)
    out["exact_hits"] = (sum(r["exact"] for r in ok) / lookups) if lookups else None
    secs = [r["seconds"] for r in ok]
    out["seconds"] = {"mean": float(np.mean(secs)), "median": float(np.median(secs)), "total": float(np.sum(secs))}
    return out


# --------------------------------------------------------------------------------------------------
# Running: tasks over a pool of at most 2 workers
# --------------------------------------------------------------------------------------------------

_TABLES: dict[str, Table] = {}


def _table(path: str) -> Table:
    if path not in _TABLES:
        _TABLES[path] = Table.load(path)
    return _TABLES[path]


def _task(args: tuple[str, str, int, int, Prepared | None]) -> tuple[str, str, int, dict[str, Any]]:
    path, method, seed, budget, prepared = args
    table = _table(path)
    try:
        rec = replay(table, method, seed, budget, prepared)
    except Exception as exc:  # noqa: BLE001 - one failed replay is reported, not fatal
        log.debug("replay %s %s seed %d failed", table.name, method, seed, exc_info=True)
        rec = {"error": f"{type(exc).__name__}: {exc}", "seconds": 0.0}
    return table.name, method, seed, rec


def _init_worker(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _quiet_libraries()
    _one_thread()


def _one_thread() -> None:
    """One BLAS/OpenMP thread per process: the pool's workers are the parallelism."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


def _quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("hpbandster", "smac", "syne_tune", "optuna", "hyperopt", "dehb", "ConfigSpace", "distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)


def find_tables(names: Sequence[str] | None, paths: Sequence[str] | None) -> list[str]:
    """Table files: ``paths`` as given, else ``benchmarks/results/tabular/<name>.json`` for each name (all
    :data:`TABLE_NAMES` that exist when none is named)."""
    if paths:
        return [str(Path(p)) for p in paths]
    wanted = list(names) if names else list(TABLE_NAMES)
    found = [str(TABLES_DIR / f"{n}.json") for n in wanted if (TABLES_DIR / f"{n}.json").is_file()]
    missing = [n for n in wanted if not (TABLES_DIR / f"{n}.json").is_file()]
    if missing:
        log.warning("no table for %s under %s (record it with `search_tabular.py record`)", ", ".join(missing),
                    _rel(TABLES_DIR))
    return found


def run_all(table_paths: Sequence[str], methods: Sequence[str], repeats: int, workers: int,
            budget_trainings: int | None = None, first_seed: int = 1,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Replay every method ``repeats`` times on every table; the report (see :func:`write_report`)."""
    peers = _peers()

    started = time.perf_counter()
    tables = {p: Table.load(p) for p in table_paths}
    unavailable: dict[str, str] = {}
    report: dict[str, Any] = {"tables": {}, "methods": {}, "results": {}, "unavailable": unavailable,
                              "not_default": {m: why for m, why in peers.SLOW.items() if m not in methods}}
    tasks: list[tuple[str, str, int, int, Prepared | None]] = []
    for path, table in tables.items():
        budget = budget_trainings * table.max_epochs if budget_trainings else default_budget(table)
        report["tables"][table.name] = {**table.describe(), "budget": budget,
                                        "budget_trainings": budget // table.max_epochs}
        for name in methods:
            if is_peer(name):
                why = peers.available(name)
                if why:
                    unavailable[name] = why
                    continue
                report["methods"][name] = {"kind": "peer", **peers.describe(name)}
                prep = None
            else:
                try:
                    method = method_for(table, name)
                except ValueError as exc:
                    raise SystemExit(str(exc)) from None
                why = kftune_available(method)
                if why:
                    unavailable[name] = why
                    continue
                prep = prepare(table, method, budget)
                info = report["methods"].setdefault(name, {"kind": "kftune", "prepared": {}})
                info["prepared"][table.name] = {"method": method.name, "maxTrialCount": prep.max_trials,
                                                "rounds": prep.rounds,
                                                "nominal_epochs": prep.nominal_epochs,
                                                "finalist_epochs": prep.finalist_epochs,
                                                "search": prep.job["spec"]["search"]}
            tasks.extend((path, name, first_seed + i, budget, prep) for i in range(repeats))
    records: dict[tuple[str, str], list[dict[str, Any]]] = {}
    done = 0
    total = len(tasks)
    last = time.monotonic()
    if workers <= 1:
        iterator: Iterable[Any] = map(_task, tasks)
        pool = None
    else:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        pool = ctx.Pool(processes=workers, initializer=_init_worker,
                        initargs=(logging.getLogger().getEffectiveLevel(),), maxtasksperchild=None)
        iterator = pool.imap_unordered(_task, tasks, chunksize=max(1, min(10, repeats // 4 or 1)))
    try:
        for tname, method, seed, rec in iterator:
            rec["seed"] = seed
            records.setdefault((tname, method), []).append(rec)
            done += 1
            if progress is not None and (time.monotonic() - last > 30 or done == total):
                last = time.monotonic()
                progress(f"{done}/{total} replays ({time.perf_counter() - started:.0f} s)")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    for path, table in tables.items():
        budget = report["tables"][table.name]["budget"]
        res = report["results"].setdefault(table.name, {})
        for name in methods:
            recs = records.get((table.name, name))
            if recs is None:
                continue
            recs.sort(key=lambda r: r["seed"])
            res[name] = summarize(recs, budget)
    for tname, res in report["results"].items():
        report.setdefault("criteria", {})[tname] = bohb_criteria(res, report["methods"])
    report["wall_seconds"] = time.perf_counter() - started
    report["repeats"] = repeats
    report["workers"] = workers
    return report


#: The issue's test of BOHB on each table: the method judged, and what it must beat.
CRITERIA_METHOD = "bohb+hyperband"
CRITERIA_BASELINES = {"random search": "random+none", "Hyperband": "random+hyperband"}
CRITERIA_SHARES = ("0.25", "1.0")


def bohb_criteria(results: Mapping[str, Any], methods: Mapping[str, Any],
                  method: str = CRITERIA_METHOD) -> dict[str, Any] | None:
    """Whether ``method``'s median regret at B/4 and B is below random search's and Hyperband's, and not worse
    than the best peer's beyond the bootstrap intervals (the intervals of the two medians meet). Equal medians
    (common where most replays find the table's best, regret 0) are not "below": they are marked ``tie``, and
    the report shows the mean regrets beside them.

    ``None`` when the method did not run. A criterion whose comparison method did not run is left out.
    """
    mine = (results.get(method) or {}).get("at")
    if not mine:
        return None
    peers = [m for m, info in methods.items() if info.get("kind") == "peer" and "at" in (results.get(m) or {})]
    out: dict[str, Any] = {"method": method, "at": {}}
    met = True
    for share in CRITERIA_SHARES:
        a = mine.get(share) or {}
        if a.get("median") is None:
            out["at"][share] = {"met": False, "why": "no choice yet"}
            met = False
            continue
        row: dict[str, Any] = {"median": a["median"], "mean": a.get("mean"), "ci95": a.get("ci95"), "below": {}}
        for label, other in CRITERIA_BASELINES.items():
            b = ((results.get(other) or {}).get("at") or {}).get(share) or {}
            if b.get("median") is None:
                continue
            row["below"][label] = {"method": other, "median": b["median"], "mean": b.get("mean"),
                                   "met": a["median"] < b["median"], "tie": a["median"] == b["median"]}
        ranked = sorted((((results[m]["at"].get(share) or {}).get("median"), m) for m in peers),
                        key=lambda t: (t[0] is None, t[0] or 0.0, t[1]))
        if ranked and ranked[0][0] is not None:
            best_median, best = ranked[0]
            pa = results[best]["at"][share]
            lo = (a.get("ci95") or [a["median"]] * 2)[0]
            hi = (pa.get("ci95") or [best_median] * 2)[1]
            row["best_peer"] = {"method": best, "median": best_median, "ci95": pa.get("ci95"),
                                "met": a["median"] <= best_median or lo <= hi}
        row["met"] = all(v["met"] for v in row["below"].values()) and row.get("best_peer", {}).get("met", True)
        met = met and row["met"]
        out["at"][share] = row
    out["met"] = met
    return out


# --------------------------------------------------------------------------------------------------
# Report: JSON, Markdown, plot
# --------------------------------------------------------------------------------------------------

def _fmt(v: float | None, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _cell(a: Mapping[str, Any] | None) -> str:
    if not a:
        return "—"
    ci = a.get("ci95") or [None, None]
    return f"{_fmt(a['median'])} [{_fmt(a['q25'])}, {_fmt(a['q75'])}] ({_fmt(ci[0])}–{_fmt(ci[1])})"


def render_markdown(report: Mapping[str, Any]) -> str:
    """The Markdown report (everything it says comes from ``report``)."""
    lines = ["# Search methods replayed over recorded training curves (tabular benchmark)", ""]
    lines += [
        "Every method searches the same recorded table (a grid of configurations, each trained with several "
        "seeds, dev score after every epoch, test score after the last); a trial gets one recorded seed at random. "
        f"Each method is replayed {report.get('repeats')} times per table with different seeds. "
        "Regret = the table's best mean test score minus the mean test score (over the table's seeds) of the "
        "configuration the method would pick; lower is better, 0 means it found the best.", "",
        "**Protocol.** Cost = training epochs; a configuration trained again at a larger budget resumes from its "
        "checkpoint (only new epochs cost), for kftune and peers alike; finalist re-runs cost their epochs. "
        "Every method gets the same budget B of cumulative epochs per replay (by default 24 full trainings, the "
        "trial count of the search-efficiency benchmark, or three passes over kftune's Hyperband brackets with "
        "eta 3 and min_budget 1 if that is more; `--budget-trainings` sets it). Peers run until B is spent. "
        "A kftune method is configured as a user "
        "would for B: `maxTrialCount` is the largest whose nominal cost (kftune's planner on made-up results, "
        "plus the finalists' re-runs) fits B; a search that saves epochs (median stopping) ends early. "
        "A trial's value at a budget is Flair's objective (mean of its last 3 dev scores), what kftune records "
        "and what every peer is told; per-epoch pruners see each epoch's dev score.", "",
        "**Incumbent** (the anytime curve's point after every trial result, for every method alike): the "
        "configuration with the best value among the evaluations at the largest budget reached so far. "
        "A kftune method's final choice is `SearchPolicy.select_best` after its finalists (the curve's last point); "
        "a peer's is its incumbent at the end.", "",
        "**Notes.** The recorded runs train every epoch (no patience), so no method's trainings stop early inside "
        "a run. A finalist's extra seed is another recorded seed of its configuration (the table's seeds in a "
        "random order; when it needs more extra seeds than the table has other seeds, they are used again in "
        "turn, and cost again). A peer that asks for a configuration again at a budget it already reached starts a new "
        "trial (a fresh seed, from scratch). Test scores are taken as higher-is-better (accuracy, F1).", "",
        "**Cells**: median regret [interquartile range] (bootstrap 95 % interval of the median) at a quarter, half "
        "and all of the budget; `—`: no configuration chosen yet in at least that share of the replays. "
        "*best*: share of replays whose final choice is the table's best configuration. *exact*: share of "
        "proposals found in the table (a partial table: the nearest recorded configuration stands in).", ""]
    for tname, t in report.get("tables", {}).items():
        res = report.get("results", {}).get(tname, {})
        lines += [f"## {tname}", ""]
        lines += [f"Table `{t.get('source')}`: {t['configs']} of {t['grid_size']} grid configurations "
                  f"({'complete' if t.get('complete') else 'partial: a uniform random sample of the grid'}), "
                  f"{t['max_epochs']} epochs, seeds {', '.join(map(str, t.get('seeds') or []))}; spec "
                  f"`{t.get('spec')}` with overrides `{json.dumps(t.get('overrides') or {})}`. Parameters: "
                  + "; ".join(f"{k} {', '.join(v)}" for k, v in (t.get("parameters") or {}).items()) + ".",
                  "",
                  f"Best mean test score {t['best_mean_test']:.4f} ({json.dumps(t['best_assignment'])}); the median "
                  f"configuration's {t['median_mean_test']:.4f}. Budget B = {t['budget']} epochs "
                  f"({t['budget_trainings']} full trainings).", ""]
        lines += ["| method | B/4 | B/2 | B | best | epochs used | trials | exact | s / replay |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        order = sorted(res, key=lambda m: (res[m].get("at", {}).get("1.0", {}).get("median") is None,
                                          res[m].get("at", {}).get("1.0", {}).get("median") or 0, m))
        for m in order:
            s = res[m]
            if "at" not in s:
                lines.append(f"| {m} | failed: {'; '.join(s.get('error_examples', []))} | | | | | | | |")
                continue
            at = s["at"]
            lines.append(
                f"| {m} | {_cell(at.get('0.25'))} | {_cell(at.get('0.5'))} | {_cell(at.get('1.0'))} | "
                f"{s['final']['found_best']:.2f} | {s['epochs_used']['median']:.0f} | {s['trials']:.0f} | "
                f"{_fmt(s.get('exact_hits'), 2)} | {s['seconds']['mean']:.3f} |")
        crit = (report.get("criteria") or {}).get(tname)
        if crit:
            lines += ["", *render_criteria(crit)]
        errs = {m: s for m, s in res.items() if s.get("errors")}
        if errs:
            lines += [""] + [f"- {m}: {s['errors']} of {s['repeats']} replays failed: "
                             f"{'; '.join(s.get('error_examples', []))}" for m, s in errs.items()]
        lines.append("")
    methods = report.get("methods", {})
    lines += ["## Methods", ""]
    for m, info in methods.items():
        if info.get("kind") == "peer":
            lines.append(f"- **{m}** ({info.get('library')}): {info.get('label')}")
        else:
            prep = info.get("prepared", {})
            per = "; ".join(f"{t}: {'`' + p['method'] + '`, ' if m == SPEC_METHOD else ''}maxTrialCount "
                            f"{p['maxTrialCount']}, {p['rounds']} rounds, nominal {p['nominal_epochs']} + "
                            f"{p['finalist_epochs']} finalist epochs" for t, p in prep.items())
            if m == SPEC_METHOD:
                per = "the example spec's own search (random_state dropped): " + per
            any_prep = next(iter(prep.values()), {})
            s = any_prep.get("search", {})
            fin = f"finalists {s.get('finalists')}, finalistRuns {s.get('finalistRuns')}, " \
                  f"parallelTrialCount {s.get('parallelTrialCount')}" if s else ""
            lines.append(f"- **{m}** (kftune, SearchPolicy; {fin}): {per}")
    unavailable = report.get("unavailable") or {}
    if unavailable:
        lines += ["", "Not run:", ""] + [f"- **{m}**: {why}" for m, why in unavailable.items()]
    slow = report.get("not_default") or {}
    if slow:
        lines += ["", "Available, but run only when named with `--methods` (their model fits take 25-60 s per replay "
                      "here, hours for 100 repeats on three tables on two shared cores):", ""]
        lines += [f"- **{m}**: {why}" for m, why in slow.items()]
    lines += ["", "## Reproduce", "", "```", str(report.get("command", "")), "```", ""]
    env = report.get("environment") or {}
    if env:
        lines += [f"Replay wall time {report.get('wall_seconds', 0):.0f} s with {report.get('workers')} worker "
                  f"process(es) on {env.get('cpus')} CPU(s) ({env.get('machine')}; Python {env.get('python')}; "
                  + ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items()) + "). *s / replay*: the "
                  "replay's own time per repeat, in its worker (the machine was shared).", ""]
    return "\n".join(lines)


def render_criteria(crit: Mapping[str, Any]) -> list[str]:
    """One table's BOHB criteria as Markdown lines."""
    names = {"0.25": "B/4", "0.5": "B/2", "1.0": "B"}
    verdict = "met" if crit.get("met") else "**not met**"
    lines = [f"**BOHB criteria** (`{crit['method']}`: median regret below random search's and Hyperband's, and not "
             f"worse than the best peer's beyond the bootstrap intervals): {verdict}.", ""]
    for share, row in (crit.get("at") or {}).items():
        if "median" not in row:
            lines.append(f"- at {names.get(share, share)}: {row.get('why')}")
            continue
        parts = [f"{_fmt(row['median'])}"]
        for label, b in row["below"].items():
            rel = "<" if b["met"] else "= (a tie, not below)" if b.get("tie") else "> (not below)"
            means = f" (means {_fmt(row.get('mean'))} vs {_fmt(b.get('mean'))})" if b.get("tie") else ""
            parts.append(f"{rel} {label} {_fmt(b['median'])}{means}")
        peer = row.get("best_peer")
        if peer:
            ci = row.get("ci95") or [None, None]
            pci = peer.get("ci95") or [None, None]
            parts.append(f"best peer {peer['method']} {_fmt(peer['median'])} ({_fmt(pci[0])}–{_fmt(pci[1])}; "
                         f"BOHB's interval {_fmt(ci[0])}–{_fmt(ci[1])}): "
                         f"{'not worse' if peer['met'] else 'worse beyond the intervals'}")
        verdict_here = "met" if row["met"] else "not met"
        lines.append(f"- at {names.get(share, share)}: " + "; ".join(parts) + f" — {verdict_here}")
    return lines


def render_plot(report: Mapping[str, Any], path: Path) -> None:
    """One column of panels per table (kftune's methods above, the peers below, ``random+none`` in both as the
    common reference): median regret (line) and interquartile range (band) against cumulative epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = list(report.get("results", {}))
    if not tables:
        return
    kinds = report.get("methods", {})
    methods = sorted({m for t in tables for m in report["results"][t]})
    groups = [("kftune", [m for m in methods if kinds.get(m, {}).get("kind") == "kftune"]),
              ("peers", [m for m in methods if kinds.get(m, {}).get("kind") != "kftune"])]
    reference = "random+none" if "random+none" in methods else None
    if reference is not None:
        groups[1][1].insert(0, reference)
    groups = [(g, ms) for g, ms in groups if ms]
    fig, axes = plt.subplots(len(groups), len(tables), figsize=(6.5 * len(tables) + 3.5, 5.2 * len(groups)),
                             squeeze=False, sharex="col", sharey="col")
    cmap = plt.get_cmap("tab20")
    for row, (group, ms) in enumerate(groups):
        for col, tname in enumerate(tables):
            ax = axes[row][col]
            res = report["results"][tname]
            for i, m in enumerate(ms):
                c = res.get(m, {}).get("curve")
                if not c:
                    continue
                x = np.array(c["x"])
                med, lo, hi = (np.array([np.nan if v is None else v for v in c[k]], dtype=float)
                               for k in ("median", "q25", "q75"))
                ref = m == reference and group == "peers"
                color = "0.3" if ref else cmap(i % 20)
                ax.plot(x, med, ":" if ref else ("-" if group == "kftune" else "--"), color=color, label=m, lw=1.5)
                ax.fill_between(x, lo, hi, color=color, alpha=0.06, lw=0)
            t = report["tables"][tname]
            for f in FRACTIONS:
                ax.axvline(f * t["budget"], color="0.8", lw=0.8, zorder=0)
            ax.set_xscale("log")
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_ylim(bottom=0)
            ax.grid(True, which="both", alpha=0.3)
            if row == len(groups) - 1:
                ax.set_xlabel("cumulative training epochs")
            if col == 0:
                ax.set_ylabel(f"regret ({group})")
            if row == 0:
                ax.set_title(f"{tname}: {t['configs']}/{t['grid_size']} configs, {t['max_epochs']} epochs, "
                             f"B = {t['budget']}, best {t['best_mean_test']:.4f}", fontsize=10)
        axes[row][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(f"Regret of the incumbent (table's best mean test score minus the choice's): median and IQR over "
                 f"{report.get('repeats')} replays; symlog, linear below 0.001", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: Mapping[str, Any], out: Path) -> list[Path]:
    """``<out>.json``, ``<out>.md`` and ``<out>.png``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".json"), out.with_suffix(".md"), out.with_suffix(".png")]
    paths[0].write_text(json.dumps(report, indent=1, default=_json_default) + "\n", encoding="utf-8")
    paths[1].write_text(render_markdown(report), encoding="utf-8")
    render_plot(report, paths[2])
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def environment() -> dict[str, Any]:
    from importlib import metadata

    pkgs = {}
    for dist in ("kftune", "optuna", "hyperopt", "smac", "syne-tune", "hpbandster", "DEHB", "ConfigSpace", "numpy"):
        try:
            pkgs[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "packages": pkgs}


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="search_tabular.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--render", metavar="REPORT.json", help="rewrite the Markdown and the plot of a saved report")
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("replay", help="replay methods over the recorded tables (the default)")
    _replay_arguments(r)
    rec = sub.add_parser("record", help="record a table (benchmarks/_tabular_record.py)", add_help=False)
    rec.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _replay_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("--tables", nargs="+", help=f"table names under {_rel(TABLES_DIR)} (default: those of "
                                               f"{', '.join(TABLE_NAMES)} that exist)")
    r.add_argument("--table", dest="table_paths", action="append", help="a table file (repeatable)")
    r.add_argument("--methods", nargs="+", help="peer names and kftune methods ALG[k=v]+ES[k=v]{field=v} "
                                                "(default: every kftune default and every peer)")
    r.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="replays per method and table")
    r.add_argument("--workers", type=int, default=2, help="worker processes (at most 2 on shared machines)")
    r.add_argument("--budget-trainings", type=int, help="budget B in full trainings (default: 3 Hyperband passes)")
    r.add_argument("--first-seed", type=int, default=1, help="seed of the first replay")
    r.add_argument("--out", default=str(DEFAULT_OUT), help="output stem: <out>.json, .md, .png")
    r.add_argument("--list", action="store_true", help="list the methods and exit")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _quiet_libraries()
    if argv and argv[0] == "record":
        import _tabular_record

        return int(_tabular_record.main(argv[1:], prog="search_tabular.py record") or 0)
    if not argv or argv[0].startswith("-") and argv[0] not in ("--render", "-h", "--help"):
        argv = ["replay", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text(encoding="utf-8"))
        for path in write_report(report, Path(args.render).with_suffix("")):
            print(path)
        return 0
    if args.command != "replay":
        parser.print_help()
        return 2
    peers = _peers()

    if args.list:
        for m in KFTUNE_DEFAULTS:
            if m == SPEC_METHOD:
                print(f"{m:40s} kftune  (each table's example spec's own search)")
                continue
            why = kftune_available(parse_method(m))
            print(f"{m:40s} kftune{'  (not available: ' + why + ')' if why else ''}")
        for m in peers.PEERS:
            why = peers.available(m)
            slow = peers.SLOW.get(m)
            print(f"{m:40s} {peers.describe(m)['library']}{'  (not available: ' + why + ')' if why else ''}"
                  f"{'  (only when named: ' + slow + ')' if slow else ''}")
        return 0
    if args.repeats < 1 or args.workers < 1:
        parser.error("--repeats and --workers must be positive")
    paths = find_tables(args.tables, args.table_paths)
    if not paths:
        log.error("no table to replay; record one with `python benchmarks/search_tabular.py record ...` or give "
                  "--table PATH")
        return 2
    methods = method_names(args.methods)
    _one_thread()
    report = run_all(paths, methods, args.repeats, min(args.workers, os.cpu_count() or 1), args.budget_trainings,
                     args.first_seed, progress=lambda s: log.info("%s", s))
    report["command"] = "python benchmarks/search_tabular.py " + " ".join(_quote(a) for a in argv)
    report["environment"] = environment()
    for path in write_report(report, Path(args.out)):
        print(_rel(path))
    return 0


def _quote(a: str) -> str:
    return a if re.fullmatch(r"[\w./=+:@,-]+", a) else "'" + a.replace("'", "'\\''") + "'"


if __name__ == "__main__":
    sys.exit(main())
