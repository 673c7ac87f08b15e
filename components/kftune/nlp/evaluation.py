"""Scoring predictions against gold data, and rendering the scores (Markdown, PNG, KFP confusion matrix).

Three kinds of evaluation, chosen by the task and the tag scheme of the corpus:

- ``text_classification``: accuracy (the main score), per-class precision/recall/F1, micro/macro/weighted
  averages and a confusion matrix (:mod:`kftune.core.metrics`).
- ``sequence_labeling`` with ``tag_scheme`` ``"BIO"`` (IOB2) or ``"BIOES"`` (IOBES), e.g. named entities:
  span-level precision/recall/F1 per entity type in seqeval's *strict* mode (an entity counts only when
  its type and both boundaries match; a span that breaks the scheme, like an ``I-`` without its ``B-``,
  is not an entity); micro span F1 is the main score. Token accuracy is reported too.
- ``sequence_labeling`` without a tag scheme, e.g. part-of-speech tags: token accuracy (the main score),
  with per-tag scores and a confusion matrix over tokens.

Labels are strings and unknown ones never crash: ``"<unk>"`` or any label the model does not know is
counted like the others. For span scores a tag that does not fit the scheme (``"<unk>"``, ``"X"``) is
read as ``"O"`` (outside every entity) and a note in the result says how often that happened; token
accuracy still counts such a tag as the string it is.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from kftune.core.errors import ConfigError, DataError, Problem
from kftune.core.metrics import (
    Averages,
    ClassScores,
    classification_scores,
    flatten_sequences,
    macro_average,
    micro_average,
    weighted_average,
)

log = logging.getLogger(__name__)

TASK_TYPES = ("text_classification", "sequence_labeling")
TAG_SCHEMES = ("BIO", "BIOES")
_SCHEME_ALIASES = {"BIO": "BIO", "IOB2": "BIO", "BIOES": "BIOES", "IOBES": "BIOES"}
_SCHEME_PREFIXES = {"BIO": frozenset("BI"), "BIOES": frozenset("BIES")}
MARKDOWN_CONFUSION_MAX_LABELS = 50
"""Confusion matrices with more labels are left out of the Markdown report (PNG and JSON keep them)."""


@dataclass(frozen=True)
class EvaluationResult:
    """The scores of one evaluation. ``to_dict()`` is JSON-able and ``from_dict`` reads it back.

    ``per_class`` holds classes (text classification), entity types (span scores) or tags (tagging
    without a scheme), as ``level`` says. ``micro``/``macro``/``weighted`` average ``per_class``.
    ``accuracy`` is example accuracy for classification and token accuracy for tagging.
    ``labels``/``confusion`` (gold rows, predicted columns) are empty for span evaluation.
    ``unseen_gold_labels`` counts gold labels outside the ``labels`` the model knows (if given).
    """

    task_type: str
    tag_scheme: str | None
    label_type: str | None
    main_score_name: str
    main_score: float
    level: str
    n_examples: int
    n_tokens: int | None
    accuracy: float
    token_accuracy: float | None
    micro: Averages
    macro: Averages
    weighted: Averages
    per_class: tuple[ClassScores, ...]
    labels: tuple[str, ...] = ()
    confusion: tuple[tuple[int, ...], ...] = ()
    unseen_gold_labels: tuple[tuple[str, int], ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def f1_micro(self) -> float:
        return self.micro.f1

    @property
    def f1_macro(self) -> float:
        return self.macro.f1

    @property
    def has_confusion(self) -> bool:
        return bool(self.labels)

    def confusion_array(self) -> np.ndarray:
        """The confusion matrix as an ``int64`` array of shape ``(len(labels), len(labels))``."""
        return np.array(self.confusion, dtype=np.int64).reshape(len(self.labels), len(self.labels))

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_type": self.task_type,
            "tag_scheme": self.tag_scheme,
            "label_type": self.label_type,
            "main_score_name": self.main_score_name,
            "main_score": self.main_score,
            "level": self.level,
            "n_examples": self.n_examples,
            "n_tokens": self.n_tokens,
            "accuracy": self.accuracy,
            "token_accuracy": self.token_accuracy,
            "micro": self.micro.to_dict(),
            "macro": self.macro.to_dict(),
            "weighted": self.weighted.to_dict(),
            "per_class": [row.to_dict() for row in self.per_class],
            "labels": list(self.labels),
            "confusion": [list(row) for row in self.confusion],
            "unseen_gold_labels": {label: count for label, count in self.unseen_gold_labels},
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvaluationResult":
        """Read back what :meth:`to_dict` wrote (e.g. ``result.json``); raises :class:`DataError` if it cannot."""
        try:
            return cls(
                task_type=str(data["task_type"]),
                tag_scheme=data.get("tag_scheme"),
                label_type=data.get("label_type"),
                main_score_name=str(data["main_score_name"]),
                main_score=float(data["main_score"]),
                level=str(data["level"]),
                n_examples=int(data["n_examples"]),
                n_tokens=None if data.get("n_tokens") is None else int(data["n_tokens"]),
                accuracy=float(data["accuracy"]),
                token_accuracy=None if data.get("token_accuracy") is None else float(data["token_accuracy"]),
                micro=Averages(**data["micro"]),
                macro=Averages(**data["macro"]),
                weighted=Averages(**data["weighted"]),
                per_class=tuple(ClassScores(**row) for row in data["per_class"]),
                labels=tuple(data.get("labels", ())),
                confusion=tuple(tuple(int(v) for v in row) for row in data.get("confusion", ())),
                unseen_gold_labels=tuple((str(k), int(v)) for k, v in dict(data.get("unseen_gold_labels", {})).items()),
                notes=tuple(data.get("notes", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"not an evaluation result: {exc!r}") from exc


def normalize_tag_scheme(tag_scheme: str | None) -> str | None:
    """``"BIO"``/``"IOB2"`` -> ``"BIO"``, ``"BIOES"``/``"IOBES"`` -> ``"BIOES"``, ``None``/``""`` -> ``None``."""
    if tag_scheme is None or tag_scheme == "":
        return None
    scheme = _SCHEME_ALIASES.get(str(tag_scheme).upper())
    if scheme is None:
        raise ConfigError([Problem("tag_scheme", f"unknown tag scheme {tag_scheme!r}: use one of "
                                                 f"{', '.join(TAG_SCHEMES)}, or none for tags without spans (POS)")])
    return scheme


def evaluate_predictions(gold: Sequence[Any], predicted: Sequence[Any], task_type: str,
                         tag_scheme: str | None = None, label_type: str | None = None, *,
                         labels: Sequence[str] | None = None) -> EvaluationResult:
    """Score ``predicted`` against ``gold`` (see the module docstring for what is computed).

    ``gold``/``predicted``: one label per example for ``text_classification``, one list of tags per
    sentence for ``sequence_labeling`` (same lengths, or :class:`DataError`). ``labels``: the labels the
    model knows (its label dictionary), in the order the confusion matrix should use; gold labels outside
    it are counted in ``unseen_gold_labels`` and logged. Empty inputs give scores of ``0.0``.
    """
    if task_type not in TASK_TYPES:
        raise ConfigError([Problem("task_type",
                                   f"unknown task type {task_type!r}: use one of {', '.join(TASK_TYPES)}")])
    scheme = normalize_tag_scheme(tag_scheme)
    if task_type == "text_classification" and scheme is not None:
        raise ConfigError([Problem("tag_scheme",
                                   f"{tag_scheme!r} makes no sense for text_classification: leave it unset")])

    if task_type == "text_classification":
        gold_flat, pred_flat = [_label(g, "gold", i) for i, g in enumerate(gold)], \
                               [_label(p, "predicted", i) for i, p in enumerate(predicted)]
        if len(gold_flat) != len(pred_flat):
            raise DataError(f"{len(gold_flat)} gold labels but {len(pred_flat)} predictions")
        n_tokens = None
    else:
        gold_seqs = [_tags(g, "gold", i) for i, g in enumerate(gold)]
        pred_seqs = [_tags(p, "predicted", i) for i, p in enumerate(predicted)]
        gold_flat, pred_flat = flatten_sequences(gold_seqs, pred_seqs)
        n_tokens = len(gold_flat)

    unseen: tuple[tuple[str, int], ...] = ()
    notes: list[str] = []
    if labels is not None:
        known = set(labels)
        counts = Counter(g for g in gold_flat if g not in known)
        unseen = tuple(sorted(counts.items()))
        if unseen:
            text = ", ".join(f"{label!r} x{count}" for label, count in unseen)
            what = "tokens" if task_type == "sequence_labeling" else "examples"
            log.warning("gold labels the model never saw in training (scored as errors): %s", text)
            notes.append(f"gold labels the model never saw in training, counted as errors: {text} ({what})")

    token_level = classification_scores(gold_flat, pred_flat, labels)
    if task_type == "text_classification":
        return EvaluationResult(
            task_type=task_type, tag_scheme=None, label_type=label_type, main_score_name="accuracy",
            main_score=token_level.accuracy, level="class", n_examples=len(gold_flat), n_tokens=None,
            accuracy=token_level.accuracy, token_accuracy=None, micro=token_level.micro,
            macro=token_level.macro, weighted=token_level.weighted, per_class=token_level.per_class,
            labels=token_level.labels, confusion=_matrix_tuple(token_level.confusion),
            unseen_gold_labels=unseen, notes=tuple(notes))
    if scheme is None:
        return EvaluationResult(
            task_type=task_type, tag_scheme=None, label_type=label_type, main_score_name="token_accuracy",
            main_score=token_level.accuracy, level="tag", n_examples=len(gold_seqs), n_tokens=n_tokens,
            accuracy=token_level.accuracy, token_accuracy=token_level.accuracy, micro=token_level.micro,
            macro=token_level.macro, weighted=token_level.weighted, per_class=token_level.per_class,
            labels=token_level.labels, confusion=_matrix_tuple(token_level.confusion),
            unseen_gold_labels=unseen, notes=tuple(notes))

    rows, span_notes = span_scores(gold_seqs, pred_seqs, scheme)
    micro = micro_average(rows)
    return EvaluationResult(
        task_type=task_type, tag_scheme=scheme, label_type=label_type, main_score_name="span_f1_micro",
        main_score=micro.f1, level="span", n_examples=len(gold_seqs), n_tokens=n_tokens,
        accuracy=token_level.accuracy, token_accuracy=token_level.accuracy, micro=micro,
        macro=macro_average(rows), weighted=weighted_average(rows), per_class=rows,
        unseen_gold_labels=unseen, notes=tuple(notes + span_notes))


def span_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]],
                tag_scheme: str) -> tuple[tuple[ClassScores, ...], list[str]]:
    """Per-entity-type span scores, strict mode, with the spans extracted by seqeval.

    Spans come from ``seqeval.scheme.Entities`` with the IOB2 or IOBES scheme, which is what
    ``seqeval.metrics.classification_report(..., mode="strict", scheme=...)`` uses; a span is correct
    when sentence, type, start and end all match. Tags that do not fit the scheme are read as ``"O"``;
    the returned notes say which and how often. Rows are sorted by entity type.
    """
    from seqeval.scheme import IOB2, IOBES, Entities

    scheme = normalize_tag_scheme(tag_scheme)
    if scheme is None:
        raise ConfigError([Problem("tag_scheme", "span scores need a tag scheme: BIO or BIOES")])
    gold_clean, gold_bad = _fit_scheme(gold, scheme)
    pred_clean, pred_bad = _fit_scheme(predicted, scheme)
    notes = []
    for side, bad in (("gold", gold_bad), ("predicted", pred_bad)):
        if bad:
            text = ", ".join(f"{tag!r} x{count}" for tag, count in sorted(bad.items()))
            log.warning("%s tags that are not %s tags, read as 'O' for span scores: %s", side, scheme, text)
            notes.append(f"{side} tags that are not {scheme} tags, read as 'O' for span scores: {text}")
    token_class = IOB2 if scheme == "BIO" else IOBES
    entities_gold = Entities(gold_clean, token_class)
    entities_pred = Entities(pred_clean, token_class)
    rows = []
    for entity_type in sorted(entities_gold.unique_tags | entities_pred.unique_tags):
        g, p = entities_gold.filter(entity_type), entities_pred.filter(entity_type)
        rows.append(ClassScores.from_counts(entity_type, len(g & p), len(p), len(g)))
    return tuple(rows), notes


def _fit_scheme(sequences: Sequence[Sequence[str]], scheme: str) -> tuple[list[list[str]], Counter[str]]:
    prefixes = _SCHEME_PREFIXES[scheme]
    bad: Counter[str] = Counter()
    out = []
    for seq in sequences:
        clean = []
        for tag in seq:
            if tag == "O" or (len(tag) > 2 and tag[1] == "-" and tag[0] in prefixes):
                clean.append(tag)
            else:
                bad[tag] += 1
                clean.append("O")
        out.append(clean)
    return out, bad


def _label(value: Any, side: str, index: int) -> str:
    if not isinstance(value, str):
        raise DataError(f"{side} example {index}: expected a label string, got {type(value).__name__} {value!r}")
    return value


def _tags(value: Any, side: str, index: int) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise DataError(f"{side} sentence {index}: expected a list of tags, got {type(value).__name__}")
    tags = list(value)
    for tag in tags:
        if not isinstance(tag, str):
            raise DataError(f"{side} sentence {index}: expected tag strings, got {type(tag).__name__} {tag!r}")
    return tags


def _matrix_tuple(matrix: np.ndarray) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in row) for row in matrix)


# ---------------------------------------------------------------------------------------------- rendering

_MAIN_SCORE_TEXT = {"accuracy": "accuracy", "span_f1_micro": "micro F1 over entity spans (strict)",
                    "token_accuracy": "token accuracy"}
_LEVEL_TEXT = {"class": "Per class", "tag": "Per tag (tokens)", "span": "Per entity type (spans, strict)"}


def _md(text: object) -> str:
    """Escape a cell for a GitHub-flavoured Markdown table (pipes, and ``<unk>`` shown, not eaten as HTML)."""
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|").replace("\n", " "))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], align: Sequence[str]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |",
             "|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(result: EvaluationResult, title: str = "Evaluation") -> str:
    """A Markdown report: a summary table, averages, a per-class table and (classification and tagging
    without spans, up to :data:`MARKDOWN_CONFUSION_MAX_LABELS` labels) the confusion matrix."""
    f = "{:.4f}".format
    task = result.task_type + (f" ({result.tag_scheme})" if result.tag_scheme else "")
    summary: list[tuple[object, object]] = [("task", _md(task))]
    if result.label_type:
        summary.append(("label type", _md(result.label_type)))
    summary.append(("sentences" if result.task_type == "sequence_labeling" else "examples", result.n_examples))
    if result.n_tokens is not None:
        summary.append(("tokens", result.n_tokens))
    summary.append((f"**main score: {_MAIN_SCORE_TEXT.get(result.main_score_name, result.main_score_name)}**",
                    f"**{f(result.main_score)}**"))
    summary.append(("accuracy" if result.task_type == "text_classification" else "token accuracy", f(result.accuracy)))
    unit = "span " if result.level == "span" else ""
    summary += [(f"micro {unit}F1", f(result.micro.f1)), (f"macro {unit}F1", f(result.macro.f1)),
                (f"weighted {unit}F1", f(result.weighted.f1))]

    lines = [f"# {_md(title)}", ""]
    lines += _table(["metric", "value"], summary, "lr")
    lines += ["", "## Averages", ""]
    lines += _table(["average", "precision", "recall", "F1"],
                    [(name, f(a.precision), f(a.recall), f(a.f1))
                     for name, a in (("micro", result.micro), ("macro", result.macro), ("weighted", result.weighted))],
                    "lrrr")
    lines += ["", f"## {_LEVEL_TEXT.get(result.level, 'Per class')}", ""]
    if result.per_class:
        lines += _table(["label", "precision", "recall", "F1", "support", "predicted"],
                        [(_md(r.label), f(r.precision), f(r.recall), f(r.f1), r.support, r.predicted)
                         for r in result.per_class], "lrrrrr")
    else:
        lines.append("No labels in the gold data or the predictions." if result.level != "span"
                     else "No entity spans in the gold data or the predictions.")
    if result.has_confusion:
        lines += ["", "## Confusion matrix", ""]
        n = len(result.labels)
        if n <= MARKDOWN_CONFUSION_MAX_LABELS:
            lines += ["Rows: gold label; columns: predicted label; cells: counts.", ""]
            lines += _table(["gold \\ predicted", *result.labels],
                            [(f"**{_md(label)}**", *row) for label, row in zip(result.labels, result.confusion)],
                            "l" + "r" * n)
        else:
            lines.append(f"{n} labels are too many for a table: see `confusion_matrix.png` and `result.json`.")
    if result.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {_md(note)}" for note in result.notes]
    return "\n".join(lines) + "\n"


def confusion_matrix_png(result: EvaluationResult, title: str | None = None) -> bytes:
    """The confusion matrix as a PNG: rows normalized to sum to 1 (recall on the diagonal), colour scale
    0-1, label names on both axes, the share written in each cell for up to 30 labels.

    Raises :class:`DataError` for results without a confusion matrix (span evaluation, no labels).
    """
    if not result.has_confusion:
        raise DataError(f"this {result.level}-level result has no confusion matrix to draw")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = result.confusion_array().astype(float)
    sums = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, sums, out=np.zeros_like(counts), where=sums > 0)
    n = len(result.labels)
    longest = max(len(label) for label in result.labels)
    side = min(max(4.0, (0.45 if n <= 15 else 0.3) * n + 0.08 * min(longest, 30) + 2.0), 30.0)
    font = 10 if n <= 15 else 8 if n <= 40 else 6

    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the gold row")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(result.labels, rotation=90 if n > 6 or longest > 8 else 0, fontsize=font)
    ax.set_yticklabels(result.labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    default = f"Confusion matrix (rows normalized, n={int(counts.sum())})"
    ax.set_title(title or default, fontsize=11)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=font - 1,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def to_kfp_confusion_matrix(result: EvaluationResult) -> tuple[list[str], list[list[int]]]:
    """``(categories, matrix)`` as KFP's ``ClassificationMetrics.log_confusion_matrix`` takes them
    (counts, gold rows, predicted columns). Raises :class:`DataError` when there is no matrix."""
    if not result.has_confusion:
        raise DataError(f"this {result.level}-level result has no confusion matrix for KFP")
    return list(result.labels), [list(row) for row in result.confusion]
