"""``kftune trial``: train one assignment for a budget of epochs and write its trial record.

The Katib trial entry point, and what every trial of ``kftune search`` runs (in-process, through
:func:`run`). It trains the spec's model with the assignment's hyperparameters (the spec's ``model``
block gives every value the assignment does not set) for ``--budget`` epochs, ``trainingRuns`` times
with the seeds ``train.seed, train.seed + 1, ...``, and reports the objective as Flair's parameter
selection did: per training run the mean of its last 3 dev evaluations of the objective metric
(``dev_score`` or ``dev_loss``), averaged over the runs; the spread over runs is recorded with it.

Katib: every epoch prints ``<time> dev_score=<value>`` (the objective metric and the additional ones)
on stdout through :class:`kftune.io.katib_stdout.KatibStdoutSink`, and the end prints the objective
the same way, so Katib's ``latest`` metric strategy reads the Flair objective and ``medianstop`` sees
the per-epoch values. Prometheus: the same per-epoch values plus ``trial_objective`` and
``trial_epochs`` go to the sinks of :func:`kftune.io.metrics.sinks_from_env` (grouped by run, step
``trial`` and the trial id).

The record, one JSON object at ``runs/<run>/search/trials/<trial-id>.json`` in the store (written
with state ``running`` when training starts and replaced when it ends): ``id``, ``index`` (creation
order in a search), ``assignment`` (typed values), ``state`` (completed | pruned | failed | running),
``objective``, ``objective_runs`` (per seed), ``objective_spread`` (sample standard deviation over the
runs), ``objective_variance`` (Flair's: the mean over runs of the variance of the last 3 values),
``intermediate`` (``[epoch, value]``: the objective metric per epoch, mean over runs), ``metrics``
(every dev/train metric per epoch), ``budget`` (epochs the model has trained), ``budget_asked``,
``max_budget``, ``epochs_trained`` (epochs trained by this call: a resumed trial trains only the
difference), ``resumed_from``, ``seconds`` (training time over all calls), ``wall_seconds`` (this
call), ``device``, ``threads``, ``seeds``, ``runs`` (per run: status, epochs, best score, per-epoch
rows), ``reason`` (why it failed or was pruned) and timestamps.

States: ``completed`` when every run finished its training (``max_budget`` epochs, or stopped by
``patience`` or the minimum learning rate); ``pruned`` when it was paused at a budget below
``max_budget`` (a successive-halving rung: run again with a larger ``--budget`` and ``--resume`` and it
continues from its checkpoint) or stopped by medianstop; ``failed`` when training crashed, ran out
of memory or diverged (a non-finite loss or objective), with the reason.

Checkpoints: ``runs/<run>/search/checkpoints/<trial-id>/seed-<seed>.pt``, one per training run,
written every epoch. ``--resume`` continues from them (a promoted trial trains from its last epoch
to the new budget, so its epochs used equal the budget, not the sum of the budgets); without it a
leftover checkpoint of the same trial is replaced.

Exit codes: 0 the trial completed or was pruned; 1 the trial failed: its record (state ``failed``,
with the reason) is written first, and the non-zero exit makes Katib (and a pipeline task) mark the
trial Failed, while the local search, which calls :func:`run`, reads the record instead; 2 a usage or
config error (nothing trained, no record); 143 SIGTERM (a checkpoint is written; rerun with
``--resume``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

from kftune._version import __version__
from kftune.core.errors import ConfigError, Problem, TrainingInterrupted, TrialFailedError
from kftune.core.search_policy import SearchPolicy, TrialRequest, run_objective, spread_of
from kftune.io.journal import check_run_id, checkpoint_key
from kftune.core.space import SearchSpace
from kftune.core.spec import TuningJob
from kftune.steps._common import add_common_arguments, run_main

log = logging.getLogger(__name__)

EXIT_FAILED_TRIAL = 1
KINDS = ("trial", "finalist")
#: Per-epoch values every record keeps (fields of :class:`kftune.nlp.trainer.EpochResult`).
EPOCH_METRICS = ("dev_score", "dev_loss", "train_loss", "learning_rate")
#: Completed training statuses of :class:`kftune.nlp.trainer.FitResult`.
FINISHED = ("max_epochs", "early_stopped", "min_lr")


# --------------------------------------------------------------------------------------------------
# Config and result
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialConfig:
    """One trial: which assignment, for how many epochs, where its record and checkpoints go.

    ``assignment``: parameter name -> value, typed or as Katib strings (``"0.01"``); every search
    parameter must be set. ``budget``: epochs to train up to (default: the search's maximum budget).
    ``seeds``: training-run seeds (default ``train.seed, train.seed + 1, ...``, ``trainingRuns`` of
    them). ``kind`` ``finalist``: an extra run of a finalist; its record goes to
    ``runs/<run>/search/finalists/<trial-id>/seed-<seeds>.json``. ``index``/``round``/``promotion``
    are the search's bookkeeping, copied into the record. ``num_threads``: torch CPU threads (default:
    ``train.numThreads``, else torch's).
    """

    corpus: str
    store: str
    run_id: str
    trial_id: str
    assignment: Mapping[str, Any]
    spec: str | None = None
    budget: int | None = None
    resume: bool = False
    seeds: tuple[int, ...] | None = None
    kind: Literal["trial", "finalist"] = "trial"
    index: int | None = None
    round: int | None = None
    promotion: bool = False
    katib_stdout: bool = False
    num_threads: int | None = None
    show_progress: bool = True
    handle_signals: bool = False

    def problems(self) -> list[Problem]:
        out: list[Problem] = []
        for name, flag in (("corpus", "--corpus"), ("store", "--store"), ("run_id", "--run-id"),
                           ("trial_id", "--trial-id")):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                out.append(Problem(f"trial.{name}", f"missing: give {flag}"))
        for name in ("run_id", "trial_id"):
            value = getattr(self, name)
            if isinstance(value, str) and value.strip():
                try:
                    check_run_id(value, f"trial.{name}")
                except ConfigError as exc:
                    out.extend(Problem(f"trial.{name}", p.message) for p in exc.problems)
        if not isinstance(self.assignment, Mapping):
            out.append(Problem("trial.assignment", f"{self.assignment!r} is not a mapping of parameter names "
                                                   "to values; give --assignment '{\"learning_rate\": \"0.01\"}'"))
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, int)
                                        or self.budget < 1):
            out.append(Problem("trial.budget", f"{self.budget!r} must be a positive number of epochs"))
        if self.seeds is not None and (not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                                             for s in self.seeds)):
            out.append(Problem("trial.seeds", f"{self.seeds!r} must be one or more integers >= 0"))
        if self.kind not in KINDS:
            out.append(Problem("trial.kind", f"{self.kind!r} is not one of {', '.join(KINDS)}"))
        if self.num_threads is not None and (isinstance(self.num_threads, bool) or self.num_threads < 1):
            out.append(Problem("trial.num_threads", f"{self.num_threads!r} must be a positive integer"))
        return out


@dataclass(frozen=True)
class TrialResult:
    """The trial's record (see the module docstring) and where it was written."""

    record: dict[str, Any]
    key: str
    uri: str

    @property
    def state(self) -> str:
        return str(self.record["state"])

    @property
    def objective(self) -> float | None:
        return self.record.get("objective")

    @property
    def failed(self) -> bool:
        return self.state == "failed"


def config_for_request(request: Mapping[str, Any], *, corpus: str, store: str, run_id: str, spec: str | None = None,
                       **overrides: Any) -> TrialConfig:
    """The :class:`TrialConfig` that runs one request of a search round (a dict of
    :meth:`kftune.core.search_policy.TrialRequest.to_dict`, e.g. a pipeline's ParallelFor item):
    always with ``resume`` (a promotion continues from its checkpoint; a rerun request too)."""
    seeds = request.get("seeds")
    values: dict[str, Any] = {
        "corpus": corpus, "store": store, "run_id": run_id, "spec": spec, "trial_id": str(request["trial_id"]),
        "assignment": dict(request["assignment"]), "budget": int(request["budget"]), "resume": True,
        "seeds": tuple(int(x) for x in seeds) if seeds is not None else None,
        "kind": request.get("kind", "trial"), "index": request.get("index"), "round": request.get("round"),
        "promotion": bool(request.get("promotion", False)),
    }
    values.update(overrides)
    return TrialConfig(**values)


def run_planned(request: Any, *, corpus: str, store: str, run_id: str, job: TuningJob,
                **overrides: Any) -> TrialResult:
    """Run one request of a planned round (a :class:`~kftune.core.search_policy.TrialRequest`; a pipeline's
    trial task) with :func:`run`: resumed from its checkpoints, and (medianstop) judged against the trials
    its round's plan in the journal names, as ``kftune search`` judges it."""
    from kftune.io.journal import RunJournal

    journal = RunJournal.open(store, run_id)
    plan = journal.read(journal.round_key(request.round)) or {}
    ids = set(plan.get("judged") or ())
    judged = [t for t in journal.trials() if t.id in ids] if ids else []
    config = config_for_request(request.to_dict(), corpus=corpus, store=store, run_id=run_id,
                                **{"show_progress": False, **overrides})
    return run(config, job=job, store=journal.store, stop_history=judged)


@dataclass(frozen=True)
class ItemResult:
    """What a pipeline's trial task did with one loop item: ``summary`` (its output, the barrier's history
    entry: trial_id, kind, round, state, objective, budget, reason and the record's URI; or ``skip`` and the
    round), ``metrics`` for KFP's Metrics output and a ``note`` to print (a skipped round says why)."""

    summary: dict[str, Any]
    metrics: dict[str, float]
    note: str = ""
    result: TrialResult | None = None


def run_item(item: str | Mapping[str, Any], *, corpus: str, job: TuningJob) -> ItemResult:
    """Run one item of a round (suggest's output, as JSON or parsed): ``run_id``, ``store`` and a request run
    with :func:`run_planned`, or a ``skip`` (a round with nothing to train: a ParallelFor never runs over an
    empty list)."""
    data = json.loads(item) if isinstance(item, str) else dict(item)
    if data.get("skip"):
        return ItemResult(summary={"skip": True, "round": data.get("round")}, metrics={"skipped": 1},
                          note=f"round {data.get('round')}: nothing to train ({data.get('reason')})")
    request = TrialRequest.from_dict(data["request"])
    result = run_planned(request, corpus=corpus, store=data["store"], run_id=data["run_id"], job=job)
    record = result.record
    metrics = {"objective": record["objective"]} if record.get("objective") is not None else {}
    metrics["epochs"] = record.get("budget") or 0
    summary = {"trial_id": request.trial_id, "kind": request.kind, "round": request.round, "state": record["state"],
               "objective": record.get("objective"), "budget": record.get("budget"), "reason": record.get("reason"),
               "record": result.uri}
    return ItemResult(summary=summary, metrics=metrics, result=result)


# --------------------------------------------------------------------------------------------------
# Inputs: space, assignment, corpus
# --------------------------------------------------------------------------------------------------

def search_space_for(store: Any, run_id: str, job: TuningJob) -> SearchSpace:
    """The run's search space: ``runs/<run>/search/space.json`` when the search stored one (the spec's
    space narrowed by the LR range test), else the spec's ``parameters``."""
    from kftune.io.journal import RunJournal

    pinned = RunJournal(store, run_id).read_space()
    return pinned[0] if pinned is not None else SearchSpace.from_parameters(job.spec.search.parameters)


def typed_assignment(space: SearchSpace, raw: Mapping[str, Any], path: str = "trial.assignment") -> dict[str, Any]:
    """``raw`` (Katib strings or JSON values) as typed values in ``space``'s order; :class:`ConfigError`
    naming every missing, unknown or infeasible parameter."""
    problems: list[Problem] = []
    out: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            p = space[name]
        except KeyError:
            problems.append(Problem(f"{path}.{name}", f"not a search parameter; parameters: {', '.join(space.names)}"))
            continue
        try:
            if isinstance(value, bool):
                raise ValueError(f"{value!r} is a boolean")
            if isinstance(value, str):
                out[name] = p.parse(value.strip())
            elif p.type == "categorical":
                out[name] = p.parse(str(value))
            elif p.type == "int" and isinstance(value, float) and value.is_integer():
                out[name] = int(value)
            elif p.type == "double" and isinstance(value, int):
                out[name] = float(value)
            elif p.type == "discrete":
                out[name] = p.parse(repr(value))
            else:
                out[name] = value
        except (ValueError, ArithmeticError) as exc:
            problems.append(Problem(f"{path}.{name}", f"{value!r} does not read as {p.type}: {exc}"))
    for name in space.names:
        if name not in raw:
            problems.append(Problem(f"{path}.{name}", "missing: every search parameter needs a value"))
    if problems:
        raise ConfigError(problems)
    return space.check(out, path)


_CORPUS_CACHE: dict[str, tuple[dict[str, Any], Any, dict[str, list[Any]]]] = {}
_ENCODED_CACHE: dict[tuple[Any, ...], tuple[Any, Any, Any, Any]] = {}


def load_corpus(uri: str) -> tuple[dict[str, Any], Any, dict[str, list[Any]]]:
    """``(corpus.json, TaskInfo, {"train": [...], "dev": [...]})`` of the corpus step's output at ``uri``
    (a directory or store URI), cached per process. :class:`DataError` when it is not a corpus."""
    if uri in _CORPUS_CACHE:
        return _CORPUS_CACHE[uri]
    from kftune.io.store import open_store
    from kftune.nlp.data import read_corpus_from_store, task_from_corpus_info

    info, splits = read_corpus_from_store(open_store(uri), uri, ("train", "dev"))
    _CORPUS_CACHE.clear()  # one corpus per process is the common case; keep memory flat
    _CORPUS_CACHE[uri] = (info, task_from_corpus_info(info), splits)
    return _CORPUS_CACHE[uri]


def _encoded(uri: str, task: Any, splits: dict[str, list[Any]], hp: Any) -> tuple[Any, Any, Any, Any]:
    """(encoder, train data, dev data, pretrained weights) for ``hp``'s encoding settings, cached."""
    from kftune.io.store import open_store
    from kftune.nlp.embeddings import encode_corpus, encoding_key

    # a pool worker runs many trials: a searched n-gram or casing setting must not reuse an earlier trial's encoding
    key = (uri, *encoding_key(hp))
    if key not in _ENCODED_CACHE:
        encoder, train, dev, weights = encode_corpus(task, splits["train"], splits["dev"], hp, open_store=open_store)
        while len(_ENCODED_CACHE) >= 4:
            _ENCODED_CACHE.pop(next(iter(_ENCODED_CACHE)))
        _ENCODED_CACHE[key] = (encoder, train, dev, weights)
    return _ENCODED_CACHE[key]


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _failure_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, TrialFailedError):
        return text
    oom = isinstance(exc, MemoryError) or "out of memory" in text.lower()
    try:
        import torch

        oom = oom or isinstance(exc, torch.OutOfMemoryError)
    except (ImportError, AttributeError):
        pass
    if oom:
        return f"out of memory: {text}"
    if isinstance(exc, ConfigError):
        return f"the assignment cannot be trained: {text}"
    return f"{type(exc).__name__}: {text}"


def _mean_by_epoch(runs: Sequence[Sequence[Mapping[str, Any]]], name: str) -> list[list[float]]:
    """``[[epoch, mean over runs of name at that epoch], ...]`` over the epochs any run reached."""
    by_epoch: dict[int, list[float]] = {}
    for rows in runs:
        for row in rows:
            by_epoch.setdefault(int(row["epoch"]), []).append(float(row[name]))
    return [[e, sum(v) / len(v)] for e, v in sorted(by_epoch.items())]


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _sigterm_flag(enabled: bool) -> Iterator[Callable[[], bool]]:
    event = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield event.is_set
        return

    def handler(signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: writing a checkpoint, then exiting (rerun with --resume)")
        event.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield event.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(config: TrialConfig, *, job: TuningJob | None = None, store: Any = None,
        stop_history: Sequence[Any] = (), sinks: Any = None,
        stop_requested: Callable[[], bool] | None = None) -> TrialResult:
    """Train the trial ``config`` describes and write its record (see the module docstring).

    ``job``: the parsed spec (else ``config.spec`` is read). ``store``: the artifact store (else
    ``config.store`` is opened). ``stop_history``: the trials (:class:`kftune.core.trials.Trial`) a
    ``medianstop`` search judges this one against (its completed ones). ``sinks``: metrics sink (else
    :func:`~kftune.io.metrics.sinks_from_env`). ``stop_requested``: polled after every optimizer step;
    ``True`` checkpoints and raises :class:`~kftune.core.errors.TrainingInterrupted`.

    A failed trial is returned (state ``failed``), not raised. Raised: :class:`ConfigError` for a bad
    config or assignment (nothing is written), :class:`DataError` for a corpus that cannot be read,
    ``TrainingInterrupted`` and store errors.
    """
    problems = config.problems()
    if problems:
        raise ConfigError(problems)
    if job is None:
        if not config.spec:
            raise ConfigError([Problem("trial.spec", "missing: give --spec with the TuningJob spec")])
        from kftune.io.specfile import load_spec

        job = load_spec(config.spec)
    from kftune.io.journal import RunJournal
    from kftune.io.store import get_json, open_store

    store = store if store is not None else open_store(config.store)
    journal = RunJournal(store, config.run_id)
    space = search_space_for(store, config.run_id, job)
    policy = SearchPolicy(job=job, space=space, seed=job.spec.train.seed)
    policy.check()
    assignment = typed_assignment(space, config.assignment)
    max_budget = policy.max_budget
    budget = config.budget if config.budget is not None else max_budget
    if budget > max_budget:
        raise ConfigError([Problem("trial.budget", f"{budget} epochs is more than the search's maximum budget "
                                                   f"({max_budget}: the halving rule's max_budget or train.maxEpochs)")])
    seeds = tuple(config.seeds) if config.seeds is not None else policy.training_seeds
    key = journal.record_key(config.trial_id, config.kind, seeds)
    info, task, splits = load_corpus(config.corpus)
    if task.type != job.spec.task.type:
        raise ConfigError([Problem("spec.task.type", f"{job.spec.task.type}, but the corpus at {config.corpus} "
                                                     f"holds {task.type} data")])
    previous: dict[str, Any] = {}
    if config.resume and store.exists(key):
        try:
            previous = get_json(store, key)
        except (ValueError, UnicodeDecodeError):
            previous = {}
    index = config.index if config.index is not None else previous.get("index")
    record: dict[str, Any] = {
        **previous,
        "id": config.trial_id, "kind": config.kind, "index": index, "round": config.round,
        "run_id": config.run_id, "assignment": assignment, "state": "running", "reason": None,
        "objective_metric": policy.metric, "objective_type": policy.objective_type,
        "budget_asked": budget, "max_budget": max_budget, "seeds": list(seeds), "promotion": config.promotion,
        "started_at": _now(), "finished_at": None, "kftune_version": __version__,
    }
    record.setdefault("objective", None)
    record.setdefault("intermediate", [])
    record.setdefault("budget", 0)
    journal.write(key, record)

    from kftune.io.metrics import sinks_from_env

    own_sink = sinks is None
    sink = sinks if sinks is not None else sinks_from_env("trial", run_id=config.run_id, trial=config.trial_id,
                                                          katib_stdout=config.katib_stdout)
    started = time.perf_counter()
    try:
        with _threads(config.num_threads or job.spec.train.num_threads), \
                _sigterm_flag(config.handle_signals) as sigterm:
            stop = sigterm if stop_requested is None else (lambda: sigterm() or stop_requested())
            outcome = _train(config, job, policy, store, task, splits, assignment, budget, seeds, sink,
                             stop_history, stop)
        record.update(outcome)
        record["wall_seconds"] = round(time.perf_counter() - started, 3)
        record["finished_at"] = _now()
        journal.write(key, record)
        final: dict[str, float] = {"trial_epochs": float(record["budget"])}
        if record["state"] != "failed" and record["objective"] is not None:
            final = {policy.metric: record["objective"], "trial_objective": record["objective"], **final}
        sink.log(final, step=None)
    finally:
        if own_sink:
            sink.close()
    level = logging.WARNING if record["state"] == "failed" else logging.INFO
    log.log(level, "trial %s %s after %d epochs: objective %s%s", config.trial_id, record["state"], record["budget"],
            "none" if record["objective"] is None else f"{record['objective']:.4f}",
            f" ({record['reason']})" if record.get("reason") else "")
    return TrialResult(record=record, key=key, uri=store.uri_for(key))


def _train(config: TrialConfig, job: TuningJob, policy: SearchPolicy, store: Any, task: Any,
           splits: dict[str, list[Any]], assignment: Mapping[str, Any], budget: int, seeds: Sequence[int],
           sink: Any, stop_history: Sequence[Any], stop_requested: Callable[[], bool]) -> dict[str, Any]:
    """Train every run; return the record fields of the outcome (a failure is an outcome, not an error)."""
    import torch

    from kftune.core.trials import Trial
    from kftune.io.store import open_store
    from kftune.nlp.checkpoint import CheckpointStore, seed_everything
    from kftune.nlp.config import settings_from_job
    from kftune.nlp.models import build_model
    from kftune.nlp.trainer import Trainer, resolve_device

    metric = policy.metric
    names = [metric] + [m for m in job.spec.search.objective.additional_metric_names if m != metric]
    unknown = [m for m in names if m not in EPOCH_METRICS]
    if unknown:
        log.warning("metrics %s are not per-epoch training metrics (%s); not reported", unknown, EPOCH_METRICS)
        names = [m for m in names if m in EPOCH_METRICS]
    device = resolve_device(job.spec.train.device)
    out: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads()}
    runs: list[dict[str, Any]] = []
    trained = 0
    resumed_from: list[int] = []
    rule = policy.median_stop
    judged = [t for t in stop_history if getattr(t, "state", None) == "completed"]

    def running_trial(rows: Sequence[Any]) -> Any:
        return Trial(id=config.trial_id, assignment=dict(assignment), state="running",
                     intermediate=tuple((r.epoch, float(getattr(r, metric))) for r in rows))

    try:
        hp, tcfg = settings_from_job(job, task.type, assignment=assignment, path="trial.hyperparameters")
        tcfg = dataclasses.replace(tcfg, max_epochs=policy.max_budget)
        encoder, train_data, dev_data, weights = _encoded(config.corpus, task, splits, hp)
        for k, seed in enumerate(seeds, 1):
            seed_everything(seed)
            model = build_model(task.type, hp, encoder, pretrained_weights=weights,
                                storage_mode=tcfg.embeddings_storage_mode, open_store=open_store)
            checkpoints = CheckpointStore(store, checkpoint_key(config.run_id, config.trial_id, seed))
            if not config.resume and checkpoints.exists():
                log.info("trial %s seed %d: replacing a leftover checkpoint (pass --resume to continue from it)",
                         config.trial_id, seed)
                checkpoints.delete()
            new_epochs: list[int] = []
            trainer: Trainer

            def on_epoch_end(epoch: int, result: Any, _k: int = k) -> bool:
                new_epochs.append(epoch)
                values = {m: float(getattr(result, m)) for m in names}
                values.update({"train_loss": result.train_loss, "learning_rate": result.learning_rate,
                               "epoch_seconds": result.seconds})
                sink.log(values, step=epoch if len(seeds) == 1 else (_k - 1) * policy.max_budget + epoch)
                if rule is not None and _k == 1:
                    return rule.should_stop(running_trial(trainer.history), judged, policy.objective_type)
                return False

            trainer = Trainer(model, encoder, train_data, dev_data, hp, tcfg, seed=seed, run=k, device=device,
                              callbacks=[on_epoch_end], checkpoints=checkpoints, stop_requested=stop_requested,
                              show_progress=config.show_progress)
            fit = trainer.fit(until_epoch=budget, resume=config.resume)
            trained += len(new_epochs)
            resumed_from.append(fit.epochs - len(new_epochs))
            rows = [h.to_dict() for h in fit.history]
            values = [float(r[metric]) for r in rows]
            objective, variance = run_objective(values) if values else (math.nan, math.nan)
            if not math.isfinite(objective):
                raise TrialFailedError(f"run with seed {seed}: the objective ({metric}) is {objective}; "
                                       f"the dev values were {values}")
            reason = None
            if fit.status == "stopped":
                reason = (rule.decide(running_trial(fit.history), judged, policy.objective_type).reason
                          if rule is not None else "stopped by a callback")
            runs.append({"seed": seed, "status": fit.status, "epochs": fit.epochs, "best_score": fit.best_score,
                         "best_epoch": fit.best_epoch, "objective": objective, "variance": variance,
                         "seconds": round(fit.seconds, 3), "reason": reason,
                         "history": [{k2: r[k2] for k2 in ("epoch", "train_loss", "dev_loss", "dev_score",
                                                           "learning_rate", "seconds")} for r in rows]})
            del model, trainer
            if fit.status == "stopped":
                break  # medianstop: the remaining runs are not worth training
    except TrainingInterrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - every training failure is recorded, not raised
        if isinstance(exc, OSError):
            raise  # the store or the disk, not the trial
        reason = _failure_reason(exc)
        log.warning("trial %s failed: %s", config.trial_id, reason,
                    exc_info=not isinstance(exc, (TrialFailedError, ConfigError)))
        out.update({"state": "failed", "reason": reason, "objective": None, "objective_runs": [],
                    "objective_spread": None, "objective_variance": None, "epochs_trained": trained,
                    "resumed_from": resumed_from, "runs": runs,
                    "budget": max([r["epochs"] for r in runs], default=0),
                    "seconds": round(sum(r["seconds"] for r in runs), 3),
                    "intermediate": _mean_by_epoch([r["history"] for r in runs], metric),
                    "metrics": {m: _mean_by_epoch([r["history"] for r in runs], m) for m in EPOCH_METRICS}})
        return out
    objectives = [r["objective"] for r in runs]
    epochs_used = max(r["epochs"] for r in runs)
    stopped = [r for r in runs if r["status"] == "stopped"]
    if stopped:
        state, reason = "pruned", stopped[0]["reason"]
    elif all(r["status"] in FINISHED for r in runs) or epochs_used >= policy.max_budget:
        state, reason = "completed", None
    else:
        state = "pruned"
        reason = (f"paused after {budget} of {policy.max_budget} epochs (a successive-halving rung); it continues "
                  "from its checkpoint when promoted")
    histories = [r["history"] for r in runs]
    out.update({
        "state": state, "reason": reason, "objective": sum(objectives) / len(objectives),
        "objective_runs": objectives, "objective_spread": spread_of(objectives),
        "objective_variance": statistics.fmean(r["variance"] for r in runs),
        "intermediate": _mean_by_epoch(histories, metric),
        "metrics": {m: _mean_by_epoch(histories, m) for m in EPOCH_METRICS},
        "budget": epochs_used, "epochs_trained": trained, "resumed_from": resumed_from,
        "seconds": round(sum(r["seconds"] for r in runs), 3), "runs": runs,
    })
    return out


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers (e.g. 4,5)") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kftune trial",
        description="Train one assignment for a budget of epochs with the training core and write its trial record "
                    "(runs/<run>/search/trials/<trial>.json) to the store; prints Katib metric lines. "
                    "Exit 0: completed or pruned; 1: the trial failed (record written); 2: bad input.")
    p.add_argument("--spec", required=True, help="the TuningJob spec (model defaults, train settings, search)")
    p.add_argument("--corpus", required=True, help="the output of `kftune corpus` (directory or store URI)")
    p.add_argument("--store", required=True, help="artifact store root (directory or s3://bucket/prefix)")
    p.add_argument("--run-id", required=True, help="the run: objects go under runs/<run-id>/search/")
    p.add_argument("--trial-id", required=True, help="the trial's id (Katib: ${trialSpec.Name})")
    p.add_argument("--assignment", help='parameter values as a JSON object, e.g. \'{"learning_rate": "0.01"}\'')
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="one parameter value (repeatable; Katib: --param learning_rate=${trialParameters.lr})")
    p.add_argument("--budget", type=int, help="epochs to train up to (default: the search's maximum budget)")
    p.add_argument("--resume", action="store_true", help="continue from the trial's checkpoints (a promotion)")
    p.add_argument("--seeds", type=_seeds, help="training-run seeds, e.g. 4,5 (default: train.seed, +1, ...)")
    p.add_argument("--finalist", action="store_true",
                   help="an extra run of a finalist: the record goes to runs/<run>/search/finalists/")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: train.numThreads, else torch's)")
    p.add_argument("--no-katib-stdout", dest="katib_stdout", action="store_false",
                   help="do not print Katib metric lines on stdout")
    add_common_arguments(p)
    return p


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    """The :class:`TrialConfig` a command line describes (``--assignment`` and ``--param`` merged)."""
    assignment: dict[str, Any] = {}
    problems: list[Problem] = []
    if args.assignment:
        try:
            parsed = json.loads(args.assignment)
        except json.JSONDecodeError as exc:
            parsed = None
            problems.append(Problem("--assignment", f"not valid JSON ({exc.msg}); give an object such as "
                                                    "'{\"learning_rate\": \"0.01\"}'"))
        if parsed is not None and not isinstance(parsed, dict):
            problems.append(Problem("--assignment", f"{args.assignment!r} is not a JSON object"))
        elif parsed is not None:
            assignment.update(parsed)
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            problems.append(Problem("--param", f"{item!r} is not NAME=VALUE (e.g. learning_rate=0.01)"))
        else:
            assignment[name.strip()] = value.strip()
    if not args.assignment and not args.param:
        problems.append(Problem("--assignment", "missing: give --assignment JSON or --param NAME=VALUE"))
    if problems:
        raise ConfigError(problems)
    return TrialConfig(corpus=args.corpus, store=args.store, run_id=args.run_id, trial_id=args.trial_id,
                       assignment=assignment, spec=args.spec, budget=args.budget, resume=args.resume,
                       seeds=args.seeds, kind="finalist" if args.finalist else "trial",
                       katib_stdout=args.katib_stdout, num_threads=args.threads, handle_signals=True)


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        result = run(config_from_args(args))  # SIGTERM: run_main maps TrainingInterrupted to exit 143
        r = result.record
        # JSON, not name=value text: Katib reads stdout and must see the objective only once
        print(json.dumps({"trial": r["id"], "state": r["state"], "objective": r["objective"],
                          "spread": r.get("objective_spread"), "epochs": r["budget"], "reason": r.get("reason"),
                          "record": result.uri}))
        return EXIT_FAILED_TRIAL if result.failed else 0

    return run_main(body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
