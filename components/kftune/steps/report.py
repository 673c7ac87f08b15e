"""``kftune report``: the final report of a tuning run, in Markdown and self-contained HTML.

It combines what the other steps wrote, each read from a directory or store URI (all optional):

- ``--corpus``: the corpus step's output: ``corpus.json`` and the corpus card ``card.md``;
- ``--lr-find``: the LR range test's output: ``result.json``, ``summary.md``, ``lr_curve.png``;
- ``--trials``: the trial journal: one JSON trial record per key (``*.json``), as the trial step
  writes them (:meth:`kftune.core.trials.Trial.to_dict` plus extra fields);
- ``--best``: the selection record (a JSON file: ``runs/<run>/search/best.json`` as ``kftune search`` and
  the pipeline's select-best write it, or any object with ``trial``/``id``/``trial_id``, ``assignment``,
  ``objective``); when absent, or when it names no trial, the best completed trial of the journal is named;
- ``--train``: the final training's output: ``result.json``, ``training_curve.png`` (and ``weights.png``
  when it was trained with ``train.writeWeights``);
- ``--evaluation``: the evaluation's output: ``result.json``, ``report.md``, ``confusion_matrix.png``;
  with a baseline in ``result.json``, the summary puts the tuned model's test score, the baseline's and
  the difference side by side, and the evaluation section has a "Baseline" table;
- ``--spec``: the TuningJob spec file (the run's name, the objective and its direction).

Output in ``--out`` (a directory or store URI):

- ``report.md``: summary, corpus card, LR range test, trials table and plot, final training and
  evaluation; images are referenced by file name and copied beside it;
- ``report.html``: the same content as one self-contained page (images embedded), for KFP's HTML viewer;
- ``trials.png``: the objective of every trial in suggestion order with the best-so-far line, and the
  objective against each searched parameter;
- ``summary.json`` (written last): what ``kftune run`` prints: best parameters, dev and test scores,
  trial counts and where the inputs came from.

The pipeline's report task calls :func:`run_pipeline` instead: the spec and the selection record arrive
parsed (``ReportConfig.job`` and ``best_record``, no files), the trials come from the run's journal, and the
run's lease is released at the end.

A missing part is reported as missing in the report, not an error: a run that failed half way can
still be reported. An input that exists but cannot be read is a :class:`DataError`.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from kftune._version import __version__
from kftune.core.errors import ArtifactNotFoundError, DataError, Problem
from kftune.steps._common import CheckedConfig, add_common_arguments, run_main

log = logging.getLogger(__name__)

REPORT_MD, REPORT_HTML, SUMMARY_JSON, TRIALS_PNG = "report.md", "report.html", "summary.json", "trials.png"
OUTPUT_FILES = (REPORT_MD, REPORT_HTML, TRIALS_PNG, SUMMARY_JSON)
#: Images of the other steps that the report shows: (input, file name in that input, name in the report).
_IMAGES = (("lr_find", "lr_curve.png", "lr_curve.png"), ("train", "training_curve.png", "training_curve.png"),
           ("train", "weights.png", "weights.png"), ("evaluation", "confusion_matrix.png", "confusion_matrix.png"))
TRIAL_STATES = ("completed", "pruned", "failed", "running")


# --------------------------------------------------------------------------- config and result
@dataclass(frozen=True)
class ReportConfig(CheckedConfig):
    """Where the parts of the run are and where the report goes (see the module docstring).

    Every input is a directory or store URI (``trials``: the prefix holding the trial records;
    ``best`` and ``spec``: files), or ``None`` when the run has no such part. ``title`` defaults to
    "kftune report: <spec name or corpus name>".

    A caller that has them parsed passes them instead of files: ``best_record`` (the selection record,
    instead of ``best``) and ``job`` (a :class:`~kftune.core.spec.TuningJob`, instead of ``spec``).
    """

    out: str
    corpus: str | None = None
    lr_find: str | None = None
    trials: str | None = None
    best: str | None = None
    train: str | None = None
    evaluation: str | None = None
    spec: str | None = None
    title: str | None = None
    best_record: Mapping[str, Any] | None = None
    job: Any = None

    def problems(self) -> list[Problem]:
        """Every problem with this config (empty when it is usable)."""
        p: list[Problem] = []
        if self.best is not None and self.best_record is not None:
            p.append(Problem("report.best", "give the selection record as a file (best) or as an object "
                                            "(best_record), not both"))
        if self.best_record is not None and not isinstance(self.best_record, Mapping):
            p.append(Problem("report.best_record", f"{type(self.best_record).__name__}: the selection record "
                                                   "must be a JSON object"))
        if self.spec is not None and self.job is not None:
            p.append(Problem("report.spec", "give the spec as a file (spec) or parsed (job), not both"))
        if not isinstance(self.out, str) or not self.out.strip():
            p.append(Problem("report.out", "missing: give --out with an output directory or store URI"))
        for name in ("corpus", "lr_find", "trials", "best", "train", "evaluation", "spec", "title"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                p.append(Problem(f"report.{name}", f"{value!r} is empty; give a path or URI, or leave it out"))
        if all(getattr(self, n) is None for n in ("corpus", "lr_find", "trials", "train", "evaluation")):
            p.append(Problem("report", "nothing to report: give at least one of --corpus, --lr-find, --trials, "
                                       "--train, --evaluation"))
        return p


@dataclass(frozen=True)
class ReportResult:
    """What ``run`` wrote: the output URI, the summary (also ``summary.json``), the report as Markdown and
    as the self-contained HTML page, and the file URIs."""

    out: str
    summary: dict[str, Any]
    markdown: str
    artifacts: dict[str, str] = field(default_factory=dict)
    html: str = ""


@dataclass(frozen=True)
class RunReportConfig:
    """The report of a pipeline run: its journal (``store``, ``run_id``; the report goes to
    ``runs/<run_id>/report/``, the trials are read from ``runs/<run_id>/search/trials``) and its tasks'
    outputs (``corpus``, ``lr_find``, ``train``, ``evaluation``: directories or URIs; an ``lr_find`` without
    ``result.json``, the LR range test being off, is left out). ``lease_owner``/``job_id``: who holds the
    run's lease (:func:`kftune.io.lease.pipeline_owner`); the report, the run's last step, releases it."""

    store: str
    run_id: str
    corpus: str | None = None
    lr_find: str | None = None
    train: str | None = None
    evaluation: str | None = None
    lease_owner: str = ""
    job_id: str = ""


# --------------------------------------------------------------------------- reading the parts
def _open(uri: str) -> Any:
    from kftune.io.store import open_store

    return open_store(uri)


def _split_file(uri: str) -> tuple[Any, str]:
    """The store holding the file ``uri`` and its key."""
    text = uri.rstrip("/")
    if text.startswith("s3://"):
        bucket, _, key = text[5:].partition("/")
        parent, _, name = key.rpartition("/")
        return _open(f"s3://{bucket}/{parent}" if parent else f"s3://{bucket}"), name
    from pathlib import Path

    path = Path(text.removeprefix("file://")).expanduser()
    return _open(str(path.parent)), path.name


def _read_json_file(uri: str, what: str) -> Any:
    store, key = _split_file(uri)
    return _parse_json(_get(store, key, what), store.uri_for(key))


def _get(store: Any, key: str, what: str, required: bool = True) -> bytes | None:
    try:
        return store.get_bytes(key)
    except ArtifactNotFoundError:
        if required:
            raise DataError(f"{store.uri_for(key)}: not found; {what}") from None
        return None


def _parse_json(data: bytes | None, where: str) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{where}: not valid JSON ({exc})") from None


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")


@dataclass
class _Parts:
    corpus: dict[str, Any] | None = None
    card: str | None = None
    lr: dict[str, Any] | None = None
    lr_summary: str | None = None
    trials: list[Any] = field(default_factory=list)
    unreadable_trials: list[str] = field(default_factory=list)
    best: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    evaluation_md: str | None = None
    images: dict[str, bytes] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def read_trials(uri: str) -> tuple[list[Any], list[str]]:
    """The trial records under ``uri`` (every ``*.json`` key) as :class:`~kftune.core.trials.Trial`, and
    the keys that are not trial records. Ordered by the record's ``index`` (suggestion order) when it
    has one, else by id (numbers in ids compare as numbers)."""
    from kftune.core.trials import Trial

    store = _open(uri)
    trials, bad = [], []
    for key in store.list(""):
        if not key.endswith(".json"):
            continue
        data = _get(store, key, "the trial record vanished while reading", required=False)
        if data is None:
            continue
        try:
            trials.append(Trial.from_dict(_parse_json(data, store.uri_for(key))))
        except DataError as exc:
            log.warning("skipping %s: %s", store.uri_for(key), exc)
            bad.append(store.uri_for(key))
    trials.sort(key=lambda t: (t.extra.get("index") if isinstance(t.extra.get("index"), int) else math.inf,
                               _natural_key(t.id)))
    return trials, bad


def _read_parts(config: ReportConfig) -> _Parts:
    parts = _Parts()
    if config.corpus:
        store = _open(config.corpus)
        parts.corpus = _parse_json(_get(store, "corpus.json", "give the output of `kftune corpus`"),
                                   store.uri_for("corpus.json"))
        parts.card = _text(_get(store, "card.md", "", required=False))
        parts.sources["corpus"] = store.root_uri
    if config.lr_find:
        store = _open(config.lr_find)
        parts.lr = _parse_json(_get(store, "result.json", "give the output of `kftune lr-find`"),
                               store.uri_for("result.json"))
        parts.lr_summary = _text(_get(store, "summary.md", "", required=False))
        parts.sources["lr_find"] = store.root_uri
    if config.trials:
        parts.trials, parts.unreadable_trials = read_trials(config.trials)
        parts.sources["trials"] = _open(config.trials).root_uri
    if config.best:
        best = _read_json_file(config.best, "give the selection record (JSON)")
        if not isinstance(best, dict):
            raise DataError(f"{config.best}: the selection record must be a JSON object")
        parts.best = best
        parts.sources["best"] = config.best
    elif config.best_record is not None:
        parts.best = dict(config.best_record)
        run_id = config.best_record.get("run_id")
        parts.sources["best"] = f"best.json of run {run_id}" if run_id else "the selection record"
    if config.train:
        store = _open(config.train)
        parts.train = _parse_json(_get(store, "result.json", "give the output of `kftune train`"),
                                  store.uri_for("result.json"))
        parts.sources["train"] = store.root_uri
    if config.evaluation:
        store = _open(config.evaluation)
        parts.evaluation = _parse_json(_get(store, "result.json", "give the output of `kftune evaluate`"),
                                       store.uri_for("result.json"))
        parts.evaluation_md = _text(_get(store, "report.md", "", required=False))
        parts.sources["evaluation"] = store.root_uri
    for source, name, as_name in _IMAGES:
        uri = getattr(config, source)
        if uri:
            data = _get(_open(uri), name, "", required=False)
            if data is not None:
                parts.images[as_name] = data
    return parts


# --------------------------------------------------------------------------- summary
def _objective(config: ReportConfig) -> tuple[str, str, str | None]:
    """``(direction, metric name, run name)`` from the spec, else ``("maximize", "dev_score", None)``."""
    job = config.job
    if job is None and not config.spec:
        return "maximize", "dev_score", None
    if job is None:
        from kftune.io.specfile import load_spec

        job = load_spec(config.spec, use_model_hooks=False)
    objective = job.spec.search.objective
    return objective.type, objective.objective_metric_name, job.name


def _best_of(parts: _Parts, direction: str) -> dict[str, Any] | None:
    """The selection record, else the best completed (then pruned) trial of the journal."""
    b = parts.best
    if b is not None and "trial_id" not in b and isinstance(b.get("best"), dict):
        b = b["best"]  # the best.json of an older kftune search nested the winner under "best"
    if b is not None and (b.get("trial") or b.get("id") or b.get("trial_id")):
        return {"trial": b.get("trial") or b.get("id") or b.get("trial_id"),
                "assignment": b.get("assignment") or b.get("parameters") or {},
                "objective": b.get("objective"), "source": "selection"}
    from kftune.core.trials import best_trial

    t = best_trial(parts.trials, direction) or best_trial(parts.trials, direction, states=("pruned",))
    if t is None:
        return None
    return {"trial": t.id, "assignment": dict(t.assignment), "objective": t.objective, "source": "journal"}


def _summary(config: ReportConfig, parts: _Parts, direction: str, metric: str, name: str | None) -> dict[str, Any]:
    counts = {state: sum(t.state == state for t in parts.trials) for state in TRIAL_STATES}
    summary: dict[str, Any] = {"name": name or (parts.corpus or {}).get("name"), "kftune_version": __version__,
                               "objective": {"type": direction, "metric": metric}}
    if parts.corpus is not None:
        splits = parts.corpus.get("splits") or {}
        summary["corpus"] = {"name": parts.corpus.get("name"), "task": parts.corpus.get("task"),
                             "labels": len(parts.corpus.get("labels") or []),
                             "examples": {s: (splits.get(s) or {}).get("examples") for s in ("train", "dev", "test")}}
    if parts.lr is not None:
        summary["lr_range_test"] = {"suggested_lr": parts.lr.get("suggested_lr", parts.lr.get("lr")),
                                    "range": parts.lr.get("range"), "method": parts.lr.get("method"),
                                    "diverged": parts.lr.get("diverged")}
    if config.trials:
        summary["trials"] = {"total": len(parts.trials), **counts}
    best = _best_of(parts, direction)
    if best is not None:
        summary["best"] = best
    if parts.train is not None:
        summary["final_training"] = {k: parts.train.get(k) for k in ("status", "dev_score", "epochs", "best_epoch",
                                                                     "model_uri", "seconds", "train_with_dev_epochs")}
    if parts.evaluation is not None:
        e = parts.evaluation
        summary["test"] = {"split": e.get("split", "test"), "metric": e.get("main_score_name"),
                           "score": e.get("main_score"), "accuracy": e.get("accuracy"),
                           "f1_micro": (e.get("micro") or {}).get("f1"), "f1_macro": (e.get("macro") or {}).get("f1"),
                           "examples": e.get("n_examples")}
        baseline = e.get("baseline")
        if isinstance(baseline, dict) and isinstance(e.get("main_score"), (int, float)):
            from kftune.nlp.baseline import comparison

            c = comparison(float(e["main_score"]), baseline)
            summary["test"]["baseline"] = {"name": baseline.get("name"), "method": baseline.get("method"),
                                           "metric": baseline.get("metric"), "score": c["baseline_score"],
                                           "dev_score": baseline.get("dev_score"), "delta": c["delta"],
                                           "beats_baseline": c["beats_baseline"], "verdict": c["verdict"],
                                           "C": (baseline.get("params") or {}).get("C"),
                                           "seconds": baseline.get("seconds")}
    summary["sources"] = dict(parts.sources)
    return summary


# --------------------------------------------------------------------------- rendering
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value) or value.is_integer():
            return f"{value:g}"
        if abs(value) < 1e-3 or abs(value) >= 1e5:
            return f"{value:.4g}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _demote(markdown: str, levels: int = 1) -> str:
    """Headings one level deeper (a step's ``# Title`` becomes ``## Title`` inside the report)."""
    return re.sub(r"^(#{1,5}) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", markdown, flags=re.M)


def _drop_title(markdown: str) -> str:
    """The Markdown without its first ``# `` heading (the report names the section itself)."""
    return re.sub(r"\A\s*# [^\n]*\n", "", markdown, count=1)


def render_markdown(config: ReportConfig, parts: _Parts, summary: dict[str, Any], title: str) -> str:
    """The report as Markdown (images referenced by file name)."""
    direction, metric = summary["objective"]["type"], summary["objective"]["metric"]
    lines = [f"# {title}", "", "## Summary", ""]
    rows: list[tuple[str, Any]] = []
    if "corpus" in summary:
        c = summary["corpus"]
        ex = c["examples"]
        rows += [("corpus", f"{c['name']} ({c['task']}, {c['labels']} labels)"),
                 ("examples train / dev / test", f"{_fmt(ex['train'])} / {_fmt(ex['dev'])} / {_fmt(ex['test'])}")]
    if "lr_range_test" in summary:
        lr = summary["lr_range_test"]
        rng = lr.get("range")
        rows.append(("LR range test", f"suggested {_fmt(lr['suggested_lr'])}"
                     + (f", range [{_fmt(rng[0])}, {_fmt(rng[1])}]" if isinstance(rng, list) and len(rng) == 2
                        else ", no range")))
    if "trials" in summary:
        t = summary["trials"]
        rows.append(("trials", f"{t['total']} ({t['completed']} completed, {t['pruned']} pruned, "
                               f"{t['failed']} failed, {t['running']} running)"))
    if "best" in summary:
        b = summary["best"]
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in b["assignment"].items()) or "-"
        rows += [("best trial", f"{b['trial']} ({metric} {_fmt(b['objective'])}, {direction})"),
                 ("best parameters", params)]
    if "final_training" in summary:
        f = summary["final_training"]
        rows.append(("final training", f"dev score {_fmt(f['dev_score'])}, best epoch {_fmt(f['best_epoch'])} "
                                       f"of {_fmt(f['epochs'])}, {f['status'] or '-'}"
                                       + (f"; then trained on train + dev for {f['train_with_dev_epochs']} epochs"
                                          if f.get("train_with_dev_epochs") else "")))
    if "test" in summary:
        s = summary["test"]
        rows.append((f"**{s['split']} score**", f"**{_fmt(s['score'])}** ({s['metric']})"))
        b = s.get("baseline")
        if b:
            rows += [(f"{s['split']} score of the baseline", f"{_fmt(b['score'])} ({b['method']})"),
                     ("tuned model minus baseline", f"**{b['delta'] * 100:+.1f} points**: {b['verdict']}")]
    lines += _table(["", ""], rows) if rows else ["Nothing to summarize."]

    lines += ["", "## Corpus", ""]
    if parts.card:
        lines.append(_demote(_drop_title(parts.card), 1).strip())
    elif parts.corpus is not None:
        lines.append(f"`corpus.json` of {parts.corpus.get('name')}; no corpus card was found.")
    else:
        lines.append("Not part of this report.")

    lines += ["", "## Learning-rate range test", ""]
    if parts.lr_summary:
        lines.append(_demote(_drop_title(parts.lr_summary), 1).strip())
    elif parts.lr is not None:
        lines.append(f"Suggested learning rate: {_fmt(parts.lr.get('suggested_lr'))}.")
    else:
        lines.append("Not run (or not part of this report).")
    if "lr_curve.png" in parts.images:
        lines += ["", "![learning-rate range test](lr_curve.png)"]

    lines += ["", "## Search", ""]
    if parts.trials:
        lines += trials_markdown(parts.trials, (summary.get("best") or {}).get("trial"))
        lines += ["", "![trials](trials.png)"]
    elif config.trials:
        lines.append("The trial journal holds no trials.")
    else:
        lines.append("Not part of this report.")
    candidates = (parts.best or {}).get("candidates") or []
    if candidates:
        lines += ["", "Finalists (re-trained with extra seeds; the winner has the best mean):", ""]
        lines += _table(["trial", "mean", "spread", "values", "seeds"],
                        [(c.get("trial_id"), c.get("objective"), c.get("spread"),
                          ", ".join(_fmt(v) for v in c.get("values") or []),
                          ", ".join(str(x) for x in c.get("seeds") or [])) for c in candidates])
    if parts.unreadable_trials:
        lines += ["", "Unreadable trial records (skipped): " + ", ".join(f"`{u}`" for u in parts.unreadable_trials)]

    lines += ["", "## Final training", ""]
    if parts.train is not None:
        t = parts.train
        lines += _table(["", ""], [("status", t.get("status")), ("dev score (mean over runs)", t.get("dev_score")),
                                   ("dev scores", ", ".join(_fmt(s) for s in t.get("dev_scores") or []) or "-"),
                                   ("best run / epoch", f"{_fmt(t.get('best_run'))} / {_fmt(t.get('best_epoch'))}"),
                                   ("epochs", t.get("epochs")), ("seconds", t.get("seconds")),
                                   *([("trained again on train + dev", f"{t['train_with_dev_epochs']} epochs "
                                       "(trainWithDev: the model file; dev scores above are held-out)")]
                                     if t.get("train_with_dev_epochs") else []),
                                   ("model", f"`{t.get('model_uri')}`")])
        by_corpus = t.get("dev_scores_by_corpus") or {}
        if isinstance(by_corpus, Mapping) and by_corpus:
            lines += ["", "Dev score per corpus (best epoch of the best run):", ""]
            lines += _table(["corpus", "dev score"], list(by_corpus.items()))
        hp = t.get("hyperparameters") or {}
        if hp:
            lines += ["", "Hyperparameters:", ""]
            lines += _table(["name", "value"], [(k, json.dumps(v) if isinstance(v, (list, dict)) else v)
                                                for k, v in sorted(hp.items())])
        if "training_curve.png" in parts.images:
            lines += ["", "![training curve](training_curve.png)"]
        if "weights.png" in parts.images:
            lines += ["", "![weights](weights.png)"]
    else:
        lines.append("Not part of this report.")

    lines += ["", "## Evaluation", ""]
    baseline = (parts.evaluation or {}).get("baseline")
    if isinstance(baseline, dict) and not (parts.evaluation_md and "## Baseline" in parts.evaluation_md) \
            and isinstance(parts.evaluation.get("main_score"), (int, float)):
        from kftune.nlp.baseline import comparison_markdown

        lines += comparison_markdown(float(parts.evaluation["main_score"]), baseline,
                                     str(parts.evaluation.get("split", "test")), heading="### Baseline") + [""]
    if parts.evaluation_md:
        lines.append(_demote(_drop_title(parts.evaluation_md), 1).strip())
    elif parts.evaluation is not None:
        e = parts.evaluation
        lines.append(f"{e.get('main_score_name')}: {_fmt(e.get('main_score'))}")
    else:
        lines.append("Not part of this report.")
    if "confusion_matrix.png" in parts.images:
        lines += ["", "![confusion matrix](confusion_matrix.png)"]
    lines += ["", "## Sources", ""]
    lines += [f"- {k}: `{v}`" for k, v in sorted(parts.sources.items())] or ["- none"]
    lines += ["", f"Report by kftune {__version__}.", ""]
    return "\n".join(lines)


def trials_markdown(trials: Sequence[Any], best_id: str | None = None) -> list[str]:
    """The trials as Markdown table lines: id (the best in bold), state, epochs, objective, every
    searched parameter and the reason a trial was pruned or failed."""
    names: list[str] = []
    for t in trials:
        names += [n for n in t.assignment if n not in names]
    rows = []
    for t in trials:
        mark = f"**{t.id}**" if t.id == best_id else t.id
        rows.append((mark, t.state, t.budget_used, t.objective, *(t.assignment.get(n) for n in names),
                     t.reason or ""))
    return _table(["trial", "state", "epochs", "objective", *names, "note"], rows)


def trials_png(trials: Sequence[Any], direction: str, metric: str) -> bytes:
    """The trials figure: objective per trial in suggestion order (best so far as a line), and the
    objective against each searched parameter (log axis for positive values spanning > 2 decades)."""
    from io import BytesIO

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names: list[str] = []
    for t in trials:
        names += [n for n in t.assignment if n not in names]
    panels = 1 + len(names)
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), dpi=100)
    FigureCanvasAgg(fig)
    colors = {"completed": "tab:blue", "pruned": "tab:orange", "failed": "tab:red", "running": "tab:gray"}
    ax = fig.add_subplot(rows, cols, 1)
    better = max if direction == "maximize" else min
    best_so_far, xs, ys = None, [], []
    for i, t in enumerate(trials):
        if t.has_objective:
            ax.scatter([i], [t.objective], color=colors[t.state], s=22, zorder=3)
            if t.state == "completed":
                best_so_far = t.objective if best_so_far is None else better(best_so_far, t.objective)
        else:
            ax.scatter([i], [0], marker="x", color=colors[t.state], s=22, zorder=3)
        if best_so_far is not None:
            xs.append(i)
            ys.append(best_so_far)
    if xs:
        ax.step(xs, ys, where="post", color="black", linewidth=1, label="best completed so far")
    for state in [s for s in colors if any(t.state == s for t in trials)]:  # a legend entry per state shown
        ax.scatter([], [], color=colors[state], s=22, label=state)
    ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("trial (suggestion order)")
    ax.set_ylabel(metric)
    ax.set_title("objective per trial", fontsize=9)
    for k, name in enumerate(names, start=2):
        ax = fig.add_subplot(rows, cols, k)
        points = [(t.assignment.get(name), t.objective, t.state) for t in trials
                  if t.has_objective and name in t.assignment]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _, _ in points)
        if numeric and points:
            values = [float(v) for v, _, _ in points]
            ax.scatter(values, [o for _, o, _ in points], c=[colors[s] for _, _, s in points], s=22)
            if min(values) > 0 and max(values) / min(values) > 100:
                ax.set_xscale("log")
        elif points:
            cats = sorted({str(v) for v, _, _ in points}, key=_natural_key)
            ax.scatter([cats.index(str(v)) for v, _, _ in points], [o for _, o, _ in points],
                       c=[colors[s] for _, _, s in points], s=22)
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels(cats, fontsize=7)
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# --------------------------------------------------------------------------- Markdown -> HTML
_INLINE = re.compile(r"(!\[[^\]]*\]\([^)]+\)|\*\*[^*]+\*\*|`[^`]+`)")


def _inline(text: str, images: Mapping[str, bytes]) -> str:
    out = []
    for piece in _INLINE.split(text.replace("\\|", "|")):
        if not piece:
            continue
        m = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", piece)
        if m:
            data = images.get(m.group(2))
            src = f"data:image/png;base64,{base64.b64encode(data).decode()}" if data else html.escape(m.group(2))
            out.append(f'<img alt="{html.escape(m.group(1))}" src="{src}">')
        elif piece.startswith("**") and piece.endswith("**") and len(piece) > 4:
            out.append(f"<strong>{html.escape(piece[2:-2])}</strong>")
        elif piece.startswith("`") and piece.endswith("`") and len(piece) > 2:
            out.append(f"<code>{html.escape(piece[1:-1])}</code>")
        else:
            out.append(html.escape(piece))
    return "".join(out)


def _row_cells(line: str) -> list[str]:
    body = line.strip().strip("|")
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


def markdown_to_html(markdown: str, images: Mapping[str, bytes], title: str) -> str:
    """A self-contained HTML page from the Markdown this step and the other steps write: headings,
    pipe tables, ``-`` lists, paragraphs, bold, code spans and PNG images (embedded as data URIs)."""
    body: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        heading = re.match(r"^(#{1,6}) (.*)$", line)
        if heading:
            level = len(heading.group(1))
            body.append(f"<h{level}>{_inline(heading.group(2), images)}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            has_rule = len(block) > 1 and re.fullmatch(r"[\s|:\-]+", block[1]) is not None
            head, rest = (block[0], block[2:]) if has_rule else (None, block)
            table = ["<table>"]
            if head is not None and any(_row_cells(head)):
                table.append("<tr>" + "".join(f"<th>{_inline(c, images)}</th>" for c in _row_cells(head)) + "</tr>")
            table += ["<tr>" + "".join(f"<td>{_inline(c, images)}</td>" for c in _row_cells(r)) + "</tr>"
                      for r in rest]
            body.append("\n".join(table + ["</table>"]))
        elif line.lstrip().startswith("- "):
            items = []
            while i < len(lines) and lines[i].lstrip().startswith("- "):
                items.append(f"<li>{_inline(lines[i].lstrip()[2:], images)}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        elif not line.strip():
            i += 1
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#{1,6} |\s*\||\s*- )", lines[i]):
                para.append(lines[i])
                i += 1
            body.append(f"<p>{_inline(' '.join(para), images)}</p>")
    style = ("body{font-family:sans-serif;max-width:72em;margin:1em auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
             "text-align:left}img{max-width:100%}code{background:#f4f4f4;padding:0 3px}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


# --------------------------------------------------------------------------- run
def run(config: ReportConfig) -> ReportResult:
    """Read the parts, write ``report.md``, ``report.html``, ``trials.png`` and ``summary.json`` (last)
    to ``config.out``. Raises :class:`ConfigError` for an unusable config and :class:`DataError` for an
    input that exists but cannot be read."""
    config.validate()
    from kftune.io.store import open_store, put_json, put_text

    direction, metric, name = _objective(config)
    parts = _read_parts(config)
    summary = _summary(config, parts, direction, metric, name)
    title = config.title or f"kftune report: {summary.get('name') or 'run'}"
    images = dict(parts.images)
    if parts.trials:
        images[TRIALS_PNG] = trials_png(parts.trials, direction, metric)
    markdown = render_markdown(config, parts, summary, title)
    store = open_store(config.out)
    artifacts: dict[str, str] = {}
    for image_name, data in sorted(images.items()):
        store.put_bytes(image_name, data)
        artifacts[image_name] = store.uri_for(image_name)
    put_text(store, REPORT_MD, markdown)
    page = markdown_to_html(markdown, images, title)
    put_text(store, REPORT_HTML, page)
    artifacts[REPORT_MD], artifacts[REPORT_HTML] = store.uri_for(REPORT_MD), store.uri_for(REPORT_HTML)
    summary["report"] = {"markdown": artifacts[REPORT_MD], "html": artifacts[REPORT_HTML]}
    put_json(store, SUMMARY_JSON, summary)
    artifacts[SUMMARY_JSON] = store.uri_for(SUMMARY_JSON)
    log.info("report written to %s", store.root_uri)
    return ReportResult(out=store.root_uri, summary=summary, markdown=markdown, artifacts=artifacts, html=page)


def run_pipeline(config: RunReportConfig, *, job: Any, best: Mapping[str, Any]) -> ReportResult:
    """The report of a pipeline run (see :class:`RunReportConfig`), from the parsed ``job`` and the selection
    record ``best`` (select-best's output); releases the run's lease when the run's tasks hold it. The
    summary it returns also names the ``run_id`` and the ``store``."""
    from kftune.io.journal import RunJournal
    from kftune.io.lease import pipeline_owner, release_for_pipeline

    journal = RunJournal.open(config.store, config.run_id)
    lr_find = config.lr_find
    if lr_find and not _open(lr_find).exists("result.json"):
        lr_find = None  # the LR range test was off: its output holds no result
    result = run(ReportConfig(out=journal.run_uri("report"), corpus=config.corpus, lr_find=lr_find,
                              trials=journal.run_uri("search/trials"), train=config.train,
                              evaluation=config.evaluation, job=job, best_record=best))
    release_for_pipeline(journal.store, config.run_id, pipeline_owner(config.lease_owner, config.job_id))
    return dataclasses.replace(result, summary={**result.summary, "run_id": config.run_id, "store": config.store})


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kftune report",
        description="Combine a run's outputs (corpus card, LR range test, trials, final training, evaluation) into "
                    "report.md, a self-contained report.html, trials.png and summary.json.")
    p.add_argument("--out", required=True, help="output directory or store URI")
    p.add_argument("--corpus", help="output of `kftune corpus` (corpus.json, card.md)")
    p.add_argument("--lr-find", help="output of `kftune lr-find` (result.json, summary.md, lr_curve.png)")
    p.add_argument("--trials", help="the trial journal: directory or store prefix of trial records (*.json)")
    p.add_argument("--best", help="the selection record (a JSON file); default: the best completed trial")
    p.add_argument("--train", help="output of `kftune train` (result.json, training_curve.png)")
    p.add_argument("--evaluation", help="output of `kftune evaluate` (result.json, report.md, confusion_matrix.png)")
    p.add_argument("--spec", help="the TuningJob spec: run name, objective metric and direction")
    p.add_argument("--title", help="the report's title")
    add_common_arguments(p)
    return p


def config_from_args(args: argparse.Namespace) -> ReportConfig:
    return ReportConfig(out=args.out, corpus=args.corpus, lr_find=args.lr_find, trials=args.trials, best=args.best,
                        train=args.train, evaluation=args.evaluation, spec=args.spec, title=args.title)


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        result = run(config_from_args(args))
        print(f"report: {result.artifacts[REPORT_MD]} ({result.artifacts[REPORT_HTML]})")
        return 0

    return run_main(body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
