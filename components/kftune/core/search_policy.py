"""What a search does next, as a pure function of the spec and the trial history.

This is the transport-free half of every search driver (Katib keeps the same split between its
suggestion algorithm and its gRPC service): ``kftune search`` (:mod:`kftune.steps.search`, a process
pool), the pipeline's per-round ``suggest`` step (:mod:`kftune.steps.suggest`) and the benchmarks call
the same functions and so make the same decisions::

    policy = SearchPolicy.from_job(job, space=space)
    rounds = policy.rounds_needed()                         # how many rounds the search takes
    requests = policy.plan_round(history, round_index, rounds)
    winner = policy.select_best(history, finalist_records)

Rounds. A search advances in rounds: a round is a list of :class:`TrialRequest` s planned from the
history after the previous round finished (a barrier). A request is either a *new* trial (an
assignment from the sampler, trained for the first budget) or a *promotion* (a paused trial resumed
from its checkpoint up to the next successive-halving rung). Because a round depends only on the
history and the history only on the rounds before it, a search that is killed and restarted plans
exactly the same rounds and ends with the same result, whatever the timing of its trials.

The one planner rule (:meth:`SearchPolicy.round_width`, :meth:`SearchPolicy.plan_round`): a search of
``R`` rounds plans round ``r`` at most ``max(parallelTrialCount, ceil(remaining trials / (R - r)))``
requests wide, and plans nothing from round ``R`` on. ``R`` is :meth:`SearchPolicy.rounds_needed`: the
fewest rounds (from ``ceil(maxTrialCount / parallelTrialCount)`` up) in which the search, simulated with
this very rule on made-up results that never reach the goal (:meth:`SearchPolicy.fits`), has nothing
left to plan; with ASHA, whose promotions depend on the results, ``len(rungs) - 1`` more. A pipeline
compiled with another ``R`` (the committed YAML's 10) plans with that ``R``, provided the search fits.
Both drivers use the same ``R`` for the same spec (``kftune run`` and ``kftune submit`` compile the
pipeline with :meth:`~SearchPolicy.rounds_needed` rounds; ``kftune search`` pins it in ``settings.json``),
so for the same spec, seed and trial results they plan the same requests in the same order. After the
``R`` rounds the finalists' round (round ``R``) re-trains the finalists.

Early stopping:

* none: every new trial trains the full budget (``train.maxEpochs``);
* ``medianstop``: the same, and the trial itself stops when :class:`~kftune.core.early_stopping.MedianStop`
  says so, judged against the trials that were completed when its round was planned
  (:meth:`SearchPolicy.judged`, kept in the round's plan);
* ``asha``: each round first promotes what ASHA promotes now (higher rungs first), then fills the
  remaining places with new trials at the first rung; promotions still pending after round ``R`` are
  not run;
* ``successive-halving`` (synchronous): trials are created in *cohorts* (the whole search, or one
  coarse-to-fine round), all at the first rung; once a cohort is complete its rungs are decided one by
  one and the promoted trials resumed, before the next cohort starts (coarse-to-fine narrows its box
  around the survivors of the highest rung).
* ``hyperband``: the same, a cohort being one Hyperband bracket (:meth:`BudgetRule.cohort`, a function of
  the trial index): its trials start at the bracket's first rung and halve within it; the brackets run
  one after another (``s_max .. 0``, then again from ``s_max``) until ``maxTrialCount`` trials exist.

Stopping (:meth:`SearchPolicy.stop_reason`): ``failures`` once ``maxFailedTrialCount`` trials failed
(the search is then failed, as Katib marks the Experiment), ``goal`` once a completed or pruned trial
reached the objective's goal, ``max_trials`` when ``maxTrialCount`` trials were created and nothing is
left to promote, ``exhausted`` when the sampler has nothing more to suggest (a finished grid).

The winner (:meth:`SearchPolicy.select_best`): Flair's lesson is that one training seed's dev score is
noisy. The top ``search.finalists`` completed trials are each re-trained with extra seeds (their own
``trainingRuns`` seeds count), and the winner is the finalist with the best *mean* objective over
``search.finalistRuns`` seeds; the result reports the mean, the spread (sample standard deviation) and
every seed's value. A finalist whose extra run failed ranks after every finalist without a failure.
:func:`best_record` is the one schema of ``best.json`` that both drivers write.

Where these objects live in the store (``runs/<run>/search/...``) is :mod:`kftune.io.journal`'s business;
nothing here does I/O.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Literal, Mapping, Sequence

from kftune.core.early_stopping import BudgetRule, EarlyStoppingRule, StoppingRule, get_early_stopping
from kftune.core.errors import ConfigError, DataError, Problem
from kftune.core.goal import goal_reached
from kftune.core.samplers import CoarseToFineSampler, Sampler, get_sampler
from kftune.core.space import SearchSpace
from kftune.core.spec import TuningJob
from kftune.core.trials import Objective, Trial, ranked, sign

TrialKind = Literal["trial", "finalist"]
StopReason = Literal["failures", "goal", "max_trials", "exhausted"]

#: The most rounds a search may take (``resolve-spec`` refuses a spec that needs more).
MAX_ROUNDS = 256

#: How many of a run's last dev evaluations make its objective (Flair's parameter selection: the last 3).
LAST_EVALUATIONS = 3


# --------------------------------------------------------------------------------------------------
# Ids
# --------------------------------------------------------------------------------------------------

def trial_id_for(index: int) -> str:
    """The id of the ``index``-th trial (0-based) a search creates: ``trial-0001``, ``trial-0002``, ..."""
    return f"trial-{index + 1:04d}"


# --------------------------------------------------------------------------------------------------
# Requests and the winner
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialRequest:
    """One unit of work of a round: train trial ``trial_id`` with ``assignment`` up to ``budget`` epochs.

    ``promotion``: the trial was paused at a rung and continues from its checkpoint (otherwise it is
    new). ``kind`` ``finalist``: an extra training run of a finalist with ``seeds`` (``None``: the
    search's own training seeds). ``index`` is the trial's creation order (the history's order).
    ``bracket``: Hyperband's bracket ``s`` of the trial (a function of ``index``; ``None`` without brackets).
    """

    trial_id: str
    index: int
    assignment: Mapping[str, Any]
    budget: int
    round: int
    promotion: bool = False
    kind: TrialKind = "trial"
    seeds: tuple[int, ...] | None = None
    bracket: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the item a pipeline's ParallelFor hands to its trial task); ``bracket`` only when set."""
        out = {"trial_id": self.trial_id, "index": self.index, "assignment": dict(self.assignment),
               "budget": self.budget, "round": self.round, "promotion": self.promotion, "kind": self.kind,
               "seeds": list(self.seeds) if self.seeds is not None else None}
        if self.bracket is not None:
            out["bracket"] = self.bracket
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrialRequest":
        """Inverse of :meth:`to_dict`; :class:`DataError` naming the field for a malformed item."""
        try:
            seeds = data.get("seeds")
            return cls(trial_id=str(data["trial_id"]), index=int(data["index"]),
                       assignment=dict(data["assignment"]), budget=int(data["budget"]), round=int(data["round"]),
                       promotion=bool(data.get("promotion", False)), kind=data.get("kind", "trial"),
                       seeds=tuple(int(s) for s in seeds) if seeds is not None else None,
                       bracket=int(data["bracket"]) if data.get("bracket") is not None else None)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"not a trial request ({type(exc).__name__}: {exc}): {data!r}") from None


@dataclass(frozen=True)
class Winner:
    """The chosen configuration: its trial, assignment and objective as a mean over seeds, with spread.

    ``chosen_on``: ``finalists`` (mean over ``finalist_runs`` seeds), ``search`` (the search's own
    training runs; no finalist re-runs), or ``pruned`` (no trial completed; the best paused one).
    ``candidates``: every finalist's mean, spread and per-seed values, best first.
    """

    trial_id: str
    assignment: Mapping[str, Any]
    objective: float
    spread: float
    values: tuple[float, ...]
    seeds: tuple[int, ...]
    budget: int
    search_objective: float
    chosen_on: Literal["finalists", "search", "pruned"]
    candidates: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "assignment": dict(self.assignment), "objective": self.objective,
                "spread": self.spread, "values": list(self.values), "seeds": list(self.seeds),
                "budget": self.budget, "search_objective": self.search_objective, "chosen_on": self.chosen_on,
                "candidates": [dict(c) for c in self.candidates]}


def spread_of(values: Sequence[float]) -> float:
    """The sample standard deviation of ``values`` (0 for fewer than two)."""
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0


def run_objective(values: Sequence[float]) -> tuple[float, float]:
    """Flair's objective of one training run: the mean of its last :data:`LAST_EVALUATIONS` dev values,
    and their population variance (what Flair's ``param_selection.txt`` calls the variance)."""
    last = [float(v) for v in values[-LAST_EVALUATIONS:]]
    if not last:
        raise ValueError("a training run with no dev evaluation has no objective")
    return sum(last) / len(last), float(statistics.pvariance(last)) if len(last) > 1 else 0.0


def history_from_records(records: Iterable[Mapping[str, Any] | Trial]) -> list[Trial]:
    """Trials in creation order (``index``, then id) from trial records (or :class:`Trial` s)."""
    trials = [r if isinstance(r, Trial) else Trial.from_dict(r) for r in records]
    return sorted(trials, key=lambda t: (_index_of(t) is None, _index_of(t) or 0, t.id))


def _index_of(t: Trial) -> int | None:
    value = t.extra.get("index")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchPolicy:
    """The search's decisions for one spec: what to run next, when to stop, who wins. Pure.

    Build with :meth:`from_job`. ``space`` is the search space (the spec's, possibly narrowed by the LR
    range test); ``seed`` seeds the sampler; training runs use seeds ``train_seed, train_seed + 1, ...``.
    """

    job: TuningJob
    space: SearchSpace
    seed: int

    @classmethod
    def from_job(cls, job: TuningJob, *, space: SearchSpace | None = None, seed: int | None = None) -> "SearchPolicy":
        """The policy of ``job`` (the sampler seed defaults to ``train.seed``). Raises :class:`ConfigError`
        when the algorithm's or the early-stopping rule's settings cannot be used."""
        policy = cls(job=job, space=space if space is not None else SearchSpace.from_parameters(job.spec.search.parameters),
                     seed=job.spec.train.seed if seed is None else int(seed))
        policy.check()
        return policy

    # -- configuration -------------------------------------------------------------------------------
    @property
    def search(self) -> Any:
        return self.job.spec.search

    @property
    def objective_type(self) -> Objective:
        return self.search.objective.type

    @property
    def metric(self) -> str:
        """The objective's metric name (``dev_score`` or ``dev_loss``)."""
        return self.search.objective.objective_metric_name

    @property
    def parallel(self) -> int:
        return int(self.search.parallel_trial_count)

    @property
    def max_trials(self) -> int:
        return int(self.search.max_trial_count)

    @cached_property
    def sampler(self) -> Sampler:
        return get_sampler(self.search.algorithm.algorithm_name)

    @property
    def settings(self) -> dict[str, str]:
        return self.search.algorithm.settings()

    @cached_property
    def early_stopping(self) -> EarlyStoppingRule | None:
        es = self.search.early_stopping
        if es is None:
            return None
        return get_early_stopping(es.algorithm_name, es.settings(), max_epochs=self.job.spec.train.max_epochs)

    @property
    def halving(self) -> BudgetRule | None:
        """The rule that pauses trials at rungs (successive halving, ASHA), if the search uses one."""
        es = self.early_stopping
        return es if isinstance(es, BudgetRule) else None

    @property
    def median_stop(self) -> StoppingRule | None:
        """The rule that judges a running trial after each report (medianstop), if the search uses one."""
        es = self.early_stopping
        return es if isinstance(es, StoppingRule) else None

    @property
    def max_budget(self) -> int:
        """Epochs a trial trains at most: the halving rule's ``max_budget``, else ``train.maxEpochs``.
        It is also the trainer's ``max_epochs`` for every trial, so that a resumed trial follows the
        same learning-rate schedule as one trained in one go."""
        h = self.halving
        return h.max_budget if h is not None else int(self.job.spec.train.max_epochs)

    @property
    def first_budget(self) -> int:
        """Epochs a new trial trains before its first decision (with Hyperband the smallest; a trial's own is
        its bracket's, :meth:`BudgetRule.first_budget_of`)."""
        h = self.halving
        return h.first_budget if h is not None else self.max_budget

    @property
    def training_seeds(self) -> tuple[int, ...]:
        """The seeds of a trial's ``trainingRuns`` training runs."""
        train = self.job.spec.train
        return tuple(train.seed + i for i in range(train.training_runs))

    @property
    def finalist_seeds(self) -> tuple[int, ...]:
        """The extra seeds each finalist is re-trained with (``finalistRuns`` minus the trial's own runs)."""
        train = self.job.spec.train
        extra = max(0, int(self.search.finalist_runs) - train.training_runs)
        return tuple(train.seed + train.training_runs + j for j in range(extra))

    def check(self) -> None:
        """Raise :class:`ConfigError` when the sampler or early-stopping settings cannot be used."""
        problems: list[Problem] = []
        try:
            self.sampler.check(self.space, self.settings, max_trials=self.max_trials)
        except ConfigError as exc:
            problems.extend(exc.problems)
        try:
            rule = self.early_stopping
            if isinstance(rule, BudgetRule) and rule.max_budget > self.job.spec.train.max_epochs:
                problems.append(Problem("spec.search.earlyStopping.algorithmSettings.max_budget",
                                        f"{rule.max_budget} is more than train.maxEpochs "
                                        f"({self.job.spec.train.max_epochs}); lower it or raise maxEpochs"))
        except ConfigError as exc:
            problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)

    # -- stopping --------------------------------------------------------------------------------
    def failed_count(self, history: Sequence[Trial]) -> int:
        return sum(1 for t in history if t.state == "failed")

    def stop_reason(self, history: Sequence[Trial]) -> StopReason | None:
        """``failures`` or ``goal`` when the search must stop now, else ``None`` (see the module docstring)."""
        if self.failed_count(history) >= self.search.failure_limit:
            return "failures"
        if goal_reached(history, self.objective_type, self.search.objective.goal):
            return "goal"
        return None

    def end_reason(self, history: Sequence[Trial]) -> StopReason:
        """Why a search whose last :meth:`plan` was empty ended."""
        reason = self.stop_reason(history)
        if reason is not None:
            return reason
        return "max_trials" if len(history) >= self.max_trials else "exhausted"

    # -- planning --------------------------------------------------------------------------------
    def _new(self, history: Sequence[Trial], n: int, round_index: int) -> list[TrialRequest]:
        n = min(n, self.max_trials - len(history))
        if n <= 0:
            return []
        points = self.sampler.suggest(self.space, history, n, seed=self.seed, settings=self.settings,
                                      objective=self.objective_type, max_trials=self.max_trials)
        k = len(history)
        h = self.halving
        return [TrialRequest(trial_id=trial_id_for(k + i), index=k + i, assignment=a,
                             budget=h.first_budget_of(k + i) if h is not None else self.first_budget,
                             round=round_index, bracket=h.bracket_of(k + i) if h is not None else None)
                for i, a in enumerate(points)]

    def _promote(self, history: Sequence[Trial], promotions: Iterable[Any], n: int,
                 round_index: int) -> list[TrialRequest]:
        by_id = {t.id: (i, t) for i, t in enumerate(history)}
        out = []
        for p in promotions:
            if len(out) >= n:
                break
            i, t = by_id[p.trial_id]
            index = i if _index_of(t) is None else _index_of(t)
            h = self.halving
            out.append(TrialRequest(trial_id=t.id, index=index, assignment=dict(t.assignment),  # type: ignore[arg-type]
                                    budget=int(p.budget), round=round_index, promotion=True,
                                    bracket=h.bracket_of(index) if h is not None else None))  # type: ignore[arg-type]
        return out

    def cohort_bounds(self, index: int) -> tuple[int, int]:
        """``[start, end)`` of the synchronous-halving cohort that trial ``index`` belongs to: its Hyperband
        bracket, else its coarse-to-fine round, or the whole search for the other samplers (capped at
        ``maxTrialCount``)."""
        h = self.halving
        bounds = h.cohort(index) if h is not None else None
        if bounds is not None:
            return bounds[0], min(bounds[1], self.max_trials)
        if isinstance(self.sampler, CoarseToFineSampler):
            cfg = self.sampler.config(self.space, self.settings, max_trials=self.max_trials)
            r = cfg.round_of(index)
            end = cfg.round_start(r + 1) if r < cfg.rounds - 1 else self.max_trials
            return cfg.round_start(r), min(end, self.max_trials)
        return 0, self.max_trials

    def plan(self, history: Sequence[Trial], round_index: int, n: int | None = None) -> list[TrialRequest]:
        """Round ``round_index``: up to ``n`` (default ``parallelTrialCount``) requests given ``history``
        (oldest first). Empty when the search is over (see :meth:`end_reason`)."""
        history = list(history)
        n = self.parallel if n is None else int(n)
        if n < 1:
            raise ConfigError([Problem("n", f"{n!r} must be a positive number of requests")])
        if self.stop_reason(history) is not None:
            return []
        rule = self.halving
        if rule is None:
            return self._new(history, n, round_index)
        if not rule.synchronous:
            promoted = self._promote(history, rule.promotions(history, self.objective_type), n, round_index)
            return promoted + self._new(history, n - len(promoted), round_index)
        # synchronous successive halving, cohort by cohort
        k = len(history)
        start, end = self.cohort_bounds(max(k - 1, 0))
        if k < end:
            fresh = self._new(history, min(n, end - k), round_index)
            if fresh or any(t.state == "running" for t in history):
                return fresh
            end = k  # the sampler has nothing more for this cohort
        cohort = history[start:end]
        promoted = self._promote(history, rule.promotions(cohort, self.objective_type), n, round_index)
        if promoted or any(t.state == "running" for t in cohort):
            return promoted
        if k >= end and k < self.max_trials:  # this cohort is decided: start the next one
            _, next_end = self.cohort_bounds(k)
            return self._new(history, min(n, next_end - k), round_index)
        return []

    # -- the planner rule: rounds and their width (both drivers) ---------------------------------------
    def round_width(self, created: int, round_index: int, rounds: int) -> int:
        """The most requests round ``round_index`` of a search of ``rounds`` rounds may hold when ``created``
        trials exist: ``max(parallelTrialCount, ceil(remaining trials / rounds left))``, so that the search
        ends within its rounds."""
        remaining = max(0, self.max_trials - int(created))
        return max(self.parallel, -(-remaining // max(1, int(rounds) - int(round_index))))

    def plan_round(self, history: Sequence[Trial], round_index: int, rounds: int) -> list[TrialRequest]:
        """Round ``round_index`` of a search of ``rounds`` rounds (the module docstring's one rule): :meth:`plan`
        with :meth:`round_width` requests at most; empty from round ``rounds`` on, and when the search is over."""
        if round_index >= rounds:
            return []
        return self.plan(history, round_index, self.round_width(len(history), round_index, rounds))

    def judged(self, history: Sequence[Trial]) -> list[str]:
        """The ids of the trials a ``medianstop`` round judges its trials against: those completed when the
        round is planned (empty without medianstop). A driver keeps them in the round's plan, so that a
        resumed or retried trial is judged against the same ones."""
        return [t.id for t in history if t.state == "completed"] if self.median_stop is not None else []

    def fits(self, rounds: int) -> bool:
        """Whether the search ends within ``rounds`` rounds of :meth:`plan_round`, simulated on made-up
        results (completed at the last rung, paused below it, never reaching the goal): nothing is left
        to plan after the last round."""
        history: list[Trial] = []
        by_id: dict[str, int] = {}
        for r in range(rounds):
            requests = self.plan_round(history, r, rounds)
            if not requests:
                return True
            for q in requests:
                trial = self._simulated(q)
                if q.trial_id in by_id:
                    history[by_id[q.trial_id]] = trial
                else:
                    by_id[q.trial_id] = len(history)
                    history.append(trial)
        return not self.plan(history, rounds, self.parallel)

    def _simulated(self, q: TrialRequest) -> Trial:
        """A made-up result of ``q`` for :meth:`fits`: a value drawn from the trial's index, moved away
        from the goal (if any) so that the simulated search never stops early."""
        value = random.Random(q.index).uniform(0.2, 0.8)
        goal = self.search.objective.goal
        if goal is not None:
            value = goal - sign(self.objective_type) * (1.0 + value)
        state = "completed" if q.budget >= self.max_budget else "pruned"
        return Trial(id=q.trial_id, assignment=dict(q.assignment), state=state, objective=value,
                     intermediate=tuple((e, value) for e in range(1, q.budget + 1)), budget=q.budget,
                     extra={"index": q.index, "budget_asked": q.budget})

    def rounds_needed(self, limit: int = MAX_ROUNDS) -> int:
        """The rounds the search takes (see the module docstring): the fewest from
        ``ceil(maxTrialCount / parallelTrialCount)`` up that :meth:`fits`, plus ``len(rungs) - 1`` with
        ASHA. Raises :class:`ConfigError` when it does not end within ``limit`` rounds."""
        rounds = min(limit, math.ceil(self.max_trials / self.parallel))
        while not self.fits(rounds):
            if rounds >= limit:
                raise ConfigError([Problem("spec.search", f"the search does not end within {limit} rounds")])
            rounds += 1
        rule = self.halving
        if rule is not None and not rule.synchronous:
            # asha promotes as results arrive, so how many promotions remain depends on the results:
            # room for one more chain of promotions through every rung
            rounds = min(limit, rounds + len(rule.rungs()) - 1)
        return rounds

    def rounds_to_fit(self, start: int = 1, limit: int = MAX_ROUNDS) -> int | None:
        """The fewest rounds from ``start`` up to ``limit`` in which the search :meth:`fits`, or ``None``."""
        return next((r for r in range(max(1, start), limit + 1) if self.fits(r)), None)

    # -- finalists and the winner ------------------------------------------------------------------
    def finalists(self, history: Sequence[Trial]) -> list[Trial]:
        """The top ``search.finalists`` completed trials (best objective first), or none when finalist
        re-runs are off (``finalists: 0`` or no extra seed) or the search failed."""
        if int(self.search.finalists) <= 0 or not self.finalist_seeds:
            return []
        if self.stop_reason(history) == "failures":
            return []
        return ranked(history, self.objective_type, ("completed",))[: int(self.search.finalists)]

    def finalist_requests(self, history: Sequence[Trial], round_index: int) -> list[TrialRequest]:
        """One request per (finalist, extra seed): the finalist's assignment trained with that seed for the
        budget the finalist was trained for."""
        out = []
        for t in self.finalists(history):
            budget = int(t.extra.get("budget_asked") or self.max_budget)
            index = _index_of(t)
            for s in self.finalist_seeds:
                out.append(TrialRequest(trial_id=t.id, index=index if index is not None else 0,
                                        assignment=dict(t.assignment), budget=budget, round=round_index,
                                        kind="finalist", seeds=(s,)))
        return out

    def _own_runs(self, t: Trial) -> tuple[list[float], list[int]]:
        values = t.extra.get("objective_runs")
        seeds = t.extra.get("seeds")
        if isinstance(values, list) and values and all(isinstance(v, (int, float)) for v in values):
            vals = [float(v) for v in values]
            if isinstance(seeds, list) and len(seeds) == len(vals):
                return vals, [int(s) for s in seeds]
            return vals, list(self.training_seeds[: len(vals)])
        return [float(t.objective)], list(self.training_seeds[:1])  # type: ignore[arg-type]

    def select_best(self, history: Sequence[Trial],
                    finalist_records: Iterable[Mapping[str, Any]] = ()) -> Winner | None:
        """The winner (see the module docstring); ``None`` when no trial has a finite objective."""
        history = list(history)
        s = sign(self.objective_type)
        finalists = self.finalists(history)
        extra: dict[str, list[Mapping[str, Any]]] = {}
        for rec in finalist_records:
            extra.setdefault(str(rec.get("id")), []).append(rec)
        if finalists:
            candidates = []
            for rank, t in enumerate(finalists):
                values, seeds = self._own_runs(t)
                failed = []
                for rec in sorted(extra.get(t.id, []), key=lambda r: list(r.get("seeds") or [])):
                    obj = rec.get("objective")
                    if rec.get("state") == "failed" or not isinstance(obj, (int, float)) or not math.isfinite(obj):
                        failed.append(list(rec.get("seeds") or []))
                        continue
                    values.append(float(obj))
                    seeds.extend(int(x) for x in rec.get("seeds") or [])
                mean = sum(values) / len(values)
                candidates.append({"trial_id": t.id, "assignment": dict(t.assignment), "objective": mean,
                                   "spread": spread_of(values), "values": values, "seeds": seeds,
                                   "failed_seeds": failed, "search_objective": float(t.objective),  # type: ignore[arg-type]
                                   "search_rank": rank + 1, "budget": t.budget_used})
            candidates.sort(key=lambda c: (bool(c["failed_seeds"]), -s * c["objective"], c["search_rank"]))
            top = candidates[0]
            return Winner(trial_id=top["trial_id"], assignment=top["assignment"], objective=top["objective"],
                          spread=top["spread"], values=tuple(top["values"]), seeds=tuple(top["seeds"]),
                          budget=int(top["budget"]), search_objective=top["search_objective"],
                          chosen_on="finalists", candidates=tuple(candidates))
        done = ranked(history, self.objective_type, ("completed",))
        chosen_on: Literal["search", "pruned"] = "search"
        if not done:  # nothing completed: the best paused trial, larger budgets first
            pool = [(i, t) for i, t in enumerate(history) if t.state == "pruned" and t.has_objective]
            pool.sort(key=lambda it: (-it[1].budget_used, -s * float(it[1].objective), it[0]))  # type: ignore[arg-type]
            done = [t for _, t in pool]
            chosen_on = "pruned"
        if not done:
            return None
        t = done[0]
        values, seeds = self._own_runs(t)
        return Winner(trial_id=t.id, assignment=dict(t.assignment), objective=float(t.objective),  # type: ignore[arg-type]
                      spread=spread_of(values), values=tuple(values), seeds=tuple(seeds), budget=t.budget_used,
                      search_objective=float(t.objective), chosen_on=chosen_on)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# best.json: the one record of a search's outcome (both drivers write it)
# --------------------------------------------------------------------------------------------------

#: The winner's fields of :func:`best_record` (:meth:`Winner.to_dict`; all ``None`` when no trial has a result).
WINNER_FIELDS = ("trial_id", "assignment", "objective", "spread", "values", "seeds", "budget", "search_objective",
                 "chosen_on", "candidates")


def search_epochs(history: Iterable[Trial]) -> int:
    """Training epochs the search's trials used: each trial's epochs times its number of training runs."""
    total = 0
    for t in history:
        runs = t.extra.get("runs")
        if isinstance(runs, list) and runs:
            total += sum(int(r.get("epochs", 0)) for r in runs if isinstance(r, dict))
        else:
            total += t.budget_used
    return total


def finalist_epochs(finalist_records: Iterable[Mapping[str, Any]]) -> int:
    """Training epochs of the finalists' extra runs."""
    return sum(int(r.get("budget") or 0) * max(1, len(r.get("runs") or [])) for r in finalist_records)


def best_record(policy: SearchPolicy, history: Sequence[Trial], finalist_records: Sequence[Mapping[str, Any]],
                winner: Winner | None, *, run_id: str, rounds: int,
                lr_range: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``best.json``: the winner's fields (:data:`WINNER_FIELDS`, at the top level) and the search's outcome.

    ``run_id``; ``status`` (``failed`` when ``maxFailedTrialCount`` trials failed, else ``succeeded``),
    ``stop_reason`` (:meth:`SearchPolicy.end_reason`); the winner (``trial_id``, ``assignment``, ``objective``
    as the mean over seeds, ``spread``, ``values``, ``seeds``, ``budget``, ``search_objective``, ``chosen_on``,
    ``candidates``: the finalists); ``objective_metric``, ``objective_type``; ``trials`` (counts by state),
    ``rounds`` (search rounds that ran trials), ``search_epochs``, ``finalist_epochs``; ``max_trial_count``,
    ``max_failed_trial_count``; ``space`` (Katib's parameters), ``space_notes`` and ``lr_range`` (the LR
    range test's hand-off note, if any). ``kftune search`` and the pipeline's ``select-best`` write it, and
    ``kftune report --best``, final training and the search summary read it.
    """
    stop = policy.end_reason(history)
    counts: dict[str, int] = {}
    for t in history:
        counts[t.state] = counts.get(t.state, 0) + 1
    chosen = winner.to_dict() if winner is not None else dict.fromkeys(WINNER_FIELDS)
    return {"run_id": run_id, "status": "failed" if stop == "failures" else "succeeded", "stop_reason": stop,
            **chosen, "objective_metric": policy.metric, "objective_type": policy.objective_type,
            "trials": counts, "rounds": int(rounds), "search_epochs": search_epochs(history),
            "finalist_epochs": finalist_epochs(finalist_records), "max_trial_count": policy.max_trials,
            "max_failed_trial_count": policy.search.max_failed_trial_count, "space": policy.space.to_katib(),
            "space_notes": list(policy.space.notes), "lr_range": dict(lr_range) if lr_range is not None else None}


# --------------------------------------------------------------------------------------------------
# Per-round shorthands
# --------------------------------------------------------------------------------------------------

def _as_history(history: Iterable[Mapping[str, Any] | Trial]) -> list[Trial]:
    return history_from_records(history)


def suggest_round(job: TuningJob, history: Iterable[Mapping[str, Any] | Trial], round_index: int, *,
                  space: SearchSpace | None = None, seed: int | None = None, n: int | None = None) -> list[dict[str, Any]]:
    """The requests of :meth:`SearchPolicy.plan` (``n`` wide) as JSON-ready dicts (see
    :meth:`TrialRequest.to_dict`; each carries its ``assignment``). ``history``: trial records or
    :class:`Trial` s. Empty when the search is over. Drivers plan with :meth:`SearchPolicy.plan_round`."""
    policy = SearchPolicy.from_job(job, space=space, seed=seed)
    return [r.to_dict() for r in policy.plan(_as_history(history), round_index, n)]


def select_best(job: TuningJob, history: Iterable[Mapping[str, Any] | Trial],
                finalist_records: Iterable[Mapping[str, Any]] = (), *, space: SearchSpace | None = None,
                seed: int | None = None) -> dict[str, Any] | None:
    """The winner as a JSON-ready dict (:meth:`Winner.to_dict`), or ``None`` when no trial has a result."""
    policy = SearchPolicy.from_job(job, space=space, seed=seed)
    winner = policy.select_best(_as_history(history), finalist_records)
    return winner.to_dict() if winner is not None else None


__all__ = [
    "LAST_EVALUATIONS", "MAX_ROUNDS", "SearchPolicy", "TrialRequest", "WINNER_FIELDS", "Winner", "best_record",
    "finalist_epochs", "history_from_records", "run_objective", "search_epochs", "select_best", "spread_of",
    "suggest_round", "trial_id_for",
]
