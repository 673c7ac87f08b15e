"""The TuningJob -> Katib Experiment mapping (kftune.core.katib_export): what maps 1:1, what is noted."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml

from kftune.core.errors import ConfigError, DataError
from kftune.core.katib_export import (
    BUDGET_PARAMETER,
    NOTES_ANNOTATION,
    TRIAL_NAME_PARAMETER,
    TrialPodConfig,
    coarse_to_fine_config,
    coarse_to_fine_experiments,
    export_experiment,
    fine_space,
    hyperband_plan,
    katib_rungs,
    trials_from_katib,
)
from kftune.core.samplers.coarse_to_fine import CoarseToFineSampler
from kftune.core.samplers.grid import GridSampler
from kftune.core.space import SearchSpace
from kftune.core.spec import TuningJob, parse_spec, search_to_katib
from kftune.core.trials import Trial

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GPU_POD = TrialPodConfig(image="registry.test/kftune/kftune:9.9.9-cuda", gpu=True)
CPU_POD = TrialPodConfig(image="registry.test/kftune/kftune:9.9.9-cpu", gpu=False)


def raw(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


def job_of(data: dict) -> TuningJob:
    return parse_spec(data)


def example(name: str) -> TuningJob:
    return job_of(raw(name))


def with_search(name: str, **changes) -> TuningJob:
    data = copy.deepcopy(raw(name))
    for key, value in changes.items():
        if value is None:
            data["spec"]["search"].pop(key, None)
        else:
            data["spec"]["search"][key] = value
    return job_of(data)


def container(body: dict) -> dict:
    return body["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]


def pod_spec(body: dict) -> dict:
    return body["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]


def arg_after(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


# -- the search block maps 1:1 --------------------------------------------------------------------------

def test_tpe_with_medianstop_maps_field_for_field():
    job = example("wnut17")
    exp = export_experiment(job, GPU_POD)
    spec, katib = exp.body["spec"], search_to_katib(job.spec.search)
    assert exp.phase == "single" and exp.name == "wnut17"
    assert exp.body["apiVersion"] == "kubeflow.org/v1beta1" and exp.body["kind"] == "Experiment"
    for key in ("objective", "algorithm", "earlyStopping", "parallelTrialCount", "maxTrialCount",
                "maxFailedTrialCount", "parameters"):
        assert spec[key] == katib[key], key
    assert spec["earlyStopping"] == {"algorithmName": "medianstop", "algorithmSettings": [
        {"name": "min_trials_required", "value": "4"}, {"name": "start_step", "value": "5"}]}
    assert spec["metricsCollectorSpec"] == {"collector": {"kind": "StdOut"}}
    # no hyperband, so no note about it; the LR range test and the finalists are noted
    assert not any("hyperband" in n for n in exp.notes)
    assert any(n.startswith("lrRangeTest:") for n in exp.notes)
    assert any(n.startswith("finalists:") for n in exp.notes)
    assert exp.body["metadata"]["annotations"][NOTES_ANNOTATION] == "\n".join(exp.notes)


def test_trial_template_wires_every_parameter_and_the_trial_name():
    job = example("wnut17")
    body = export_experiment(job, GPU_POD).body
    template = body["spec"]["trialTemplate"]
    c = container(body)
    assert template["primaryContainerName"] == c["name"]
    assert c["image"] == GPU_POD.image and c["command"] == ["kftune", "trial"]
    params = arg_after(c["args"], "--param")
    assert params == [f"{p.name}=${{trialParameters.{p.name}}}" for p in job.spec.search.parameters]
    refs = {t["name"]: t["reference"] for t in template["trialParameters"]}
    assert refs.pop(TRIAL_NAME_PARAMETER) == "${trialSpec.Name}"
    assert refs == {p.name: p.name for p in job.spec.search.parameters}
    # every trial parameter is used in the trial spec, and every placeholder is a trial parameter
    text = yaml.safe_dump(template["trialSpec"])
    for name in [TRIAL_NAME_PARAMETER, *refs]:
        assert f"${{trialParameters.{name}}}" in text
    assert arg_after(c["args"], "--trial-id") == [f"${{trialParameters.{TRIAL_NAME_PARAMETER}}}"]
    assert arg_after(c["args"], "--spec") == ["/etc/kftune/spec.yaml"]
    assert arg_after(c["args"], "--run-id") == ["wnut17"]
    assert arg_after(c["args"], "--corpus") == ["s3://kftune/tuning/runs/wnut17/corpus"]
    assert "--budget" not in c["args"]
    assert c["envFrom"] == [{"secretRef": {"name": "kftune-s3"}}]
    spec = pod_spec(body)
    assert spec["volumes"] == [{"name": "spec", "configMap": {"name": "kftune-spec-wnut17"}}]
    assert spec["restartPolicy"] == "Never"
    # resources, node selector and tolerations from spec.resources
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 1, "memory": "8Gi"}
    assert c["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_cpu_image_gets_no_gpu_and_says_so():
    exp = export_experiment(example("wnut17"), CPU_POD)
    c = container(exp.body)
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert c["image"] == CPU_POD.image
    assert any("trialGPU is 1" in n and "CPU image" in n for n in exp.notes)


def test_namespace_run_id_and_names_come_from_the_pod_config():
    pod = TrialPodConfig(image="x/y:1", gpu=False, namespace="team-a", run_id="r7", store="s3://b/p",
                         spec_configmap="my-spec", s3_secret="my-s3")
    body = export_experiment(example("wnut17"), pod).body
    c = container(body)
    assert body["metadata"]["namespace"] == "team-a"
    assert arg_after(c["args"], "--run-id") == ["r7"]
    assert arg_after(c["args"], "--store") == ["s3://b/p"]
    assert arg_after(c["args"], "--corpus") == ["s3://b/p/runs/r7/corpus"]
    assert pod_spec(body)["volumes"][0]["configMap"]["name"] == "my-spec"
    assert c["envFrom"] == [{"secretRef": {"name": "my-s3"}}]


def test_random_and_grid_keep_katibs_names():
    job = with_search("wnut17", algorithm={"algorithmName": "random", "algorithmSettings": [
        {"name": "random_state", "value": "3"}]})
    spec = export_experiment(job, GPU_POD).body["spec"]
    assert spec["algorithm"] == {"algorithmName": "random", "algorithmSettings": [{"name": "random_state", "value": "3"}]}


def test_grid_double_without_step_becomes_the_discrete_list_kftune_tries():
    params = [
        {"name": "learning_rate", "parameterType": "double",
         "feasibleSpace": {"min": "1e-4", "max": "1e-2", "distribution": "logUniform"}},
        {"name": "hidden_size", "parameterType": "int", "feasibleSpace": {"min": "64", "max": "256", "step": "64"}},
    ]
    job = with_search("wnut17", algorithm={"algorithmName": "grid", "algorithmSettings": [
        {"name": "default_points", "value": "3"}]}, parameters=params, earlyStopping=None, maxTrialCount=12)
    exp = export_experiment(job, GPU_POD)
    spec = exp.body["spec"]
    assert spec["algorithm"] == {"algorithmName": "grid"}  # default_points is kftune's, not Katib's
    lr, hidden = spec["parameters"]
    assert hidden == params[1]
    assert lr["parameterType"] == "discrete"
    space = SearchSpace.from_parameters(job.spec.search.parameters)
    grid = GridSampler().suggest(space, [], 12, seed=0, settings={"default_points": "3"}, max_trials=12)
    assert [float(x) for x in lr["feasibleSpace"]["list"]] == sorted({a["learning_rate"] for a in grid})
    assert any("default_points" in n for n in exp.notes)


# -- coarse-to-fine -----------------------------------------------------------------------------------

def coarse_trials(job: TuningJob, n: int, seed: int = 3) -> list[Trial]:
    space = SearchSpace.from_parameters(job.spec.search.parameters)
    out = []
    for i, a in enumerate(space.sample(n, seed)):
        score = 1.0 - abs(math.log10(a["learning_rate"]) + 3.0) / 3  # best near lr 1e-3
        out.append(Trial(id=f"trec6-coarse-{i}", assignment=a, state="completed", objective=score, budget=6))
    return out


def test_coarse_to_fine_gives_a_coarse_then_a_fine_experiment_inside_it():
    job = example("trec6")
    config = coarse_to_fine_config(job)
    trials = coarse_trials(job, config.round_size)
    coarse, fine = coarse_to_fine_experiments(job, GPU_POD, trials)
    assert (coarse.name, coarse.phase, coarse.round) == ("trec6-coarse", "coarse", 0)
    assert (fine.name, fine.phase, fine.round) == ("trec6-fine", "fine", 1)
    assert coarse.body["metadata"]["labels"]["kftune.dev/phase"] == "coarse"
    # the coarse round searches the whole space (the spec's parameters verbatim, plus hyperband's budget)
    cp = {p["name"]: p for p in coarse.body["spec"]["parameters"]}
    fp = {p["name"]: p for p in fine.body["spec"]["parameters"]}
    assert cp["learning_rate"] == search_to_katib(job.spec.search)["parameters"][0]
    assert set(cp) == set(fp)
    narrowed = 0
    for name, c in cp.items():
        f = fp[name]
        if "list" in c["feasibleSpace"]:
            assert set(f["feasibleSpace"]["list"]) <= set(c["feasibleSpace"]["list"])
        else:
            assert float(c["feasibleSpace"]["min"]) <= float(f["feasibleSpace"]["min"])
            assert float(f["feasibleSpace"]["max"]) <= float(c["feasibleSpace"]["max"])
            width = lambda fs: float(fs["max"]) - float(fs["min"])  # noqa: E731
            narrowed += width(f["feasibleSpace"]) < width(c["feasibleSpace"])
    assert narrowed >= 2  # learning_rate and dropout shrank
    assert any("round 1 of 2" in n for n in fine.notes)


def test_fine_space_is_the_samplers_round_space():
    """Given the same trials, the fine Experiment's space is the one the local sampler would use."""
    job = example("trec6")
    config = coarse_to_fine_config(job)
    space = SearchSpace.from_parameters(job.spec.search.parameters)
    trials = coarse_trials(job, config.round_size, seed=11)
    ours = fine_space(space, [trials], config, "maximize")
    theirs = CoarseToFineSampler().round_spaces(space, trials, config, "maximize", upto=1)[-1]
    assert ours.to_katib() == theirs.to_katib()
    assert ours.to_katib() != space.to_katib()


def test_coarse_round_share_and_random_algorithm_without_halving():
    job = with_search("trec6", earlyStopping=None)
    coarse = export_experiment(job, GPU_POD, phase="coarse")
    spec = coarse.body["spec"]
    assert spec["algorithm"] == {"algorithmName": "random", "algorithmSettings": [{"name": "random_state", "value": "1"}]}
    assert spec["maxTrialCount"] == coarse_to_fine_config(job).round_size == 4
    assert spec["parallelTrialCount"] == 2
    assert spec["parameters"] == search_to_katib(job.spec.search)["parameters"]


def test_phase_errors():
    job = example("trec6")
    with pytest.raises(ConfigError, match="--from-trials"):
        export_experiment(job, GPU_POD, phase="fine")
    with pytest.raises(ConfigError, match="no round 2"):
        export_experiment(job, GPU_POD, phase="fine", earlier_rounds=[coarse_trials(job, 4), coarse_trials(job, 4)])
    with pytest.raises(ConfigError, match="coarse-to-fine only"):
        export_experiment(example("wnut17"), GPU_POD, phase="fine")


def test_fine_round_without_any_result_is_a_data_error():
    job = example("trec6")
    failed = [Trial(id=f"t{i}", assignment=t.assignment, state="failed") for i, t in enumerate(coarse_trials(job, 4))]
    with pytest.raises(DataError, match="nothing to narrow"):
        export_experiment(job, GPU_POD, phase="fine", earlier_rounds=[failed])


# -- successive halving / ASHA -> hyperband -------------------------------------------------------------

def test_katib_rungs_follow_katibs_arithmetic():
    assert katib_rungs(9, 3, 2) == (1, 3, 9)
    assert katib_rungs(6, 2, 2) == (1, 3, 6)
    assert katib_rungs(81, 3, 4) == (1, 3, 9, 27, 81)


def test_hyperband_plan():
    plan = hyperband_plan(3, 1, 9, 18)
    assert plan is not None
    assert plan.rungs == (1, 3, 9) and plan.sizes == (18, 6, 2) and plan.trials == 26
    assert plan.settings() == [{"name": "resource_name", "value": BUDGET_PARAMETER}, {"name": "r_l", "value": "9"},
                               {"name": "eta", "value": "3"}, {"name": "s_max", "value": "2"}]
    small = hyperband_plan(3, 1, 9, 4)  # Katib needs parallelTrialCount >= 3**2
    assert small is not None and small.configurations == 9 == small.min_parallel
    assert hyperband_plan(3, 1, 2, 8) is None  # int(2 / 3) == 0: Katib's first rung would train 0 epochs


def test_asha_with_random_maps_to_hyperband_with_notes():
    job = example("ud_english_pos")
    exp = export_experiment(job, GPU_POD)
    spec = exp.body["spec"]
    assert "earlyStopping" not in spec
    assert spec["algorithm"]["algorithmName"] == "hyperband"
    settings = {s["name"]: s["value"] for s in spec["algorithm"]["algorithmSettings"]}
    assert settings == {"resource_name": "budget", "r_l": "9", "eta": "3", "s_max": "2"}
    budget = next(p for p in spec["parameters"] if p["name"] == BUDGET_PARAMETER)
    assert budget == {"name": "budget", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "9"}}
    # Katib's validation: parallelTrialCount >= eta ** int(log(r_l) / log(eta))
    assert spec["parallelTrialCount"] >= 3 ** int(math.log(9.0) / math.log(3))
    assert spec["maxTrialCount"] == 18 + 6 + 2
    args = container(exp.body)["args"]
    assert arg_after(args, "--budget") == ["${trialParameters.budget}"]
    assert "budget" in {t["name"] for t in exp.body["spec"]["trialTemplate"]["trialParameters"]}
    text = "\n".join(exp.notes)
    assert "asha maps to Katib's hyperband" in text
    assert "asynchronous promotion" in text  # ASHA cannot map exactly
    assert "cannot resume" in text  # promotions retrain from scratch
    assert "logUniform is not honoured" in text
    # the stepped int becomes the categorical list of its values
    hidden = next(p for p in spec["parameters"] if p["name"] == "hidden_size")
    assert hidden == {"name": "hidden_size", "parameterType": "categorical",
                      "feasibleSpace": {"list": ["64", "128", "192", "256"]}}


def test_successive_halving_on_trec6_notes_the_different_rungs():
    exp = export_experiment(example("trec6"), GPU_POD)
    assert exp.body["spec"]["algorithm"]["algorithmName"] == "hyperband"
    assert any("successive-halving maps to Katib's hyperband" in n and "rung budgets differ" in n for n in exp.notes)


def test_halving_with_tpe_cannot_map_and_says_so():
    job = with_search("wnut17", earlyStopping={"algorithmName": "successive-halving", "algorithmSettings": [
        {"name": "eta", "value": "3"}, {"name": "min_budget", "value": "1"}, {"name": "max_budget", "value": "9"}]})
    exp = export_experiment(job, GPU_POD)
    spec = exp.body["spec"]
    assert spec["algorithm"]["algorithmName"] == "tpe"
    assert "earlyStopping" not in spec
    assert BUDGET_PARAMETER not in {p["name"] for p in spec["parameters"]}
    assert any("cannot be combined with algorithm tpe" in n for n in exp.notes)


# -- the LR range test hand-off --------------------------------------------------------------------------

def test_lr_range_result_replaces_the_learning_rate_space():
    result = {"method": "valley", "lr": 0.0175, "range": [0.00093260, 0.04], "diverged": False}
    exp = export_experiment(example("wnut17"), GPU_POD, lr_result=result)
    lr = exp.body["spec"]["parameters"][0]
    assert lr == {"name": "learning_rate", "parameterType": "double",  # the decade below the suggestion
                  "feasibleSpace": {"min": "0.00175", "max": "0.0175", "distribution": "logUniform"}}
    notes = "\n".join(exp.notes)
    assert "lrRangeTest:" in notes
    assert "reaches outside the spec's" in notes  # 0.0175 > the spec's max 1e-2: the trials must accept it


def test_lr_range_without_a_range_leaves_the_space():
    exp = export_experiment(example("wnut17"), GPU_POD, lr_result={"method": "valley", "lr": None, "range": None})
    assert exp.body["spec"]["parameters"][0]["feasibleSpace"] == {"min": "2e-3", "max": "1e-2",   # the example's
                                                                   "distribution": "logUniform"}


# -- reading Katib Trials back ---------------------------------------------------------------------------

def katib_trial(name: str, assignment: dict, condition: str, metrics: dict | None, created: str,
                experiment: str = "trec6-coarse") -> dict:
    return {
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Trial",
        "metadata": {"name": name, "creationTimestamp": created,
                     "labels": {"katib.kubeflow.org/experiment": experiment}},
        "spec": {"parameterAssignments": [{"name": k, "value": v} for k, v in assignment.items()]},
        "status": {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "False"},
                                  {"type": condition, "status": "True"}],
                   **({"observation": {"metrics": [{"name": k, **v} for k, v in metrics.items()]}} if metrics else {})},
    }


def test_trials_from_katib_reads_states_objectives_and_budget():
    job = example("trec6")
    space = SearchSpace.from_parameters(job.spec.search.parameters)
    a = {"learning_rate": "0.001", "dropout": "0.3", "embedding_dim": "128", "mini_batch_size": "32"}
    objs = [
        katib_trial("t-b", {**a, "budget": "3"}, "Succeeded",
                    {"dev_score": {"min": "0.5", "max": "0.9", "latest": "0.8"}}, "2026-01-01T00:00:02Z"),
        katib_trial("t-a", a, "Failed", None, "2026-01-01T00:00:01Z"),
        katib_trial("t-c", a, "EarlyStopped", {"dev_score": {"min": "0.1", "max": "0.4", "latest": "unavailable"}},
                    "2026-01-01T00:00:03Z"),
    ]
    trials = trials_from_katib(objs, space, "maximize", "dev_score")
    assert [t.id for t in trials] == ["t-a", "t-b", "t-c"]  # oldest first
    assert [t.state for t in trials] == ["failed", "completed", "pruned"]
    assert trials[1].objective == 0.9 and trials[1].budget == 3  # max when maximizing
    assert trials[1].assignment == {"learning_rate": 0.001, "dropout": 0.3, "embedding_dim": "128",
                                    "mini_batch_size": 32}
    assert trials[0].objective is None
    latest = trials_from_katib(objs, space, "maximize", "dev_score", strategy="latest")
    assert latest[1].objective == 0.8 and latest[2].objective is None  # "unavailable" is no number
    with pytest.raises(DataError, match="t-x"):
        trials_from_katib([katib_trial("t-x", {**a, "dropout": "0.9"}, "Succeeded", None, "")], space,
                          "maximize", "dev_score")


def test_counts_katib_would_refuse_are_capped_with_a_note():
    job = with_search("trec6", earlyStopping=None, maxTrialCount=6, maxFailedTrialCount=5, parallelTrialCount=4,
                      algorithm={"algorithmName": "coarse-to-fine", "algorithmSettings": [
                          {"name": "rounds", "value": "3"}]})
    exp = export_experiment(job, GPU_POD, phase="coarse")
    spec = exp.body["spec"]
    assert spec["maxTrialCount"] == 2  # ceil(6 / 3)
    assert spec["parallelTrialCount"] == 2 and spec["maxFailedTrialCount"] == 2
    assert any(n.startswith("maxFailedTrialCount 2 (spec: 5)") for n in exp.notes)
