"""One search driver: ``kftune search`` and the pipeline plan the same rounds and pick the same winner.

Both drivers plan with :meth:`kftune.core.search_policy.SearchPolicy.plan_round` over the same number of
rounds (:meth:`~kftune.core.search_policy.SearchPolicy.rounds_needed`) and keep everything in a
:class:`kftune.io.journal.RunJournal`, so for the same spec, seed and trial results their journals hold the
same round plans, the same trial records and the same ``best.json``.

- With recorded (made-up) results, in a fraction of a second per search: ``kftune search`` (its loop, trials
  replaced by a function that writes a record) against the pipeline's component functions driven round by
  round (resolve-spec, lr-range-test, suggest, select-best) with the same function standing in for trials.
- For real, once: ``kftune run`` (the whole pipeline on KFP's local runner) against ``kftune search`` on
  TREC-6 (downsampled), random search with successive halving, so that promotions occur.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any, Mapping

import pytest
import yaml
from kfp import dsl

from kftune.core.search_policy import SearchPolicy
from kftune.core.spec import parse_spec
from kftune.io.journal import RunJournal
from kftune.io.store import open_store
from kftune.pipelines import components as C
from kftune.pipelines.pipeline import DEFAULT_SPEC
from kftune.steps import search
from tests.steps.test_trial import write_corpus


# --------------------------------------------------------------------------------------------------
# Recorded results: the planner, driven by both drivers
# --------------------------------------------------------------------------------------------------

def fake_record(request: Mapping[str, Any], max_budget: int) -> dict[str, Any]:
    """What a trial of ``request`` records, made up from its assignment, index, budget and seeds."""
    a = request["assignment"]
    seeds = list(request.get("seeds") or [1])
    base = 0.5 + 0.4 * math.tanh(-abs(math.log10(float(a["learning_rate"])) + 2.5))
    value = base + 0.02 * random.Random(f"{request['index']}-{seeds}").random() + 0.001 * request["budget"]
    return {"id": request["trial_id"], "index": request["index"], "kind": request.get("kind", "trial"),
            "round": request.get("round"), "assignment": dict(a),
            "state": "completed" if request["budget"] >= max_budget else "pruned", "objective": value,
            "objective_runs": [value], "intermediate": [[e, value] for e in range(1, request["budget"] + 1)],
            "budget": request["budget"], "budget_asked": request["budget"], "seeds": seeds,
            "promotion": bool(request.get("promotion")), "objective_metric": "dev_score"}


def _spec(**search_block: Any) -> dict[str, Any]:
    spec = copy.deepcopy(DEFAULT_SPEC)
    spec["spec"]["lrRangeTest"] = {"enabled": False}
    spec["spec"]["search"].update(search_block)
    if spec["spec"]["search"].get("earlyStopping") is None:
        spec["spec"]["search"].pop("earlyStopping")
    return spec


def _kftune_search(tmp_path: Path, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> RunJournal:
    job = parse_spec(spec)
    max_budget = SearchPolicy.from_job(job).max_budget

    def fake_trial(payload: Mapping[str, Any]) -> dict[str, Any]:
        config = payload["trial"]
        request = {"trial_id": config.trial_id, "index": config.index, "assignment": config.assignment,
                   "budget": config.budget, "kind": config.kind, "seeds": config.seeds, "round": config.round,
                   "promotion": config.promotion}
        journal = RunJournal.open(config.store, config.run_id)
        record = fake_record(request, max_budget)
        journal.write(journal.record_key(config.trial_id, config.kind, config.seeds), record)
        return record

    monkeypatch.setattr(search, "run_request", fake_trial)
    corpus = write_corpus(tmp_path / "corpus", n_train=3, n_dev=3)
    store = tmp_path / "search-store"
    search.run(search.SearchConfig(spec="(parsed)", corpus=str(corpus), store=str(store), run_id="r1",
                                   executor="inline", show_progress=False), job=job)
    return RunJournal(open_store(store), "r1")


def _pipeline(tmp_path: Path, spec: dict[str, Any]) -> RunJournal:
    """The pipeline's components in the pipeline's order, trials replaced by fake_record."""
    root = str(tmp_path / "pipeline-store")
    resolved = C.resolve_spec(spec=json.dumps(spec), corpus="", downsample=0.0, max_trials=0, parallel_trials=0,
                              max_epochs=0, seed=-1, store=root, run_id="r1", job_id="job-1", search_rounds=0,
                              job_spec=dsl.Artifact(uri=str(tmp_path / "job_spec.json")))
    job_spec = dsl.Artifact(uri=str(tmp_path / "job_spec.json"))
    space = C.lr_range_test(job_spec=job_spec, corpus=dsl.Dataset(uri=str(tmp_path / "none")), run_id="r1",
                            store=root, warm_start=False, lr_test=dsl.Artifact(uri=str(tmp_path / "lr")),
                            curve=dsl.HTML(uri=str(tmp_path / "c.html")), summary=dsl.Markdown(uri=str(tmp_path / "s")),
                            metrics=dsl.Metrics(uri=str(tmp_path / "m")))
    rounds = resolved.search_rounds
    max_budget = SearchPolicy.from_job(parse_spec(spec)).max_budget
    journal = RunJournal(open_store(root), "r1")
    history: list[list[str]] = []
    for r in range(rounds + 1):
        batches = C.suggest(job_spec=job_spec, search_space=space, run_id="r1", store=root, round_index=r,
                            search_rounds=rounds, parallel_trials=0, finalists=r == rounds, lease_owner="",
                            job_id="job-1", history=history)
        history = []
        for batch in batches:
            done = []
            for item in map(json.loads, batch):
                if "request" in item:
                    q = item["request"]
                    journal.write(journal.record_key(q["trial_id"], q["kind"], q["seeds"]), fake_record(q, max_budget))
                done.append(json.dumps(item))
            history.append(done)
    C.select_best(job_spec=job_spec, search_space=space, run_id="r1", store=root, history=history,
                  table=dsl.Markdown(uri=str(tmp_path / "t.md")), plot=dsl.HTML(uri=str(tmp_path / "p.html")),
                  metrics=dsl.Metrics(uri=str(tmp_path / "m2")))
    return journal


def _planned(journal: RunJournal) -> list[dict[str, Any]]:
    """The round plans that ran something (a pipeline also writes its spare rounds' empty plans)."""
    return [p for p in journal.rounds() if p["requests"]]


@pytest.mark.parametrize("search_block", [
    {},  # the default: coarse-to-fine in 2 rounds, successive halving, 2 finalists with 2 runs
    {"algorithm": {"algorithmName": "random"}, "earlyStopping": {
        "algorithmName": "successive-halving", "algorithmSettings": [{"name": "eta", "value": "2"},
                                                                    {"name": "min_budget", "value": "1"},
                                                                    {"name": "max_budget", "value": "4"}]},
     "maxTrialCount": 5, "parallelTrialCount": 2, "finalists": 1},
    {"algorithm": {"algorithmName": "tpe", "algorithmSettings": [{"name": "n_startup_jobs", "value": "2"}]},
     "earlyStopping": {"algorithmName": "asha", "algorithmSettings": [{"name": "eta", "value": "2"},
                                                                     {"name": "min_budget", "value": "2"}]},
     "maxTrialCount": 6, "parallelTrialCount": 3},
    {"algorithm": {"algorithmName": "random"}, "earlyStopping": None, "finalists": 0, "maxTrialCount": 5,
     "parallelTrialCount": 2},
    {"algorithm": {"algorithmName": "random"}, "earlyStopping": {
        "algorithmName": "hyperband", "algorithmSettings": [{"name": "eta", "value": "2"},
                                                           {"name": "min_budget", "value": "1"},
                                                           {"name": "max_budget", "value": "4"}]},
     "maxTrialCount": 8, "parallelTrialCount": 2, "finalists": 1},
    {"algorithm": {"algorithmName": "bohb"}, "earlyStopping": {
        "algorithmName": "hyperband", "algorithmSettings": [{"name": "eta", "value": "2"},
                                                           {"name": "min_budget", "value": "1"},
                                                           {"name": "max_budget", "value": "4"}]},
     "maxTrialCount": 12, "parallelTrialCount": 2, "finalists": 1},  # trials 11, 12 may come from BOHB's model
], ids=["coarse-to-fine+halving+finalists", "random+halving", "tpe+asha", "random", "random+hyperband",
        "bohb+hyperband"])
def test_kftune_search_and_the_pipeline_plan_the_same_rounds_and_pick_the_same_best(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, search_block: dict[str, Any]) -> None:
    spec = _spec(**search_block)
    local = _kftune_search(tmp_path, spec, monkeypatch)
    pipeline = _pipeline(tmp_path, spec)
    plans = _planned(local)
    assert plans == _planned(pipeline)  # the same requests, in the same order, in the same rounds
    assert any(q["promotion"] for p in plans for q in p["requests"]) == (
        spec["spec"]["search"].get("earlyStopping") is not None)
    assert local.records() == pipeline.records()
    assert sorted(map(json.dumps, local.finalist_records())) == sorted(map(json.dumps, pipeline.finalist_records()))
    assert local.best() == pipeline.best()  # one best.json schema, the same winner
    assert local.best()["trial_id"] is not None


# --------------------------------------------------------------------------------------------------
# For real: kftune run against kftune search
# --------------------------------------------------------------------------------------------------

REAL: dict[str, Any] = {
    "apiVersion": "kftune.dev/v1alpha1",
    "kind": "TuningJob",
    "metadata": {"name": "same"},
    "spec": {
        "corpus": {"name": "TREC_6", "downsample": 0.03, "seed": 1},
        "task": {"type": "text_classification"},
        "model": {"document_encoder": "mean", "embedding_dim": 16, "mini_batch_size": 16, "max_length": 32},
        "lrRangeTest": {"enabled": False},
        "search": {
            "objective": {"type": "maximize", "objectiveMetricName": "dev_score"},
            "algorithm": {"algorithmName": "random", "algorithmSettings": [{"name": "random_state", "value": "5"}]},
            "earlyStopping": {"algorithmName": "successive-halving",
                              "algorithmSettings": [{"name": "eta", "value": "2"}, {"name": "min_budget", "value": "1"},
                                                    {"name": "max_budget", "value": "2"}]},
            "parallelTrialCount": 2, "maxTrialCount": 4, "finalists": 1, "finalistRuns": 2,
            "parameters": [
                {"name": "learning_rate", "parameterType": "double",
                 "feasibleSpace": {"min": "1e-3", "max": "1e-1", "distribution": "logUniform"}},
                {"name": "dropout", "parameterType": "double", "feasibleSpace": {"min": "0.1", "max": "0.5"}}]},
        "train": {"maxEpochs": 2, "patience": 2, "device": "cpu", "seed": 1, "numThreads": 1},
        "evaluation": {"baseline": False},
        "resources": {"trialGPU": 0, "finalGPU": 0},
    },
}


def _essence(record: Mapping[str, Any]) -> tuple:
    return (record["id"], record["index"], record["assignment"], record["state"], record["budget"],
            record["promotion"], pytest.approx(record["objective"], rel=1e-6, abs=1e-9))


@pytest.mark.slow
def test_kftune_run_and_kftune_search_propose_the_same_trials_and_pick_the_same_best(
        tmp_path: Path, corpus_mirror: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kftune.commands import run as run_command
    from kftune.io.specfile import load_spec
    from kftune.steps import corpus as corpus_step
    from kftune.steps.corpus import settings_from_spec

    spec = tmp_path / "same.yaml"
    spec.write_text(yaml.safe_dump(REAL), encoding="utf-8")
    rc = run_command.main([str(spec), "--out", str(tmp_path / "run"), "--run-id", "same"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err + captured.out
    pipeline = RunJournal(open_store(tmp_path / "run" / "store"), "same")

    job = load_spec(spec)
    settings = settings_from_spec(job.spec.corpus, job.spec.task)  # what prepare-corpus prepares
    settings["text_columns"] = tuple(settings.get("text_columns") or ())
    corpus_step.run(corpus_step.CorpusConfig(out=str(tmp_path / "corpus"), **settings))
    result = search.run(search.SearchConfig(spec=str(spec), corpus=str(tmp_path / "corpus"),
                                            store=str(tmp_path / "search-store"), run_id="same", executor="inline",
                                            show_progress=False), job=job)
    local = RunJournal(open_store(tmp_path / "search-store"), "same")

    plans = _planned(local)
    assert [(p["round"], p["kind"], p["requests"]) for p in plans] == \
        [(p["round"], p["kind"], p["requests"]) for p in _planned(pipeline)]
    assert any(q["promotion"] for p in plans for q in p["requests"])  # successive halving promoted trials
    assert [_essence(r) for r in local.records()] == [_essence(r) for r in pipeline.records()]
    a, b = local.best(), pipeline.best()
    assert a["trial_id"] == b["trial_id"] == result.best["trial_id"]
    assert a["assignment"] == b["assignment"] and a["chosen_on"] == b["chosen_on"] == "finalists"
    assert a["values"] == pytest.approx(b["values"], rel=1e-6)
    for key in ("seeds", "trials", "rounds", "stop_reason", "status", "space", "search_epochs", "finalist_epochs"):
        assert a[key] == b[key], key
