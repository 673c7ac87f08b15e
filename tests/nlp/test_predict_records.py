"""The JSON records that `kftune predict` writes and `kftune serve` answers, and the spans of tags."""

from __future__ import annotations

import pytest

from kftune.nlp.predict import Prediction, Span, prediction_record, tag_spans


@pytest.mark.parametrize("tags, scheme, spans", [
    (["B-PER", "I-PER", "O", "B-LOC"], "BIO", [Span("PER", 0, 2), Span("LOC", 3, 4)]),
    (["I-PER", "I-PER", "B-PER"], "BIO", [Span("PER", 0, 2), Span("PER", 2, 3)]),  # I- starts a span
    (["B-PER", "I-LOC"], "BIO", [Span("PER", 0, 1), Span("LOC", 1, 2)]),  # a type change ends it
    (["S-PER", "B-ORG", "I-ORG", "E-ORG", "O"], "BIOES", [Span("PER", 0, 1), Span("ORG", 1, 4)]),
    (["B-ORG", "E-ORG", "E-ORG"], "BIOES", [Span("ORG", 0, 2), Span("ORG", 2, 3)]),
    (["O", "O"], "BIO", []),
    ([], "BIO", []),
    (["NOUN", "VERB"], None, []),  # POS-like tags: no spans
    (["NOUN", "B-X"], "BIO", [Span("X", 1, 2)]),
])
def test_tag_spans(tags, scheme, spans):
    assert tag_spans(tags, scheme) == spans


def test_a_classification_record_names_the_label_and_ranks_the_probabilities():
    pred = Prediction(tokens=("좋다",), label="긍정", score=0.8, scores={"부정": 0.2, "긍정": 0.8})
    record = prediction_record(pred, raw_labels={"긍정": "1", "부정": "0"})
    assert record == {"label": "긍정", "raw_label": "1", "score": 0.8, "probabilities": {"긍정": 0.8, "부정": 0.2}}
    assert list(record["probabilities"]) == ["긍정", "부정"]
    assert prediction_record(pred, top_k=1)["probabilities"] == {"긍정": 0.8}
    assert prediction_record(pred)["raw_label"] == "긍정"  # no label map: the label itself


def test_an_empty_text_has_no_label():
    pred = Prediction(tokens=(), label="<unk>", score=0.0, scores={})
    assert prediction_record(pred) == {"label": None, "raw_label": None, "score": 0.0, "probabilities": {}}


def test_a_tagging_record_has_spans_with_text_and_score():
    pred = Prediction(tokens=("Barack", "Obama", "spoke"), tags=("B-PER", "I-PER", "O"), tag_scores=(0.9, 0.7, 1.0))
    record = prediction_record(pred, tag_scheme="BIO")
    assert record["spans"] == [{"type": "PER", "start": 0, "end": 2, "text": "Barack Obama", "score": pytest.approx(0.8)}]
    assert record["tokens"] == ["Barack", "Obama", "spoke"] and record["tags"] == ["B-PER", "I-PER", "O"]
