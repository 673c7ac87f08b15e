"""``kftune search``: the hyperparameter search, run locally or inside one pod, resumable.

Round by round (:mod:`kftune.core.search_policy` decides; this module runs; :class:`kftune.io.journal.RunJournal`
stores), the loop plans a round with the planner rule the pipeline's ``suggest`` step uses
(:meth:`~kftune.core.search_policy.SearchPolicy.plan_round`: new trials from the sampler and the
promotions successive halving or ASHA makes, at most ``max(parallelTrialCount, ceil(remaining / rounds
left))`` of them, over the :meth:`~kftune.core.search_policy.SearchPolicy.rounds_needed` rounds the pipeline
would be compiled with for this spec), runs them as :func:`kftune.steps.trial.run` in a process pool
(``forkserver``, torch preloaded; ``parallel`` at a time, each trial with ``max(1, cores // parallel)`` CPU
threads unless ``train.numThreads`` says otherwise), reads the trial records back and plans the next round.
So for the same spec and results it proposes the same trials in the same rounds as ``kftune run``. It stops
at ``maxTrialCount``, at the objective's goal, when the sampler is exhausted, after its rounds (ASHA
promotions still pending then are not run, as in the pipeline), or after ``maxFailedTrialCount`` failed
trials (the search then fails, as Katib marks the Experiment, but its outputs are written). Then the top
``finalists`` completed trials are re-trained with extra seeds (the finalists' round, numbered after the
search's rounds) and the winner is chosen on the mean over ``finalistRuns`` seeds.

Resumable: every object lives under ``runs/<run>/search/`` in the store. Each round's plan is
written (``rounds/round-NNNN.json``) before its trials start, and each trial writes its own record
(``trials/<trial>.json``) and checkpoints (``checkpoints/<trial>/seed-<seed>.pt``). Rerun with the
same ``--store`` and ``--run-id`` after a kill at any point, and the search re-reads what is there: it
finishes the interrupted round (a trial that was running resumes from its last checkpoint; a
finished one is not touched), then plans the following rounds from the same history, so it runs no
completed trial again and ends with the same result as an uninterrupted run. The spec, the sampler
seed, the parallelism, the number of rounds and the (possibly narrowed) search space are pinned at the
first start (``spec.yaml``, ``settings.json``, ``space.json``); a rerun with a different spec is refused.

LR range test hand-off: ``--lr-find URI`` (the ``kftune lr-find`` output or its ``result.json``)
replaces the ``feasibleSpace`` of ``lrRangeTest.applyTo`` by the suggested range
(:func:`kftune.core.lr_handoff.apply_lr_range`); the note is kept in ``space.json`` and ``best.json``.

Outputs under ``runs/<run>/search/``: ``trials.tsv`` (one row per trial, like Flair's
``param_selection.txt``), ``trials.json`` (every record), ``best.json`` (the winner: assignment,
objective mean and spread over seeds, the finalists, why the search stopped; the schema the pipeline's
select-best writes, :func:`kftune.core.search_policy.best_record`), ``objective.png``
(objective per trial with the best-so-far line), ``parameters.png`` (each parameter against the
objective), ``summary.md``/``summary.html``, and ``result.json`` (written last: its presence marks a
finished search). Metrics go to :func:`kftune.io.metrics.sinks_from_env` (step ``search``): the
counter ``trials{state}`` (once per trial, when its state is final), gauges ``best_objective``,
``trials_created`` and ``search_epochs``; each trial pushes ``trial_objective`` and ``trial_epochs``
in its own group. Checkpoints are deleted at the end unless ``--keep-checkpoints``.

One driver per run: the search holds a lease on the run (``runs/<run>/search/lease.json``,
:mod:`kftune.io.lease`) from its start to its end, renewed in the background every ``KFTUNE_LEASE_TTL / 4``
seconds (default TTL 120 s). A second ``kftune search`` on the same store and run id refuses with exit code 3,
naming the holder (host, pid, since, expiry) and what to do; ``--wait`` waits for the run to be free instead;
a lease whose holder was a process on this machine that is gone (a ``kill -9``) is taken over at once, one
whose holder is elsewhere and stopped renewing it is taken over after it expired with ``--take-over`` (or
``--wait``). A driver that loses its lease stops and kills its trial processes (exit 3; exit 1 when it could
not renew the lease because the store was unreachable). A resumed search re-runs, from their checkpoints, the
trials whose records a dead driver left ``running`` (the rounds that planned them say how), and it never
reports a search finished while a record still says ``running``.

Exit codes: 0 the search finished; 1 it stopped at ``maxFailedTrialCount`` (outputs written) or a
runtime error (an unreachable store: one error naming the operation, the object and the endpoint, after
``KFTUNE_S3_RETRIES`` retries); 2 a usage or config error; 3 another driver holds the run (or took it over).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

from kftune.core.errors import ArtifactNotFoundError, ConfigError, DataError, KftuneError, Problem
from kftune.core.search_policy import SearchPolicy, TrialRequest, Winner, best_record, search_epochs
from kftune.core.space import SearchSpace
from kftune.core.spec import TuningJob
from kftune.core.trials import Trial, sign
from kftune.io.journal import RunJournal, check_run_id
from kftune.steps._common import add_common_arguments, run_main

log = logging.getLogger(__name__)

EXECUTORS = ("process", "inline")
OUTPUT_FILES = ("trials.tsv", "trials.json", "best.json", "objective.png", "parameters.png", "summary.md",
                "summary.html", "result.json")
DIED = ("the trial's process died (killed by the system, e.g. out of memory, or crashed) twice, the second "
        "time alone")


# --------------------------------------------------------------------------------------------------
# Config and result
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchConfig:
    """One search. ``run_id`` defaults to the spec's ``metadata.name``; ``seed`` (the sampler's) to
    ``train.seed``; ``parallel`` overrides ``parallelTrialCount``. ``executor`` ``inline`` runs the
    trials one after another in this process (debugging, tests) instead of a process pool.
    ``take_over``: take the run over from a driver whose lease expired; ``wait``: wait while another driver
    holds the run, then continue it; ``lease_ttl``: the lease's time to live in seconds (default
    ``KFTUNE_LEASE_TTL``, else 120)."""

    spec: str
    corpus: str
    store: str
    run_id: str | None = None
    seed: int | None = None
    lr_find: str | None = None
    parallel: int | None = None
    executor: Literal["process", "inline"] = "process"
    keep_checkpoints: bool = False
    show_progress: bool = True
    take_over: bool = False
    wait: bool = False
    lease_ttl: float | None = None

    def problems(self) -> list[Problem]:
        out = []
        for name, flag in (("spec", "--spec"), ("corpus", "--corpus"), ("store", "--store")):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                out.append(Problem(f"search.{name}", f"missing: give {flag}"))
        if self.run_id is not None:
            try:
                check_run_id(self.run_id)
            except ConfigError as exc:
                out.extend(Problem("search.run_id", p.message) for p in exc.problems)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            out.append(Problem("search.seed", f"{self.seed!r} must be an integer >= 0"))
        if self.parallel is not None and (isinstance(self.parallel, bool) or not isinstance(self.parallel, int)
                                          or self.parallel < 1):
            out.append(Problem("search.parallel", f"{self.parallel!r} must be a positive integer"))
        if self.executor not in EXECUTORS:
            out.append(Problem("search.executor", f"{self.executor!r} is not one of {', '.join(EXECUTORS)}"))
        if self.lease_ttl is not None:
            from kftune.io.lease import MAX_TTL_S, MIN_TTL_S

            if isinstance(self.lease_ttl, bool) or not isinstance(self.lease_ttl, (int, float)) \
                    or not MIN_TTL_S <= self.lease_ttl <= MAX_TTL_S:
                out.append(Problem("search.lease_ttl", f"{self.lease_ttl!r} must be a number of seconds from "
                                                       f"{MIN_TTL_S:g} to {MAX_TTL_S:g}"))
        return out


@dataclass(frozen=True)
class SearchResult:
    """What a search produced. ``status`` ``succeeded`` or ``failed`` (``maxFailedTrialCount`` reached);
    ``stop_reason`` failures | goal | max_trials | exhausted; ``best`` the winner
    (:meth:`kftune.core.search_policy.Winner.to_dict`, ``None`` when no trial has a result);
    ``trials`` counts by state; ``search_epochs`` the training epochs the search's trials used (all
    runs), ``finalist_epochs`` those of the finalist re-runs."""

    run_id: str
    status: Literal["succeeded", "failed"]
    stop_reason: str
    best: dict[str, Any] | None
    trials: dict[str, int]
    rounds: int
    search_epochs: int
    finalist_epochs: int
    seconds: float
    objective_metric: str
    objective_type: str
    outputs: dict[str, str] = field(default_factory=dict)
    lr_range: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Store helpers
# --------------------------------------------------------------------------------------------------

def _read_json_uri(uri: str) -> Any:
    """A JSON document at a path or store URI; a directory (or prefix) means its ``result.json``."""
    from kftune.io.store import get_json, open_store

    text = uri.removeprefix("file://")
    if "://" not in text and os.path.isdir(text):
        text = os.path.join(text, "result.json")
    if not text.endswith(".json"):
        text = text.rstrip("/") + "/result.json"
    root, _, key = text.rpartition("/")
    try:
        return get_json(open_store(root or "."), key)
    except ArtifactNotFoundError as exc:
        raise ConfigError([Problem("search.lr_find", f"{uri}: no such file; give the output of `kftune lr-find` "
                                                     "or its result.json")]) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{uri}: not valid JSON ({exc})") from None


def _pin(journal: RunJournal, job: TuningJob, config: SearchConfig) -> dict[str, int]:
    """Write (first start) or compare (rerun) the spec and settings; return the settings: ``seed``,
    ``parallel`` and (once the policy is known, :func:`_run_holding`) ``rounds``."""
    from kftune.io.specfile import dump_spec

    text = dump_spec(job)
    pinned_text = journal.spec_text()
    if pinned_text is not None and pinned_text != text:
        raise ConfigError([Problem("search.spec", f"run {journal.run_id!r} was started with another spec "
                                                  f"({journal.uri(journal.key('spec.yaml'))}); rerun with that spec "
                                                  "to resume it, or give a new --run-id")])
    wanted = {"seed": config.seed if config.seed is not None else job.spec.train.seed,
              "parallel": config.parallel or job.spec.search.parallel_trial_count}
    pinned = journal.settings()
    if pinned is not None:
        for name, flag in (("seed", "--seed"), ("parallel", "--parallel")):
            given = config.seed if name == "seed" else config.parallel
            if given is not None and given != pinned.get(name):
                raise ConfigError([Problem(f"search.{name}", f"{given} differs from the {pinned.get(name)} this run "
                                                             f"started with; drop {flag} to resume it, or give a "
                                                             "new --run-id")])
        wanted = {k: int(v) for k, v in pinned.items() if k in ("seed", "parallel", "rounds")}
    else:
        journal.write_settings(wanted)
    if pinned_text is None:
        journal.write_spec_text(text)
    return wanted


def prepare_space(journal: RunJournal, job: TuningJob,
                  lr_find: str | None = None) -> tuple[SearchSpace, dict[str, Any] | None]:
    """The run's search space and the LR range test's note: read from ``runs/<run>/search/space.json``
    when the run has one, else built from the spec (narrowed by the ``kftune lr-find`` output
    ``lr_find`` when given) and written there, so that every later trial (``kftune trial``, a
    pipeline's trial task, a Katib trial of this run) validates its assignment against it."""
    pinned = journal.read_space()
    if pinned is not None:
        return pinned
    params = job.spec.search.parameters
    note = None
    notes: list[str] = []
    if lr_find:
        from kftune.core.lr_handoff import apply_lr_range

        params, note = apply_lr_range(params, _read_json_uri(lr_find), job.spec.lr_range_test.apply_to)
        note = {**note, "source": lr_find}
        notes.append(str(note.get("reason")))
        log.info("LR range test hand-off: %s", note.get("reason"))
    space = SearchSpace.from_parameters(params)
    space = SearchSpace(space.parameters, tuple(notes))
    journal.write_space(space, note)
    return space, note


def _check_corpus(uri: str, task_type: str) -> None:
    """Fail before any trial when the corpus is missing or holds another task (no torch import)."""
    from kftune.io.store import get_json, open_store

    store = open_store(uri)
    try:
        info = get_json(store, "corpus.json")
    except ArtifactNotFoundError as exc:
        raise ConfigError([Problem("search.corpus", f"{uri}: no corpus.json; give the output of `kftune corpus`")]) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{store.uri_for('corpus.json')}: not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("task") != task_type:
        task = info.get("task") if isinstance(info, dict) else None
        raise ConfigError([Problem("spec.task.type", f"{task_type}, but the corpus at {uri} holds {task!r} data")])


# --------------------------------------------------------------------------------------------------
# Running requests: a process pool, or inline
# --------------------------------------------------------------------------------------------------

_PARENT_PID: int | None = None
_JOBS: dict[str, TuningJob] = {}


def _init_worker(level: int) -> None:
    """Process-pool initializer: logging, and the parent's pid (a worker whose search died stops)."""
    global _PARENT_PID
    _PARENT_PID = os.getppid()
    os.environ.setdefault("KFTUNE_PROGRESS", "log")
    from kftune.steps._common import setup_logging

    setup_logging()
    logging.getLogger().setLevel(level)


def _parent_gone() -> bool:
    return _PARENT_PID is not None and os.getppid() != _PARENT_PID


def run_request(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Run one request in this process (the pool's task function): returns the trial record."""
    from kftune.core.spec import parse_spec
    from kftune.steps import trial

    job_text = payload["job"]
    if job_text not in _JOBS:
        _JOBS.clear()
        _JOBS[job_text] = parse_spec(json.loads(job_text))
    history = [Trial.from_dict(d) for d in payload["stop_history"]]
    config: trial.TrialConfig = payload["trial"]
    return trial.run(config, job=_JOBS[job_text], stop_history=history,
                     stop_requested=_parent_gone if _PARENT_PID is not None else None).record


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: Modules the forkserver imports once, so that every trial process forks with them loaded (torch.optim
#: imports torch._dynamo when the first optimizer is built: seconds per fresh process).
PRELOAD = ("torch", "torch._dynamo", "kftune.steps.trial", "kftune.nlp.trainer", "kftune.nlp.models",
           "kftune.core.samplers")


class Runner:
    """Runs payloads with ``task`` in ``workers`` processes, or inline (one after another, here).

    A process that dies (killed by the kernel for memory, a segfault) breaks the pool: the payloads
    that were in flight are run again one at a time in a fresh pool, so an innocent trial does not
    die with the culprit; one that dies again, alone, gets ``None`` (the caller records it failed).
    Other exceptions propagate.

    ``check`` (the run lease's) is called every :data:`CHECK_S` seconds while trials run, and before each
    inline trial; when it raises, the pool's processes are killed and the exception propagates.
    """

    CHECK_S = 0.5

    def __init__(self, executor: str, workers: int, task: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
                 preload: Sequence[str] = PRELOAD, check: Callable[[], None] | None = None):
        self.executor, self.workers = executor, workers
        self.task = task or run_request
        self.preload = list(preload)
        self.check = check
        self.pool: ProcessPoolExecutor | None = None

    def _start(self) -> ProcessPoolExecutor:
        if self.pool is None:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            ctx = multiprocessing.get_context(method)
            if method == "forkserver":
                ctx.set_forkserver_preload(self.preload)
            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_init_worker,
                                            initargs=(logging.getLogger().getEffectiveLevel(),))
        return self.pool

    def _restart(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def kill(self) -> None:
        """Stop the pool now: terminate its processes (their trials stay ``running`` in the journal)."""
        pool, self.pool = self.pool, None
        if pool is None:
            return
        terminate = getattr(pool, "terminate_workers", None)  # Python 3.14
        if callable(terminate):
            terminate()
            return
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)

    def _result(self, future: Future) -> dict[str, Any]:
        if self.check is None:
            return future.result()
        while True:
            try:
                return future.result(timeout=self.CHECK_S)
            except FutureTimeout:
                pass
            try:
                self.check()
            except BaseException:
                self.kill()
                raise

    def run(self, payloads: Sequence[Mapping[str, Any]]) -> list[dict[str, Any] | None]:
        """Records in ``payloads`` order; ``None`` for a payload whose process died twice."""
        if self.executor == "inline":
            out = []
            for p in payloads:
                if self.check is not None:
                    self.check()
                out.append(self.task(p))
            return out
        results: list[dict[str, Any] | None] = [None] * len(payloads)
        pool = self._start()
        futures: dict[Future, int] = {pool.submit(self.task, p): i for i, p in enumerate(payloads)}
        broken: list[int] = []
        for f, i in futures.items():
            try:
                results[i] = self._result(f)
            except BrokenProcessPool:
                broken.append(i)
        for i in broken:  # one at a time, so that an innocent trial does not die with the culprit
            self._restart()
            log.warning("a trial process died; running trial %s again, alone",
                        getattr(payloads[i].get("trial"), "trial_id", "?"))
            try:
                results[i] = self._result(self._start().submit(self.task, payloads[i]))
            except BrokenProcessPool:
                self._restart()
                results[i] = None
        return results


# --------------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------------

class _Search:
    """The state of one ``run()``: store, policy, runner, metrics, progress."""

    def __init__(self, config: SearchConfig, job: TuningJob, store: Any, run_id: str, policy: SearchPolicy,
                 runner: Runner, threads: int, sink: Any):
        self.config, self.job, self.journal, self.run_id = config, job, RunJournal(store, run_id), run_id
        self.policy, self.runner, self.threads, self.sink = policy, runner, threads, sink
        self.job_text = json.dumps(_job_dict(job), sort_keys=True)
        self.counted: dict[str, str] = {}

    def payload(self, request: TrialRequest, judged: Sequence[Trial]) -> dict[str, Any]:
        from kftune.steps.trial import config_for_request

        config = config_for_request(request.to_dict(), corpus=self.config.corpus, store=self.config.store,
                                    run_id=self.run_id, katib_stdout=False, num_threads=self.threads,
                                    show_progress=False)
        return {"job": self.job_text, "stop_history": [t.to_dict() for t in judged], "trial": config}

    def done(self, request: TrialRequest) -> bool:
        """Whether the request's record shows it finished (any state but running, at its budget)."""
        return self.journal.done(request)

    def execute(self, requests: Sequence[TrialRequest], judged: Sequence[Trial] = ()) -> None:
        """Run the requests that are not done; a request whose process died twice is recorded failed.
        ``judged``: the completed trials medianstop compares these trials with."""
        todo = [r for r in requests if not self.done(r)]
        skipped = len(requests) - len(todo)
        if skipped:
            log.info("round %d: %d of %d trial(s) already done (resumed search)", requests[0].round, skipped,
                     len(requests))
        if not todo:
            return
        results = self.runner.run([self.payload(r, judged) for r in todo])
        for request, record in zip(todo, results):
            if record is not None:
                continue
            try:
                rec = self.journal.read_record(request) or {}
            except DataError:
                rec = {}
            rec.update({"id": request.trial_id, "kind": request.kind, "index": request.index,
                        "assignment": dict(request.assignment), "round": request.round, "state": "failed",
                        "reason": DIED, "objective": None, "budget_asked": request.budget,
                        "budget": rec.get("budget", 0), "seeds": list(request.seeds or self.policy.training_seeds)})
            rec.setdefault("intermediate", [])
            self.journal.write(self.journal.request_key(request), rec)
            log.warning("trial %s failed: %s", request.trial_id, DIED)

    def stale(self, history: Sequence[Trial], rounds: Sequence[Mapping[str, Any]]) -> list[list[TrialRequest]]:
        """The trials whose records say ``running`` although no driver runs them (this one holds the lease):
        left by a driver that was killed. Each comes back as the latest request that planned it, grouped by
        round, so that :meth:`execute` resumes it from its checkpoint with that round's budget. A running
        record that no round of this search planned is another program's (``kftune trial``, a pipeline):
        :class:`DataError`, rather than a search that ends with it still running."""
        running = {t.id for t in history if t.state == "running"}
        if not running:
            return []
        latest: dict[str, tuple[int, TrialRequest]] = {}
        for plan in rounds:
            if plan.get("kind") != "search":
                continue
            for data in plan.get("requests") or ():
                if data.get("trial_id") in running:
                    latest[data["trial_id"]] = (int(plan.get("round", 0)), TrialRequest.from_dict(data))
        unplanned = sorted(running - set(latest))
        if unplanned:
            where = self.journal.run_uri("search/trials")
            raise DataError(
                f"trial record(s) {', '.join(unplanned)} of run {self.run_id!r} say running, but no round of this "
                f"search planned them: another program (kftune trial, a pipeline run) is writing this run. Let it "
                f"finish, or delete those records to have them re-run ({where})")
        by_round: dict[int, list[TrialRequest]] = {}
        for r, request in latest.values():
            by_round.setdefault(r, []).append(request)
        return [sorted(by_round[r], key=lambda q: q.index) for r in sorted(by_round)]

    def count_final(self, history: Sequence[Trial], ended: bool) -> None:
        """Increment ``trials{state}`` once per trial whose state is final (pruned ones: at the end,
        unless medianstop pruned them)."""
        for t in history:
            final = t.state in ("completed", "failed") or (t.state == "pruned" and (
                ended or self.policy.median_stop is not None))
            if final and self.counted.get(t.id) != t.state:
                self.counted[t.id] = t.state
                self.sink.increment("trials", labels={"state": t.state})

    def report(self, history: Sequence[Trial]) -> None:
        best = _best_so_far(history, self.policy)
        values: dict[str, float] = {"trials_created": float(len(history)),
                                    "search_epochs": float(search_epochs(history))}
        if best is not None:
            values["best_objective"] = float(best.objective)  # type: ignore[arg-type]
        self.sink.log(values, step=None)
        self.sink.flush()


def _job_dict(job: TuningJob) -> dict[str, Any]:
    from kftune.core.spec import job_to_dict

    return job_to_dict(job)


def _best_so_far(history: Sequence[Trial], policy: SearchPolicy) -> Trial | None:
    s = sign(policy.objective_type)
    pool = [t for t in history if t.state in ("completed", "pruned") and t.has_objective]
    return max(pool, key=lambda t: (t.state == "completed", t.budget_used, s * float(t.objective)), default=None)  # type: ignore[arg-type]


def run(config: SearchConfig, *, job: TuningJob | None = None, sinks: Any = None) -> SearchResult:
    """Run (or resume) the search ``config`` describes and write its outputs (see the module docstring)."""
    problems = config.problems()
    if problems:
        raise ConfigError(problems)
    from kftune.io.store import open_store

    started = time.perf_counter()
    if job is None:
        from kftune.io.specfile import load_spec

        job = load_spec(config.spec)
    journal = RunJournal(open_store(config.store), config.run_id or job.name)
    from kftune.io.lease import RunLease

    lease = RunLease(journal.store, journal.lease_key, run_id=journal.run_id, ttl_s=config.lease_ttl)
    lease.acquire(take_over=config.take_over, wait=config.wait)
    lease.start_heartbeat()
    try:
        return _run_holding(config, job, journal, lease, sinks, started)
    finally:
        lease.release()


def _run_holding(config: SearchConfig, job: TuningJob, journal: RunJournal, lease: Any, sinks: Any,
                 started: float) -> SearchResult:
    """:func:`run` while holding the run's lease (``lease.check()`` before each round and the outputs)."""
    from dataclasses import replace

    from kftune._progress import Progress
    from kftune.io.metrics import sinks_from_env

    run_id = journal.run_id
    resuming = journal.settings() is not None
    settings = _pin(journal, job, config)
    seed, parallel = settings["seed"], settings["parallel"]
    space, lr_note = prepare_space(journal, job, config.lr_find)
    if config.lr_find and resuming and (lr_note or {}).get("source") != config.lr_find:
        log.warning("this run's search space was pinned when it started (%s); --lr-find %s is ignored",
                    f"with the LR range test of {lr_note['source']}" if lr_note else "without an LR range test",
                    config.lr_find)
    if parallel != job.spec.search.parallel_trial_count:
        job = replace(job, spec=replace(job.spec, search=replace(job.spec.search, parallel_trial_count=parallel)))
    policy = SearchPolicy.from_job(job, space=space, seed=seed)
    if "rounds" not in settings:
        # the pipeline's rule: as many rounds as resolve-spec gives this spec (its space, train.seed)
        settings["rounds"] = SearchPolicy.from_job(job).rounds_needed()
        journal.write_settings(settings)
    rounds_total = settings["rounds"]
    _check_corpus(config.corpus, job.spec.task.type)
    threads = job.spec.train.num_threads or max(1, cpu_cores() // parallel)
    own_sink = sinks is None
    sink = sinks if sinks is not None else sinks_from_env("search", run_id=run_id)
    runner = Runner(config.executor, parallel, check=lease.check)
    search = _Search(config, job, journal.store, run_id, policy, runner, threads, sink)
    log.info("search %s: %s over %d parameter(s), %s, %d trial(s) at most in %d round(s), %d at a time (%d CPU "
             "thread(s) each), budget %d epoch(s)%s", run_id, policy.search.algorithm.algorithm_name, len(space),
             policy.search.early_stopping.algorithm_name if policy.search.early_stopping else "no early stopping",
             policy.max_trials, rounds_total, parallel, threads, policy.max_budget,
             f", resuming from {journal.uri()}" if resuming else "")
    try:
        history = journal.trials()
        search.count_final(history, ended=False)
        rounds = journal.rounds()
        next_round = 0
        bar = Progress(policy.max_trials, f"search {run_id}", unit="trial") if config.show_progress else None
        shown = 0

        def show(history: Sequence[Trial]) -> None:
            nonlocal shown
            if bar is None:
                return
            finished = sum(1 for t in history if t.state != "running")
            best = _best_so_far(history, policy)
            failed = policy.failed_count(history)
            text = f"best {best.objective:.4f} ({best.id})" if best is not None else "no result yet"
            bar.set_postfix_str(text + (f", {failed} failed" if failed else ""))
            bar.update(finished - shown)
            shown = finished

        try:
            show(history)
            if rounds:  # finish the interrupted round first
                last = rounds[-1]
                next_round = int(last["round"]) + 1
                if last.get("kind") == "search":
                    ids = set(last.get("judged") or ())
                    search.execute([TrialRequest.from_dict(r) for r in last["requests"]],
                                   [t for t in history if t.id in ids])
                    history = journal.trials()
            rerun: set[str] = set()
            while True:
                lease.check()
                # records a killed driver left "running": resume them (once) before planning on them
                stale = [group for group in search.stale(history, rounds)
                         if not {q.trial_id for q in group} <= rerun]
                if stale:
                    for group in stale:
                        rerun.update(q.trial_id for q in group)
                        plan = next(r for r in rounds if int(r.get("round", -1)) == group[0].round)
                        ids = set(plan.get("judged") or ())
                        log.info("round %d: resuming %s, left running by an earlier driver", group[0].round,
                                 ", ".join(q.trial_id for q in group))
                        search.execute(group, [t for t in history if t.id in ids])
                    history = journal.trials()
                    continue
                requests = policy.plan_round(history, next_round, rounds_total)
                if not requests:
                    break
                judged = policy.judged(history)
                rounds.append(journal.write_round(next_round, "search", requests, history=len(history),
                                                  judged=judged))
                log.info("round %d: %s", next_round, ", ".join(
                    f"{r.trial_id}{' promoted' if r.promotion else ''} to {r.budget} epoch(s)" for r in requests))
                search.execute(requests, [t for t in history if t.id in set(judged)])
                history = journal.trials()
                search.count_final(history, ended=False)
                search.report(history)
                show(history)
                next_round += 1
        finally:
            if bar is not None:
                bar.close()
        still = sorted(t.id for t in history if t.state == "running")
        if still:  # never a finished search with trials still running
            raise KftuneError(
                f"the search of run {run_id!r} has nothing left to plan, but the records of {', '.join(still)} still "
                f"say running after they were resumed: another program is writing this run "
                f"({journal.uri()}); rerun when it has finished")
        stop_reason = policy.end_reason(history)
        log.info("search %s: stopped (%s) after %d trial(s)", run_id, stop_reason, len(history))
        # the finalists' round comes after the search's rounds (round R), as in the pipeline
        finalist_requests = policy.finalist_requests(history, rounds_total)
        if finalist_requests:
            log.info("finalists: re-training %s with seed(s) %s", ", ".join(t.id for t in policy.finalists(history)),
                     ", ".join(map(str, policy.finalist_seeds)))
            journal.write_round(rounds_total, "finalists", finalist_requests, history=len(history))
            search.execute(finalist_requests)
        lease.check()
        finalist_records = journal.finalist_records()
        winner = policy.select_best(history, finalist_records)
        search.count_final(history, ended=True)
        records, history = journal.history()
    except BaseException:
        if lease.lost:  # another driver runs the run now: stop our trials at once
            runner.kill()
        else:
            runner.close()
        raise
    runner.close()
    lease.renew()  # confirmed against the store, not the heartbeat's last word: a take-over just now stops us here
    searched = sum(1 for p in journal.rounds() if p.get("kind") == "search" and p.get("requests"))
    result = _finish(config, job, journal, policy, records, history, finalist_records, winner, stop_reason,
                     searched, lr_note, started)
    if winner is not None:
        sink.log({"best_objective": winner.objective}, step=None)
    if own_sink:
        sink.close()
    return result


def _finish(config: SearchConfig, job: TuningJob, journal: RunJournal, policy: SearchPolicy,
            records: list[dict[str, Any]], history: list[Trial], finalist_records: list[dict[str, Any]],
            winner: Winner | None, stop_reason: str, rounds: int, lr_note: dict[str, Any] | None,
            started: float) -> SearchResult:
    """Write the outputs, delete the checkpoints (unless kept), and return the result."""
    import tempfile
    from pathlib import Path

    from kftune.io.store import put_text
    from kftune.nlp import search_report

    best = best_record(policy, history, finalist_records, winner, run_id=journal.run_id, rounds=rounds,
                       lr_range=lr_note)
    outputs = {name: journal.uri(journal.key(name)) for name in OUTPUT_FILES}
    result = SearchResult(run_id=journal.run_id, status=best["status"], stop_reason=stop_reason,
                          best=winner.to_dict() if winner is not None else None, trials=best["trials"], rounds=rounds,
                          search_epochs=best["search_epochs"], finalist_epochs=best["finalist_epochs"],
                          seconds=round(time.perf_counter() - started, 3), objective_metric=policy.metric,
                          objective_type=policy.objective_type, outputs=outputs, lr_range=lr_note)
    store = journal.store
    names = list(policy.space.names)
    put_text(store, journal.key("trials.tsv"), search_report.trials_tsv(records, names))
    journal.write(journal.key("trials.json"), records)
    journal.write_best(best)
    images: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="kftune-search-") as tmp:
        for name, draw in (("objective.png", search_report.objective_png),
                           ("parameters.png", search_report.parameters_png)):
            path = Path(tmp) / name
            draw(records, policy.space, policy.objective_type, policy.metric, path, title=job.name)
            store.put_file(journal.key(name), path)
            images[name] = path.read_bytes()
    summary = {**best, "seconds": result.seconds}
    put_text(store, journal.key("summary.md"), search_report.summary_markdown(summary, records, names))
    put_text(store, journal.key("summary.html"), search_report.summary_html(summary, records, names, images))
    if not config.keep_checkpoints:
        journal.delete_checkpoints()
    journal.write(journal.key("result.json"), result.to_dict())
    if winner is not None:
        log.info("best: %s %s, objective %.4f +- %.4f over %d seed(s) (%s); outputs in %s", winner.trial_id,
                 json.dumps(dict(winner.assignment)), winner.objective, winner.spread, len(winner.values),
                 winner.chosen_on, journal.uri())
    else:
        log.warning("no trial produced a result; outputs in %s", journal.uri())
    return result


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kftune search",
        description="Hyperparameter search (random, grid, TPE, coarse-to-fine, BOHB; medianstop, successive halving, "
                    "ASHA, Hyperband), trials in a local process pool; resumable: rerun with the same --store and --run-id "
                    "after a kill and it continues where it stopped.")
    p.add_argument("--spec", required=True, help="the TuningJob spec")
    p.add_argument("--corpus", required=True, help="the output of `kftune corpus` (directory or store URI)")
    p.add_argument("--store", required=True, help="artifact store root (directory or s3://bucket/prefix)")
    p.add_argument("--run-id", help="objects go under runs/<run-id>/search/ (default: the spec's metadata.name)")
    p.add_argument("--seed", type=int, help="the sampler's seed (default: train.seed)")
    p.add_argument("--lr-find", help="the output (or result.json) of `kftune lr-find`: narrows the learning rate")
    p.add_argument("--parallel", type=int, help="trials at once (default: parallelTrialCount)")
    p.add_argument("--inline", dest="executor", action="store_const", const="inline", default="process",
                   help="run the trials in this process, one after another (no process pool)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the trials' checkpoints at the end")
    p.add_argument("--wait", action="store_true",
                   help="if another search drives this run, wait until it ends (or its lease expires), then continue "
                        "the run, instead of exiting with code 3")
    p.add_argument("--take-over", action="store_true",
                   help="continue a run whose driver's lease expired (it stopped renewing it: killed on another "
                        "machine); a lease that has not expired is never taken")
    add_common_arguments(p)
    return p


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    return SearchConfig(spec=args.spec, corpus=args.corpus, store=args.store, run_id=args.run_id, seed=args.seed,
                        lr_find=args.lr_find, parallel=args.parallel, executor=args.executor,
                        keep_checkpoints=args.keep_checkpoints, take_over=args.take_over, wait=args.wait)


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        result = run(config_from_args(args))
        best = result.best or {}
        print(json.dumps({"status": result.status, "stop_reason": result.stop_reason, "trials": result.trials,
                          "best_trial": best.get("trial_id"), "assignment": best.get("assignment"),
                          "objective": best.get("objective"), "spread": best.get("spread"),
                          "search_epochs": result.search_epochs, "finalist_epochs": result.finalist_epochs,
                          "best": result.outputs.get("best.json")}))
        if result.status == "failed":
            log.error("the search stopped after %d failed trial(s) (maxFailedTrialCount); see %s",
                      result.trials.get("failed", 0), result.outputs.get("trials.tsv"))
            return 1
        return 0

    return run_main(body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
