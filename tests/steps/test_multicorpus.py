"""Several corpora trained as one (spec.corpus.corpora, Flair's MultiCorpus): the corpus step's union, the
per-corpus dev scores of training and test scores of evaluation, and the mismatches refused with both names.

Real corpora through the mirror (TREC_6, WNUT_17), each paired with a small corpus of its task written here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from kftune.core.errors import ConfigError
from kftune.nlp.config import Hyperparameters, TrainerConfig
from kftune.steps import corpus as corpus_step
from kftune.steps import evaluate as evaluate_step
from kftune.steps import train as train_step
from kftune.steps.corpus import CorpusConfig, settings_from_spec
from tests.nlp.synthetic import one_torch_thread

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_ = one_torch_thread

SPLITS = ("train", "dev", "test")


@pytest.fixture(autouse=True)
def _drop_cli_log_handler():
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_kftune", False)]:
        root.removeHandler(handler)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_questions(path: Path, n: int = 120, seed: int = 0) -> Path:
    """Support-desk questions in a csv (text,label), labelled with three of TREC's coarse classes."""
    rng = random.Random(seed)
    templates = {"NUM": ["How many {} are in stock ?", "How much does the {} cost ?"],
                 "LOC": ["Where is the {} shipped from ?", "Where can I pick up my {} ?"],
                 "HUM": ["Who repairs a broken {} ?", "Who do I call about my {} ?"]}
    things = ["laptop", "phone", "printer", "router", "monitor", "keyboard", "charger", "tablet"]
    rows = ["text,label"]
    for _ in range(n):
        label = rng.choice(sorted(templates))
        rows.append(f"\"{rng.choice(templates[label]).format(rng.choice(things))}\",{label}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_conll(path: Path, scheme: str = "BIO", n: int = 60, seed: int = 0) -> Path:
    """Sentences with person and location names, tagged in ``scheme`` (a name is two tokens)."""
    rng = random.Random(seed)
    people, places = [("Anna", "Smith"), ("Paul", "Walker")], [("New", "York"), ("Los", "Angeles")]
    last = "E" if scheme == "BIOES" else "I"
    lines = []
    for _ in range(n):
        (first, second), kind = (rng.choice(people), "person") if rng.random() < 0.5 else (rng.choice(places),
                                                                                           "location")
        for token, tag in (("I", "O"), ("met" if kind == "person" else "visited", "O"), (first, f"B-{kind}"),
                           (second, f"{last}-{kind}"), (".", "O")):
            lines.append(f"{token}\t{tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def joint_trec(corpus_mirror: Path, tmp_path: Path) -> Path:
    questions = write_questions(tmp_path / "questions.csv")
    out = tmp_path / "joint"
    config = CorpusConfig(out=str(out), tokenizer="regex", downsample=0.05, seed=3, corpora=(
        {"name": "TREC_6"},
        {"id": "support", "uri": str(questions), "format": "csv", "text_columns": ["text"], "label_column": "label",
         "allow_unverified": True}))
    corpus_step.run(config)
    return out


def test_the_union_of_a_registered_and_a_user_corpus(joint_trec: Path, tmp_path: Path) -> None:
    out = joint_trec
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["name"] == "TREC_6+support" and meta["task"] == "text_classification"
    assert [c["id"] for c in meta["corpora"]] == ["TREC_6", "support"]
    trec, support = meta["corpora"]
    # each corpus downsampled on its own: TREC_6 5,452 train -> dev 545 carved -> 4,907 * 0.05, 545 * 0.05
    assert trec["splits"]["train"]["examples"] == 245 and trec["splits"]["dev"]["examples"] == 27
    assert trec["splits"]["test"]["examples"] == 500  # test kept whole
    assert support["preparation"]["test"].startswith("carved from train")
    splits = {s: jsonl(out / f"{s}.jsonl") for s in SPLITS}
    for s in SPLITS:
        rows = splits[s]
        counts = Counter(r["corpus"] for r in rows)
        assert counts == {"TREC_6": trec["splits"][s]["examples"], "support": support["splits"][s]["examples"]}
        assert [r["corpus"] for r in rows] == sorted((r["corpus"] for r in rows), key=["TREC_6", "support"].index)
        assert meta["splits"][s]["examples"] == len(rows)
        assert meta["splits"][s]["sha256"] == hashlib.sha256((out / f"{s}.jsonl").read_bytes()).hexdigest()
    # one joint label dictionary: TREC's six classes, the support questions' three among them
    assert meta["labels"] == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert set(support["labels"]) == {"HUM", "LOC", "NUM"}
    assert meta["tokenizer"] == {"type": "regex"}
    # the regex tokenizer splits TREC's text too (its own tokens were whitespace-split)
    assert all(r["tokens"] for r in splits["train"])
    card = (out / "card.md").read_text()
    assert "# Corpus card: TREC_6+support" in card and "## Corpus TREC_6" in card and "## Corpus support" in card
    assert "| **all** | " in card
    # the same input and seed give byte-identical output
    again = tmp_path / "again"
    config = CorpusConfig(out=str(again), tokenizer="regex", downsample=0.05, seed=3, corpora=(
        {"name": "TREC_6"},
        {"id": "support", "uri": str(tmp_path / "questions.csv"), "format": "csv", "text_columns": ["text"],
         "label_column": "label", "allow_unverified": True}))
    corpus_step.run(config)
    assert all((again / f).read_bytes() == (out / f).read_bytes() for f in ("train.jsonl", "dev.jsonl", "test.jsonl",
                                                                             "corpus.json"))


def test_training_reports_a_dev_score_per_corpus_and_evaluation_a_test_score(joint_trec: Path, tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    hp = Hyperparameters.from_mapping({"embedding_dim": 16, "cnn_filters": 8, "learning_rate": 0.01},
                                      "text_classification")
    model_dir = tmp_path / "model"
    with caplog.at_level(logging.INFO, logger="kftune.nlp.trainer"):
        result = train_step.run(train_step.TrainConfig(
            corpus=str(joint_trec), out=str(model_dir), hyperparameters=hp,
            trainer=TrainerConfig(max_epochs=1, device="cpu"), show_progress=False))
    assert list(result.dev_scores_by_corpus) == ["TREC_6", "support"]
    assert all(0.0 <= v <= 1.0 for v in result.dev_scores_by_corpus.values())
    assert json.loads((model_dir / "result.json").read_text())["dev_scores_by_corpus"] == result.dev_scores_by_corpus
    line = next(r.getMessage() for r in caplog.records if "epoch 1:" in r.getMessage())
    assert "(TREC_6 " in line and ", support " in line
    header, row = (model_dir / "loss.tsv").read_text().splitlines()[:2]
    assert header.split("\t")[-2:] == ["dev_score_TREC_6", "dev_score_support"]
    assert float(row.split("\t")[-1]) == pytest.approx(result.dev_scores_by_corpus["support"], abs=1e-6)

    evaluation = evaluate_step.run(evaluate_step.EvaluateConfig(
        model=str(model_dir / "model.pt"), corpus=str(joint_trec), out=str(tmp_path / "eval"), baseline=False,
        device="cpu"))
    record = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert list(record["corpora"]) == ["TREC_6", "support"] and record["corpora"]["TREC_6"]["examples"] == 500
    assert evaluation.metrics["test_score_support"] == record["corpora"]["support"]["score"]
    total = sum(c["examples"] for c in record["corpora"].values())
    assert total == record["n_examples"]
    weighted = sum(c["score"] * c["examples"] for c in record["corpora"].values()) / total  # accuracy is additive
    assert weighted == pytest.approx(evaluation.main_score)
    assert "## Per corpus" in (tmp_path / "eval" / "report.md").read_text()


def test_a_tagging_corpus_pair_joins_tags_and_a_mismatched_scheme_is_refused(corpus_mirror: Path,
                                                                               tmp_path: Path) -> None:
    bio = write_conll(tmp_path / "names.conll", "BIO")
    out = tmp_path / "ner"
    corpus_step.run(CorpusConfig(out=str(out), downsample=0.05, corpora=(
        {"name": "WNUT_17"}, {"uri": str(bio), "format": "conll", "allow_unverified": True})))
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["tag_scheme"] == "BIO" and meta["name"] == "WNUT_17+names"
    assert {"B-person", "I-person", "B-location", "I-location", "O"} <= set(meta["labels"])
    assert {r["corpus"] for r in jsonl(out / "dev.jsonl")} == {"WNUT_17", "names"}

    # BIOES tags are only known once read (tag_scheme auto): the step stops before writing, naming both
    bioes = write_conll(tmp_path / "names2.conll", "BIOES")
    bad = tmp_path / "bad"
    with pytest.raises(ConfigError) as info:
        corpus_step.run(CorpusConfig(out=str(bad), downsample=0.05, corpora=(
            {"name": "WNUT_17"}, {"uri": str(bioes), "format": "conll", "allow_unverified": True})))
    (problem,) = info.value.problems
    assert problem.path == "corpus.corpora[1]"
    assert "names2 has BIOES tags" in problem.message and "WNUT_17 (corpus.corpora[0]) has BIO tags" in problem.message
    assert not bad.exists()


@pytest.mark.parametrize("corpora, path, fragment", [
    (({"name": "TREC_6"}, {"name": "WNUT_17"}), "corpus.corpora[1]",
     "WNUT_17 holds sequence_labeling data but TREC_6 (corpus.corpora[0]) holds text_classification data"),
    (({"name": "WNUT_17"}, {"name": "UD_ENGLISH"}), "corpus.corpora[1]",
     "UD_ENGLISH has plain tags (no span scheme, e.g. POS) but WNUT_17 (corpus.corpora[0]) has BIO tags"),
    (({"name": "TREC_6"}, {"uri": "q.csv", "format": "csv", "text_columns": ["text"]}), "corpus.tokenizer",
     "tokenize differently by default (TREC_6: whitespace, q: regex)"),
    (({"name": "TREC_6", "seed": 2}, {"name": "TREC_50"}), "corpus.corpora[0].seed", "once for all corpora"),
    (({"name": "TREC_6"}, {"name": "TREC_6"}), "corpus.corpora[1].id", "also the id of corpus.corpora[0]"),
    (({"name": "TREC_6"}, {"name": "NOPE"}), "corpus.corpora[1].name", "NOPE"),
    (({"name": "TREC_6"},), "corpus.corpora", "give 2 to 16"),
])
def test_mismatched_corpora_are_config_errors_before_any_download(tmp_path: Path, corpora, path, fragment) -> None:
    with pytest.raises(ConfigError) as info:
        corpus_step.run(CorpusConfig(out=str(tmp_path / "out"), corpora=corpora), downloader=object())
    found = {p.path: p.message for p in info.value.problems}
    assert path in found and fragment in found[path], found


def test_the_spec_form_reaches_the_corpus_step_and_a_mismatch_fails_validation(tmp_path: Path) -> None:
    from kftune.io.specfile import load_spec

    doc = {"apiVersion": "kftune.dev/v1alpha1", "kind": "TuningJob", "metadata": {"name": "multi"},
           "spec": {"corpus": {"downsample": 0.05, "tokenizer": "regex",
                               "corpora": [{"name": "TREC_6"},
                                           {"id": "support", "uri": "questions.csv", "format": "csv",
                                            "textColumn": "text", "labelColumn": "label"}]},
                    "task": {"type": "text_classification"}, "lrRangeTest": {"enabled": False},
                    "search": {"objective": {"type": "maximize", "objectiveMetricName": "dev_score"},
                               "algorithm": {"algorithmName": "random"}, "maxTrialCount": 1, "finalists": 0,
                               "parameters": [{"name": "learning_rate", "parameterType": "double",
                                               "feasibleSpace": {"min": "1e-3", "max": "1e-1"}}]}}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    job = load_spec(spec)
    settings = settings_from_spec(job.spec.corpus, job.spec.task)
    assert settings["corpora"][1]["id"] == "support" and settings["corpora"][1]["allow_unverified"] is True
    assert settings["tokenizer"] == "regex" and settings["downsample"] == 0.05 and "name" not in settings
    config = CorpusConfig(out=str(tmp_path / "out"), **json.loads(json.dumps(settings)))  # as the pipeline passes it
    assert config.problems() == []
    single = settings_from_spec(load_spec(Path(__file__).parents[2] / "examples" / "trec6.yaml").spec.corpus,
                                job.spec.task)
    assert "corpora" not in single and single["name"] == "TREC_6"

    doc["spec"]["corpus"]["corpora"][1] = {"name": "WNUT_17"}
    spec.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_spec(spec)
    found = {p.path: p.message for p in info.value.problems}
    assert "WNUT_17 holds sequence_labeling data but TREC_6" in found["spec.corpus.corpora[1]"]


def test_a_subword_tokenizer_is_trained_on_the_joint_train_split(corpus_mirror: Path, tmp_path: Path) -> None:
    pytest.importorskip("sentencepiece")
    questions = write_questions(tmp_path / "questions.csv")
    out = tmp_path / "subword"
    corpus_step.run(CorpusConfig(out=str(out), tokenizer={"type": "subword", "vocabSize": 300}, downsample=0.05,
                                 corpora=({"name": "TREC_6"},
                                          {"uri": str(questions), "format": "csv", "text_columns": ["text"],
                                           "label_column": "label", "allow_unverified": True})))
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["tokenizer"]["type"] == "subword" and meta["tokenizer"].get("model")
    rows = jsonl(out / "train.jsonl")
    assert {r["corpus"] for r in rows} == {"TREC_6", "questions"}
    assert any(t.startswith("▁") for r in rows for t in r["tokens"])  # SentencePiece pieces, in both corpora
    assert all(any(t.startswith("▁") for t in r["tokens"]) for r in rows if r["corpus"] == "questions")
