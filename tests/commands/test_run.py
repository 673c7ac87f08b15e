"""``kftune run``: the whole pipeline through KFP's local runner, on a tiny budget (CPU, well under a minute).

TREC-6 from the mirror (../shared/corpora), downsampled to 3 % of train, a small mean-pooling model,
two trials of one epoch: every task of the pipeline runs for real (corpus, LR range test, suggest,
trials, finalists' round, selection, final training, evaluation, report).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kftune.commands import run as run_command

TINY: dict[str, Any] = {
    "apiVersion": "kftune.dev/v1alpha1",
    "kind": "TuningJob",
    "metadata": {"name": "tiny"},
    "spec": {
        "corpus": {"name": "TREC_6", "downsample": 0.03, "seed": 1},
        "task": {"type": "text_classification"},
        "model": {"document_encoder": "mean", "embedding_dim": 16, "mini_batch_size": 16, "max_length": 32},
        "lrRangeTest": {"enabled": True, "startLR": 1.0e-4, "endLR": 1.0, "iterations": 10},
        "search": {
            "objective": {"type": "maximize", "objectiveMetricName": "dev_score"},
            "algorithm": {"algorithmName": "random", "algorithmSettings": [{"name": "random_state", "value": "3"}]},
            "parallelTrialCount": 2, "maxTrialCount": 2, "finalists": 0,
            "parameters": [
                {"name": "learning_rate", "parameterType": "double",
                 "feasibleSpace": {"min": "1e-3", "max": "1e-1", "distribution": "logUniform"}},
                {"name": "dropout", "parameterType": "double", "feasibleSpace": {"min": "0.1", "max": "0.5"}}]},
        "train": {"maxEpochs": 1, "patience": 1, "device": "cpu"},
        "resources": {"trialGPU": 0, "finalGPU": 0},
    },
}


def _spec(tmp_path: Path, **changes: Any) -> Path:
    data = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = data["spec"]
        for p in parents:
            node = node[p]
        node[key] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _best_record(store: Any, run_id: str) -> dict[str, Any]:
    from kftune.io.store import get_json

    records = [get_json(store, k) for k in store.list(f"runs/{run_id}/search/trials")]
    return max((r for r in records if r["state"] == "completed"), key=lambda r: r["objective"])


def _check_summary(out: str, best: dict[str, Any]) -> None:
    params = ", ".join(f"{k}={v:.4g}" for k, v in best["assignment"].items())
    assert f"  best parameters: {params}\n" in out
    assert f"  best trial:      {best['id']} (dev_score {best['objective']:.4g})" in out
    m = re.search(r"  test score:      ([0-9.]+) \(accuracy, 500 test examples\)", out)
    assert m and 0.0 <= float(m.group(1)) <= 1.0
    b = re.search(r"  vs baseline:     test accuracy ([0-9.]+) vs baseline ([0-9.]+) "
                  r"\(tf-idf \+ logistic regression\): ([+-][0-9.]+) points"
                  r"(, tuning beat the baseline|: the baseline is better|: a tie with the baseline)\n", out)
    assert b, out
    assert float(b.group(3)) == pytest.approx((float(b.group(1)) - float(b.group(2))) * 100, abs=0.11)
    assert "\x1b[" not in out  # the runner's coloured chatter stays in run.log


@pytest.mark.slow
def test_run_completes_on_cpu_and_prints_the_best_parameters_and_the_test_score(
        tmp_path: Path, corpus_mirror: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "run"  # with train.trainWithDev: the final model trains again on train + dev
    rc = run_command.main([str(_spec(tmp_path, **{"train.trainWithDev": True})), "--out", str(out_dir),
                           "--run-id", "tiny-1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err + captured.out
    out = captured.out
    for task in ("resolve-spec", "prepare-corpus", "lr-range-test", "suggest", "trial", "suggest-2", "select-best",
                 "final-training", "evaluate", "report"):
        assert re.search(rf"\] start  {task}\n", out) and re.search(rf"\] done   {task}\n", out), task
    assert out.count("] done   trial\n") == 2
    assert "start  deploy" not in out  # serving on the cluster is off unless the deploy parameter asks for it
    assert "\nkftune run tiny-1: done in " in out  # print is ours again after the runner (it patches it per task)
    from kftune.io.store import open_store

    store = open_store(out_dir / "store")
    _check_summary(out, _best_record(store, "tiny-1"))
    for key in ("runs/tiny-1/search/space.json", "runs/tiny-1/search/best.json", "runs/tiny-1/final/model.pt",
                "runs/tiny-1/report/report.html", "runs/tiny-1/search/checkpoints/trial-0001/seed-1.pt"):
        assert store.exists(key), key
    assert sorted(p.name for p in out_dir.iterdir()) == ["kfp", "run.log", "store", "summary.json"]  # tmp/ is gone
    assert "Executing task" in (out_dir / "run.log").read_text(encoding="utf-8")
    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["trials"]["completed"] == 2 and summary["run_id"] == "tiny-1"
    [pipeline_run] = list((out_dir / "kfp").iterdir())
    assert (pipeline_run / "evaluate" / "evaluation" / "result.json").is_file()
    assert (pipeline_run / "evaluate" / "evaluation" / "baseline.json").is_file()
    assert summary["test"]["baseline"]["name"] == "tf-idf + logistic regression"
    assert "baseline" in (out_dir / "store" / "runs" / "tiny-1" / "report" / "report.md").read_text(encoding="utf-8")
    assert summary["final_training"]["train_with_dev_epochs"] == 1
    assert "(then trained on train + dev for 1 epochs: trainWithDev)" in out
    assert (pipeline_run / "final-training" / "model" / "loss_with_dev.tsv").is_file()
    baseline = json.loads((pipeline_run / "evaluate" / "evaluation" / "baseline.json").read_text(encoding="utf-8"))
    sizes = json.loads((pipeline_run / "prepare-corpus" / "corpus" / "corpus.json").read_text())["splits"]
    assert baseline["method"].endswith("on train + dev")
    assert baseline["n_train"] == sizes["train"]["examples"] + sizes["dev"]["examples"]


@pytest.mark.slow
def test_run_fine_tunes_a_transformer_end_to_end(tmp_path: Path, corpus_mirror: Path, tiny_transformer: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The same tiny run with a transformer fine-tuned as Flair's tutorial does: the spec names only the weights
    (the fine-tune preset fills in the rest: AdamW, linear warm-up, the transformer's document vector)."""
    spec = _spec(tmp_path, **{
        "model": {"transformer": str(tiny_transformer), "max_length": 32},
        "lrRangeTest": {"enabled": True, "startLR": 1.0e-6, "endLR": 1.0e-1, "iterations": 8},
        "search.parameters": [{"name": "learning_rate", "parameterType": "double",
                               "feasibleSpace": {"min": "1e-5", "max": "1e-3", "distribution": "logUniform"}}]})
    out_dir = tmp_path / "run"
    rc = run_command.main([str(spec), "--out", str(out_dir), "--run-id", "tiny-bert"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err + captured.out
    assert captured.out.count("] done   trial\n") == 2
    from kftune.io.store import open_store

    store = open_store(out_dir / "store")
    _check_summary(captured.out, _best_record(store, "tiny-bert"))
    import io

    import torch

    payload = torch.load(io.BytesIO(store.get_bytes("runs/tiny-bert/final/model.pt")), weights_only=True)
    hp = payload["hyperparameters"]
    assert (hp["transformer"], hp["document_encoder"], hp["scheduler"]) == (str(tiny_transformer), "transformer",
                                                                            "linear_warmup")
    assert "tokenizer.json" in payload["transformer"]  # the model file predicts without the weights directory
    assert any(k.startswith("embeddings.embeddings.transformer.model.encoder.layer.1.") for k in payload["state_dict"])


@pytest.mark.slow
@pytest.mark.integration
def test_run_with_the_store_on_s3_leaves_the_runs_objects_there(
        tmp_path: Path, corpus_mirror: Path, s3_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, **{"lrRangeTest": {"enabled": False}, "search.finalists": 1, "search.finalistRuns": 2})
    rc = run_command.main([str(spec), "--out", str(tmp_path / "run"), "--store", s3_env, "--run-id", "tiny-s3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err + captured.out
    from kftune.io.store import open_store

    store = open_store(s3_env)
    keys = store.list("runs/tiny-s3")
    for key in ("runs/tiny-s3/search/space.json", "runs/tiny-s3/search/trials/trial-0001.json",
                "runs/tiny-s3/search/trials/trial-0002.json", "runs/tiny-s3/search/rounds/round-0000.json",
                "runs/tiny-s3/search/best.json", "runs/tiny-s3/final/model.pt", "runs/tiny-s3/report/report.md",
                "runs/tiny-s3/report/summary.json"):
        assert key in keys, (key, keys)
    assert any(k.startswith("runs/tiny-s3/search/checkpoints/trial-000") for k in keys)
    assert any(k.startswith("runs/tiny-s3/search/finalists/") for k in keys)  # the finalist's extra seed
    assert f"  report:          {s3_env}/runs/tiny-s3/report/report.html" in captured.out
    best = json.loads(store.get_bytes("runs/tiny-s3/search/best.json"))
    assert best["chosen_on"] == "finalists" and len(best["values"]) == 2
    assert f"  best parameters: {', '.join(f'{k}={v:.4g}' for k, v in best['assignment'].items())}" in captured.out
    assert not (tmp_path / "run" / "store").exists()


def test_a_spec_that_cannot_run_gives_one_line_and_starts_nothing(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, **{"search.parallelTrialCount": 5})  # more than maxTrialCount
    assert run_command.main([str(spec), "--out", str(tmp_path / "run")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "spec.search.parallelTrialCount" in err[0]
    assert run_command.main([str(_spec(tmp_path)), "--out", str(tmp_path / "run"), "--max-trials", "-1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "cannot run: parameter max_trials" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_failing_task_names_itself_and_the_runner_leaves_no_temporary_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-dir" / "train.csv"
    spec = _spec(tmp_path, corpus={"uri": str(missing), "format": "csv", "textColumn": "text", "labelColumn": "label",
                                   "sha256": "0" * 64})
    out_dir = tmp_path / "run"
    assert run_command.main([str(spec), "--out", str(out_dir)]) == 1
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1 and "task prepare-corpus failed: " in err[0], err
    assert f"no such artifact: {missing}" in err[0] and str(out_dir / "run.log") in err[0]
    assert "] failure prepare-corpus\n" in captured.out
    assert sorted(p.name for p in out_dir.iterdir()) == ["kfp", "run.log", "store"]
    assert not [p for p in (out_dir / "store").rglob("*") if p.is_file() and not p.name.startswith(".")]  # released


class _Task:
    def __init__(self, output: str):
        self.output = output


@pytest.mark.parametrize("model_score, line", [
    (0.882, "  vs baseline:     test accuracy 0.882 vs baseline 0.834 (tf-idf + logistic regression): +4.8 points, "
            "tuning beat the baseline\n"),
    (0.822, "  vs baseline:     test accuracy 0.822 vs baseline 0.834 (tf-idf + logistic regression): -1.2 points: "
            "the baseline is better\n")])
def test_the_summary_says_whether_tuning_beat_the_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch, model_score: float,
                                                           line: str) -> None:
    """The summary's baseline line, and --no-baseline turning the spec's evaluation.baseline off (no pipeline run:
    the runner is replaced by one that records its arguments)."""
    seen: list[dict[str, Any]] = []

    def fake_run(pipeline: Any, arguments: dict[str, Any], out: Path, echo: Any) -> _Task:
        seen.append(arguments)
        out.mkdir(parents=True, exist_ok=True)
        test = {"split": "test", "metric": "accuracy", "score": model_score, "examples": 500}
        if json.loads(arguments["spec"])["spec"]["evaluation"]["baseline"]:
            test["baseline"] = {"name": "tf-idf + logistic regression", "score": 0.834}
        return _Task(json.dumps({"run_id": "r", "store": str(out / "store"), "test": test}))

    from kftune.pipelines import local_runner

    monkeypatch.setattr(local_runner, "run_pipeline", fake_run)
    assert run_command.main([str(_spec(tmp_path)), "--out", str(tmp_path / "a"), "--run-id", "r"]) == 0
    out = capsys.readouterr().out
    assert f"  test score:      {model_score:.4g} (accuracy, 500 test examples)\n{line}" in out
    assert run_command.main([str(_spec(tmp_path)), "--out", str(tmp_path / "b"), "--run-id", "r",
                             "--no-baseline"]) == 0
    assert "vs baseline" not in capsys.readouterr().out
    assert [json.loads(a["spec"])["spec"]["evaluation"] for a in seen] == [{"baseline": True}, {"baseline": False}]


def test_a_run_another_process_drives_exits_3_and_starts_nothing(tmp_path: Path, corpus_mirror: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """One driver per run: kftune run holds the run's lease while its pipeline runs (its tasks find it theirs)
    and releases it at the end; a run id another live driver holds is refused with exit 3."""
    from kftune.io.journal import lease_key
    from kftune.io.lease import Process, RunLease
    from kftune.io.store import open_store

    store = open_store(tmp_path / "store")
    other = RunLease(store, lease_key("busy"), run_id="busy", process=Process("node-7", "another-machine", 4242))
    other.acquire()
    rc = run_command.main([str(_spec(tmp_path)), "--out", str(tmp_path / "run"), "--store", str(tmp_path / "store"),
                           "--run-id", "busy"])
    err = capsys.readouterr().err
    assert rc == 3 and "driven by another process: kftune search on host node-7, pid 4242" in err
    assert not (tmp_path / "run" / "kfp").exists()  # nothing started
    assert store.list("runs/busy") == [lease_key("busy")]


@pytest.mark.slow
def test_run_with_bohb_and_hyperband_searches_through_the_brackets(
        tmp_path: Path, corpus_mirror: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``algorithmName: bohb`` with Hyperband (eta 2, 1..2 epochs): bracket s=1 (2 trials at 1 epoch, the better
    one resumed to 2) and bracket s=0 (2 trials at 2 epochs), all the way to the report."""
    spec = _spec(tmp_path, **{
        "lrRangeTest": {"enabled": False}, "train.maxEpochs": 2, "search.maxTrialCount": 4,
        "search.algorithm": {"algorithmName": "bohb", "algorithmSettings": [{"name": "random_state", "value": "3"}]},
        "search.earlyStopping": {"algorithmName": "hyperband", "algorithmSettings": [
            {"name": "eta", "value": "2"}, {"name": "min_budget", "value": "1"}]}})
    out_dir = tmp_path / "run"
    rc = run_command.main([str(spec), "--out", str(out_dir), "--run-id", "tiny-bohb"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err + captured.out
    from kftune.io.store import get_json, open_store

    store = open_store(out_dir / "store")
    records = sorted((get_json(store, k) for k in store.list("runs/tiny-bohb/search/trials")), key=lambda r: r["index"])
    assert [(r["budget"], r["state"]) for r in records] in (
        [(1, "pruned"), (2, "completed"), (2, "completed"), (2, "completed")],
        [(2, "completed"), (1, "pruned"), (2, "completed"), (2, "completed")])
    assert sum(r["promotion"] for r in records) == 1  # resumed from its 1-epoch checkpoint
    _check_summary(captured.out, _best_record(store, "tiny-bohb"))
    assert store.exists("runs/tiny-bohb/report/report.html")
