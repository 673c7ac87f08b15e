"""The baselines: TF-IDF + logistic regression (C picked on dev) and the most-frequent tag per word."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kftune.core.errors import DataError
from kftune.nlp import baseline as bl
from kftune.nlp.baseline import BaselineResult, MostFrequentTagger, repair_bio, run_baseline, word_shape
from kftune.nlp.data import Example


def _cls(text: str, label: str) -> Example:
    return Example(tuple(text.split()), label=label)


def _tagged(tokens: str, tags: str) -> Example:
    return Example(tuple(tokens.split()), tags=tuple(tags.split()))


# -- classification on real data ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def trec_sample(tmp_path_factory: pytest.TempPathFactory, shared_corpora: Path) -> dict[str, list[Example]]:
    """TREC-6 from the mirror: a fifth of train (about 1,000 questions), its dev split, the full test split."""
    import os

    from kftune.nlp.data import read_split
    from kftune.steps.corpus import CorpusConfig, run

    out = tmp_path_factory.mktemp("trec")
    saved = {k: os.environ.get(k) for k in ("KFTUNE_CORPUS_MIRROR", "KFTUNE_CACHE_DIR")}
    os.environ.update(KFTUNE_CORPUS_MIRROR=str(shared_corpora), KFTUNE_CACHE_DIR=str(out / "cache"))
    try:
        run(CorpusConfig(out=str(out / "corpus"), name="TREC_6", downsample=0.2, seed=1))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {s: read_split(out / "corpus" / f"{s}.jsonl", "text_classification") for s in ("train", "dev", "test")}


def test_tfidf_logistic_regression_beats_chance_clearly_on_trec(trec_sample: dict[str, list[Example]]) -> None:
    train, dev, test = trec_sample["train"], trec_sample["dev"], trec_sample["test"]
    result = run_baseline("text_classification", train, dev, test, keep_predictions=True)
    majority = Counter(e.label for e in test).most_common(1)[0][1] / len(test)
    assert result.name == "tf-idf + logistic regression" and result.metric == "accuracy"
    assert result.test_score > 0.7 and result.test_score > majority + 0.4, (result.test_score, majority)
    assert result.dev_score is not None and result.dev_score > 0.6
    # the score is the accuracy of the predictions it keeps
    assert len(result.test_predictions) == len(test)
    assert result.test_score == pytest.approx(
        sum(p == e.label for p, e in zip(result.test_predictions, test)) / len(test))
    # C is the grid's best on dev (ties: the smaller), and it is named in the method
    by_c = result.params["dev_accuracy_by_C"]
    assert list(by_c) == [f"{c:g}" for c in bl.C_GRID]
    best = max(by_c.values())
    assert result.params["C"] == min(c for c in bl.C_GRID if by_c[f"{c:g}"] == best)
    assert result.dev_score == best and f"C={result.params['C']:g}" in result.method
    assert (result.n_train, result.n_dev, result.n_test) == (len(train), len(dev), len(test))
    # deterministic
    again = run_baseline("text_classification", train, dev, test)
    assert again == result and again.test_predictions is None


def test_raw_text_is_used_for_the_character_features_when_examples_have_it() -> None:
    class WithText:
        def __init__(self, text: str, label: str):
            self.text, self.tokens, self.label = text, tuple(text.lower().split()), label

    assert bl._text(WithText("Hello, World", "a")) == "Hello, World"
    assert bl._text(_cls("hello world", "a")) == "hello world"  # no text attribute: the tokens joined


# -- C is chosen on dev, never on test ------------------------------------------------------------------

class _FakeClassifier:
    """Predicts "x" when C == 2, else "y"; records what it was fitted on."""

    fits: list[tuple[float, int]] = []

    def __init__(self, c: float):
        self.c = c

    def fit(self, x: Any, y: Any) -> "_FakeClassifier":
        _FakeClassifier.fits.append((self.c, len(y)))
        return self

    def predict(self, x: Any) -> list[str]:
        return ["x" if self.c == 2.0 else "y"] * x.shape[0]


@pytest.fixture
def fake_classifier(monkeypatch: pytest.MonkeyPatch) -> type[_FakeClassifier]:
    _FakeClassifier.fits = []
    monkeypatch.setattr(bl, "_classifier", lambda c, n_classes: _FakeClassifier(c))
    return _FakeClassifier


def test_c_is_picked_on_dev_and_the_final_fit_uses_train_only(fake_classifier: type[_FakeClassifier]) -> None:
    train = [_cls("alpha beta", "x"), _cls("gamma delta", "y"), _cls("alpha gamma", "x")]
    test = [_cls("beta", "y"), _cls("delta", "y")]  # on test, every C but 2 would be perfect
    dev_x = [_cls("alpha", "x"), _cls("beta", "x")]  # on dev only C=2 is right
    dev_y = [_cls("alpha", "y"), _cls("beta", "y")]  # every C but 2 is right: a tie, the smallest wins

    chosen = run_baseline("text_classification", train, dev_x, test)
    assert chosen.params["C"] == 2.0 and chosen.dev_score == 1.0 and chosen.test_score == 0.0
    assert chosen.params["dev_accuracy_by_C"] == {f"{c:g}": 1.0 if c == 2.0 else 0.0 for c in bl.C_GRID}
    assert fake_classifier.fits == [(c, 3) for c in bl.C_GRID] + [(2.0, 3)]  # refit on the 3 train examples

    changed = run_baseline("text_classification", train, dev_y, test)
    assert changed.params["C"] == 0.25 and changed.test_score == 1.0

    no_dev = run_baseline("text_classification", train, [], test)
    assert no_dev.params["C"] == bl.DEFAULT_C and no_dev.dev_score is None


def test_with_train_with_dev_c_is_still_picked_on_dev_and_the_scored_fit_adds_dev(
        fake_classifier: type[_FakeClassifier]) -> None:
    """A model trained with train.trainWithDev is compared with a baseline that saw the same sentences: C from
    the grid's fits on train alone (held-out dev score), then one fit on train + dev."""
    train = [_cls("alpha beta", "x"), _cls("gamma delta", "y"), _cls("alpha gamma", "x")]
    dev = [_cls("alpha", "x"), _cls("beta", "x")]
    result = run_baseline("text_classification", train, dev, [_cls("beta", "y")], train_with_dev=True)
    assert result.params["C"] == 2.0 and result.dev_score == 1.0
    assert fake_classifier.fits == [(c, 3) for c in bl.C_GRID] + [(2.0, 5)]
    assert result.n_train == 5 and result.params["fitted_on"] == "train + dev"
    assert result.method.endswith("on train + dev")


def test_a_train_split_with_one_class_predicts_it() -> None:
    result = run_baseline("text_classification", [_cls("a b", "x"), _cls("c", "x")], [_cls("d", "x")],
                          [_cls("e", "x"), _cls("f", "y")])
    assert result.name == "majority class" and result.test_score == 0.5 and result.dev_score == 1.0


def test_an_empty_train_split_is_a_data_error() -> None:
    with pytest.raises(DataError, match="non-empty train split"):
        run_baseline("text_classification", [], [], [_cls("a", "x")])


# -- most-frequent tag ------------------------------------------------------------------------------------

POS_TRAIN = [
    _tagged("The dog runs .", "DET NOUN VERB PUNCT"),
    _tagged("the dog barks", "DET NOUN VERB"),
    _tagged("a run ended", "DET NOUN VERB"),
    _tagged("dogs run fast", "NOUN VERB ADV"),
    _tagged("cats run", "NOUN VERB"),
    _tagged("John met Ann in Paris", "PROPN VERB PROPN ADP PROPN"),
    _tagged("42 km", "NUM NOUN"),
]


def test_most_frequent_tag_gives_exactly_the_expected_tags() -> None:
    tagger = MostFrequentTagger.fit([(e.tokens, e.tags) for e in POS_TRAIN])
    # "run": VERB twice, NOUN once. "THE"/"Dog": unknown forms, known lowercased. Unknown words by shape,
    # from the words seen once: capitalized -> PROPN (John, Ann, Paris vs The), digits -> NUM,
    # punctuation -> PUNCT, lowercase -> VERB (runs, barks, ended, met vs 3 NOUN, 2 DET, ADV, ADP)
    assert tagger.tag("THE Dog run Mary 7 ! zorb".split()) == ["DET", "NOUN", "VERB", "PROPN", "NUM", "PUNCT",
                                                                "VERB"]
    assert tagger.unknown == "VERB"  # the most frequent tag of all words seen once

    test = [_tagged("THE Dog run Mary 7 ! zorb", "DET NOUN VERB PROPN NUM PUNCT NOUN")]
    dev = [_tagged("dog barks", "NOUN VERB")]
    result = run_baseline("sequence_labeling", POS_TRAIN, dev, test, keep_predictions=True)
    assert result.metric == "token_accuracy" and result.name == "most-frequent tag per word"
    assert result.test_score == pytest.approx(6 / 7) and result.dev_score == 1.0
    assert result.test_predictions == (("DET", "NOUN", "VERB", "PROPN", "NUM", "PUNCT", "VERB"),)
    assert result.params["shapes"] == {"digit": "NUM", "lower": "VERB", "punct": "PUNCT", "title": "PROPN"}


def test_the_tagger_counts_dev_too_with_train_with_dev() -> None:
    dev = [_tagged("zorb zorb", "NOUN NOUN")]  # a word train never saw: VERB by its shape, NOUN in dev
    test = [_tagged("zorb", "NOUN")]
    held_out = run_baseline("sequence_labeling", POS_TRAIN, dev, test)
    with_dev = run_baseline("sequence_labeling", POS_TRAIN, dev, test, train_with_dev=True)
    assert held_out.test_score == 0.0 and with_dev.test_score == 1.0
    assert with_dev.dev_score == held_out.dev_score == 0.0  # the dev score stays the held-out one
    assert with_dev.n_train == len(POS_TRAIN) + 1


def test_ties_go_to_the_alphabetically_first_tag() -> None:
    tagger = MostFrequentTagger.fit([(["bank"], ["NOUN"]), (["bank"], ["VERB"])])
    assert tagger.tag(["bank"]) == ["NOUN"]


def test_bio_tags_are_scored_as_spans_and_a_stray_inside_tag_opens_a_span() -> None:
    train = [_tagged("Paris is nice", "B-LOC O O"), _tagged("New York is big", "B-LOC I-LOC O O")]
    test = [_tagged("York is Paris", "B-LOC O B-LOC"), _tagged("New York", "B-LOC I-LOC")]
    result = run_baseline("sequence_labeling", train, [], test, tag_scheme="BIO", keep_predictions=True)
    assert result.test_predictions == (("B-LOC", "O", "B-LOC"), ("B-LOC", "I-LOC"))
    assert result.metric == "span_f1_micro" and result.test_score == 1.0 and result.dev_score is None
    assert repair_bio(["O", "I-PER", "I-PER", "I-LOC", "B-LOC", "I-LOC"]) == [
        "O", "B-PER", "I-PER", "B-LOC", "B-LOC", "I-LOC"]


@pytest.mark.parametrize("word, shape", [("Paris", "title"), ("NASA", "upper"), ("A", "title"), ("dog", "lower"),
                                         ("3.14", "digit"), ("B2B", "digit"), ("?!", "punct"), ("iPhone", "other"),
                                         ("영화", "other")])
def test_word_shapes(word: str, shape: str) -> None:
    assert word_shape(word) == shape


# -- the result and the comparison ------------------------------------------------------------------------

def test_result_round_trips_through_a_dict_and_the_comparison_says_who_won() -> None:
    r = BaselineResult(name="n", method="n (C=2)", task_type="text_classification", metric="accuracy",
                       dev_score=0.8, test_score=0.834, params={"C": 2.0}, seconds=1.5, n_train=3, n_dev=1, n_test=2)
    assert BaselineResult.from_dict(r.to_dict()) == r
    better = bl.comparison(0.882, r)
    assert better["beats_baseline"] and better["points"] == pytest.approx(4.8)
    assert better["verdict"] == "+4.8 points, tuning beat the baseline"
    assert bl.comparison(0.822, r)["verdict"] == "-1.2 points: the baseline is better"
    lines = "\n".join(bl.comparison_markdown(0.882, r, "test"))
    assert "| score | **0.8820** | 0.8340 | **+4.8 points** |" in lines and "n (C=2)" in lines
    with pytest.raises(DataError):
        BaselineResult.from_dict({"name": "x"})
