"""The baseline every evaluation shows beside the tuned model: what a user would try first.

- ``text_classification``: TF-IDF + logistic regression (scikit-learn). Features: word 1-2 grams over
  the example's tokens (lowercased) and character 2-4 grams inside word boundaries (``char_wb``) over
  its raw text (``Example.text`` when the corpus has it, else the tokens joined by spaces), both with
  sublinear TF and ``min_df`` 2 (1 for a train split under :data:`MIN_DF_TWO_FROM` examples),
  L2-normalized, side by side (a :class:`~sklearn.pipeline.FeatureUnion`). The classifier is
  ``LogisticRegression(solver="liblinear", dual=True)``, one-vs-rest for more than two classes. ``C`` is picked
  from :data:`C_GRID` by accuracy on the **dev** split (ties go to the smaller ``C``); the model is then
  refit on the train split alone (the split the tuned model trains on) and scored on the test split.
  The vectorizer is fitted once on train and its matrices reused for every ``C``. Deterministic.
- ``sequence_labeling``: the most frequent tag of each word in train (exact form first, then the
  lowercased form); an unknown word gets the most frequent tag among the train words seen once that
  have its shape (capitalized, all caps, digits, punctuation, ...), falling back to the most frequent
  tag of all train words seen once, then of all tokens. Ties go to the alphabetically first tag. With
  BIO tags, an ``I-X`` that does not continue an ``X`` span is read as ``B-X`` (so the span counts in
  strict span F1). Nothing is tuned; the dev score is reported for information.

Scores come from :func:`kftune.nlp.evaluation.evaluate_predictions`, the very function that scores the
tuned model, so the numbers are comparable (accuracy, strict span micro F1, token accuracy).
scikit-learn is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from kftune.core.errors import ConfigError, DataError, Problem
from kftune.nlp.evaluation import evaluate_predictions, normalize_tag_scheme

log = logging.getLogger(__name__)

BASELINE_FILE = "baseline.json"
C_GRID: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
"""Inverse regularization strengths tried on the dev split."""
DEFAULT_C = 1.0
"""``C`` used when the dev split is empty (nothing to choose on)."""
LIBLINEAR_MAX_ITER = 1000
"""Iterations of liblinear's dual coordinate descent (the dual is the fast side with more features than
examples, as here)."""
MIN_DF_TWO_FROM = 1000
"""From this many train examples on, n-grams seen in a single example are dropped (``min_df=2``)."""
CHAR_NGRAMS = (2, 4)
WORD_NGRAMS = (1, 2)
TFIDF_LR_NAME = "tf-idf + logistic regression"
MOST_FREQUENT_TAG_NAME = "most-frequent tag per word"
MAJORITY_NAME = "majority class"


@dataclass(frozen=True)
class BaselineResult:
    """One baseline run: what it was, how it scored on dev and test, and how long it took.

    ``name``: the short name (``"tf-idf + logistic regression"``); ``method``: the name with its
    settings (``"tf-idf + logistic regression (word 1-2 + char 2-4 grams, C=2)"``); ``metric``: the
    main score's name, as :class:`~kftune.nlp.evaluation.EvaluationResult` names it; ``dev_score``:
    ``None`` when the dev split was empty; ``params``: JSON-able settings (``C`` and the grid's dev
    scores for the classifier); ``test_predictions``: the predictions on the test split (labels, or one
    tag list per sentence), left out of comparisons and of :meth:`to_dict`; ``seconds`` (wall time) is
    left out of comparisons too.
    """

    name: str
    method: str
    task_type: str
    metric: str
    dev_score: float | None
    test_score: float
    params: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = field(default=0.0, compare=False)
    n_train: int = 0
    n_dev: int = 0
    n_test: int = 0
    test_predictions: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (``test_predictions`` left out); :meth:`from_dict` reads it back."""
        return {"name": self.name, "method": self.method, "task_type": self.task_type, "metric": self.metric,
                "dev_score": self.dev_score, "test_score": self.test_score, "params": dict(self.params),
                "seconds": round(self.seconds, 4), "n_train": self.n_train, "n_dev": self.n_dev,
                "n_test": self.n_test}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BaselineResult":
        try:
            return cls(name=str(data["name"]), method=str(data["method"]), task_type=str(data["task_type"]),
                       metric=str(data["metric"]),
                       dev_score=None if data.get("dev_score") is None else float(data["dev_score"]),
                       test_score=float(data["test_score"]), params=dict(data.get("params") or {}),
                       seconds=float(data.get("seconds", 0.0)), n_train=int(data.get("n_train", 0)),
                       n_dev=int(data.get("n_dev", 0)), n_test=int(data.get("n_test", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"not a baseline result: {exc!r}") from exc


def run_baseline(task: Any, train: Sequence[Any], dev: Sequence[Any], test: Sequence[Any], *,
                 tag_scheme: str | None = None, label_type: str | None = None,
                 keep_predictions: bool = False, train_with_dev: bool = False) -> BaselineResult:
    """Train the task's baseline on ``train``, choose its setting on ``dev``, score it on ``test``.
    ``train_with_dev`` (for a model trained with ``train.trainWithDev``): the setting is still chosen on
    ``dev`` with a fit on ``train`` alone, and the scored baseline is then fitted on train + dev, so both
    sides of the comparison learned from the same sentences; the dev score stays the held-out one.

    ``task``: ``"text_classification"``/``"sequence_labeling"`` or an object with ``type`` (and
    ``tag_scheme``/``label_type``, e.g. :class:`kftune.nlp.data.TaskInfo`); ``tag_scheme`` and
    ``label_type`` given here win. The splits hold :class:`kftune.nlp.data.Example` objects.
    ``keep_predictions``: keep the test predictions in the result. Raises :class:`DataError` for an
    empty train split, :class:`ConfigError` for an unknown task or a missing scikit-learn.
    """
    task_type = task if isinstance(task, str) else getattr(task, "type", None)
    if not isinstance(task, str):
        tag_scheme = tag_scheme if tag_scheme is not None else getattr(task, "tag_scheme", None)
        label_type = label_type if label_type is not None else getattr(task, "label_type", None)
    if task_type not in ("text_classification", "sequence_labeling"):
        raise ConfigError([Problem("baseline.task", f"unknown task type {task_type!r}: use text_classification "
                                                    "or sequence_labeling")])
    if not train:
        raise DataError("the baseline needs a non-empty train split")
    started = time.perf_counter()
    refit = list(dev) if train_with_dev else []
    if task_type == "text_classification":
        result = _classification(train, dev, test, label_type, refit)
    else:
        result = _tagging(train, dev, test, normalize_tag_scheme(tag_scheme), label_type, refit)
    seconds = time.perf_counter() - started
    import dataclasses

    if refit:
        result = dataclasses.replace(result, method=result.method + " on train + dev",
                                     params={**result.params, "fitted_on": "train + dev"})
    result = dataclasses.replace(result, seconds=seconds, n_train=len(train) + len(refit), n_dev=len(dev),
                                 n_test=len(test),
                                 test_predictions=result.test_predictions if keep_predictions else None)
    log.info("baseline %s: dev %s %s, test %s %.4f (%.1f s)", result.method, result.metric,
             "-" if result.dev_score is None else f"{result.dev_score:.4f}", result.metric, result.test_score,
             seconds)
    return result


# --------------------------------------------------------------------------- classification
def _text(example: Any) -> str:
    return getattr(example, "text", None) or " ".join(example.tokens)


def word_ngrams(tokens: Sequence[str]) -> list[str]:
    """The word features of one example: its lowercased tokens and their bigrams."""
    words = [t.lower() for t in tokens]
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def _tokens_of(examples: Sequence[Any]) -> list[Sequence[str]]:
    return [e.tokens for e in examples]


def _texts_of(examples: Sequence[Any]) -> list[str]:
    return [_text(e) for e in examples]


def _vectorizer(min_df: int) -> Any:
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion
    from sklearn.preprocessing import FunctionTransformer

    words = TfidfVectorizer(analyzer=word_ngrams, sublinear_tf=True, min_df=min_df, dtype=np.float32)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, lowercase=True, sublinear_tf=True,
                            min_df=min_df, dtype=np.float32)
    from sklearn.pipeline import make_pipeline

    return FeatureUnion([
        ("words", make_pipeline(FunctionTransformer(_tokens_of), words)),
        ("chars", make_pipeline(FunctionTransformer(_texts_of), chars)),
    ])


def _classifier(c: float, n_classes: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    model = LogisticRegression(C=c, solver="liblinear", dual=True, max_iter=LIBLINEAR_MAX_ITER, random_state=0)
    return OneVsRestClassifier(model) if n_classes > 2 else model


def _classification(train: Sequence[Any], dev: Sequence[Any], test: Sequence[Any],
                    label_type: str | None, refit: Sequence[Any] = ()) -> BaselineResult:
    y_train = [e.label for e in train]
    classes = sorted(set(y_train))
    if len(classes) < 2:  # nothing to learn: the one class seen
        only = classes[0]
        dev_score = _score([e.label for e in dev], [only] * len(dev), "text_classification", None, label_type,
                           classes) if dev else None
        predictions = tuple(only for _ in test)
        test_score = _score([e.label for e in test], list(predictions), "text_classification", None, label_type,
                            classes)
        return BaselineResult(name=MAJORITY_NAME, method=f"{MAJORITY_NAME} ({only!r}, the only class in train)",
                              task_type="text_classification", metric="accuracy", dev_score=dev_score,
                              test_score=test_score, params={"class": only}, test_predictions=predictions)
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise ConfigError([Problem("evaluate.baseline", "the TF-IDF + logistic regression baseline needs "
                                                        "scikit-learn: pip install 'scikit-learn>=1.3', or turn "
                                                        "the baseline off (spec.evaluation.baseline: false, "
                                                        "--no-baseline)")]) from exc
    min_df = 2 if len(train) >= MIN_DF_TWO_FROM else 1
    features = _vectorizer(min_df)
    x_train = features.fit_transform(train)
    grid: dict[str, float] = {}
    if dev:
        x_dev = features.transform(dev)
        y_dev = [e.label for e in dev]
        best_c, best = DEFAULT_C, -1.0
        for c in C_GRID:  # ascending: a tie keeps the smaller C
            model = _classifier(c, len(classes)).fit(x_train, y_train)
            score = _score(y_dev, list(model.predict(x_dev)), "text_classification", None, label_type, classes)
            grid[_c_key(c)] = score
            if score > best:
                best_c, best = c, score
        dev_score: float | None = best
    else:
        best_c, dev_score = DEFAULT_C, None
    if refit:  # train_with_dev: the chosen C fitted again on train + dev (features from both)
        features = _vectorizer(min_df)
        x_train = features.fit_transform([*train, *refit])
        y_train = y_train + [e.label for e in refit]
    model = _classifier(best_c, len(classes)).fit(x_train, y_train)  # without refit: the grid's fit, train only
    predictions = tuple(str(p) for p in model.predict(features.transform(test))) if test else ()
    test_score = _score([e.label for e in test], list(predictions), "text_classification", None, label_type,
                        classes)
    n_features = int(x_train.shape[1])
    params = {"C": best_c, "C_grid": list(C_GRID), "dev_accuracy_by_C": grid, "selected_on": "dev" if dev else
              f"nothing (empty dev split): default C={_c_key(DEFAULT_C)}", "word_ngrams": list(WORD_NGRAMS),
              "char_ngrams": list(CHAR_NGRAMS), "min_df": min_df, "features": n_features,
              "solver": "liblinear" + (" (one-vs-rest)" if len(classes) > 2 else ""), "classes": len(classes)}
    method = (f"{TFIDF_LR_NAME} (word {WORD_NGRAMS[0]}-{WORD_NGRAMS[1]} + char {CHAR_NGRAMS[0]}-{CHAR_NGRAMS[1]} "
              f"grams, C={_c_key(best_c)})")
    return BaselineResult(name=TFIDF_LR_NAME, method=method, task_type="text_classification", metric="accuracy",
                          dev_score=dev_score, test_score=test_score, params=params, test_predictions=predictions)


def _c_key(c: float) -> str:
    return f"{c:g}"


# --------------------------------------------------------------------------- tagging
def word_shape(word: str) -> str:
    """A coarse shape class of a word: ``digit`` (has a digit), ``upper`` (all caps), ``title``
    (capitalized), ``lower``, ``punct`` (no letter or digit), ``other`` (mixed, non-Latin...)."""
    if any(ch.isdigit() for ch in word):
        return "digit"
    if not any(ch.isalnum() for ch in word):
        return "punct"
    if word.isupper():
        return "upper" if len(word) > 1 else "title"
    if word[:1].isupper():
        return "title"
    if word.islower():
        return "lower"
    return "other"


def _most_frequent(counts: Counter[str]) -> str:
    """The most frequent tag; a tie goes to the alphabetically first."""
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


@dataclass(frozen=True)
class MostFrequentTagger:
    """Per-word most frequent tag (see the module docstring). Build with :meth:`fit`."""

    exact: Mapping[str, str]
    lower: Mapping[str, str]
    by_shape: Mapping[str, str]
    unknown: str
    tag_scheme: str | None = None

    @classmethod
    def fit(cls, sentences: Sequence[tuple[Sequence[str], Sequence[str]]],
            tag_scheme: str | None = None) -> "MostFrequentTagger":
        """From ``(tokens, tags)`` pairs."""
        exact: defaultdict[str, Counter[str]] = defaultdict(Counter)
        lower: defaultdict[str, Counter[str]] = defaultdict(Counter)
        overall: Counter[str] = Counter()
        for tokens, tags in sentences:
            for word, tag in zip(tokens, tags):
                exact[word][tag] += 1
                lower[word.lower()][tag] += 1
                overall[tag] += 1
        if not overall:
            raise DataError("the most-frequent-tag baseline needs tagged tokens in the train split")
        rare: Counter[str] = Counter()
        rare_by_shape: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for word, counts in exact.items():
            if sum(counts.values()) == 1:
                (tag,) = counts
                rare[tag] += 1
                rare_by_shape[word_shape(word)][tag] += 1
        unknown = _most_frequent(rare) if rare else _most_frequent(overall)
        return cls(exact={w: _most_frequent(c) for w, c in exact.items()},
                   lower={w: _most_frequent(c) for w, c in lower.items()},
                   by_shape={s: _most_frequent(c) for s, c in rare_by_shape.items()}, unknown=unknown,
                   tag_scheme=tag_scheme)

    def tag_word(self, word: str) -> str:
        found = self.exact.get(word)
        if found is None:
            found = self.lower.get(word.lower())
        if found is None:
            found = self.by_shape.get(word_shape(word), self.unknown)
        return found

    def tag(self, tokens: Sequence[str]) -> list[str]:
        tags = [self.tag_word(w) for w in tokens]
        return repair_bio(tags) if self.tag_scheme == "BIO" else tags


def repair_bio(tags: Sequence[str]) -> list[str]:
    """BIO tags with every ``I-X`` that does not continue an ``X`` span turned into ``B-X``."""
    out: list[str] = []
    for tag in tags:
        if tag.startswith("I-"):
            kind = tag[2:]
            prev = out[-1] if out else "O"
            if prev[2:] != kind or prev[:2] not in ("B-", "I-"):
                tag = f"B-{kind}"
        out.append(tag)
    return out


def _tagging(train: Sequence[Any], dev: Sequence[Any], test: Sequence[Any], tag_scheme: str | None,
             label_type: str | None, refit: Sequence[Any] = ()) -> BaselineResult:
    tagger = MostFrequentTagger.fit([(e.tokens, e.tags or ()) for e in train], tag_scheme)
    dev_score = None
    if dev:
        dev_score = _score([list(e.tags or ()) for e in dev], [tagger.tag(e.tokens) for e in dev],
                           "sequence_labeling", tag_scheme, label_type, None)
    if refit:  # train_with_dev: counted again over train + dev
        tagger = MostFrequentTagger.fit([(e.tokens, e.tags or ()) for e in [*train, *refit]], tag_scheme)
    predictions = tuple(tuple(tagger.tag(e.tokens)) for e in test)
    evaluation = evaluate_predictions([list(e.tags or ()) for e in test], [list(p) for p in predictions],
                                      "sequence_labeling", tag_scheme=tag_scheme, label_type=label_type)
    params = {"unknown_words": "most frequent tag of the train words seen once with the same shape",
              "unknown_default": tagger.unknown, "shapes": dict(sorted(tagger.by_shape.items())),
              "train_word_forms": len(tagger.exact), "bio_repair": tag_scheme == "BIO"}
    return BaselineResult(name=MOST_FREQUENT_TAG_NAME,
                          method=f"{MOST_FREQUENT_TAG_NAME} (unknown words: by word shape)",
                          task_type="sequence_labeling", metric=evaluation.main_score_name, dev_score=dev_score,
                          test_score=evaluation.main_score, params=params, test_predictions=predictions)


def _score(gold: Sequence[Any], predicted: Sequence[Any], task_type: str, tag_scheme: str | None,
           label_type: str | None, labels: Sequence[str] | None) -> float:
    if not gold:
        return 0.0
    return evaluate_predictions(gold, predicted, task_type, tag_scheme=tag_scheme, label_type=label_type,
                                labels=labels).main_score


# --------------------------------------------------------------------------- comparison
def comparison(model_score: float, baseline: BaselineResult | Mapping[str, Any]) -> dict[str, Any]:
    """The tuned model against the baseline: ``delta`` (model minus baseline), ``points`` (delta x 100),
    ``beats_baseline`` and a one-line ``verdict``."""
    b = baseline.to_dict() if isinstance(baseline, BaselineResult) else dict(baseline)
    delta = float(model_score) - float(b["test_score"])
    return {"model_score": float(model_score), "baseline_score": float(b["test_score"]), "delta": delta,
            "points": delta * 100.0, "beats_baseline": delta > 0, "verdict": verdict(delta)}


def verdict(delta: float) -> str:
    """``"+4.8 points, tuning beat the baseline"`` / ``"-1.2 points: the baseline is better"``."""
    points = delta * 100.0
    if delta > 0:
        return f"{points:+.1f} points, tuning beat the baseline"
    if delta < 0:
        return f"{points:+.1f} points: the baseline is better"
    return "+0.0 points: a tie with the baseline"


_METRIC_TEXT = {"accuracy": "accuracy", "span_f1_micro": "span micro F1 (strict)", "token_accuracy": "token accuracy"}


def comparison_markdown(model_score: float, baseline: BaselineResult | Mapping[str, Any], split: str,
                        heading: str = "## Baseline") -> list[str]:
    """Markdown lines: the tuned model, the baseline and the difference on ``split`` in one table."""
    b = baseline.to_dict() if isinstance(baseline, BaselineResult) else dict(baseline)
    c = comparison(model_score, b)
    metric = _METRIC_TEXT.get(str(b.get("metric")), str(b.get("metric")))
    method = str(b.get("method") or b.get("name")).replace("|", "\\|")
    dev = b.get("dev_score")
    lines = [heading, "",
             f"Same train split, same {split} split, same metric ({metric}).", "",
             f"| {split} {metric} | tuned model | baseline: {method} | difference |",
             "|:---|---:|---:|---:|",
             f"| score | **{c['model_score']:.4f}** | {c['baseline_score']:.4f} | **{c['points']:+.1f} points** |",
             "",
             f"{c['verdict'][0].upper()}{c['verdict'][1:]}. The baseline trained in {float(b.get('seconds', 0)):.1f} s"
             + (f"; its dev score is {float(dev):.4f}" if dev is not None else "")
             + (f" (C={_c_key(float(b['params']['C']))}, picked on dev)"
                if isinstance(b.get("params"), Mapping) and b["params"].get("C") is not None else "") + "."]
    return lines
