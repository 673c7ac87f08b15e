"""Metrics math for evaluation: accuracy, precision/recall/F1 per class and averaged, confusion matrices.

Pure (stdlib and numpy only). Labels are plain strings and any string is a label: a gold label the
model never saw in training (mapped to ``"<unk>"`` upstream, or kept as it is) and a predicted label
absent from the gold data are counted like every other label, never an error.

Conventions, the same as scikit-learn's with ``zero_division=0``:

- A ratio with a zero denominator is ``0.0``: precision of a label never predicted, recall of a
  label never in the gold data, F1 when precision + recall is 0, accuracy of empty inputs.
- ``micro`` pools the counts of every label; for single-label classification micro precision, recall
  and F1 all equal accuracy.
- ``macro`` is the unweighted mean over the labels that occur in the gold data *or* the predictions
  (a label in neither has no evidence and is not averaged, even when it is listed in ``labels``).
  ``weighted`` is the mean weighted by gold support (``0.0`` when there is no gold support).
- Confusion matrices have gold labels as rows and predicted labels as columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from kftune.core.errors import DataError

UNK_LABEL = "<unk>"
"""The label that stands for a gold label unseen in training (see the module docstring)."""


def safe_div(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or ``0.0`` when ``denominator`` is 0."""
    return float(numerator) / float(denominator) if denominator else 0.0


def f1_from(precision: float, recall: float) -> float:
    """The harmonic mean of precision and recall; ``0.0`` when both are 0."""
    return safe_div(2.0 * precision * recall, precision + recall)


@dataclass(frozen=True)
class ClassScores:
    """Scores of one label (a class, a tag or an entity type).

    ``correct`` true positives, ``predicted`` how often it was predicted (TP + FP), ``support`` how
    often it is in the gold data (TP + FN).
    """

    label: str
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int
    correct: int

    @classmethod
    def from_counts(cls, label: str, correct: int, predicted: int, support: int) -> "ClassScores":
        if not 0 <= correct <= min(predicted, support):
            raise ValueError(f"label {label!r}: need 0 <= correct <= min(predicted, support), "
                             f"got correct={correct}, predicted={predicted}, support={support}")
        precision, recall = safe_div(correct, predicted), safe_div(correct, support)
        return cls(label, precision, recall, f1_from(precision, recall), int(support), int(predicted),
                   int(correct))

    def to_dict(self) -> dict[str, float | int | str]:
        return {"label": self.label, "precision": self.precision, "recall": self.recall, "f1": self.f1,
                "support": self.support, "predicted": self.predicted, "correct": self.correct}


@dataclass(frozen=True)
class Averages:
    """Precision, recall and F1 averaged over labels (``micro``, ``macro`` or ``weighted``)."""

    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, float]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1}


def micro_average(rows: Sequence[ClassScores]) -> Averages:
    """Pool the counts of every row, then divide (see the module docstring)."""
    correct = sum(r.correct for r in rows)
    precision = safe_div(correct, sum(r.predicted for r in rows))
    recall = safe_div(correct, sum(r.support for r in rows))
    return Averages(precision, recall, f1_from(precision, recall))


def macro_average(rows: Sequence[ClassScores]) -> Averages:
    """Unweighted mean over the rows with gold support or predictions; ``0.0`` when there are none.

    F1 is the mean of the per-label F1 values (as scikit-learn and seqeval compute it), not the F1
    of the mean precision and recall.
    """
    seen = [r for r in rows if r.support or r.predicted]
    if not seen:
        return Averages(0.0, 0.0, 0.0)
    return Averages(*(float(np.mean([getattr(r, k) for r in seen])) for k in ("precision", "recall", "f1")))


def weighted_average(rows: Sequence[ClassScores]) -> Averages:
    """Mean weighted by gold support; ``0.0`` when the total support is 0."""
    total = sum(r.support for r in rows)
    if not total:
        return Averages(0.0, 0.0, 0.0)
    return Averages(*(sum(getattr(r, k) * r.support for r in rows) / total for k in ("precision", "recall", "f1")))


def ordered_labels(gold: Iterable[str], predicted: Iterable[str], labels: Sequence[str] | None = None) -> list[str]:
    """``labels`` in their order, then every other label found in ``gold`` or ``predicted``, sorted.

    So a confusion matrix always has a row and a column for every label that occurs, including
    ``"<unk>"`` and labels the caller did not list. Duplicates in ``labels`` are dropped.
    """
    out = list(dict.fromkeys(labels or ()))
    known = set(out)
    out += sorted({*gold, *predicted} - known)
    return out


def confusion_matrix(gold: Sequence[str], predicted: Sequence[str],
                     labels: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Count (gold, predicted) pairs: ``matrix[i, j]`` = examples of ``labels[i]`` predicted as ``labels[j]``.

    Returns the label order (see :func:`ordered_labels`) and an ``int64`` array of shape
    ``(n_labels, n_labels)``; empty inputs give zeros over ``labels`` (shape ``(0, 0)`` without labels).
    Raises :class:`DataError` when the two sequences differ in length.
    """
    _check_same_length(gold, predicted, "examples")
    order = ordered_labels(gold, predicted, labels)
    index = {label: i for i, label in enumerate(order)}
    matrix = np.zeros((len(order), len(order)), dtype=np.int64)
    if len(gold):
        rows = np.fromiter((index[g] for g in gold), dtype=np.int64, count=len(gold))
        cols = np.fromiter((index[p] for p in predicted), dtype=np.int64, count=len(predicted))
        np.add.at(matrix, (rows, cols), 1)
    return order, matrix


def accuracy(gold: Sequence[str], predicted: Sequence[str]) -> float:
    """Share of positions where ``predicted`` equals ``gold``; ``0.0`` for empty inputs."""
    _check_same_length(gold, predicted, "examples")
    return safe_div(sum(g == p for g, p in zip(gold, predicted)), len(gold))


def flatten_sequences(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> tuple[list[str], list[str]]:
    """Concatenate per-sentence tag sequences, checking that every sentence pair has the same length."""
    _check_same_length(gold, predicted, "sentences")
    flat_gold: list[str] = []
    flat_pred: list[str] = []
    for i, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise DataError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted tags; "
                            "a tagger must predict exactly one tag per token")
        flat_gold.extend(g)
        flat_pred.extend(p)
    return flat_gold, flat_pred


def token_accuracy(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> float:
    """Share of tokens tagged correctly over all sentences (flattened, so long sentences weigh more);
    ``0.0`` when there are no tokens."""
    return accuracy(*flatten_sequences(gold, predicted))


@dataclass(frozen=True, eq=False)
class ClassificationScores:
    """Everything computed from one confusion matrix (see :func:`classification_scores`)."""

    labels: tuple[str, ...]
    confusion: np.ndarray
    accuracy: float
    per_class: tuple[ClassScores, ...]
    micro: Averages
    macro: Averages
    weighted: Averages

    @property
    def n(self) -> int:
        return int(self.confusion.sum())


def scores_from_confusion(labels: Sequence[str], confusion: np.ndarray) -> ClassificationScores:
    """Per-class scores, averages and accuracy of a square confusion matrix (gold rows, predicted columns)."""
    matrix = np.asarray(confusion, dtype=np.int64)
    if matrix.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix of shape {matrix.shape} does not match {len(labels)} labels")
    correct = np.diag(matrix) if len(labels) else np.zeros(0, dtype=np.int64)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    rows = tuple(ClassScores.from_counts(label, int(c), int(p), int(s))
                 for label, c, p, s in zip(labels, correct, predicted, support))
    return ClassificationScores(
        labels=tuple(labels), confusion=matrix, accuracy=safe_div(int(correct.sum()), int(matrix.sum())),
        per_class=rows, micro=micro_average(rows), macro=macro_average(rows), weighted=weighted_average(rows))


def classification_scores(gold: Sequence[str], predicted: Sequence[str],
                          labels: Sequence[str] | None = None) -> ClassificationScores:
    """Accuracy, per-class P/R/F1/support, micro/macro/weighted averages and the confusion matrix.

    ``labels`` fixes the order of the first rows (e.g. the model's label dictionary); labels found in
    the data but not listed are appended (see :func:`ordered_labels`). Listed labels that occur nowhere
    get a row of zeros and are left out of the macro average.
    """
    order, matrix = confusion_matrix(gold, predicted, labels)
    return scores_from_confusion(order, matrix)


def _check_same_length(gold: Sequence[object], predicted: Sequence[object], what: str) -> None:
    if len(gold) != len(predicted):
        raise DataError(f"{len(gold)} gold {what} but {len(predicted)} predicted {what}; "
                        "predictions must align one to one with the gold data")
