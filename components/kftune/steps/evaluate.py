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

Gold labels are scored as written in the corpus. A gold label the model never saw in training can
never be predicted: it is counted as an error under its own name, listed in ``unseen_gold_labels``
and logged as a warning (span scores keep such entities as real gold spans). Metrics
``<split>_score``, ``<split>_accuracy``, ``<split>_f1_micro`` and ``<split>_f1_macro`` (``test_*`` by
default) go to the sinks configured in the environment (:func:`kftune.io.metrics.sinks_from_env`).
"""

from __future__ import annotations

import argparse
import json
import logging
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
    (default: model, corpus and split).
    """

    model: str
    corpus: str
    out: str
    split: str = "test"
    batch_size: int = 64
    device: str = "auto"
    title: str | None = None

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

    @property
    def main_score(self) -> float:
        return self.evaluation.main_score


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://")).expanduser()


# --------------------------------------------------------------------------- reading inputs
def _read_corpus(uri: str, split: str) -> tuple[dict[str, Any], list[Any]]:
    """``corpus.json`` and the examples of ``split`` (:class:`kftune.nlp.data.Example`)."""
    from kftune.io.store import open_store
    from kftune.nlp.data import read_corpus_from_store

    info, splits = read_corpus_from_store(open_store(uri), uri, [split])
    return info, splits[split]


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

    info, examples = _read_corpus(config.corpus, config.split)
    task_type = info["task"]
    device = _device(config.device)
    model = load_model(config.model, device=device)
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
            chunk = [list(e.tokens) for e in examples[start:start + PREDICT_CHUNK]]
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
    rate = len(examples) / seconds if seconds > 0 else 0.0

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
    put_text(store, REPORT_FILE, render_markdown(evaluation, title=title) + "\n".join(provenance) + "\n")
    artifacts["report"] = store.uri_for(REPORT_FILE)
    record = evaluation.to_dict()
    record.update(split=config.split, model=config.model, corpus=config.corpus, corpus_name=corpus_name,
                  device=device, seconds=round(seconds, 4), examples_per_second=round(rate, 2), metrics=metrics,
                  model_metadata=_jsonable(model.metadata), kftune_version=__version__)
    put_json(store, RESULT_FILE, record)  # last: its presence marks a complete evaluation
    artifacts["result"] = store.uri_for(RESULT_FILE)

    from kftune.io.metrics import log_final

    log_final("evaluate", metrics, sinks)
    log.info("%s %s: %s = %.4f (accuracy %.4f, micro F1 %.4f, macro F1 %.4f) -> %s", corpus_name, config.split,
             evaluation.main_score_name, evaluation.main_score, evaluation.accuracy, evaluation.micro.f1,
             evaluation.macro.f1, store.root_uri)
    return EvaluateResult(evaluation=evaluation, out=store.root_uri, artifacts=artifacts, metrics=metrics,
                          seconds=seconds, examples_per_second=rate)


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
    add_common_arguments(p)
    return p


def config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    return EvaluateConfig(model=args.model, corpus=args.corpus, out=args.out, split=args.split,
                          batch_size=args.batch_size, device=args.device, title=args.title)


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        result = run(config_from_args(args))
        e = result.evaluation
        print(f"{e.main_score_name}={e.main_score:.4f} accuracy={e.accuracy:.4f} f1_micro={e.micro.f1:.4f} "
              f"f1_macro={e.macro.f1:.4f} -> {result.out}")
        return 0

    return run_main(body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
