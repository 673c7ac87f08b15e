"""The components' logic, called as plain functions (no KFP runner, no training).

``resolve-spec`` maps the run's parameters onto the spec and sizes the search; ``suggest`` plans the
rounds from the trial journal; ``select-best`` names the winner; ``lr-range-test`` (with the test
off) writes the search space and warm-starts it from earlier runs. The trials here are records
written the way the trial step writes them, with made-up objectives, so a whole search is planned
in a fraction of a second and every round boundary can be checked.
"""

from __future__ import annotations

import ast
import copy
import importlib
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
from kfp import dsl

from kftune.core.errors import ConfigError, DataError
from kftune.core.search_policy import SearchPolicy
from kftune.io.journal import finalist_key, trial_key
from kftune.core.space import SearchSpace
from kftune.core.spec import parse_spec
from kftune.io.store import get_json, open_store, put_json
from kftune.pipelines import components as C
from kftune.pipelines.pipeline import DEFAULT_SEARCH_ROUNDS, DEFAULT_SPEC, resolve, rounds_for


def _spec(**search: Any) -> dict[str, Any]:
    spec = copy.deepcopy(DEFAULT_SPEC)
    spec["spec"]["search"].update(search)
    return spec


def _arguments(job: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    values = {"spec": json.dumps(job), "corpus": "", "downsample": 0.0, "max_trials": 0, "parallel_trials": 0,
              "max_epochs": 0, "seed": -1, "store": "/tmp/unused", "run_id": "r1"}
    values.update(overrides)
    return values


def _resolve(tmp_path: Path, job: dict[str, Any], rounds: int = 0, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    out = resolve(_arguments(job, **overrides), rounds, str(tmp_path / "job_spec.json"))
    return out, json.loads((tmp_path / "job_spec.json").read_text())


# --------------------------------------------------------------------------------------------------
# resolve-spec
# --------------------------------------------------------------------------------------------------

def test_parameters_override_the_spec_and_zero_keeps_it(tmp_path: Path) -> None:
    out, effective = _resolve(tmp_path, DEFAULT_SPEC, corpus="TREC_50", downsample=0.25, max_trials=6,
                              parallel_trials=3, max_epochs=4, seed=7, store="s3://bucket/prefix/")
    s = effective["spec"]
    assert s["corpus"]["name"] == "TREC_50" and s["corpus"]["downsample"] == 0.25 and s["corpus"]["seed"] == 7
    assert s["corpus"]["devFraction"] == 0.1  # kept from the spec
    assert (s["search"]["maxTrialCount"], s["search"]["parallelTrialCount"]) == (6, 3)
    assert (s["train"]["maxEpochs"], s["train"]["seed"]) == (4, 7)
    assert out.store == "s3://bucket/prefix" and out.run_id == "r1"
    corpus = json.loads(out.corpus_config)
    assert corpus["name"] == "TREC_50" and corpus["downsample"] == 0.25 and corpus["seed"] == 7
    assert corpus["label_type"] == "question_class" and corpus["allow_unverified"] is False
    kept_out, kept = _resolve(tmp_path, DEFAULT_SPEC)
    assert kept["spec"]["search"]["maxTrialCount"] == DEFAULT_SPEC["spec"]["search"]["maxTrialCount"]
    assert {k: kept["spec"]["corpus"][k] for k in DEFAULT_SPEC["spec"]["corpus"]} == DEFAULT_SPEC["spec"]["corpus"]
    assert json.loads(kept_out.spec) == kept


def test_fewer_max_epochs_bring_the_last_halving_rung_down_with_them(tmp_path: Path) -> None:
    _, effective = _resolve(tmp_path, DEFAULT_SPEC, max_epochs=4)
    settings = {s["name"]: s["value"] for s in effective["spec"]["search"]["earlyStopping"]["algorithmSettings"]}
    assert effective["spec"]["train"]["maxEpochs"] == 4 and settings["max_budget"] == "4"
    with pytest.raises(ConfigError):  # below the first rung: the spec's own rule refuses it
        _resolve(tmp_path, DEFAULT_SPEC, max_epochs=1)


def test_a_corpus_uri_parameter_replaces_a_registered_corpus(tmp_path: Path) -> None:
    spec = copy.deepcopy(DEFAULT_SPEC)
    with pytest.raises(ConfigError) as info:  # a URI without a format cannot be read
        _resolve(tmp_path, spec, corpus="https://example.org/data.csv")
    assert any(p.path.startswith("spec.corpus") for p in info.value.problems)
    spec["spec"]["corpus"] = {"uri": "https://example.org/a.tsv", "format": "tsv", "textColumn": "text",
                              "labelColumn": "label", "downsample": 0.5}
    _, effective = _resolve(tmp_path, spec, corpus="https://example.org/b.tsv")
    assert effective["spec"]["corpus"]["uri"] == "https://example.org/b.tsv"
    assert effective["spec"]["corpus"]["format"] == "tsv" and effective["spec"]["corpus"]["downsample"] == 0.5


def test_a_registered_corpus_label_map_reaches_the_corpus_step(tmp_path: Path) -> None:
    """spec.corpus.labelMap on NSMC goes into the effective spec and the corpus step's settings, which the
    corpus step accepts as they are (prepare-corpus builds CorpusConfig.from_settings(settings))."""
    from kftune.steps.corpus import CorpusConfig

    spec = copy.deepcopy(DEFAULT_SPEC)
    spec["spec"]["corpus"] = {"name": "NSMC", "tokenizer": "regex", "labelMap": {"0": "부정", "1": "긍정"}}
    out, effective = _resolve(tmp_path, spec, downsample=0.1)
    assert effective["spec"]["corpus"]["labelMap"] == {"0": "부정", "1": "긍정"}
    settings = json.loads(out.corpus_config)
    assert settings["label_map"] == {"0": "부정", "1": "긍정"} and settings["name"] == "NSMC"
    assert CorpusConfig.from_settings(out.corpus_config, out=str(tmp_path / "c")).problems() == []


def test_the_spec_s_own_corpus_as_the_corpus_parameter_keeps_every_corpus_setting(tmp_path: Path) -> None:
    """kftune run and kftune submit pass the spec's corpus name as the corpus parameter (the KFP UI shows it);
    that must not replace the corpus block (it dropped tokenizer and labelMap: NSMC's labels came out as
    negative/positive). Another corpus still replaces it."""
    from kftune.core.spec import job_to_dict
    from kftune.pipelines.pipeline import arguments_for_spec

    spec = copy.deepcopy(DEFAULT_SPEC)
    spec["spec"]["corpus"] = {"name": "NSMC", "tokenizer": "subword", "labelMap": {"0": "부정", "1": "긍정"},
                              "downsample": 0.1}
    arguments = arguments_for_spec(parse_spec(spec), run_id="r1", cluster=False)
    assert arguments["corpus"] == "NSMC"
    out = resolve({**arguments, "store": "/tmp/unused"}, 0, str(tmp_path / "job_spec.json"))
    effective = json.loads((tmp_path / "job_spec.json").read_text())
    assert effective["spec"]["corpus"] == job_to_dict(parse_spec(spec))["spec"]["corpus"]
    settings = json.loads(out.corpus_config)
    assert settings["label_map"] == {"0": "부정", "1": "긍정"} and settings["tokenizer"] == "subword"
    _, other = _resolve(tmp_path, spec, corpus="TREC_6")
    assert other["spec"]["corpus"]["name"] == "TREC_6" and other["spec"]["corpus"]["downsample"] == 0.1
    assert "labelMap" not in other["spec"]["corpus"] and "tokenizer" not in other["spec"]["corpus"]


def test_several_corpora_reach_the_corpus_step_as_one_prepared_corpus(tmp_path: Path) -> None:
    """spec.corpus.corpora goes to prepare-corpus as the corpus step's ``corpora`` (one artifact, no new task);
    kftune run's corpus parameter for it is empty (keeps them); another corpus replaces them."""
    from kftune.pipelines.pipeline import arguments_for_spec
    from kftune.steps.corpus import CorpusConfig

    spec = copy.deepcopy(DEFAULT_SPEC)
    spec["spec"]["corpus"] = {"tokenizer": "regex", "downsample": 0.1,
                              "corpora": [{"name": "TREC_6"}, {"id": "mine", "uri": "https://example.org/q.csv",
                                                               "format": "csv", "textColumn": "text",
                                                               "labelColumn": "label"}]}
    arguments = arguments_for_spec(parse_spec(spec), run_id="r1", cluster=False)
    assert arguments["corpus"] == ""
    out = resolve({**arguments, "store": "/tmp/unused"}, 0, str(tmp_path / "job_spec.json"))
    settings = json.loads(out.corpus_config)
    assert [c["id"] for c in settings["corpora"]] == ["TREC_6", "mine"]
    assert settings["corpora"][1]["allow_unverified"] is True and settings["downsample"] == 0.1
    assert CorpusConfig.from_settings(out.corpus_config, out=str(tmp_path / "c")).problems() == []  # prepare-corpus's
    _, other = _resolve(tmp_path, spec, corpus="TREC_50")
    assert other["spec"]["corpus"]["name"] == "TREC_50" and "corpora" not in other["spec"]["corpus"]
    with pytest.raises(ConfigError) as info:  # a uri replaces the corpora too (and then needs a format)
        _resolve(tmp_path, spec, corpus="https://example.org/x.csv")
    assert [p.path for p in info.value.problems] == ["spec.corpus.format"]


@pytest.mark.parametrize("name, value, path", [
    ("max_trials", -1, "parameter max_trials"), ("downsample", 1.5, "parameter downsample"),
    ("seed", -2, "parameter seed"), ("store", " ", "parameter store"), ("run_id", "a/b", "parameter run_id"),
    ("store", "http://x", "parameter store"), ("spec", "{not json", "parameter spec"),
    ("parallel_trials", 9, "spec.search.parallelTrialCount"),  # more than maxTrialCount: the spec's own rule
])
def test_bad_parameters_are_refused_naming_them(tmp_path: Path, name: str, value: Any, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        _resolve(tmp_path, DEFAULT_SPEC, **{name: value})
    assert path in [p.path for p in info.value.problems]


def test_a_search_that_needs_more_rounds_than_compiled_is_refused_with_the_count(tmp_path: Path) -> None:
    needed = rounds_for(_arguments(DEFAULT_SPEC))
    assert 1 < needed <= DEFAULT_SEARCH_ROUNDS
    _resolve(tmp_path, DEFAULT_SPEC, rounds=needed)
    with pytest.raises(ConfigError) as info:
        _resolve(tmp_path, DEFAULT_SPEC, rounds=needed - 1)
    assert f"needs {needed} rounds" in info.value.problems[0].message


def test_every_example_spec_fits_the_committed_pipelines(tmp_path: Path) -> None:
    from kftune.io.specfile import load_spec
    from kftune.pipelines.pipeline import arguments_for_spec

    examples = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        arguments = arguments_for_spec(load_spec(path), store="/tmp/unused", run_id="r1", cluster=False)
        out = resolve(arguments, DEFAULT_SEARCH_ROUNDS, str(tmp_path / "job_spec.json"))  # raises if it does not fit
        assert out.search_rounds == DEFAULT_SEARCH_ROUNDS, path.name


# --------------------------------------------------------------------------------------------------
# suggest -> (trials) -> select-best over a local store
# --------------------------------------------------------------------------------------------------

def _space_json(spec: dict[str, Any]) -> str:
    job = parse_spec(spec)
    return json.dumps({"parameters": SearchSpace.from_parameters(job.spec.search.parameters).to_katib(), "notes": []})


def _fake_trial(store: Any, policy: SearchPolicy, item: dict[str, Any]) -> dict[str, Any]:
    """What the trial step writes for a request, with an objective made up from the assignment."""
    q = item["request"]
    a = q["assignment"]
    objective = 0.5 + 0.4 * math.tanh(-abs(math.log10(a["learning_rate"]) + 2.5)) + 0.01 * random.Random(
        q["index"]).random()
    budget = q["budget"]
    record = {"id": q["trial_id"], "index": q["index"], "kind": q["kind"], "round": q["round"], "assignment": a,
              "state": "completed" if budget >= policy.max_budget else "pruned", "objective": objective,
              "intermediate": [[e, objective - 0.01 * (budget - e)] for e in range(1, budget + 1)],
              "budget": budget, "budget_asked": budget, "objective_metric": "dev_score", "seeds": q["seeds"]}
    key = (trial_key(item["run_id"], q["trial_id"]) if q["kind"] == "trial"
           else finalist_key(item["run_id"], q["trial_id"], q["seeds"]))
    put_json(store, key, record)
    return {"trial_id": q["trial_id"], "state": record["state"], "objective": objective}


def _run_search(tmp_path: Path, spec: dict[str, Any], rounds: int) -> tuple[Any, list[list[list[str]]], Path]:
    job_spec = tmp_path / "job_spec.json"
    job_spec.write_text(json.dumps(spec))
    artifact = dsl.Artifact(uri=str(job_spec))
    root = str(tmp_path / "store")
    store = open_store(root)
    policy = SearchPolicy.from_job(parse_spec(spec))
    space = _space_json(spec)
    plans, history = [], []
    for r in range(rounds + 1):
        batches = C.suggest(job_spec=artifact, search_space=space, run_id="r1", store=root, round_index=r,
                            search_rounds=rounds, parallel_trials=0, finalists=r == rounds, lease_owner="",
                            job_id="job-1", history=history)
        plans.append(batches)
        history = [[json.dumps(_fake_trial(store, policy, json.loads(x)) if "request" in json.loads(x)
                               else json.loads(x)) for x in batch] for batch in batches]
    return store, plans, job_spec


@pytest.mark.parametrize("search", [
    {},  # the default: coarse-to-fine, successive halving, finalists
    {"algorithm": {"algorithmName": "random"}, "earlyStopping": None, "finalists": 0},
    {"algorithm": {"algorithmName": "tpe", "algorithmSettings": [{"name": "n_startup_jobs", "value": "2"}]},
     "earlyStopping": {"algorithmName": "asha", "algorithmSettings": [{"name": "eta", "value": "2"},
                                                                     {"name": "min_budget", "value": "2"}]},
     "maxTrialCount": 6, "parallelTrialCount": 3},
], ids=["coarse-to-fine+halving", "random", "tpe+asha"])
def test_suggest_plans_the_whole_search_within_the_rounds_resolve_computed(tmp_path: Path, search: dict) -> None:
    spec = _spec(**search)
    if spec["spec"]["search"].get("earlyStopping") is None:
        spec["spec"]["search"].pop("earlyStopping")
    rounds = rounds_for(_arguments(spec))
    store, plans, _ = _run_search(tmp_path, spec, rounds)
    parallel = spec["spec"]["search"]["parallelTrialCount"]
    job = parse_spec(spec)
    for batches in plans:
        assert batches and all(1 <= len(b) <= parallel for b in batches)  # never an empty loop
    records = [get_json(store, k) for k in store.list("runs/r1/search/trials")]
    assert len(records) == job.spec.search.max_trial_count
    policy = SearchPolicy.from_job(job)
    from kftune.core.search_policy import history_from_records

    left = policy.plan(history_from_records(records), rounds + 1)
    if policy.halving is not None and not policy.halving.synchronous:
        assert all(q.promotion for q in left)  # asha: at most promotions that depend on the results are left
    else:
        assert left == []  # nothing left after the last round
    assert any(r["state"] == "completed" for r in records)
    finalist_round = [json.loads(x) for b in plans[-1] for x in b]
    if job.spec.search.finalists:
        assert all(item["request"]["kind"] == "finalist" for item in finalist_round)
        assert len(finalist_round) == job.spec.search.finalists * len(policy.finalist_seeds)
    else:
        assert finalist_round == [{"skip": True, "round": rounds, "reason": finalist_round[0]["reason"]}]
    # every round's plan is in the store, before its trials
    assert len(store.list("runs/r1/search/rounds")) == rounds + 1


def test_a_pipeline_with_spare_rounds_skips_them_and_select_best_names_the_winner(tmp_path: Path) -> None:
    spec = _spec(algorithm={"algorithmName": "random"}, finalists=0, maxTrialCount=4)
    spec["spec"]["search"].pop("earlyStopping")
    store, plans, job_spec = _run_search(tmp_path, spec, DEFAULT_SEARCH_ROUNDS)
    skipped = [i for i, p in enumerate(plans) if "skip" in json.loads(p[0][0])]
    assert skipped and skipped == list(range(len(plans) - len(skipped), len(plans)))  # only at the end
    table, plot, metrics = (dsl.Markdown(uri=str(tmp_path / "t.md")), dsl.HTML(uri=str(tmp_path / "p.html")),
                            dsl.Metrics(uri=str(tmp_path / "m")))
    winner = json.loads(C.select_best(job_spec=dsl.Artifact(uri=str(job_spec)), search_space=_space_json(spec),
                                      run_id="r1", store=str(tmp_path / "store"), history=[], table=table, plot=plot,
                                      metrics=metrics))
    records = [get_json(store, k) for k in store.list("runs/r1/search/trials")]
    best = max(records, key=lambda r: r["objective"])
    assert winner["trial_id"] == best["id"] and winner["assignment"] == best["assignment"]
    assert get_json(store, "runs/r1/search/best.json") == winner
    assert f"**{best['id']}**" in (tmp_path / "t.md").read_text()
    assert "data:image/png;base64," in (tmp_path / "p.html").read_text()
    assert metrics.metadata["best_objective"] == pytest.approx(best["objective"])


def test_select_best_without_any_result_fails_with_the_trials_states(tmp_path: Path) -> None:
    spec = _spec()
    job_spec = tmp_path / "job_spec.json"
    job_spec.write_text(json.dumps(spec))
    store = open_store(tmp_path / "store")
    put_json(store, trial_key("r1", "trial-0001"), {"id": "trial-0001", "index": 0, "state": "failed",
                                                    "assignment": {"learning_rate": 0.001, "dropout": 0.2,
                                                                   "embedding_dim": "64"},
                                                    "objective": None, "reason": "out of memory"})
    from kftune.core.errors import DataError

    with pytest.raises(DataError, match="trial-0001 failed \\(out of memory\\)"):
        C.select_best(job_spec=dsl.Artifact(uri=str(job_spec)), search_space=_space_json(spec), run_id="r1",
                      store=str(tmp_path / "store"), history=[], table=dsl.Markdown(uri=str(tmp_path / "t")),
                      plot=dsl.HTML(uri=str(tmp_path / "p")), metrics=dsl.Metrics(uri=str(tmp_path / "m")))


# --------------------------------------------------------------------------------------------------
# lr-range-test: the search space, warm start
# --------------------------------------------------------------------------------------------------

def _space_step(tmp_path: Path, spec: dict[str, Any], warm_start: bool) -> dict[str, Any]:
    job_spec = tmp_path / "job_spec.json"
    job_spec.write_text(json.dumps(spec))
    out = C.lr_range_test(job_spec=dsl.Artifact(uri=str(job_spec)), corpus=dsl.Dataset(uri=str(tmp_path / "none")),
                          run_id="new", store=str(tmp_path / "store"), warm_start=warm_start,
                          lr_test=dsl.Artifact(uri=str(tmp_path / "lr")), curve=dsl.HTML(uri=str(tmp_path / "c.html")),
                          summary=dsl.Markdown(uri=str(tmp_path / "s.md")),
                          metrics=dsl.Metrics(uri=str(tmp_path / "m")))
    written = get_json(open_store(tmp_path / "store"), "runs/new/search/space.json")
    assert json.loads(out) == written
    return written


def test_warm_start_narrows_the_space_around_earlier_runs_best_trials(tmp_path: Path) -> None:
    spec = _spec()
    spec["spec"]["lrRangeTest"] = {"enabled": False}
    cold = _space_step(tmp_path, spec, warm_start=True)  # no earlier run yet: unchanged
    assert cold["parameters"] == SearchSpace.from_parameters(parse_spec(spec).spec.search.parameters).to_katib()
    assert any("starts cold" in n for n in cold["notes"])
    store = open_store(tmp_path / "store")
    for i, (lr, score) in enumerate([(0.0002, 0.60), (0.003, 0.90), (0.004, 0.88), (0.009, 0.50)]):
        put_json(store, trial_key("old", f"trial-{i + 1:04d}"), {
            "id": f"trial-{i + 1:04d}", "index": i, "state": "completed", "objective": score, "budget": 6,
            "objective_metric": "dev_score",
            "assignment": {"learning_rate": lr, "dropout": 0.3, "embedding_dim": "128"}})
    warm = _space_step(tmp_path, spec, warm_start=True)
    lr = next(p for p in warm["parameters"] if p["name"] == "learning_rate")["feasibleSpace"]
    low, high = float(lr["min"]), float(lr["max"])
    assert low <= 0.003 and 0.004 <= high  # around the best two (top_k 2)
    assert math.log10(high / low) == pytest.approx(1.0, abs=0.01)  # half of the 2 decades (shrink 0.5)
    assert next(p for p in warm["parameters"] if p["name"] == "embedding_dim")["feasibleSpace"]["list"] == ["128"]
    assert any("warm start" in n and "old" in n for n in warm["notes"])
    off = _space_step(tmp_path, spec, warm_start=False)
    assert off["parameters"] == cold["parameters"]
    assert "The LR range test is off" in (tmp_path / "s.md").read_text()


def test_suggest_refuses_to_plan_while_a_record_says_running(tmp_path: Path) -> None:
    """A second driver on the run (or a trial pod that died without a result) leaves a record that says
    running after the barrier: suggest says so instead of ending the search as "exhausted" around it."""
    spec = _spec(algorithm={"algorithmName": "random"}, finalists=0, maxTrialCount=4)
    spec["spec"]["search"].pop("earlyStopping")
    job_spec = tmp_path / "job_spec.json"
    job_spec.write_text(json.dumps(spec))
    root = str(tmp_path / "store")
    put_json(open_store(root), trial_key("r1", "trial-0000"),
             {"id": "trial-0000", "index": 0, "kind": "trial", "round": 0, "assignment": {"learning_rate": 0.01},
              "state": "running", "objective": None, "intermediate": [], "budget": 0, "budget_asked": 4})
    with pytest.raises(DataError, match="trial-0000 of run 'r1' say running"):
        C.suggest(job_spec=dsl.Artifact(uri=str(job_spec)), search_space=_space_json(spec), run_id="r1",
                  store=root, round_index=1, search_rounds=2, parallel_trials=0, finalists=False, lease_owner="",
                  job_id="job-1", history=[])


def test_suggest_takes_the_runs_lease_and_refuses_a_run_another_driver_holds(tmp_path: Path) -> None:
    """One driver per run: a pipeline run's suggest tasks hold the run's lease as kfp-<job id> (renewed each
    round); a second pipeline run, or kftune search, on the same run id is refused, naming the holder."""
    from kftune.io.journal import lease_key
    from kftune.io.lease import LeaseHeldError, Process, RunLease, release_for_pipeline

    spec = _spec(algorithm={"algorithmName": "random"}, finalists=0, maxTrialCount=4)
    spec["spec"]["search"].pop("earlyStopping")
    job_spec = tmp_path / "job_spec.json"
    job_spec.write_text(json.dumps(spec))
    root = str(tmp_path / "store")
    store = open_store(root)

    def suggest(job_id: str, round_index: int = 0) -> Any:
        return C.suggest(job_spec=dsl.Artifact(uri=str(job_spec)), search_space=_space_json(spec), run_id="r1",
                         store=root, round_index=round_index, search_rounds=2, parallel_trials=0, finalists=False,
                         lease_owner="", job_id=job_id, history=[])

    suggest("job-1")
    lease = get_json(store, lease_key("r1"))
    assert lease["owner"] == "kfp-job-1" and lease["purpose"] == "kftune pipeline run" and lease["pid"] == 0
    suggest("job-1", 1)  # the same run's next round (or a KFP retry of it): its own lease, renewed
    assert get_json(store, lease_key("r1"))["renewals"] == lease["renewals"] + 1
    with pytest.raises(LeaseHeldError, match=r"run 'r1' is driven by another process: kftune pipeline run .*"
                                             r"Give this pipeline run its own run_id"):
        suggest("job-2")
    search = RunLease(store, lease_key("r1"), run_id="r1", process=Process("elsewhere", "other-machine", 42))
    with pytest.raises(LeaseHeldError):  # kftune search on the same run: refused as well
        search.acquire()
    release_for_pipeline(store, "r1", "kfp-job-2")  # not its lease: left alone
    assert store.exists(lease_key("r1"))
    release_for_pipeline(store, "r1", "kfp-job-1")  # the report step of the run that holds it
    assert not store.exists(lease_key("r1"))
    suggest("job-2", 1)  # now free


# --------------------------------------------------------------------------------------------------
# Every component body is thin: it parses its inputs, calls one step, logs the outputs
# --------------------------------------------------------------------------------------------------

_RUN_STYLE = re.compile(r"^run(_\w+)?$")


def _body_problems(func: ast.FunctionDef, limit: int) -> list[str]:
    """What makes ``func`` more than a thin component body: not exactly one call of a ``run``/``run_*``
    function of a ``kftune.steps`` module (imported in the body, as the embedded source needs), more than
    ``limit`` statements (the docstring not counted), a temporary file."""
    body = func.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    nodes = [n for stmt in body for n in ast.walk(stmt)]
    steps: dict[str, str] = {}  # local name -> kftune.steps.<module>
    problems = []
    for n in nodes:
        if isinstance(n, ast.ImportFrom) and n.module == "kftune.steps":
            steps.update({a.asname or a.name: f"kftune.steps.{a.name}" for a in n.names})
        elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("kftune.steps."):
            problems.append(f"{func.name}: imports names from {n.module}; import the step module and call its run")
        if isinstance(n, (ast.Import, ast.ImportFrom)) and any(a.name == "tempfile" for a in n.names):
            problems.append(f"{func.name}: uses temporary files; hand the step parsed objects")
    calls = [n for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id in steps and _RUN_STYLE.match(n.func.attr)]
    if len(calls) != 1:
        problems.append(f"{func.name}: {len(calls)} calls of a kftune.steps.<step>.run function "
                        f"({', '.join(ast.unparse(c.func) for c in calls) or 'none'}); a body calls exactly one")
    for c in calls:
        module = importlib.import_module(steps[c.func.value.id])
        if not callable(getattr(module, c.func.attr, None)):
            problems.append(f"{func.name}: {steps[c.func.value.id]}.{c.func.attr} does not exist")
    count = sum(isinstance(n, ast.stmt) for n in nodes)
    if count > limit:
        problems.append(f"{func.name}: {count} statements, more than {limit}; move the logic into the step")
    return problems


def _component_functions(source: str) -> list[ast.FunctionDef]:
    names = {f.__name__ for f in C.FUNCTIONS}
    return [f for f in ast.parse(source).body if isinstance(f, ast.FunctionDef) and f.name in names]


def test_every_component_body_calls_one_step_and_stays_short() -> None:
    functions = _component_functions(Path(C.__file__).read_text(encoding="utf-8"))
    assert sorted(f.name for f in functions) == sorted(f.__name__ for f in C.FUNCTIONS)
    problems = [p for f in functions for p in _body_problems(f, C.MAX_BODY_STATEMENTS)]
    assert problems == []


def test_the_thin_body_check_fails_a_fat_body() -> None:
    """The check above can fail: a body with the step's logic inline, two step calls, or none."""
    fat = _component_functions('''
def final_training(job_spec, best, model, metrics):
    """Doc."""
    import tempfile
    from kftune.steps import train as step, evaluate
    with tempfile.TemporaryDirectory() as tmp:
        result = step.run(step.TrainConfig(corpus=tmp, out=tmp))
    evaluate.run(None)
    a = 1
    b = 2
    c = 3
    d = 4
    e = 5
    f = 6
    g = 7
    h = 8
    i = 9
    j = 10
    return result.model_uri


def trial(job_spec, item, metrics):
    from kftune.steps import trial as step
    return step.missing_helper(item)


def report(job_spec):
    from kftune.steps import report as step
    return step.run_nowhere(job_spec)
''')
    problems = {f.name: _body_problems(f, C.MAX_BODY_STATEMENTS) for f in fat}
    assert any("2 calls" in p for p in problems["final_training"])
    assert any("temporary files" in p for p in problems["final_training"])
    assert any("statements, more than" in p for p in problems["final_training"])
    assert any("0 calls" in p for p in problems["trial"])
    assert any("run_nowhere does not exist" in p for p in problems["report"])
