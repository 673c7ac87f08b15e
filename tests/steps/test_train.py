"""`kftune train` end to end: outputs, spec and --set handling, config errors, repeats, stores."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kftune.core.errors import ConfigError
from kftune.nlp.config import Hyperparameters, TrainerConfig
from kftune.nlp.model_io import load_model
from kftune.nlp.predict import predict
from kftune.steps.train import LOSS_COLUMNS, TrainConfig, main, run
from tests.nlp.synthetic import one_torch_thread, write_corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_ = one_torch_thread

FAST = ["--threads", "1", "--device", "cpu", "--set", "embedding_dim=16", "--set", "cnn_filters=8",
        "--set", "learning_rate=0.01"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("train-corpus"), "text_classification", sizes=(200, 40, 20))


def _spec(path: Path, task: str = "text_classification", model: dict | None = None, train: dict | None = None) -> Path:
    doc = {"apiVersion": "kftune.dev/v1alpha1", "kind": "TuningJob", "metadata": {"name": "toy"},
           "spec": {"corpus": {"name": "TREC_6"}, "task": {"type": task, "labelType": "x"},
                    "model": model or {}, "lrRangeTest": {"enabled": False},
                    "search": {"objective": {"type": "maximize", "objectiveMetricName": "dev_score"},
                               "algorithm": {"algorithmName": "random"}, "parallelTrialCount": 1,
                               "maxTrialCount": 1,
                               "parameters": [{"name": "learning_rate", "parameterType": "double",
                                               "feasibleSpace": {"min": "1e-4", "max": "1e-1"}}]},
                    "train": train or {}, "resources": {"trialGPU": 0, "finalGPU": 0}}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def test_cli_writes_every_output(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    metrics = tmp_path / "metrics.jsonl"
    code = main(["--corpus", str(corpus), "--out", str(out), "--max-epochs", "3", "--metrics-jsonl", str(metrics),
                 *FAST])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 3 and summary["dev_score"] > 0.8
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "loss.tsv", "model.pt", "result.json",
                                                     "training_curve.png"]
    lines = (out / "loss.tsv").read_text().splitlines()
    assert lines[0].split("\t") == list(LOSS_COLUMNS) and len(lines) == 4
    assert [line.split("\t")[0] for line in lines[1:]] == ["1", "2", "3"]
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "max_epochs" and result["task"] == "text_classification"
    assert result["hyperparameters"]["embedding_dim"] == 16 and result["trainer"]["max_epochs"] == 3
    assert result["dev_score"] == max(float(line.split("\t")[5]) for line in lines[1:])
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    names = {k for r in records for k in (r.get("values") or r)}
    assert {"train_loss", "dev_loss", "dev_score", "learning_rate", "samples_per_second", "epoch"} <= names
    loaded = load_model(out / "model.pt")
    assert loaded.metadata["dev_score"] == pytest.approx(result["dev_score"])
    assert predict(loaded, ["the banana is x"])[0].label == "B"


def test_spec_defaults_and_set_overrides(corpus: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path / "spec.yaml", model={"document_encoder": "mean", "embedding_dim": 8, "dropout": 0.1},
                 train={"maxEpochs": 2, "patience": 1, "seed": 3})
    out = tmp_path / "out"
    assert main(["--corpus", str(corpus), "--out", str(out), "--spec", str(spec), "--threads", "1",
                 "--set", "dropout=0.2"]) == 0
    result = json.loads((out / "result.json").read_text())
    hp = result["hyperparameters"]
    assert hp["document_encoder"] == "mean" and hp["embedding_dim"] == 8 and hp["dropout"] == 0.2
    assert result["trainer"]["max_epochs"] == 2 and result["trainer"]["seed"] == 3 and result["epochs"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--set", "learning_rate=fast"], "--set.learning_rate: 'fast' is not a number"),
    (["--set", "hiden_size=3"], "did you mean 'hidden_size'"),
    (["--set", "use_crf"], "not name=value"),
    (["--max-epochs", "0"], "max_epochs"),
])
def test_config_errors_exit_2(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                              message: str) -> None:
    assert main(["--corpus", str(corpus), "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_spec_task_must_match_corpus(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = _spec(tmp_path / "spec.yaml", task="sequence_labeling")
    assert main(["--corpus", str(corpus), "--out", str(tmp_path / "o"), "--spec", str(spec)]) == 2
    assert "spec.task.type" in capsys.readouterr().err


def test_missing_corpus_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_training_runs_repeat_with_seeds(corpus: Path, tmp_path: Path) -> None:
    hp = Hyperparameters.from_mapping({"embedding_dim": 8, "document_encoder": "mean", "learning_rate": 0.01},
                                      "text_classification")
    cfg = TrainConfig(corpus=str(corpus), out=str(tmp_path / "o"), hyperparameters=hp, show_progress=False,
                      trainer=TrainerConfig(max_epochs=2, training_runs=2, seed=4))
    result = run(cfg)
    assert len(result.dev_scores) == 2 and result.dev_score == pytest.approx(sum(result.dev_scores) / 2)
    rows = [line.split("\t") for line in (tmp_path / "o" / "loss.tsv").read_text().splitlines()[1:]]
    assert [(r[0], r[-1]) for r in rows] == [("1", "1"), ("2", "1"), ("1", "2"), ("2", "2")]
    assert sorted(p.name for p in (tmp_path / "o" / "checkpoints").iterdir()) == ["run-1.pt", "run-2.pt"]
    assert load_model(tmp_path / "o" / "model.pt").metadata["run"] == result.best_run


def test_budget_then_resume_and_fresh_start(corpus: Path, tmp_path: Path) -> None:
    hp = Hyperparameters.from_mapping({"embedding_dim": 8, "cnn_filters": 4}, "text_classification")
    base = dict(corpus=str(corpus), hyperparameters=hp, show_progress=False, trainer=TrainerConfig(max_epochs=3))
    straight = run(TrainConfig(out=str(tmp_path / "a"), **base))
    paused = run(TrainConfig(out=str(tmp_path / "b"), until_epoch=1, **base))
    assert paused.status == "paused" and paused.epochs == 1
    resumed = run(TrainConfig(out=str(tmp_path / "b"), resume=True, **base))
    assert resumed.epochs == 3 and resumed.dev_score == straight.dev_score
    # without resume, the checkpoint is replaced and training starts over (same seed: same result)
    fresh = run(TrainConfig(out=str(tmp_path / "b"), **base))
    assert fresh.epochs == 3 and fresh.dev_score == straight.dev_score


def test_callbacks_reach_the_trainer(corpus: Path, tmp_path: Path) -> None:
    seen: list[int] = []

    def stop_after_one(epoch, result):
        seen.append(epoch)
        return True

    hp = Hyperparameters.from_mapping({"embedding_dim": 8, "document_encoder": "max"}, "text_classification")
    result = run(TrainConfig(corpus=str(corpus), out=str(tmp_path / "o"), hyperparameters=hp, show_progress=False,
                             trainer=TrainerConfig(max_epochs=5)), callbacks=[stop_after_one])
    assert seen == [1] and result.status == "stopped" and result.epochs == 1


@pytest.mark.integration
def test_corpus_and_outputs_in_s3(corpus: Path, s3_env: str) -> None:
    from kftune.io.store import open_store

    store = open_store(s3_env)
    for name in ("corpus.json", "train.jsonl", "dev.jsonl", "test.jsonl"):
        store.put_file(f"corpus/{name}", corpus / name)
    hp = Hyperparameters.from_mapping({"embedding_dim": 8, "document_encoder": "mean"}, "text_classification")
    result = run(TrainConfig(corpus=f"{s3_env}/corpus", out=f"{s3_env}/train", hyperparameters=hp,
                             show_progress=False, trainer=TrainerConfig(max_epochs=2)))
    assert result.model_uri == f"{s3_env}/train/model.pt"
    assert {"train/model.pt", "train/loss.tsv", "train/result.json", "train/training_curve.png",
            "train/checkpoints/run-1.pt"} <= set(store.list("train/"))
    assert predict(load_model(result.model_uri, open_store=open_store), ["apple"])[0].label == "A"


@pytest.mark.slow
def test_real_trec6_through_the_corpus_step(corpus_mirror: Path, tmp_path: Path) -> None:
    """The real chain on real data: `kftune corpus` (TREC_6, 30 %) then `kftune train` in subprocesses."""
    env = dict(os.environ, KFTUNE_PROGRESS="log")
    data = tmp_path / "trec6"
    subprocess.run([sys.executable, "-m", "kftune.cli", "corpus", "--name", "TREC_6", "--downsample", "0.3",
                    "--out", str(data)], env=env, check=True, capture_output=True)
    out = tmp_path / "train"
    done = subprocess.run([sys.executable, "-m", "kftune.cli", "train", "--corpus", str(data), "--out", str(out),
                           "--max-epochs", "3", "--threads", "1"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["dev_score"] > 0.6  # 6 classes: chance is below 0.25
    loaded = load_model(out / "model.pt")
    assert set(loaded.labels) == {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}
    assert predict(loaded, ["Who wrote Hamlet ?"])[0].label == "HUM"


def test_write_weights_writes_the_table_and_the_plot(corpus: Path, tmp_path: Path) -> None:
    """train.writeWeights (here from the spec; --write-weights on the command line) writes weights.tsv (per
    record and tensor: mean, std, norm, 10 sampled values) and weights.png, which the report shows."""
    from kftune.nlp.weights import read_weights_tsv
    from kftune.steps import report

    spec = _spec(tmp_path / "spec.yaml", train={"writeWeights": True})
    out = tmp_path / "out"
    assert main(["--corpus", str(corpus), "--out", str(out), "--spec", str(spec), "--max-epochs", "2",
                 "--training-runs", "2", *FAST]) == 0
    text = (out / "weights.tsv").read_text()
    header = text.splitlines()[0].split("\t")
    assert header[:8] == ["run", "iteration", "epoch", "parameter", "numel", "mean", "std", "norm"]
    assert header[8:] == [f"sample_{i}" for i in range(10)]
    rows = read_weights_tsv(text)
    assert {r[0] for r in rows} == {1, 2}  # both training runs
    params = {r[3] for r in rows}
    assert "decoder.weight" in params
    decoder = [r for r in rows if r[0] == 1 and r[3] == "decoder.weight"]
    steps_per_epoch = -(-200 // 32)
    assert [r[1] for r in decoder][0] == 0 and decoder[-1][1] == 2 * steps_per_epoch and decoder[-1][2] == 2
    assert all(len(r[8]) == 10 for r in decoder) and decoder[0][8] != decoder[-1][8]
    png = (out / "weights.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert json.loads((out / "result.json").read_text())["trainer"]["write_weights"] is True

    rep = report.run(report.ReportConfig(out=str(tmp_path / "report"), train=str(out)))
    assert "![weights](weights.png)" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "weights.png").read_bytes() == png and rep.out

    plain = tmp_path / "plain"
    assert main(["--corpus", str(corpus), "--out", str(plain), "--max-epochs", "1", *FAST]) == 0
    assert not (plain / "weights.tsv").exists() and not (plain / "weights.png").exists()  # off by default


def test_the_pipeline_s_final_training_trains_the_winner_into_the_run_s_journal(corpus: Path, tmp_path: Path) -> None:
    """What the final-training task calls (:func:`kftune.steps.train.run_final`): the spec's model block with the
    winner's assignment over it, trained into runs/<run>/final/ and copied to the task's model directory."""
    from kftune.io.specfile import load_spec
    from kftune.steps.train import FinalConfig, run_final

    job = load_spec(_spec(tmp_path / "spec.yaml", model={"embedding_dim": 16, "cnn_filters": 8},
                          train={"maxEpochs": 2, "device": "cpu", "numThreads": 1}))
    best = {"trial_id": "trial-0003", "assignment": {"learning_rate": 0.02}}
    result = run_final(FinalConfig(corpus=str(corpus), store=str(tmp_path / "store"), run_id="r1", best=best,
                                   model_dir=str(tmp_path / "model")), job=job)
    assert result.model_uri == str(tmp_path / "store" / "runs" / "r1" / "final" / "model.pt")
    assert result.train.hyperparameters["learning_rate"] == 0.02 and result.train.hyperparameters["cnn_filters"] == 8
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["loss.tsv", "model.pt", "result.json",
                                                                      "training_curve.png"]
    assert result.metrics == {"dev_score": result.train.dev_score, "epochs": 2, "best_epoch": result.train.best_epoch}
    assert result.metadata["trial"] == "trial-0003" and result.metadata["framework"] == "pytorch"
    assert '<img alt="training curve" src="data:image/png;base64,' in result.html
    assert "<td>learning_rate</td><td>0.02</td>" in result.html
    with pytest.raises(ConfigError, match="final.best"):
        run_final(FinalConfig(corpus=str(corpus), store=str(tmp_path / "store"), run_id="r1", best={}), job=job)


def test_train_with_dev_retrains_the_best_run_on_train_and_dev_for_its_best_epochs(tmp_path: Path) -> None:
    """train.trainWithDev (Flair's train_with_dev): the first phase is the plain training (its held-out dev
    score is the result's); then the best run trains again from its seed on train + dev for the epochs of its
    best dev score, and that model is model.pt: it knows a word only dev has. Evaluation fits the baseline on
    train + dev as well. A resumed run finds both phases done and writes the same model."""
    from kftune.steps.evaluate import EvaluateConfig
    from kftune.steps.evaluate import run as evaluate

    dev_only = {"label": "A", "text": "the kumquat", "tokens": ["the", "kumquat"]}
    corpus = write_corpus(tmp_path / "corpus", "text_classification", sizes=(120, 30, 20), extra={"dev": [dev_only]})
    hp = Hyperparameters.from_mapping({"embedding_dim": 8, "document_encoder": "mean", "learning_rate": 0.01},
                                      "text_classification")
    plain = run(TrainConfig(corpus=str(corpus), out=str(tmp_path / "plain"), hyperparameters=hp, show_progress=False,
                            trainer=TrainerConfig(max_epochs=4, training_runs=2, seed=3)))
    cfg = TrainConfig(corpus=str(corpus), out=str(tmp_path / "o"), hyperparameters=hp, show_progress=False,
                      trainer=TrainerConfig(max_epochs=4, training_runs=2, seed=3, train_with_dev=True))
    result = run(cfg)
    assert result.dev_scores == plain.dev_scores and result.best_run == plain.best_run  # phase one: the same
    assert result.train_with_dev_epochs == plain.best_epoch and plain.train_with_dev_epochs is None
    out = tmp_path / "o"
    rows = (out / "loss_with_dev.tsv").read_text().splitlines()[1:]
    assert len(rows) == plain.best_epoch and {r.split("\t")[-1] for r in rows} == {str(plain.best_run)}
    assert (out / "checkpoints" / f"run-{plain.best_run}-with-dev.pt").exists()
    model = load_model(out / "model.pt")
    assert model.metadata["train_with_dev"] == {"epochs": plain.best_epoch, "run": plain.best_run,
                                                "train_examples": 151}
    assert "kumquat" in model.encoder.words.stoi and "kumquat" not in load_model(tmp_path / "plain" / "model.pt"
                                                                                  ).encoder.words.stoi
    assert model.metadata["dev_score"] == plain.dev_scores[plain.best_run - 1]

    judged = evaluate(EvaluateConfig(model=str(out / "model.pt"), corpus=str(corpus), out=str(tmp_path / "eval")))
    assert judged.baseline.n_train == 151 and judged.baseline.method.endswith("on train + dev")
    held_out = evaluate(EvaluateConfig(model=str(tmp_path / "plain" / "model.pt"), corpus=str(corpus),
                                       out=str(tmp_path / "eval-plain")))
    assert held_out.baseline.n_train == 120
    from kftune.steps import report

    report.run(report.ReportConfig(out=str(tmp_path / "report"), train=str(out)))
    page = (tmp_path / "report" / "report.md").read_text()
    assert f"| trained again on train + dev | {plain.best_epoch} epochs" in page
    from kftune.steps.train import final_page

    assert f"then trained on train + dev for {plain.best_epoch} epochs (trainWithDev)" in final_page(result, None)

    before = model.model.state_dict()
    again = run(dataclasses.replace(cfg, resume=True))
    assert again.train_with_dev_epochs == result.train_with_dev_epochs
    assert (out / "loss_with_dev.tsv").read_text().splitlines()[1:] == rows
    after = load_model(out / "model.pt").model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
