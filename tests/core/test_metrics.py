"""kftune.core.metrics: hand-computed cases, a cross-check with scikit-learn, edge cases."""

from __future__ import annotations

import random

import numpy as np
import pytest

from kftune.core.errors import DataError
from kftune.core.metrics import (
    UNK_LABEL,
    ClassScores,
    accuracy,
    classification_scores,
    confusion_matrix,
    f1_from,
    macro_average,
    micro_average,
    ordered_labels,
    safe_div,
    scores_from_confusion,
    token_accuracy,
    weighted_average,
)

# gold:      a a a b b c
# predicted: a a b b c c
GOLD = ["a", "a", "a", "b", "b", "c"]
PRED = ["a", "a", "b", "b", "c", "c"]


def test_safe_div_and_f1_zero_cases():
    assert safe_div(1, 0) == 0.0
    assert safe_div(0, 0) == 0.0
    assert safe_div(3, 4) == 0.75
    assert f1_from(0.0, 0.0) == 0.0
    assert f1_from(1.0, 0.5) == pytest.approx(2 / 3)


def test_confusion_matrix_by_hand():
    labels, matrix = confusion_matrix(GOLD, PRED)
    assert labels == ["a", "b", "c"]
    assert matrix.dtype == np.int64
    assert matrix.tolist() == [[2, 1, 0],
                               [0, 1, 1],
                               [0, 0, 1]]


def test_confusion_matrix_keeps_given_order_and_appends_unlisted_labels():
    labels, matrix = confusion_matrix(["z", "a", "new"], ["a", "a", "z"], labels=["z", "a", "a"])
    assert labels == ["z", "a", "new"]  # duplicates dropped, unlisted gold label appended
    assert matrix.tolist() == [[0, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_ordered_labels_sorts_the_unlisted_ones():
    assert ordered_labels(["q", "b"], ["<unk>", "a"], labels=["b"]) == ["b", "<unk>", "a", "q"]


def test_per_class_and_averages_by_hand():
    s = classification_scores(GOLD, PRED)
    rows = {r.label: r for r in s.per_class}
    # a: predicted 2, correct 2, support 3 -> P 1, R 2/3, F1 0.8
    assert (rows["a"].precision, rows["a"].recall, rows["a"].f1) == pytest.approx((1.0, 2 / 3, 0.8))
    # b: predicted 2, correct 1, support 2 -> P 0.5, R 0.5, F1 0.5
    assert (rows["b"].precision, rows["b"].recall, rows["b"].f1) == pytest.approx((0.5, 0.5, 0.5))
    # c: predicted 2, correct 1, support 1 -> P 0.5, R 1, F1 2/3
    assert (rows["c"].precision, rows["c"].recall, rows["c"].f1) == pytest.approx((0.5, 1.0, 2 / 3))
    assert [(r.support, r.predicted, r.correct) for r in s.per_class] == [(3, 2, 2), (2, 2, 1), (1, 2, 1)]
    assert s.accuracy == pytest.approx(4 / 6)
    assert s.micro.f1 == pytest.approx(4 / 6)  # single-label: micro P = R = F1 = accuracy
    assert s.macro.f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert s.macro.precision == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert s.weighted.f1 == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert s.n == 6


def test_macro_skips_labels_without_evidence_but_matrix_keeps_them():
    s = classification_scores(GOLD, PRED, labels=["a", "b", "c", "never"])
    assert s.labels == ("a", "b", "c", "never")
    assert s.confusion[3].tolist() == [0, 0, 0, 0] and s.confusion[:, 3].tolist() == [0, 0, 0, 0]
    assert s.macro.f1 == pytest.approx(classification_scores(GOLD, PRED).macro.f1)


def test_unknown_labels_in_gold_and_predictions_are_counted():
    gold = ["a", UNK_LABEL, UNK_LABEL, "b"]
    pred = ["a", "a", UNK_LABEL, "zzz"]
    s = classification_scores(gold, pred, labels=["a", "b"])
    assert s.labels == ("a", "b", "<unk>", "zzz")
    rows = {r.label: r for r in s.per_class}
    assert (rows["<unk>"].support, rows["<unk>"].predicted, rows["<unk>"].correct) == (2, 1, 1)
    assert (rows["zzz"].support, rows["zzz"].predicted, rows["zzz"].correct) == (0, 1, 0)
    assert rows["zzz"].f1 == 0.0 and rows["b"].recall == 0.0
    assert s.accuracy == 0.5


def test_empty_inputs_are_zero_not_errors():
    s = classification_scores([], [])
    assert s.labels == () and s.confusion.shape == (0, 0)
    assert (s.accuracy, s.micro.f1, s.macro.f1, s.weighted.f1) == (0.0, 0.0, 0.0, 0.0)
    s = classification_scores([], [], labels=["a", "b"])
    assert s.confusion.tolist() == [[0, 0], [0, 0]]
    assert all(r.f1 == 0.0 and r.support == 0 for r in s.per_class)
    assert accuracy([], []) == 0.0
    assert token_accuracy([], []) == 0.0
    assert token_accuracy([[], []], [[], []]) == 0.0


def test_single_class():
    s = classification_scores(["x"] * 3, ["x"] * 3)
    assert s.labels == ("x",)
    assert (s.accuracy, s.micro.f1, s.macro.f1, s.weighted.f1) == (1.0, 1.0, 1.0, 1.0)
    s = classification_scores(["x"] * 3, ["y"] * 3)
    assert s.accuracy == 0.0 and s.macro.f1 == 0.0


def test_token_accuracy_is_flattened():
    gold = [["A", "B", "C", "D"], ["A"]]
    pred = [["A", "B", "C", "X"], ["X"]]
    # per sentence mean would be (0.75 + 0) / 2; flattened it is 3 / 5
    assert token_accuracy(gold, pred) == pytest.approx(0.6)


def test_length_mismatches_are_data_errors():
    with pytest.raises(DataError, match="3 gold examples but 2 predicted"):
        accuracy(["a", "b", "c"], ["a", "b"])
    with pytest.raises(DataError, match="sentence 1: 2 gold tags but 1 predicted"):
        token_accuracy([["A"], ["A", "B"]], [["A"], ["A"]])


def test_class_scores_from_counts_rejects_impossible_counts():
    with pytest.raises(ValueError, match="correct <= min"):
        ClassScores.from_counts("a", correct=3, predicted=2, support=5)
    row = ClassScores.from_counts("a", correct=0, predicted=0, support=0)
    assert (row.precision, row.recall, row.f1) == (0.0, 0.0, 0.0)


def test_averages_of_no_rows():
    assert micro_average([]).f1 == 0.0
    assert macro_average([]).f1 == 0.0
    assert weighted_average([]).f1 == 0.0


def test_scores_from_confusion_checks_shape():
    with pytest.raises(ValueError, match="does not match 3 labels"):
        scores_from_confusion(["a", "b", "c"], np.zeros((2, 2)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_on_random_data(seed: int):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(seed)
    labels = ["A", "B", "C", "D", "<unk>"]
    gold = [rng.choice(labels[:4]) for _ in range(300)] + ["<unk>"] * 5
    pred = [g if rng.random() < 0.6 else rng.choice(labels) for g in gold]
    pred[:3] = ["E", "E", "E"]  # a label only ever predicted
    s = classification_scores(gold, pred)
    order = list(s.labels)
    assert s.confusion.tolist() == sklearn_metrics.confusion_matrix(gold, pred, labels=order).tolist()
    assert s.accuracy == pytest.approx(sklearn_metrics.accuracy_score(gold, pred))
    for average, ours in (("micro", s.micro), ("macro", s.macro), ("weighted", s.weighted)):
        p, r, f, _ = sklearn_metrics.precision_recall_fscore_support(gold, pred, average=average, zero_division=0)
        assert (ours.precision, ours.recall, ours.f1) == pytest.approx((p, r, f)), average
    p, r, f, support = sklearn_metrics.precision_recall_fscore_support(gold, pred, labels=order, zero_division=0)
    assert [row.precision for row in s.per_class] == pytest.approx(list(p))
    assert [row.recall for row in s.per_class] == pytest.approx(list(r))
    assert [row.f1 for row in s.per_class] == pytest.approx(list(f))
    assert [row.support for row in s.per_class] == list(support)
