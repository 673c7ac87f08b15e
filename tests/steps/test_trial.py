"""``kftune trial``: one assignment for a budget, Katib lines, the record, resume, failures, medianstop.

Tiny synthetic corpus (3 classes, 120 training sentences) and a tiny CNN, so a trial takes well under a
second. ``write_corpus`` and ``write_spec`` are also used by tests/steps/test_search.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kftune.io.journal import checkpoint_key, trial_key
from kftune.core.trials import Trial
from kftune.io.store import get_json, open_store
from kftune.steps import trial

KATIB_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (\w+)=(\S+)$")


def write_corpus(directory: Path, n_train: int = 120, n_dev: int = 40, seed: int = 0) -> Path:
    """A learnable 3-class corpus in the shared JSONL format (label words mixed with common words)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    labels = ["A", "B", "C"]
    words = {label: [f"{label.lower()}{i}" for i in range(8)] for label in labels}
    common = [f"w{i}" for i in range(20)]

    def example() -> dict[str, Any]:
        label = rng.choice(labels)
        tokens = [rng.choice(words[label]) if rng.random() < 0.35 else rng.choice(common)
                  for _ in range(rng.randint(4, 9))]
        return {"label": label, "text": " ".join(tokens), "tokens": tokens}

    meta = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_dev)):
        rows = [example() for _ in range(n)]
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
        (directory / f"{split}.jsonl").write_text(text, encoding="utf-8")
        meta[split] = {"examples": n, "tokens": sum(len(r["tokens"]) for r in rows),
                       "sha256": hashlib.sha256(text.encode()).hexdigest()}
    info = {"name": "toy", "task": "text_classification", "label_type": "class", "labels": labels,
            "tag_scheme": None, "splits": meta, "seed": seed, "downsample": 1.0, "dev_fraction": 0.1,
            "source": {"kind": "synthetic"}, "kftune_version": "test"}
    (directory / "corpus.json").write_text(json.dumps(info), encoding="utf-8")
    return directory


DEFAULT_PARAMETERS = [
    {"name": "learning_rate", "parameterType": "double",
     "feasibleSpace": {"min": "0.01", "max": "0.1", "distribution": "logUniform"}},
    {"name": "dropout", "parameterType": "double", "feasibleSpace": {"min": "0.0", "max": "0.5"}},
]


def write_spec(path: Path, *, algorithm: str = "random", settings: dict[str, str] | None = None,
               early_stopping: str | None = None, es_settings: dict[str, str] | None = None,
               parameters: list[dict[str, Any]] | None = None, max_trials: int = 4, parallel: int = 1,
               max_failed: int | None = None, goal: float | None = None, finalists: int = 0, finalist_runs: int = 2,
               max_epochs: int = 2, training_runs: int = 1, patience: int = 3,
               model: dict[str, Any] | None = None) -> Path:
    """A TuningJob spec for the toy corpus: a tiny CNN, CPU, ``max_epochs`` epochs per trial (``model``: more
    hyperparameter defaults, e.g. ``{"optimizer": "sgd", "clip_grad_norm": "none"}`` for a trial that diverges
    at ``learning_rate`` 10)."""
    objective: dict[str, Any] = {"type": "maximize", "objectiveMetricName": "dev_score",
                                 "additionalMetricNames": ["dev_loss"]}
    if goal is not None:
        objective["goal"] = goal
    search: dict[str, Any] = {
        "objective": objective,
        "algorithm": {"algorithmName": algorithm,
                      "algorithmSettings": [{"name": k, "value": v} for k, v in (settings or {}).items()]},
        "parallelTrialCount": parallel, "maxTrialCount": max_trials, "finalists": finalists,
        "finalistRuns": finalist_runs, "parameters": parameters or DEFAULT_PARAMETERS,
    }
    if max_failed is not None:
        search["maxFailedTrialCount"] = max_failed
    if early_stopping is not None:
        search["earlyStopping"] = {"algorithmName": early_stopping, "algorithmSettings": [
            {"name": k, "value": v} for k, v in (es_settings or {}).items()]}
    doc = {"apiVersion": "kftune.dev/v1alpha1", "kind": "TuningJob", "metadata": {"name": "toy"},
           "spec": {"corpus": {"name": "TREC_6"}, "task": {"type": "text_classification"},
                    "model": {"embedding_dim": 16, "cnn_filters": 8, "cnn_kernel_sizes": [2, 3], "mini_batch_size": 16,
                              **(model or {})},
                    "lrRangeTest": {"enabled": False}, "search": search,
                    "train": {"maxEpochs": max_epochs, "patience": patience, "trainingRuns": training_runs,
                              "device": "cpu", "seed": 1},
                    "resources": {"trialGPU": 0, "finalGPU": 0}}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _args(spec: Path, corpus: Path, store: Path, trial_id: str, *extra: str) -> list[str]:
    return ["--spec", str(spec), "--corpus", str(corpus), "--store", str(store), "--run-id", "r1",
            "--trial-id", trial_id, *extra]


def _katib(out: str) -> list[tuple[str, float]]:
    return [(m.group(1), float(m.group(2))) for line in out.splitlines() if (m := KATIB_LINE.match(line))]


def test_trial_cli_prints_katib_lines_and_writes_one_record(corpus: Path, tmp_path: Path, capsys) -> None:
    spec = write_spec(tmp_path / "spec.yaml", max_epochs=3, training_runs=2)
    code = trial.main(_args(spec, corpus, tmp_path / "store", "t1", "--param", "learning_rate=0.05",
                            "--param", "dropout=0.1"))
    assert code == 0
    out = capsys.readouterr().out
    record = get_json(open_store(tmp_path / "store"), trial_key("r1", "t1"))
    assert record["state"] == "completed" and record["reason"] is None
    assert record["assignment"] == {"learning_rate": 0.05, "dropout": 0.1}  # typed, in space order
    assert record["seeds"] == [1, 2] and record["budget"] == 3 and record["epochs_trained"] == 6
    assert record["device"] == "cpu" and record["seconds"] > 0
    # Flair's objective: per run the mean of the last 3 dev scores, averaged over the runs
    runs = [[row["dev_score"] for row in r["history"]] for r in record["runs"]]
    per_run = [sum(r[-3:]) / 3 for r in runs]
    assert record["objective_runs"] == pytest.approx(per_run)
    assert record["objective"] == pytest.approx(sum(per_run) / 2)
    assert record["objective_spread"] == pytest.approx(abs(per_run[0] - per_run[1]) / 2 ** 0.5)
    assert [s for s, _ in record["intermediate"]] == [1, 2, 3]
    assert record["intermediate"][0][1] == pytest.approx((runs[0][0] + runs[1][0]) / 2)
    # Katib: dev_score per epoch of each run (and dev_loss, an additional metric), then the objective last
    lines = _katib(out)
    scores = [v for name, v in lines if name == "dev_score"]
    assert scores[:-1] == pytest.approx(runs[0] + runs[1])
    assert scores[-1] == pytest.approx(record["objective"])
    assert len([1 for name, _ in lines if name == "dev_loss"]) == 6
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["state"] == "completed" and summary["objective"] == pytest.approx(record["objective"])


def test_a_resumed_trial_continues_from_its_checkpoint_to_the_new_budget(corpus: Path, tmp_path: Path) -> None:
    """A promoted trial trains only the missing epochs, and ends exactly where one trained in one go does."""
    spec = write_spec(tmp_path / "spec.yaml", max_epochs=3)
    store = tmp_path / "store"
    assignment = ["--assignment", json.dumps({"learning_rate": "0.05", "dropout": 0.2})]
    assert trial.main(_args(spec, corpus, store, "t1", *assignment, "--budget", "1", "--no-katib-stdout")) == 0
    first = get_json(open_store(store), trial_key("r1", "t1"))
    assert first["state"] == "pruned" and first["budget"] == 1 and "successive-halving rung" in first["reason"]
    assert open_store(store).exists(checkpoint_key("r1", "t1", 1))
    assert trial.main(_args(spec, corpus, store, "t1", *assignment, "--budget", "3", "--resume",
                            "--no-katib-stdout")) == 0
    promoted = get_json(open_store(store), trial_key("r1", "t1"))
    assert promoted["state"] == "completed"
    assert promoted["budget"] == 3 and promoted["epochs_trained"] == 2 and promoted["resumed_from"] == [1]
    assert promoted["intermediate"][0] == first["intermediate"][0]
    # the same assignment trained for 3 epochs in one call
    assert trial.main(_args(spec, corpus, store, "t2", *assignment, "--budget", "3", "--no-katib-stdout")) == 0
    straight = get_json(open_store(store), trial_key("r1", "t2"))
    assert straight["epochs_trained"] == 3
    assert promoted["intermediate"] == straight["intermediate"]
    assert promoted["objective"] == straight["objective"]


def test_a_diverging_trial_is_recorded_failed_and_exits_1(corpus: Path, tmp_path: Path, capsys) -> None:
    # learning_rate is at most 10 (a spec error above it): plain SGD without clipping diverges there
    params = [{"name": "learning_rate", "parameterType": "discrete", "feasibleSpace": {"list": ["0.05", "10"]}}]
    spec = write_spec(tmp_path / "spec.yaml", parameters=params, model={"optimizer": "sgd", "clip_grad_norm": "none"})
    code = trial.main(_args(spec, corpus, tmp_path / "store", "bad", "--param", "learning_rate=10"))
    assert code == trial.EXIT_FAILED_TRIAL
    record = get_json(open_store(tmp_path / "store"), trial_key("r1", "bad"))
    assert record["state"] == "failed" and record["objective"] is None
    assert "loss became nan" in record["reason"] or "loss became inf" in record["reason"]
    out = capsys.readouterr().out
    assert not [v for name, v in _katib(out) if name == "dev_score"]  # no objective for Katib to read
    assert json.loads(out.strip().splitlines()[-1])["state"] == "failed"


@pytest.mark.parametrize("extra, message", [
    (["--param", "learning_rate=0.05"], "dropout: missing"),
    (["--param", "learning_rate=0.05", "--param", "dropout=0.1", "--param", "hidden=3"], "hidden: not a search"),
    (["--param", "learning_rate=5", "--param", "dropout=0.1"], "outside"),
    (["--assignment", "[1]"], "not a JSON object"),
    (["--param", "learning_rate=0.05", "--param", "dropout=0.1", "--budget", "9"], "maximum budget"),
])
def test_bad_input_exits_2_without_a_record(corpus: Path, tmp_path: Path, capsys, extra: list[str],
                                            message: str) -> None:
    spec = write_spec(tmp_path / "spec.yaml")
    assert trial.main(_args(spec, corpus, tmp_path / "store", "t1", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not open_store(tmp_path / "store").exists(trial_key("r1", "t1"))


def test_medianstop_prunes_a_trial_below_the_median_of_completed_ones(corpus: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", early_stopping="medianstop", max_epochs=3,
                      es_settings={"min_trials_required": "2", "start_step": "1"})
    done = [Trial(id=f"d{i}", assignment={"learning_rate": 0.05, "dropout": 0.1}, state="completed", objective=0.99,
                  intermediate=((1, 0.99), (2, 0.99), (3, 0.99))) for i in range(2)]
    config = trial.TrialConfig(spec=str(spec), corpus=str(corpus), store=str(tmp_path / "store"), run_id="r1",
                               trial_id="slow", assignment={"learning_rate": 0.01, "dropout": 0.4}, show_progress=False)
    result = trial.run(config, stop_history=done)
    assert result.state == "pruned" and result.record["budget"] == 1
    assert "medianstop at step 1" in result.record["reason"]
    alone = trial.run(trial.TrialConfig(**{**config.__dict__, "trial_id": "alone"}))  # nothing to judge against
    assert alone.state == "completed" and alone.record["budget"] == 3


def test_a_pipeline_loop_item_runs_its_request_or_says_why_the_round_is_skipped(corpus: Path, tmp_path: Path) -> None:
    """What the pipeline's trial task calls (:func:`kftune.steps.trial.run_item`): a request item trains and
    returns the barrier's history entry and the KFP metrics; a skip item trains nothing."""
    from kftune.io.specfile import load_spec

    job = load_spec(write_spec(tmp_path / "spec.yaml", max_epochs=2))
    store = str(tmp_path / "store")
    item = {"run_id": "r1", "store": store,
            "request": {"trial_id": "trial-0000", "index": 0, "assignment": {"learning_rate": 0.05, "dropout": 0.1},
                        "budget": 2, "round": 0}}
    done = trial.run_item(json.dumps(item), corpus=str(corpus), job=job)
    record = get_json(open_store(store), trial_key("r1", "trial-0000"))
    assert done.summary == {"trial_id": "trial-0000", "kind": "trial", "round": 0, "state": record["state"],
                            "objective": record["objective"], "budget": 2, "reason": None,
                            "record": open_store(store).uri_for(trial_key("r1", "trial-0000"))}
    assert done.metrics == {"objective": record["objective"], "epochs": 2} and done.note == ""
    skipped = trial.run_item({"skip": True, "round": 3, "reason": "nothing left to plan"}, corpus="unused", job=job)
    assert skipped.summary == {"skip": True, "round": 3} and skipped.metrics == {"skipped": 1}
    assert skipped.note == "round 3: nothing to train (nothing left to plan)" and skipped.result is None


def test_the_encoding_cache_of_a_pool_worker_tells_apart_every_encoding_setting(corpus: Path) -> None:
    """A worker runs many trials: a searched n-gram or casing setting gets its own encoding, never an earlier
    trial's (the cache once keyed only on vocabulary and length settings)."""
    import dataclasses

    from kftune.nlp.config import defaults_for

    info, task, splits = trial.load_corpus(str(corpus))
    base = dataclasses.replace(defaults_for("text_classification"), document_encoder="ngram", word_ngrams=1,
                               char_ngram_max=0, ngram_buckets=1024)
    variants = [base, dataclasses.replace(base, word_ngrams=2), dataclasses.replace(base, char_ngram_max=3),
                dataclasses.replace(base, casing_embedding_dim=4), dataclasses.replace(base, lowercase_words=True)]
    encoders = [trial._encoded(str(corpus), task, splits, hp)[0] for hp in variants]
    seen = [(e.ngrams, bool(e.casing), e.lowercase) for e in encoders]
    assert len(set(seen)) == len(variants), seen
    assert encoders[1].ngrams.word_ngrams == 2 and encoders[2].ngrams.char_max == 3
