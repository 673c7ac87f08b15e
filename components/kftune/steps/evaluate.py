"""``kftune evaluate``: score a trained model on a corpus split; write metrics, a report and predictions.

Reads the model file written by ``kftune train`` (``--model``, a path or ``s3://`` URI) and one split
of the corpus step's output (``--corpus``, a directory or store URI; ``--split test`` by default),
predicts every sentence of the split (the corpus tokens as they are, so tags align with gold tags),
and scores the predictions with :func:`kftune.nlp.evaluation.evaluate_predictions`: accuracy for
classification, strict span F1 for BIO/BIOES tags, token accuracy for other tags (POS).

Output in ``--out`` (a directory or store URI):

- ``result.json``: :meth:`EvaluationResult.to_dict` plus where it came from (model, corpus, split,
  timing, the metric values logged); ``EvaluationResult.from_dict`` reads it back.
- ``report.md``: the Markdown report (summary, per-class table, confusion matrix).
- ``confusion_matrix.png``: rows normalized (classification, and tagging without spans).
- ``predictions.jsonl``: one line per example in split order: ``tokens``, ``gold``, ``predicted``,
  ``score`` (the predicted label's probability; for tagging the mean of the tag probabilities,
  ``null`` for an empty sentence), ``tag_scores`` (tagging) and ``correct``.
- ``baseline.json`` (unless ``baseline`` is off, ``--no-baseline``): the baseline a user would try
  first (:mod:`kftune.nlp.baseline`: TF-IDF + logistic regression with ``C`` picked on dev for
  classification, the most frequent tag per word for tagging), trained on the corpus' train split (on
  train + dev when the model was, ``train.trainWithDev``: it says so in its metadata) and
  scored on the same split with the same metric as the model, plus the model's score and the
  difference. ``result.json`` holds it under ``baseline`` and ``report.md`` shows the three numbers
  side by side.

Gold labels are scored as written in the corpus. A gold label the model never saw in training can
never be predicted: it is counted as an error under its own name, listed in ``unseen_gold_labels``
and logged as a warning (span scores keep such entities as real gold spans). Metrics
``<split>_score``, ``<split>_accuracy``, ``<split>_f1_micro`` and ``<split>_f1_macro`` (``test_*`` by
default), and with the baseline ``baseline_<split>_score`` and ``delta_vs_baseline`` (model minus
baseline), go to the sinks configured in the environment (:func:`kftune.io.metrics.sinks_from_env`).

A corpus prepared from several corpora (``spec.corpus.corpora``; each example names its ``corpus``) is
also scored per corpus, with the same metric: ``result.json`` ``corpora`` (``{corpus: {examples,
score}}``), a "Per corpus" table in ``report.md``, and metrics ``<split>_score_<corpus>`` (the corpus
name with every character but letters, digits and ``_`` made ``_``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from kftune._progress import Progress
from kftune._version import __version__
from kftune.core.errors import ConfigError, DataError, Problem
from kftune.io.metrics import MetricsSink
from kftune.nlp.baseline import BASELINE_FILE
from kftune.nlp.evaluation import EvaluationResult, confusion_matrix_png, evaluate_predictions, render_markdown
from kftune.steps._common import CheckedConfig, add_common_arguments, run_main

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
DEVICES = ("auto", "cpu", "cuda")
TASK_TYPES = ("text_classification", "sequence_labeling")
RESULT_FILE, REPORT_FILE, PNG_FILE, PREDICTIONS_FILE = ("result.json", "report.md", "confusion_matrix.png",
                                                        "predictions.jsonl")
PREDICT_CHUNK = 2048
"""Sentences handed to ``predict`` per call (batches are formed inside a chunk; progress per chunk)."""


# --------------------------------------------------------------------------- config and result
@dataclass(frozen=True)
class EvaluateConfig(CheckedConfig):
    """What to evaluate and where the outputs go (see the module docstring).

    ``model``: the model file (path or URI); ``corpus``: the corpus step's output (directory or URI);
    ``split``: train, dev or test; ``out``: output directory or store URI; ``batch_size``: sentences
    per forward pass; ``device``: auto (CUDA when present), cpu or cuda; ``title``: the report's title
    (default: model, corpus and split); ``baseline``: train and score the baseline beside the model.
    """

    model: str
    corpus: str
    out: str
    split: str = "test"
    batch_size: int = 64
    device: str = "auto"
    title: str | None = None
    baseline: bool = True

    def problems(self) -> list[Problem]:
        """Every problem with this config (empty when it is usable)."""
        p: list[Problem] = []
        for name, flag, what in (("model", "--model", "the model file written by `kftune train`"),
                                 ("corpus", "--corpus", "the output of `kftune corpus`"),
                                 ("out", "--out", "an output directory or store URI")):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                p.append(Problem(f"evaluate.{name}", f"missing: give {flag} with {what}"))
        if isinstance(self.model, str) and self.model.strip() and _is_local(self.model):
            path = _local_path(self.model)
            if not path.is_file():
                p.append(Problem("evaluate.model", f"{self.model!r} is not a file; give the model.pt written by "
                                                   "`kftune train`"))
        if isinstance(self.corpus, str) and self.corpus.strip() and _is_local(self.corpus):
            path = _local_path(self.corpus)
            if not (path / "corpus.json").is_file():
                p.append(Problem("evaluate.corpus", f"{self.corpus!r} holds no corpus.json; give the output "
                                                    "directory of `kftune corpus`"))
        if self.split not in SPLITS:
            p.append(Problem("evaluate.split", f"{self.split!r} is not one of {', '.join(SPLITS)}"))
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            p.append(Problem("evaluate.batch_size", f"{self.batch_size!r} must be a positive integer, e.g. 64"))
        if self.device not in DEVICES:
            p.append(Problem("evaluate.device", f"{self.device!r} is not one of {', '.join(DEVICES)}"))
        if not isinstance(self.baseline, bool):
            p.append(Problem("evaluate.baseline", f"{self.baseline!r} must be true or false"))
        return p


@dataclass(frozen=True)
class EvaluateResult:
    """What ``run`` produced: the scores, where the files went and how long prediction took."""

    evaluation: EvaluationResult
    out: str
    artifacts: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    examples_per_second: float = 0.0
    baseline: Any = None
    """The :class:`kftune.nlp.baseline.BaselineResult`, or ``None`` when the baseline was off."""
    markdown: str = ""
    """The report (``report.md``)."""

    @property
    def main_score(self) -> float:
        return self.evaluation.main_score

    @property
    def delta_vs_baseline(self) -> float | None:
        """The model's main score minus the baseline's (``None`` without a baseline)."""
        return None if self.baseline is None else self.evaluation.main_score - self.baseline.test_score

    @property
    def confusion(self) -> tuple[list[str], list[list[int]]] | None:
        """``(categories, matrix)`` as KFP's ``ClassificationMetrics.log_confusion_matrix`` takes them, or
        ``None`` when the evaluation has no confusion matrix (span-level tagging)."""
        from kftune.nlp.evaluation import to_kfp_confusion_matrix

        return to_kfp_confusion_matrix(self.evaluation) if self.evaluation.has_confusion else None

    @property
    def metadata(self) -> dict[str, Any]:
        """The main score (name and value) and, with a baseline, the baseline's method, score and the
        difference: the metadata of the pipeline's evaluation artifact."""
        out: dict[str, Any] = {"main_score_name": self.evaluation.main_score_name,
                               "main_score": self.evaluation.main_score}
        if self.baseline is not None:
            out.update(baseline=self.baseline.method, baseline_score=self.baseline.test_score,
                       delta_vs_baseline=self.delta_vs_baseline)
        return out


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://")).expanduser()


# --------------------------------------------------------------------------- reading inputs
def _read_corpus(uri: str, split: str) -> tuple[dict[str, Any], list[Any]]:
    """``corpus.json`` and the examples of ``split`` (:class:`kftune.nlp.data.Example`)."""
    info, splits = _read_splits(uri, [split])
    return info, splits[split]


def _read_splits(uri: str, splits: Sequence[str]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    from kftune.io.store import open_store
    from kftune.nlp.data import read_corpus_from_store

    return read_corpus_from_store(open_store(uri), uri, list(dict.fromkeys(splits)))


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError([Problem("evaluate.device", "'cuda' was asked for but no CUDA device is available; "
                                                      "use auto or cpu")])
    return name


# --------------------------------------------------------------------------- the step
def run(config: EvaluateConfig, *, sinks: MetricsSink | None = None) -> EvaluateResult:
    """Evaluate ``config.model`` on ``config.split`` of ``config.corpus`` and write the outputs to
    ``config.out`` (see the module docstring).

    ``sinks``: where the metrics go (default: :func:`kftune.io.metrics.sinks_from_env` for the step
    ``evaluate``, closed at the end; a given sink is flushed, not closed). Raises :class:`ConfigError`
    for an unusable config or a model and corpus of different tasks, :class:`DataError` for unreadable
    input, :class:`~kftune.nlp.model_io.IncompatibleModelError` for a model file of another version.
    """
    config.validate()
    from kftune.io.store import open_store, put_json, put_text
    from kftune.nlp.model_io import load_model
    from kftune.nlp.predict import predict

    wanted = [config.split, "train", "dev"] if config.baseline else [config.split]
    info, splits = _read_splits(config.corpus, wanted)
    examples = splits[config.split]
    task_type = info["task"]
    device = _device(config.device)
    model = load_model(config.model, device=device, open_store=open_store)
    if model.task.type != task_type:
        raise ConfigError([Problem("evaluate.model", f"the model is a {model.task.type} model but the corpus "
                                                     f"{config.corpus!r} is {task_type}; pass a model trained "
                                                     "on this corpus")])
    tag_scheme = info.get("tag_scheme") if task_type == "sequence_labeling" else None
    if tag_scheme is None and task_type == "sequence_labeling":
        tag_scheme = model.task.tag_scheme
    label_type = info.get("label_type") or model.task.label_type
    corpus_name = info.get("name") or config.corpus
    log.info("evaluating %s on %s/%s: %d examples, task %s%s, device %s", config.model, corpus_name, config.split,
             len(examples), task_type, f" ({tag_scheme})" if tag_scheme else "", device)

    started = time.perf_counter()
    predictions: list[Any] = []
    with Progress(len(examples), f"evaluate {config.split}", unit="sentence") as bar:
        for start in range(0, len(examples), PREDICT_CHUNK):
            chunk = examples[start:start + PREDICT_CHUNK]   # tokens as they are, with the raw text
            predictions += predict(model, chunk, batch_size=config.batch_size)
            bar.update(len(chunk))
    seconds = time.perf_counter() - started
    if len(predictions) != len(examples):
        raise DataError(f"predict returned {len(predictions)} predictions for {len(examples)} examples")

    if task_type == "text_classification":
        gold: list[Any] = [e.label for e in examples]
        predicted: list[Any] = [p.label for p in predictions]
    else:
        gold = [list(e.tags or ()) for e in examples]
        predicted = [list(p.tags or ()) for p in predictions]
    evaluation = evaluate_predictions(gold, predicted, task_type, tag_scheme=tag_scheme, label_type=label_type,
                                      labels=sorted(model.labels))
    prefix = config.split
    metrics = {f"{prefix}_score": evaluation.main_score, f"{prefix}_accuracy": evaluation.accuracy,
               f"{prefix}_f1_micro": evaluation.micro.f1, f"{prefix}_f1_macro": evaluation.macro.f1}
    corpora = _scores_by_corpus(examples, gold, predicted, task_type, tag_scheme, label_type, sorted(model.labels))
    for name, entry in corpora.items():
        metrics[f"{prefix}_score_{_metric_suffix(name)}"] = entry["score"]
    rate = len(examples) / seconds if seconds > 0 else 0.0
    baseline = None
    if config.baseline:
        from kftune.nlp.baseline import run_baseline

        baseline = run_baseline(task_type, splits["train"], splits["dev"], examples, tag_scheme=tag_scheme,
                                label_type=label_type, train_with_dev="train_with_dev" in model.metadata)
        if baseline.metric != evaluation.main_score_name:  # same scorer and scheme: cannot happen
            raise DataError(f"the baseline is scored by {baseline.metric} but the model by "
                            f"{evaluation.main_score_name}")
        metrics[f"baseline_{prefix}_score"] = baseline.test_score
        metrics["delta_vs_baseline"] = evaluation.main_score - baseline.test_score

    store = open_store(config.out)
    artifacts: dict[str, str] = {}
    put_text(store, PREDICTIONS_FILE, "".join(
        json.dumps(_prediction_record(g, p, pred, task_type), ensure_ascii=False, sort_keys=True) + "\n"
        for g, p, pred in zip(gold, predicted, predictions)))
    artifacts["predictions"] = store.uri_for(PREDICTIONS_FILE)
    if evaluation.has_confusion:
        counted = evaluation.n_tokens if evaluation.n_tokens is not None else evaluation.n_examples
        png_title = f"{corpus_name} {config.split}: confusion matrix (rows normalized, n={counted})"
        store.put_bytes(PNG_FILE, confusion_matrix_png(evaluation, title=png_title))
        artifacts["confusion_matrix"] = store.uri_for(PNG_FILE)
    title = config.title or f"Evaluation of {Path(config.model).name} on {corpus_name} ({config.split})"
    provenance = [
        "", "## Provenance", "",
        f"- model: `{config.model}`" + _model_note(model.metadata),
        f"- corpus: `{config.corpus}` ({corpus_name}), split `{config.split}`",
        f"- prediction: {len(examples)} examples in {seconds:.2f} s ({rate:.1f} examples/s) on {device}, "
        f"batch size {config.batch_size}",
        f"- kftune {__version__}",
    ]
    baseline_md: list[str] = []
    baseline_record: dict[str, Any] | None = None
    if baseline is not None:
        from kftune.nlp.baseline import comparison, comparison_markdown

        versus = comparison(evaluation.main_score, baseline)
        baseline_record = {**baseline.to_dict(), "split": config.split, "trained_on": "train",
                           "model_score": evaluation.main_score, "delta_vs_baseline": versus["delta"],
                           "beats_baseline": versus["beats_baseline"], "verdict": versus["verdict"]}
        put_json(store, BASELINE_FILE, baseline_record)
        artifacts["baseline"] = store.uri_for(BASELINE_FILE)
        baseline_md = [""] + comparison_markdown(evaluation.main_score, baseline, config.split)
    report = (_with_baseline(render_markdown(evaluation, title=title), baseline_md)
              + _corpora_markdown(corpora, evaluation.main_score_name) + "\n".join(provenance) + "\n")
    put_text(store, REPORT_FILE, report)
    artifacts["report"] = store.uri_for(REPORT_FILE)
    record = evaluation.to_dict()
    record.update(split=config.split, model=config.model, corpus=config.corpus, corpus_name=corpus_name,
                  device=device, seconds=round(seconds, 4), examples_per_second=round(rate, 2), metrics=metrics,
                  model_metadata=_jsonable(model.metadata), kftune_version=__version__)
    if baseline_record is not None:
        record["baseline"] = baseline_record
    if corpora:
        record["corpora"] = corpora
    put_json(store, RESULT_FILE, record)  # last: its presence marks a complete evaluation
    artifacts["result"] = store.uri_for(RESULT_FILE)

    from kftune.io.metrics import log_final

    log_final("evaluate", metrics, sinks)
    log.info("%s %s: %s = %.4f (accuracy %.4f, micro F1 %.4f, macro F1 %.4f) -> %s", corpus_name, config.split,
             evaluation.main_score_name, evaluation.main_score, evaluation.accuracy, evaluation.micro.f1,
             evaluation.macro.f1, store.root_uri)
    if baseline_record is not None:
        log.info("baseline %s: %s = %.4f; model %s", baseline.method, baseline.metric, baseline.test_score,
                 baseline_record["verdict"])
    return EvaluateResult(evaluation=evaluation, out=store.root_uri, artifacts=artifacts, metrics=metrics,
                          seconds=seconds, examples_per_second=rate, baseline=baseline, markdown=report)


def _scores_by_corpus(examples: Sequence[Any], gold: Sequence[Any], predicted: Sequence[Any], task_type: str,
                      tag_scheme: str | None, label_type: str | None, labels: Sequence[str]) -> dict[str, Any]:
    """``{corpus: {"examples": n, "score": main score}}`` for a split prepared from several corpora, in the
    order they appear; empty for one corpus."""
    groups: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        if getattr(example, "corpus", None) is not None:
            groups.setdefault(example.corpus, []).append(i)
    if len(groups) < 2:
        return {}
    out = {}
    for name, idx in groups.items():
        part = evaluate_predictions([gold[i] for i in idx], [predicted[i] for i in idx], task_type,
                                    tag_scheme=tag_scheme, label_type=label_type, labels=labels)
        out[name] = {"examples": len(idx), "score": part.main_score}
    return out


def _metric_suffix(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _corpora_markdown(corpora: dict[str, Any], metric: str) -> str:
    if not corpora:
        return ""
    lines = ["", "## Per corpus", "", f"| corpus | examples | {metric} |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {entry['examples']} | {entry['score']:.4f} |" for name, entry in corpora.items()]
    return "\n".join(lines) + "\n"


def _with_baseline(report: str, baseline_md: list[str]) -> str:
    """The evaluation report with the baseline section right after the summary table (before ``## Averages``)."""
    if not baseline_md:
        return report
    section = "\n".join(baseline_md[1:]) + "\n\n"
    marker = "## Averages"
    if marker in report:
        head, _, tail = report.partition(marker)
        return head + section + marker + tail
    return report + "\n".join(baseline_md) + "\n"


def _prediction_record(gold: Any, predicted: Any, prediction: Any, task_type: str) -> dict[str, Any]:
    record: dict[str, Any] = {"tokens": list(prediction.tokens), "gold": gold, "predicted": predicted,
                              "correct": gold == predicted}
    if task_type == "text_classification":
        record["score"] = None if prediction.score is None else round(float(prediction.score), 6)
    else:
        scores = [round(float(s), 6) for s in (prediction.tag_scores or ())]
        record["tag_scores"] = scores
        record["score"] = round(statistics.fmean(scores), 6) if scores else None
    return record


def _model_note(metadata: dict[str, Any]) -> str:
    parts = []
    for key in ("dev_score", "best_epoch", "epochs"):
        if isinstance(metadata.get(key), (int, float)) and not isinstance(metadata.get(key), bool):
            parts.append(f"{key.replace('_', ' ')} {metadata[key]:.4g}" if isinstance(metadata[key], float)
                         else f"{key.replace('_', ' ')} {metadata[key]}")
    return f" ({', '.join(parts)})" if parts else ""


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kftune evaluate",
        description="Score a trained model on a corpus split: accuracy and macro/micro F1 with a per-class report "
                    "(classification), strict span P/R/F1 (BIO/BIOES tags) or token accuracy (POS), a confusion "
                    "matrix, report.md, result.json and predictions.jsonl.")
    p.add_argument("--model", required=True, help="the model file written by `kftune train` (path or s3:// URI)")
    p.add_argument("--corpus", required=True, help="the output of `kftune corpus` (directory or store URI)")
    p.add_argument("--split", default="test", choices=SPLITS, help="which split to score (default: test)")
    p.add_argument("--out", required=True, help="output directory or store URI")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per forward pass (default: 64)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--title", default=None, help="title of report.md")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the baseline (TF-IDF + logistic regression, or most-frequent tag for tagging) that is "
                        "otherwise trained on the train split and scored beside the model (baseline.json)")
    add_common_arguments(p)
    return p


def config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    return EvaluateConfig(model=args.model, corpus=args.corpus, out=args.out, split=args.split,
                          batch_size=args.batch_size, device=args.device, title=args.title,
                          baseline=args.baseline)


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        result = run(config_from_args(args))
        e = result.evaluation
        baseline = ""
        if result.baseline is not None:
            baseline = (f" baseline={result.baseline.test_score:.4f} "
                        f"delta_vs_baseline={result.delta_vs_baseline:+.4f}")
        print(f"{e.main_score_name}={e.main_score:.4f} accuracy={e.accuracy:.4f} f1_micro={e.micro.f1:.4f} "
              f"f1_macro={e.macro.f1:.4f}{baseline} -> {result.out}")
        return 0

    return run_main(body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
