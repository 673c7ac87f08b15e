"""kftune.nlp.evaluation: span scores (BIO, BIOES), token accuracy, classification, rendering."""

from __future__ import annotations

import json
import random

import pytest

from kftune.core.errors import ConfigError, DataError
from kftune.nlp.evaluation import (
    EvaluationResult,
    confusion_matrix_png,
    evaluate_predictions,
    render_markdown,
    span_scores,
    to_kfp_confusion_matrix,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Gold spans: PER (s0, 0-2), LOC (s0, 3-4), ORG (s1, 0-3).
# Predicted: PER right; LOC one token too long (wrong); ORG starts with I- (no entity in strict mode).
BIO_GOLD = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "I-ORG", "I-ORG", "O"]]
BIO_PRED = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["I-ORG", "I-ORG", "I-ORG", "O"]]

# Gold spans: PER, LOC (s0), ORG, MISC (s1). Predicted: PER and LOC right; B-ORG I-ORG O never ends
# (no entity); S-PER where MISC is (wrong type).
BIOES_GOLD = [["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"], ["B-ORG", "E-ORG", "O", "S-MISC"]]
BIOES_PRED = [["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"], ["B-ORG", "I-ORG", "O", "S-PER"]]


def _rows(result: EvaluationResult) -> dict[str, tuple[float, float, float, int]]:
    return {r.label: (r.precision, r.recall, r.f1, r.support) for r in result.per_class}


def _seqeval_report(gold, pred, scheme_name):
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2, IOBES

    scheme = IOB2 if scheme_name == "BIO" else IOBES
    return classification_report(gold, pred, output_dict=True, mode="strict", scheme=scheme, zero_division=0)


def test_bio_spans_strict_by_hand():
    r = evaluate_predictions(BIO_GOLD, BIO_PRED, "sequence_labeling", tag_scheme="BIO", label_type="ner")
    assert r.main_score_name == "span_f1_micro" and r.level == "span"
    assert (r.micro.precision, r.micro.recall, r.micro.f1) == pytest.approx((1 / 2, 1 / 3, 0.4))
    assert r.main_score == pytest.approx(0.4)
    rows = _rows(r)
    assert rows["PER"] == pytest.approx((1.0, 1.0, 1.0, 1))
    assert rows["LOC"] == pytest.approx((0.0, 0.0, 0.0, 1))
    assert rows["ORG"] == pytest.approx((0.0, 0.0, 0.0, 1))
    assert r.macro.f1 == pytest.approx(1 / 3)
    assert r.token_accuracy == pytest.approx(7 / 9) and r.accuracy == r.token_accuracy
    assert (r.n_examples, r.n_tokens) == (2, 9)
    assert r.labels == () and not r.has_confusion


def test_bioes_spans_strict_by_hand():
    r = evaluate_predictions(BIOES_GOLD, BIOES_PRED, "sequence_labeling", tag_scheme="BIOES")
    assert (r.micro.precision, r.micro.recall, r.micro.f1) == pytest.approx((2 / 3, 1 / 2, 4 / 7))
    rows = _rows(r)
    assert rows["PER"] == pytest.approx((0.5, 1.0, 2 / 3, 1))
    assert rows["LOC"] == pytest.approx((1.0, 1.0, 1.0, 1))
    assert rows["ORG"] == pytest.approx((0.0, 0.0, 0.0, 1))
    assert rows["MISC"] == pytest.approx((0.0, 0.0, 0.0, 1))
    assert r.macro.f1 == pytest.approx((2 / 3 + 1) / 4)
    assert r.token_accuracy == pytest.approx(7 / 9)
    assert r.tag_scheme == "BIOES"
    # IOBES is accepted as an alias
    assert evaluate_predictions(BIOES_GOLD, BIOES_PRED, "sequence_labeling", tag_scheme="iobes").main_score == r.main_score


@pytest.mark.parametrize(("gold", "pred", "scheme"), [(BIO_GOLD, BIO_PRED, "BIO"), (BIOES_GOLD, BIOES_PRED, "BIOES")])
def test_span_scores_equal_seqeval_classification_report(gold, pred, scheme):
    r = evaluate_predictions(gold, pred, "sequence_labeling", tag_scheme=scheme)
    report = _seqeval_report(gold, pred, scheme)
    for row in r.per_class:
        expected = report[row.label]
        assert (row.precision, row.recall, row.f1, row.support) == pytest.approx(
            (expected["precision"], expected["recall"], expected["f1-score"], expected["support"]))
    for name, ours in (("micro avg", r.micro), ("macro avg", r.macro), ("weighted avg", r.weighted)):
        e = report[name]
        assert (ours.precision, ours.recall, ours.f1) == pytest.approx((e["precision"], e["recall"], e["f1-score"])), name


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_span_scores_equal_seqeval_on_random_tags(scheme):
    rng = random.Random(7)
    tags = ["O", "O", "O"] + [f"{p}-{t}" for p in ("BI" if scheme == "BIO" else "BIES") for t in ("PER", "LOC", "ORG")]
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(200)]
    pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in sent] for sent in gold]
    r = evaluate_predictions(gold, pred, "sequence_labeling", tag_scheme=scheme)
    report = _seqeval_report(gold, pred, scheme)
    assert r.micro.f1 == pytest.approx(report["micro avg"]["f1-score"])
    assert r.macro.f1 == pytest.approx(report["macro avg"]["f1-score"])
    assert r.weighted.f1 == pytest.approx(report["weighted avg"]["f1-score"])
    assert {row.label: row.support for row in r.per_class} == {k: v["support"] for k, v in report.items()
                                                             if not k.endswith(" avg")}


def test_tags_outside_the_scheme_are_outside_spans_but_wrong_tokens():
    gold = [["B-PER", "I-PER", "O"], ["B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "<unk>"], ["<unk>", "O"]]
    r = evaluate_predictions(gold, pred, "sequence_labeling", tag_scheme="BIO")
    assert (r.micro.precision, r.micro.recall) == pytest.approx((1.0, 0.5))
    assert r.token_accuracy == pytest.approx(3 / 5)
    assert any("'<unk>' x2" in note and "predicted" in note for note in r.notes)
    # gold tags outside the scheme (e.g. a tag unseen in training mapped to <unk> upstream) never crash
    r = evaluate_predictions([["<unk>", "B-X"]], [["O", "B-X"]], "sequence_labeling", tag_scheme="BIO")
    assert r.micro.f1 == 1.0 and r.token_accuracy == 0.5
    rows, notes = span_scores([["E-PER"]], [["E-PER"]], "BIO")  # E- is not a BIO prefix
    assert rows == () and "'E-PER' x1" in notes[0]


def test_pos_without_scheme_uses_token_accuracy_and_per_tag_scores():
    gold = [["DET", "NOUN", "VERB"], ["PRON", "VERB", "PUNCT"]]
    pred = [["DET", "NOUN", "NOUN"], ["PRON", "VERB", "PUNCT"]]
    r = evaluate_predictions(gold, pred, "sequence_labeling", tag_scheme=None, label_type="upos")
    assert r.main_score_name == "token_accuracy" and r.level == "tag"
    assert r.main_score == pytest.approx(5 / 6) and r.token_accuracy == r.main_score
    assert _rows(r)["VERB"] == pytest.approx((1.0, 0.5, 2 / 3, 2))
    labels, matrix = to_kfp_confusion_matrix(r)
    assert labels == ["DET", "NOUN", "PRON", "PUNCT", "VERB"]
    assert matrix[labels.index("VERB")][labels.index("NOUN")] == 1
    assert sum(map(sum, matrix)) == 6


def test_classification_result_and_unseen_gold_labels():
    gold = ["HUM", "LOC", "LOC", "NUM", "ABBR"]
    pred = ["HUM", "LOC", "HUM", "NUM", "HUM"]
    r = evaluate_predictions(gold, pred, "text_classification", label_type="question_class",
                             labels=["HUM", "LOC", "NUM"])
    assert r.main_score_name == "accuracy" and r.main_score == pytest.approx(0.6)
    assert r.f1_micro == pytest.approx(0.6)
    assert r.labels == ("HUM", "LOC", "NUM", "ABBR")
    assert r.unseen_gold_labels == (("ABBR", 1),)
    assert any("ABBR" in note for note in r.notes)
    categories, matrix = to_kfp_confusion_matrix(r)
    assert categories == ["HUM", "LOC", "NUM", "ABBR"]
    assert matrix == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    assert all(isinstance(v, int) for row in matrix for v in row)


def test_to_dict_is_json_and_round_trips():
    for r in (evaluate_predictions(BIO_GOLD, BIO_PRED, "sequence_labeling", "BIO"),
              evaluate_predictions(["a", "b"], ["a", "a"], "text_classification", labels=["a", "b"])):
        text = json.dumps(r.to_dict(), sort_keys=True)
        back = EvaluationResult.from_dict(json.loads(text))
        assert back == r
    with pytest.raises(DataError, match="not an evaluation result"):
        EvaluationResult.from_dict({"task_type": "text_classification"})


def test_empty_inputs():
    r = evaluate_predictions([], [], "sequence_labeling", tag_scheme="BIO")
    assert (r.main_score, r.micro.f1, r.macro.f1, r.token_accuracy, r.n_tokens) == (0.0, 0.0, 0.0, 0.0, 0)
    r = evaluate_predictions([], [], "text_classification")
    assert r.main_score == 0.0 and r.per_class == ()
    assert "No labels" in render_markdown(r)
    r = evaluate_predictions([["O", "O"]], [["O", "O"]], "sequence_labeling", tag_scheme="BIO")
    assert r.per_class == () and r.micro.f1 == 0.0 and r.token_accuracy == 1.0


def test_bad_inputs():
    with pytest.raises(ConfigError, match="task_type"):
        evaluate_predictions([], [], "regression")
    with pytest.raises(ConfigError, match="tag_scheme"):
        evaluate_predictions([], [], "sequence_labeling", tag_scheme="BILOU2")
    with pytest.raises(ConfigError, match="tag_scheme"):
        evaluate_predictions([], [], "text_classification", tag_scheme="BIO")
    with pytest.raises(DataError, match="sentence 0: 2 gold tags but 1 predicted"):
        evaluate_predictions([["O", "O"]], [["O"]], "sequence_labeling", "BIO")
    with pytest.raises(DataError, match="2 gold labels but 1 predictions"):
        evaluate_predictions(["a", "b"], ["a"], "text_classification")
    with pytest.raises(DataError, match="expected a list of tags"):
        evaluate_predictions(["B-PER O"], ["B-PER O"], "sequence_labeling", "BIO")


def test_markdown_has_summary_per_class_and_confusion_tables():
    r = evaluate_predictions(["a|b", "c", "<unk>"], ["a|b", "c", "c"], "text_classification", label_type="kind")
    md = render_markdown(r, title="TREC-6 test")
    assert md.startswith("# TREC-6 test\n")
    assert "| metric | value |" in md and "**main score: accuracy** | **0.6667**" in md
    assert "## Per class" in md and "| label | precision | recall | F1 | support | predicted |" in md
    assert "## Confusion matrix" in md and "| gold \\ predicted | &lt;unk&gt; | a\\|b | c |" in md
    assert "| **c** | 0 | 0 | 1 |" in md and "| **&lt;unk&gt;** | 0 | 0 | 1 |" in md
    # every table row of the confusion matrix has as many cells as the header
    table = [line for line in md.split("## Confusion matrix")[1].splitlines() if line.startswith("|")]
    widths = {line.replace("\\|", "").count("|") for line in table}
    assert widths == {5}

    spans = render_markdown(evaluate_predictions(BIO_GOLD, BIO_PRED, "sequence_labeling", "BIO"))
    assert "## Per entity type (spans, strict)" in spans and "| PER | 1.0000 | 1.0000 | 1.0000 | 1 | 1 |" in spans
    assert "micro span F1 | 0.4000" in spans and "Confusion matrix" not in spans


def test_markdown_leaves_out_huge_confusion_matrices():
    labels = [f"L{i:02d}" for i in range(60)]
    r = evaluate_predictions(labels, labels[1:] + labels[:1], "text_classification")
    md = render_markdown(r)
    assert "60 labels are too many for a table" in md and "| gold \\ predicted" not in md


def test_confusion_matrix_png():
    r = evaluate_predictions(["a", "b", "b", "<unk>"], ["a", "b", "a", "a"], "text_classification")
    png = confusion_matrix_png(r)
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000
    with pytest.raises(DataError, match="no confusion matrix"):
        confusion_matrix_png(evaluate_predictions(BIO_GOLD, BIO_PRED, "sequence_labeling", "BIO"))
    with pytest.raises(DataError, match="no confusion matrix"):
        to_kfp_confusion_matrix(evaluate_predictions(BIO_GOLD, BIO_PRED, "sequence_labeling", "BIO"))
