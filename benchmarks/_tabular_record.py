"""Record the tabular search benchmark: per-epoch dev curves of a grid of configurations, trained once.

A table holds, for one example spec, every configuration of a grid drawn from the example's own search
space, each trained ``E`` epochs with every seed of ``seeds``: the dev score after each epoch and the test
score after the last. A search method can then be replayed over the table (``benchmarks/search_tabular.py``)
without training: asking for a configuration at ``b`` epochs reads ``dev[b - 1]`` of one of its runs.

==========  ============================  ===================================================================
table       spec                          what recording changes (``overrides``, dotted spec paths)
==========  ============================  ===================================================================
trec6       examples/trec6.yaml           corpus.downsample 0.3, corpus.devFraction 0.2
nsmc-0.1    examples/nsmc.yaml            corpus.downsample 0.1 (the issue's; the quality benchmark's job)
ud-pos      examples/ud_english_pos.yaml  corpus.downsample 0.05; 6 epochs (the halving rule's max_budget 6)
==========  ============================  ===================================================================

Every table: 6 epochs per run (``train.maxEpochs``), seeds 1 and 2. Why this scale, with the numbers measured
before choosing it, is in each table's ``notes`` (:data:`TABLES`).

The grid (the table's ``space``, Katib ``parameters`` that a kftune spec accepts as they are): a
``discrete``/``categorical`` parameter keeps its list, an ``int`` takes every value ``min, min+step, ...``
(as a ``discrete`` list), a ``double`` with a ``step`` its stepped values, and a ``double`` without one
``k`` values evenly spaced between min and max (geometrically for logUniform/logNormal; ends included;
4 significant digits). The ``k`` of the doubles start at 2 and the smallest (the first on ties) grows by
one until the grid has at least :data:`MIN_GRID` points. Configurations are recorded in a seeded random
order of the grid (``id`` is the position in that order), so a partial table is a uniform sample of it.

Training is the trial step's (:mod:`kftune.steps.trial`): ``settings_from_job`` with the configuration as
the assignment, ``encode_corpus``, ``build_model``, :class:`~kftune.nlp.trainer.Trainer` on the spec's
device. For recording, early stopping is off (``patience`` above ``E``, ``min_learning_rate`` 0: every
run trains ``E`` epochs), the best-epoch weights are not kept, nothing is checkpointed and no progress bar
is drawn. The test score is the final (epoch ``E``) model's, scored with the trainer's metric (the main
score of ``kftune evaluate``: accuracy, token accuracy or span F1). A run whose training raises or whose
dev score is not finite is recorded as ``failed`` with the dev scores it reached.

Resumable: every finished run is one line of ``<work>/<table>/runs.jsonl`` (appended and flushed); a
restarted recording skips every (configuration, seed) found there. ``<work>/<table>/grid.json`` pins the
grid and settings; a recording whose settings differ refuses to append to it. The corpus is prepared once,
by the corpus step with the example's corpus settings plus the overrides, into ``<work>/<table>/corpus``.
The table (``benchmarks/results/tabular/<table>.json``) is rebuilt from the JSONL at the start, every
``--write-every`` configurations and at the end; it holds the configurations with every seed recorded,
and ``recorded.complete`` says whether that is the whole grid.

Usage (one process, one thread, or ``--workers N`` processes of one thread each; tables one after another;
``benchmarks/search_tabular.py record`` takes the same options)::

    KFTUNE_CORPUS_MIRROR=../shared/corpora OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        nice -n 5 python benchmarks/_tabular_record.py --table trec6,nsmc-0.1,ud-pos [--work /tmp/tabular-work]
        [--max-configs N] [--write-every 10] [--workers 1] [--results DIR]

Different tables may be recorded by different processes at once (each has its own work directory); one
table by two processes may not (``<work>/<table>/lock``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/quality.py, also when imported
import quality  # noqa: E402 - after the path is set

REPO = quality.REPO
RESULTS = REPO / "benchmarks" / "results" / "tabular"
DEFAULT_WORK = Path("/tmp/tabular-work")
MIN_GRID = 270
"""Grid points the doubles' ``k`` grow to (at least 256 configurations, a little above)."""
DECIMALS = 5
ENCODINGS_KEPT = 6
"""Encoded corpora kept in memory (one per encoding settings the grid varies)."""
ORDER_SEED = 20
"""Seed of the recording order (the issue's number)."""

log = logging.getLogger("tabular_record")


@dataclass(frozen=True)
class Table:
    """One table: the quality benchmark's job (``quality.JOBS``: example spec and its overrides), the
    recording's own spec ``overrides`` on top (dotted paths), the epochs ``max_epochs`` every run trains,
    the training ``seeds``, and ``notes`` (why this scale; written into the table)."""

    name: str
    job: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    max_epochs: int = 6
    seeds: tuple[int, ...] = (1, 2)
    min_grid: int = MIN_GRID
    order_seed: int = ORDER_SEED
    notes: tuple[str, ...] = ()

    def spec(self) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """The spec document, the example it came from, and every override applied (the job's and ours,
        with ``spec.train.maxEpochs``)."""
        job = quality.JOBS[self.job]
        sets = {**dict(self.overrides), "spec.train.maxEpochs": self.max_epochs}
        data, example = quality.job_spec(job, sets)
        applied = {**dict(job.overrides), **sets}
        rule = (data["spec"].get("search") or {}).get("earlyStopping") or {}
        for setting in rule.get("algorithmSettings") or ():  # fewer epochs: the last rung comes down with them
            if setting.get("name") == "max_budget" and int(str(setting.get("value"))) > self.max_epochs:
                setting["value"] = str(self.max_epochs)
                applied["spec.search.earlyStopping.algorithmSettings.max_budget"] = str(self.max_epochs)
        return data, example, applied


_MEASURED = ("measured before choosing (1 thread, nice 5, on a 2-core machine shared with 3 other jobs, load 3-5; "
             "an idle core is faster): ")
TABLES: dict[str, Table] = {t.name: t for t in (
    Table("trec6", "trec6", {"spec.corpus.downsample": 0.3, "spec.corpus.devFraction": 0.2}, max_epochs=6, notes=(
        "scale: downsample 0.3 with devFraction 0.2 (train 1,309 / dev 327 / test 500, the whole test split) and "
        "the example's 6 epochs; devFraction 0.2 keeps dev at 327 questions where 0.1 would leave 164",
        _MEASURED + "the full train split (4,907 / dev 545) took 7.3 s per epoch (4.7 at batch 64, 10 at batch "
        "16), 47 s per run: 270 x 2 runs would take about 7 h; at downsample 0.3 1.7 s per epoch, 12 s per run "
        "with the test evaluation (0.1 s), about 1.8 h for the grid")),
    Table("nsmc-0.1", "nsmc-0.1", {"spec.corpus.downsample": 0.1}, max_epochs=6, notes=(
        "scale: downsample 0.1 as the issue asks (train 13,500 / dev 1,500 / test 50,000, the whole test split) "
        "and the example's 6 epochs",
        _MEASURED + "7.5 s per epoch, 2 s per test evaluation (50,000 reviews), 23-30 s to encode the corpus for "
        "each of the grid's 6 (word_ngrams, char_ngram_max) pairs (encoded once each and kept: about 1.7 GB "
        "RSS); about 47 s per run, about 8.5 h for 324 x 2 runs")),
    Table("ud-pos", "ud", {"spec.corpus.downsample": 0.05}, max_epochs=6, notes=(
        "scale: downsample 0.05 (train 627 / dev 100 sentences, a seeded twentieth of each; test 2,077 "
        "sentences, the whole split) and 6 epochs instead of the example's 9 (its halving rule's max_budget "
        "comes down to 6 with them); the curves are still rising at epoch 6 (dev token accuracy about 0.8, "
        "where the example's downsample 0.25 reaches 0.89 after 2 epochs)",
        _MEASURED + "the example's downsample 0.25 (train 3,136 / dev 500) took 16 s per epoch at hidden_size 256: "
        "272 x 2 runs x 9 epochs would take about 22 h; at 0.05 3-5.5 s per epoch (hidden_size 64 to 256), "
        "1.2-2.4 s per test evaluation, about 25 s per run, about 3.8 h for the grid")),
)}


# --------------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------------

def _number_text(x: float) -> str:
    return repr(float(f"{x:.4g}"))


def _axis_texts(param: Any, k: int | None) -> list[str]:
    """Katib strings of one parameter's grid values (``k``: points of a double without step)."""
    if not param.is_numeric_range:
        return list(param.spec.feasible_space.list)
    if param.step is not None:
        return [str(param.grid_value(i)) for i in range(int(param.n_steps or 0) + 1)]
    import numpy as np

    assert k is not None and param.low is not None and param.high is not None
    xs = np.geomspace(param.low, param.high, k) if param.is_log else np.linspace(param.low, param.high, k)
    fs = param.spec.feasible_space
    texts = [fs.min] + [_number_text(float(x)) for x in xs[1:-1]] + [fs.max]
    return list(dict.fromkeys(texts))


def grid_space(parameters: Sequence[Any], min_grid: int = MIN_GRID) -> list[dict[str, Any]]:
    """The search space ``parameters`` (the spec's ``ParameterSpec``) as a grid of Katib ``discrete``/
    ``categorical`` parameters with at least ``min_grid`` points where doubles allow (module docstring)."""
    from kftune.core.space import SearchSpace

    space = SearchSpace.from_parameters(parameters)
    free = [p.name for p in space if p.type == "double" and p.step is None]
    ks = {name: 2 for name in free}

    def size() -> int:
        return math.prod(len(_axis_texts(p, ks.get(p.name))) for p in space)

    while free and size() < min_grid:
        grow = min(free, key=lambda n: (ks[n], free.index(n)))
        ks[grow] += 1
    out = []
    for p in space:
        kind = "categorical" if p.type == "categorical" else "discrete"
        out.append({"name": p.name, "parameterType": kind, "feasibleSpace": {"list": _axis_texts(p, ks.get(p.name))}})
    return out


def grid_points(space: Sequence[Mapping[str, Any]], order_seed: int) -> list[dict[str, Any]]:
    """Every point of the grid ``space`` (typed as kftune reads the space), in a seeded random order."""
    import numpy as np

    from kftune.core.space import SearchSpace

    typed = SearchSpace.from_katib(space)
    axes = [typed[p["name"]].choices for p in space]
    points = [dict(zip(typed.names, values)) for values in itertools.product(*axes)]
    order = np.random.default_rng(order_seed).permutation(len(points))
    return [points[int(i)] for i in order]


# --------------------------------------------------------------------------------------------------
# Work directory: corpus, pinned grid, runs
# --------------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    """A table ready to record: the parsed spec, its grid and where everything goes."""

    table: Table
    job: Any
    example: str
    overrides: dict[str, Any]
    space: list[dict[str, Any]]
    points: list[dict[str, Any]]
    work: Path
    corpus: Path
    notes: list[str]

    @property
    def runs_file(self) -> Path:
        return self.work / "runs.jsonl"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def prepare(table: Table, work_root: Path) -> Prepared:
    """Parse the table's spec, build its grid, pin it in the work directory (refusing a different one)
    and prepare the corpus (once)."""
    import yaml

    from kftune.io.specfile import parse_spec_text
    from kftune.steps import corpus as corpus_step

    data, example, overrides = table.spec()
    job = parse_spec_text(yaml.safe_dump(data, allow_unicode=True), f"{example} (+ {table.name} overrides)")
    notes: list[str] = []
    lr = job.spec.lr_range_test
    if lr.enabled and any(p.name == lr.apply_to for p in job.spec.search.parameters):
        notes.append(f"the example runs the LR range test, whose suggested decade replaces the feasibleSpace of "
                     f"{lr.apply_to} at run time; the grid uses the example's written feasibleSpace instead (a spec "
                     "that searches this grid turns lrRangeTest off: the test sets a double range)")
    space = grid_space(job.spec.search.parameters, table.min_grid)
    points = grid_points(space, table.order_seed)
    work = work_root / table.name
    work.mkdir(parents=True, exist_ok=True)
    pinned = {"table": table.name, "example": example, "overrides": overrides, "space": space,
              "seeds": list(table.seeds), "max_epochs": table.max_epochs, "order_seed": table.order_seed}
    pin = work / "grid.json"
    if pin.is_file():
        before = json.loads(pin.read_text(encoding="utf-8"))
        if before != json.loads(json.dumps(pinned)):
            raise SystemExit(f"{pin} pins other settings than table {table.name!r} has now (space, overrides, seeds, "
                             "epochs or order); record into another --work directory, or delete "
                             f"{work} to start this table again")
    else:
        pin.write_text(json.dumps(pinned, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    corpus = work / "corpus"
    if not (corpus / "corpus.json").is_file():
        os.environ.setdefault("KFTUNE_CORPUS_MIRROR", str((REPO.parent / "shared" / "corpora").resolve()))
        os.environ.setdefault("KFTUNE_CACHE_DIR", str(work_root / "downloads"))
        settings = corpus_step.settings_from_spec(job.spec.corpus, job.spec.task)
        started = time.perf_counter()
        corpus_step.run(corpus_step.CorpusConfig.from_settings(settings, out=str(corpus)))
        log.info("%s: prepared the corpus in %.0f s: %s", table.name, time.perf_counter() - started, corpus)
    return Prepared(table=table, job=job, example=example, overrides=overrides, space=space, points=points,
                    work=work, corpus=corpus, notes=notes)


@contextlib.contextmanager
def exclusive(work: Path) -> Iterator[None]:
    """Hold ``work/lock`` while recording: a second process recording the same table stops at once."""
    import fcntl

    with (work / "lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another process is recording into {work}; wait for it or stop it first") from None
        yield


def read_runs(path: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """The recorded runs by (configuration id, seed); a line cut short by a kill is skipped."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    if not path.is_file():
        return out
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            out[(int(row["config"]), int(row["seed"]))] = row
    return out


def append_run(path: Path, row: Mapping[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------------
# Training one run
# --------------------------------------------------------------------------------------------------

class Corpus:
    """The prepared corpus in memory and its encodings per encoding settings (two seeds share one)."""

    def __init__(self, uri: Path):
        from kftune.io.store import open_store
        from kftune.nlp.data import read_corpus_from_store, task_from_corpus_info

        self.uri = str(uri)
        self.info, self.splits = read_corpus_from_store(open_store(self.uri), self.uri, ("train", "dev", "test"))
        self.task = task_from_corpus_info(self.info)
        self._encoded: dict[Any, tuple[Any, Any, Any, Any, Any]] = {}

    def encoded(self, hp: Any) -> tuple[Any, Any, Any, Any, Any]:
        """(encoder, train, dev, test, pretrained weights) for ``hp``'s encoding settings; the last
        :data:`ENCODINGS_KEPT` are kept (NSMC's grid has 6: word n-grams x character n-grams)."""
        from kftune.io.store import open_store
        from kftune.nlp.embeddings import encode_corpus, encoding_key

        key = encoding_key(hp)
        if key in self._encoded:
            self._encoded[key] = self._encoded.pop(key)  # the most recently used goes last
        else:
            while len(self._encoded) >= ENCODINGS_KEPT:
                self._encoded.pop(next(iter(self._encoded)))
            encoder, train, dev, weights = encode_corpus(self.task, self.splits["train"], self.splits["dev"], hp,
                                                         also_known=self.splits["test"], open_store=open_store)
            self._encoded[key] = (encoder, train, dev, encoder.encode(self.splits["test"], "test"), weights)
        return self._encoded[key]


def test_metric(task: Any) -> str:
    """The name of ``kftune evaluate``'s main score for the task (what the trainer's metric computes)."""
    from kftune.nlp.evaluation import normalize_tag_scheme

    if task.is_classification:
        return "accuracy"
    return "span_f1_micro" if normalize_tag_scheme(task.tag_scheme) is not None else "token_accuracy"


def train_run(prep: Prepared, corpus: Corpus, assignment: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """Train one configuration with one seed for ``max_epochs`` epochs: dev score per epoch, final test
    score, ``seconds`` (the epochs' training and dev evaluation), ``test_seconds``, ``wall_seconds`` (all
    of it, with encoding the corpus when the configuration needs a new encoding); a failure is returned
    (``failed``, ``reason``), not raised."""
    from kftune.io.store import open_store
    from kftune.nlp.checkpoint import seed_everything
    from kftune.nlp.config import settings_from_job
    from kftune.nlp.models import build_model
    from kftune.nlp.trainer import Trainer, resolve_device

    epochs = prep.table.max_epochs
    dev: list[float] = []
    epoch_seconds: list[float] = []
    out: dict[str, Any] = {"failed": False, "reason": None, "test": None, "test_seconds": None}
    started = time.perf_counter()
    try:
        hp, tcfg = settings_from_job(prep.job, corpus.task.type, assignment=assignment, path="assignment")
        tcfg = dataclasses.replace(tcfg, max_epochs=epochs, patience=epochs + 1, min_learning_rate=0.0,
                                   keep_best=False)
        encoder, train, dev_data, test, weights = corpus.encoded(hp)
        seed_everything(seed)
        model = build_model(corpus.task.type, hp, encoder, pretrained_weights=weights,
                            storage_mode=tcfg.embeddings_storage_mode, open_store=open_store)

        def on_epoch_end(epoch: int, result: Any) -> bool:
            dev.append(float(result.dev_score))
            epoch_seconds.append(float(result.seconds))
            return not math.isfinite(result.dev_score)

        trainer = Trainer(model, encoder, train, dev_data, hp, tcfg, seed=seed, device=resolve_device(tcfg.device),
                          callbacks=[on_epoch_end], checkpoints=None, show_progress=False)
        fit = trainer.fit(until_epoch=epochs, resume=False)
        if fit.status == "stopped":
            raise FloatingPointError(f"the dev score became {dev[-1]} in epoch {len(dev)}")
        if len(dev) != epochs:
            raise RuntimeError(f"training ended after {len(dev)} of {epochs} epochs ({fit.status})")
        t0 = time.perf_counter()
        _, score, _ = trainer.evaluate(test)
        out["test_seconds"] = time.perf_counter() - t0
        out["test"] = float(score)
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded, as the trial step records it
        from kftune.steps.trial import _failure_reason

        out.update(failed=True, reason=_failure_reason(exc))
        log.warning("run failed: %s", out["reason"])
    out.update(dev=dev, epoch_seconds=epoch_seconds, seconds=sum(epoch_seconds),
               wall_seconds=time.perf_counter() - started)
    return out


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------

def _r(x: float | None, decimals: int = DECIMALS) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), decimals)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_for(table: str, work: Path) -> str:
    """The command that (re-)records ``table`` (resuming from ``work``)."""
    return ("KFTUNE_CORPUS_MIRROR=../shared/corpora OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 5 "
            f"python benchmarks/search_tabular.py record --table {table} --work {work}")


def build_table(prep: Prepared, runs: Mapping[tuple[int, int], Mapping[str, Any]], *, command: str) -> dict[str, Any]:
    """The table (module docstring; the format is fixed) from the recorded ``runs``."""
    from kftune import _version

    table = prep.table
    objective = prep.job.spec.search.objective
    info = json.loads((prep.corpus / "corpus.json").read_text(encoding="utf-8"))
    task_type = info["task"]
    from kftune.nlp.data import task_from_corpus_info

    configs = []
    rows: list[Mapping[str, Any]] = []
    for cid, assignment in enumerate(prep.points):
        got = [runs.get((cid, s)) for s in table.seeds]
        if any(r is None for r in got):
            continue
        rows += got  # type: ignore[arg-type]
        configs.append({"id": cid, "assignment": assignment, "runs": [
            {"seed": r["seed"], "dev": [_r(x) for x in r["dev"]], "test": _r(r["test"]),
             "seconds": round(float(r["seconds"]), 2), "failed": bool(r["failed"])} for r in got]})
    ok = [r for r in rows if not r["failed"]]
    epoch_s = [s for r in ok for s in r["epoch_seconds"]]
    test_s = [r["test_seconds"] for r in ok if r.get("test_seconds") is not None]
    notes = list(table.notes) + list(prep.notes)
    notes.append(f"recording: every run trains {table.max_epochs} epochs (patience off, min_learning_rate 0); "
                 "test score of the epoch-" f"{table.max_epochs} model; configurations in a seeded random order "
                 f"of the grid (seed {table.order_seed}), id = position in that order")
    if ok:
        notes.append(f"measured (this recording, 1 thread): {sum(epoch_s) / len(epoch_s):.2f} s per epoch (train + "
                     f"dev), {sum(test_s) / max(len(test_s), 1):.2f} s per test evaluation, "
                     f"{sum(float(r.get('wall_seconds') or r['seconds']) for r in rows) / 3600:.2f} h in "
                     f"all; {len(rows) - len(ok)} of {len(rows)} runs failed")
    notes.append(f"{len(configs)} of {len(prep.points)} grid configurations recorded")
    stamps = sorted(r["finished_at"] for r in rows)
    starts = sorted(r["started_at"] for r in rows)
    complete = len(configs) == len(prep.points)
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "missing"
    return {
        "name": table.name, "spec": prep.example, "overrides": prep.overrides,
        "corpus": {"name": info.get("name"), **{s: (info.get("splits") or {}).get(s, {}).get("examples")
                                                 for s in ("train", "dev", "test")}},
        "objective": objective.type, "metric": objective.objective_metric_name,
        "test_metric": test_metric(task_from_corpus_info(info)), "task": task_type,
        "max_epochs": table.max_epochs, "seeds": list(table.seeds), "space": prep.space,
        "grid_size": len(prep.points), "notes": notes, "configs": configs,
        "recorded": {"command": command, "python": platform.python_version(), "torch": torch_version,
                     "kftune": _version.__version__, "cpu": _cpu(), "threads": 1,
                     "started": starts[0] if starts else None, "finished": stamps[-1] if stamps else None,
                     "configs": len(configs), "complete": complete},
    }


def dump_table(data: Mapping[str, Any]) -> str:
    """The table as JSON: one key per line, one configuration per line (small diffs, easy to read)."""
    head = {k: v for k, v in data.items() if k != "configs"}
    lines = ["{"]
    items = list(head.items())
    for k, v in items:
        lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    configs = data.get("configs") or []
    if configs:
        lines.append(' "configs": [')
        lines += [f"  {json.dumps(c, ensure_ascii=False)}," for c in configs]
        lines[-1] = lines[-1][:-1]
        lines.append(" ]")
    else:
        lines.append(' "configs": []')
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_table(data: Mapping[str, Any], results: Path) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{data['name']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(dump_table(data), encoding="utf-8")
    os.replace(tmp, path)
    return path


def table_digest(space: Sequence[Mapping[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(space, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------------

def pending(prep: Prepared, runs: Mapping[tuple[int, int], Any]) -> Iterator[tuple[int, dict[str, Any], list[int]]]:
    """(id, assignment, seeds still to train) of every configuration not fully recorded, in order."""
    for cid, assignment in enumerate(prep.points):
        todo = [s for s in prep.table.seeds if (cid, s) not in runs]
        if todo:
            yield cid, assignment, todo


def record(table: Table, *, work: Path, results: Path, max_configs: int | None = None, write_every: int = 10,
           command: str | None = None, workers: int = 1) -> dict[str, Any]:
    """Record ``table`` (resuming what ``work`` holds): at most ``max_configs`` more configurations, the
    table rewritten every ``write_every`` and at the end; ``workers`` > 1 trains that many configurations
    at once, in forked processes (one thread each). Returns the table."""
    (work / table.name).mkdir(parents=True, exist_ok=True)
    with exclusive(work / table.name):
        return _record(prepare(table, work), results=results, max_configs=max_configs,
                       write_every=write_every, command=command or command_for(table.name, work), workers=workers)


#: The worker processes' state (set before forking; read by :func:`_train_config`).
_WORKER: dict[str, Any] = {}


def _train_config(task: tuple[int, dict[str, Any], list[int]]) -> list[dict[str, Any]]:
    """Train every pending seed of one configuration: the rows to append (in a worker or in process)."""
    prep, corpus = _WORKER["prep"], _WORKER["corpus"]
    cid, assignment, seeds = task
    rows = []
    for seed in seeds:
        begun = _now()
        out = train_run(prep, corpus, assignment, seed)
        rows.append({"config": cid, "seed": seed, "assignment": assignment, **out, "started_at": begun,
                     "finished_at": _now(), "space": table_digest(prep.space)})
    return rows


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool


def _record(prep: Prepared, *, results: Path, max_configs: int | None, write_every: int,
            command: str, workers: int = 1) -> dict[str, Any]:
    table = prep.table
    runs = read_runs(prep.runs_file)
    if prep.runs_file.is_file() and prep.runs_file.stat().st_size:
        with prep.runs_file.open("rb+") as f:  # a line cut short by a kill: the next run starts a line of its own
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
    if runs:
        write_table(build_table(prep, runs, command=command), results)
    todo = list(pending(prep, runs))
    log.info("%s: grid of %d configurations x %d seeds, %d epochs; %d configurations to record (%s)", table.name,
             len(prep.points), len(table.seeds), table.max_epochs, len(todo), prep.runs_file)
    if max_configs is not None:
        todo = todo[:max_configs]
    _WORKER.update(prep=prep, corpus=Corpus(prep.corpus) if todo else None)
    started = time.perf_counter()
    pool = None
    if workers > 1 and len(todo) > 1:
        # Forked after the corpus is read, so every worker shares it; a configuration's seeds stay in one
        # worker (they share its encoding). Rows are appended as configurations finish, so a kill loses
        # only the configurations in training, and a partial table stays a near-prefix of the order.
        pool = multiprocessing.get_context("fork").Pool(min(workers, len(todo)), initializer=_worker_init)
        finished: Iterable[list[dict[str, Any]]] = pool.imap_unordered(_train_config, todo, chunksize=1)
    else:
        finished = map(_train_config, todo)
    try:
        for n, rows in enumerate(finished, 1):
            for row in rows:
                append_run(prep.runs_file, row)
                runs[(row["config"], row["seed"])] = row
                log.info("%s: config %d seed %d: dev %s, test %s, %.1f s%s", table.name, row["config"], row["seed"],
                         " ".join(f"{x:.4f}" for x in row["dev"]),
                         "-" if row["test"] is None else f"{row['test']:.4f}",
                         row["seconds"], f" FAILED ({row['reason']})" if row["failed"] else "")
            if n % write_every == 0 or n == len(todo):
                elapsed = time.perf_counter() - started
                log.info("%s: %d of %d configurations this session in %.0f s (%.0f s each); writing the table",
                         table.name, n, len(todo), elapsed, elapsed / n)
                write_table(build_table(prep, runs, command=command), results)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _WORKER.clear()
    data = build_table(prep, runs, command=command)
    write_table(data, results)
    return data


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default=",".join(TABLES),
                   help=f"comma-separated tables, recorded one after another (default {','.join(TABLES)})")
    p.add_argument("--work", default=str(DEFAULT_WORK),
                   help="work directory: prepared corpora and the per-run JSONL that makes recording resumable")
    p.add_argument("--results", default=str(RESULTS), help="where the tables go (default benchmarks/results/tabular)")
    p.add_argument("--max-configs", type=int, help="record at most this many more configurations per table, then stop")
    p.add_argument("--write-every", type=int, default=10, help="rewrite the table every N configurations (default 10)")
    p.add_argument("--workers", type=int, default=1,
                   help="configurations trained at once, each in its own process with one thread (default 1)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.table.split(",") if n.strip()]
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        p.error(f"unknown table(s) {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    if args.max_configs is not None and args.max_configs < 0:
        p.error("--max-configs must be >= 0")
    if args.write_every < 1:
        p.error("--write-every must be >= 1")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kftune").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    work = Path(args.work).resolve()
    for name in names:
        data = record(TABLES[name], work=work, results=Path(args.results), max_configs=args.max_configs,
                      write_every=args.write_every, workers=args.workers)
        rec = data["recorded"]
        print(f"{name}: {rec['configs']} of {data['grid_size']} configurations recorded"
              f"{' (complete)' if rec['complete'] else ''}: {Path(args.results) / (name + '.json')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
