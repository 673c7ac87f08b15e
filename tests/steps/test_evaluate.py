"""kftune evaluate end to end: a tiny model trained for one epoch on a tiny synthetic corpus, scored by
the real step (``run`` and the CLI), with every output file checked against the predictions."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from kftune.core.errors import ConfigError
from kftune.nlp.evaluation import EvaluationResult, evaluate_predictions
from kftune.steps.evaluate import EvaluateConfig, main, run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

POSITIVE = ["good", "great", "fine", "lovely", "nice"]
NEGATIVE = ["bad", "awful", "poor", "nasty", "sad"]
FILLER = ["the", "movie", "was", "really", "a", "plot", "and"]
PEOPLE = [["Paul", "Walker"], ["Ann"], ["Lee", "Kim", "Park"]]
CITIES = [["Paris"], ["New", "York"]]


class RecordingSink:
    """A MetricsSink that keeps what it was given."""

    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []
        self.flushed = 0

    def log(self, values, *, step=None):
        self.logged.append(dict(values))

    def increment(self, name, amount=1.0, *, labels=None):
        pass

    def flush(self):
        self.flushed += 1

    def close(self):
        pass


def _write_corpus(directory: Path, task: str, splits: dict[str, list[dict[str, Any]]], *,
                  tag_scheme: str | None = None, label_type: str = "sentiment") -> Path:
    directory.mkdir(parents=True)
    labels: set[str] = set()
    for name, rows in splits.items():
        with (directory / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
                labels.update([row["label"]] if "label" in row else row["tags"])
    info = {"name": f"tiny_{task}", "task": task, "label_type": label_type, "labels": sorted(labels),
            "tag_scheme": tag_scheme, "splits": {n: {"examples": len(r)} for n, r in splits.items()}, "seed": 1}
    (directory / "corpus.json").write_text(json.dumps(info, sort_keys=True), encoding="utf-8")
    return directory


def _classification_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(FILLER, 3) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"label": label, "text": " ".join(words), "tokens": words})
    return rows


def _tagged_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(1, 3)):
            tokens += rng.sample(FILLER, 2)
            tags += ["O", "O"]
            kind, names = rng.choice([("person", PEOPLE), ("city", CITIES)])
            name = rng.choice(names)
            tokens += name
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def _train_tiny_model(corpus: Path, target: Path, overrides: dict[str, Any]) -> Path:
    """One epoch of the real trainer on ``corpus``, saved with the real model file writer."""
    torch = pytest.importorskip("torch")
    from kftune.nlp.config import Hyperparameters, TrainerConfig
    from kftune.nlp.data import TextEncoder, read_corpus_info, read_split, task_from_corpus_info
    from kftune.nlp.model_io import save_model
    from kftune.nlp.models import build_model
    from kftune.nlp.trainer import Trainer

    torch.manual_seed(0)
    task = task_from_corpus_info(read_corpus_info(corpus))
    train = read_split(corpus / "train.jsonl", task.type)
    dev = read_split(corpus / "dev.jsonl", task.type)
    hp = Hyperparameters.from_mapping(overrides, task_type=task.type)
    encoder = TextEncoder.build(task, train, min_word_freq=1, max_length=hp.max_length,
                                use_chars=hp.char_embeddings != "none")
    model = build_model(task.type, hp, encoder)
    trainer = Trainer(model, encoder, encoder.encode(train, "train", training=True), encoder.encode(dev, "dev"),
                      hp, TrainerConfig(max_epochs=1, device="cpu", seed=1), show_progress=False)
    fit = trainer.fit()
    save_model(model, encoder, hp, target, metadata={"dev_score": fit.best_score, "epochs": fit.epochs},
               state_dict=fit.best_state)
    return target


@pytest.fixture(scope="module")
def classification_setup(tmp_path_factory) -> tuple[Path, Path]:
    rng = random.Random(1)
    root = tmp_path_factory.mktemp("cls")
    test = _classification_rows(rng, 40)
    test.append({"label": "neutral", "text": "the plot was", "tokens": ["the", "plot", "was"]})  # unseen label
    test.append({"label": "pos", "text": "", "tokens": []})  # empty sentence
    corpus = _write_corpus(root / "corpus", "text_classification",
                           {"train": _classification_rows(rng, 96), "dev": _classification_rows(rng, 20), "test": test})
    model = _train_tiny_model(corpus, root / "model.pt", {
        "embedding_dim": 16, "document_encoder": "mean", "dropout": 0.0, "word_dropout": 0.0,
        "learning_rate": 0.05, "mini_batch_size": 8})
    return corpus, model


@pytest.fixture(scope="module")
def tagging_setup(tmp_path_factory) -> tuple[Path, Path]:
    rng = random.Random(2)
    root = tmp_path_factory.mktemp("tag")
    test = _tagged_rows(rng, 25)
    test.append({"tokens": ["Rome", "and", "Ann"], "tags": ["B-place", "O", "B-person"]})  # unseen tag
    corpus = _write_corpus(root / "corpus", "sequence_labeling",
                           {"train": _tagged_rows(rng, 48), "dev": _tagged_rows(rng, 12), "test": test},
                           tag_scheme="BIO", label_type="ner")
    model = _train_tiny_model(corpus, root / "model.pt", {
        "embedding_dim": 16, "char_embeddings": "none", "hidden_size": 16, "use_crf": True,
        "locked_dropout": 0.0, "word_dropout": 0.0, "learning_rate": 0.02, "mini_batch_size": 8})
    return corpus, model


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_classification_end_to_end(classification_setup, tmp_path):
    corpus, model = classification_setup
    sink = RecordingSink()
    out = tmp_path / "eval"
    result = run(EvaluateConfig(model=str(model), corpus=str(corpus), out=str(out), batch_size=7), sinks=sink)

    files = {p.name for p in out.iterdir()}
    assert files == {"result.json", "report.md", "confusion_matrix.png", "predictions.jsonl", "baseline.json"}
    predictions = _read_jsonl(out / "predictions.jsonl")
    assert len(predictions) == 42
    assert predictions[-1] == {"tokens": [], "gold": "pos", "predicted": "<unk>", "score": 0.0, "correct": False}
    assert predictions[-2]["gold"] == "neutral" and predictions[-2]["correct"] is False
    assert all(0.0 <= p["score"] <= 1.0 for p in predictions)

    # the scores are exactly those of the predictions written out
    again = evaluate_predictions([p["gold"] for p in predictions], [p["predicted"] for p in predictions],
                                 "text_classification", label_type="sentiment", labels=["neg", "pos"])
    assert result.evaluation == again
    assert result.evaluation.accuracy == pytest.approx(sum(p["correct"] for p in predictions) / 42)
    assert result.evaluation.unseen_gold_labels == (("neutral", 1),)
    assert result.evaluation.labels == ("neg", "pos", "<unk>", "neutral")

    saved = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert EvaluationResult.from_dict(saved) == result.evaluation
    assert saved["split"] == "test" and saved["model_metadata"]["epochs"] == 1
    assert saved["metrics"] == result.metrics
    assert set(result.metrics) == {"test_score", "test_accuracy", "test_f1_micro", "test_f1_macro",
                                   "baseline_test_score", "delta_vs_baseline"}
    assert result.metrics["test_score"] == result.evaluation.accuracy
    assert sink.logged == [result.metrics] and sink.flushed == 1

    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Per class" in report and "## Confusion matrix" in report and "neutral" in report
    assert "## Provenance" in report and "tiny_text_classification" in report
    assert (out / "confusion_matrix.png").read_bytes().startswith(PNG_SIGNATURE)
    # what the pipeline's evaluate task logs to KFP
    assert result.markdown == report
    assert result.confusion == (list(result.evaluation.labels), [list(r) for r in result.evaluation.confusion])
    assert result.metadata == {"main_score_name": "accuracy", "main_score": result.evaluation.accuracy,
                               "baseline": result.baseline.method, "baseline_score": result.baseline.test_score,
                               "delta_vs_baseline": result.delta_vs_baseline}


def test_tagging_end_to_end_spans(tagging_setup, tmp_path):
    corpus, model = tagging_setup
    out = tmp_path / "eval"
    result = run(EvaluateConfig(model=str(model), corpus=str(corpus), out=str(out)), sinks=RecordingSink())

    assert {p.name for p in out.iterdir()} == {"result.json", "report.md", "predictions.jsonl", "baseline.json"}
    predictions = _read_jsonl(out / "predictions.jsonl")
    assert len(predictions) == 26
    for p in predictions:
        assert len(p["predicted"]) == len(p["gold"]) == len(p["tokens"]) == len(p["tag_scores"])
    e = result.evaluation
    assert e.main_score_name == "span_f1_micro" and e.tag_scheme == "BIO" and e.level == "span"
    again = evaluate_predictions([p["gold"] for p in predictions], [p["predicted"] for p in predictions],
                                 "sequence_labeling", tag_scheme="BIO")
    assert (e.micro, e.macro, e.token_accuracy) == (again.micro, again.macro, again.token_accuracy)
    # the unseen entity type is a real gold span (recall 0), not silently dropped
    place = {r.label: r for r in e.per_class}["place"]
    assert (place.support, place.correct) == (1, 0)
    assert e.unseen_gold_labels == (("B-place", 1),)
    assert result.metrics["test_score"] == e.micro.f1 and result.metrics["test_accuracy"] == e.token_accuracy
    assert "## Per entity type (spans, strict)" in (out / "report.md").read_text(encoding="utf-8")


def test_cli_writes_outputs_and_prints_scores(classification_setup, tmp_path, capsys):
    corpus, model = classification_setup
    out = tmp_path / "cli"
    code = main(["--model", str(model), "--corpus", str(corpus), "--split", "dev", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("accuracy=") and str(out) in printed
    saved = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert saved["split"] == "dev" and set(saved["metrics"]) == {"dev_score", "dev_accuracy", "dev_f1_micro",
                                                                  "dev_f1_macro", "baseline_dev_score",
                                                                  "delta_vs_baseline"}
    assert saved["n_examples"] == 20


def test_config_errors_exit_2_before_any_work(tmp_path, capsys):
    code = main(["--model", str(tmp_path / "nope.pt"), "--corpus", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--batch-size", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "evaluate.model" in err and "evaluate.corpus" in err and "evaluate.batch_size" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="evaluate.split"):
        EvaluateConfig(model="s3://b/m.pt", corpus="s3://b/c", out="o", split="validation").validate()


def test_model_of_another_task_is_a_config_error(classification_setup, tagging_setup, tmp_path):
    _, classifier = classification_setup
    tagged_corpus, _ = tagging_setup
    with pytest.raises(ConfigError, match="text_classification model but the corpus"):
        run(EvaluateConfig(model=str(classifier), corpus=str(tagged_corpus), out=str(tmp_path / "x")),
            sinks=RecordingSink())


@pytest.mark.integration
def test_corpus_model_and_outputs_in_s3(classification_setup, s3_env):
    """The same step against an S3-compatible server: corpus and model read from it, outputs written to it."""
    from kftune.io.store import get_json, open_store

    corpus, model = classification_setup
    root = open_store(s3_env)
    for path in corpus.iterdir():
        root.put_file(f"corpus/{path.name}", path)
    root.put_file("models/model.pt", model)
    result = run(EvaluateConfig(model=f"{s3_env}/models/model.pt", corpus=f"{s3_env}/corpus", out=f"{s3_env}/eval"),
                 sinks=RecordingSink())
    assert root.list("eval") == ["eval/baseline.json", "eval/confusion_matrix.png", "eval/predictions.jsonl",
                                 "eval/report.md", "eval/result.json"]
    saved = get_json(root, "eval/result.json")
    assert EvaluationResult.from_dict(saved) == result.evaluation and saved["n_examples"] == 42
    assert result.artifacts["result"].startswith("s3://")


# -- the baseline beside the model ---------------------------------------------------------------------

def test_classification_baseline_is_trained_on_train_and_scored_on_the_same_test_split(classification_setup,
                                                                                        tmp_path):
    from kftune.nlp.baseline import run_baseline
    from kftune.nlp.data import read_split

    corpus, model = classification_setup
    sink = RecordingSink()
    out = tmp_path / "eval"
    result = run(EvaluateConfig(model=str(model), corpus=str(corpus), out=str(out)), sinks=sink)

    splits = {name: read_split(corpus / f"{name}.jsonl", "text_classification") for name in ("train", "dev", "test")}
    expected = run_baseline("text_classification", splits["train"], splits["dev"], splits["test"])
    assert result.baseline == expected  # deterministic: the same numbers again, seconds aside
    saved = json.loads((out / "baseline.json").read_text(encoding="utf-8"))
    assert saved["name"] == "tf-idf + logistic regression" and saved["metric"] == "accuracy"
    assert saved["test_score"] == expected.test_score and saved["params"]["C"] == expected.params["C"]
    assert saved["n_train"] == 96 and saved["n_test"] == 42 and saved["split"] == "test"
    assert saved["model_score"] == result.evaluation.main_score
    assert saved["delta_vs_baseline"] == pytest.approx(result.evaluation.main_score - expected.test_score)
    assert saved["beats_baseline"] is (saved["delta_vs_baseline"] > 0)

    assert result.metrics["baseline_test_score"] == expected.test_score
    assert result.metrics["delta_vs_baseline"] == pytest.approx(result.evaluation.main_score - expected.test_score)
    assert result.delta_vs_baseline == pytest.approx(result.metrics["delta_vs_baseline"])
    assert sink.logged == [result.metrics]  # the sinks (Prometheus, Katib, JSONL) get the baseline too

    record = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert record["baseline"] == saved and record["metrics"]["baseline_test_score"] == expected.test_score
    report = (out / "report.md").read_text(encoding="utf-8")
    section = report[report.index("## Baseline"):report.index("## Averages")]  # right after the summary
    assert f"{result.evaluation.main_score:.4f}" in section and f"{expected.test_score:.4f}" in section
    assert f"{(result.evaluation.main_score - expected.test_score) * 100:+.1f} points" in section
    assert expected.method in section


def test_tagging_baseline_uses_the_models_metric(tagging_setup, tmp_path):
    corpus, model = tagging_setup
    result = run(EvaluateConfig(model=str(model), corpus=str(corpus), out=str(tmp_path / "eval")),
                 sinks=RecordingSink())
    b = result.baseline
    assert b.name == "most-frequent tag per word" and b.metric == "span_f1_micro" == result.evaluation.main_score_name
    # the synthetic names and cities are all seen in train: the per-word baseline finds most spans
    assert b.test_score > 0.5
    assert result.metrics["baseline_test_score"] == b.test_score


def test_no_baseline_writes_none(classification_setup, tmp_path, capsys):
    corpus, model = classification_setup
    out = tmp_path / "plain"
    result = run(EvaluateConfig(model=str(model), corpus=str(corpus), out=str(out), baseline=False),
                 sinks=RecordingSink())
    assert result.baseline is None and result.delta_vs_baseline is None
    assert not (out / "baseline.json").exists()
    assert set(result.metrics) == {"test_score", "test_accuracy", "test_f1_micro", "test_f1_macro"}
    assert "baseline" not in json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert "## Baseline" not in (out / "report.md").read_text(encoding="utf-8")

    cli = tmp_path / "cli"
    assert main(["--model", str(model), "--corpus", str(corpus), "--out", str(cli), "--no-baseline"]) == 0
    assert "baseline=" not in capsys.readouterr().out
    assert not (cli / "baseline.json").exists()
    assert main(["--model", str(model), "--corpus", str(corpus), "--out", str(tmp_path / "with")]) == 0
    assert "baseline=" in capsys.readouterr().out and (tmp_path / "with" / "baseline.json").is_file()
