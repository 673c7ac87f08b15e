"""The TuningJob spec: valid specs parse into frozen objects, every problem is reported with its field path."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from kftune.core.early_stopping import EARLY_STOPPING, get_early_stopping
from kftune.core.errors import ConfigError, Problem
from kftune.core.lr_range import RangeTestConfig
from kftune.core.samplers import SAMPLERS
from kftune.core.space import SearchSpace
from kftune.core.spec import (
    ALGORITHMS,
    EARLY_STOPPING_ALGORITHMS,
    KATIB_SEARCH_KEYS,
    CorpusSpec,
    FeasibleSpace,
    ParameterSpec,
    TrainSpec,
    TuningJob,
    job_to_dict,
    parse_spec,
    search_to_katib,
    spec_problems,
    to_katib_parameters,
)
from kftune.nlp.config import HYPERPARAMETER_NAMES, TrainerConfig, validate_model_block

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))

BASE: dict[str, Any] = {
    "apiVersion": "kftune.dev/v1alpha1",
    "kind": "TuningJob",
    "metadata": {"name": "trec6"},
    "spec": {
        "corpus": {"name": "TREC_6", "downsample": 1.0, "devFraction": 0.1, "seed": 1},
        "task": {"type": "text_classification", "labelType": "question_class"},
        "model": {"document_encoder": "cnn", "cnn_kernel_sizes": [3, 4, 5], "dropout": 0.5},
        "lrRangeTest": {"startLR": 1.0e-7, "endLR": 10, "iterations": 100, "mode": "exponential",
                        "smoothing": 0.98},
        "search": {
            "objective": {"type": "maximize", "objectiveMetricName": "dev_score", "goal": 0.97},
            "algorithm": {"algorithmName": "coarse-to-fine",
                          "algorithmSettings": [{"name": "rounds", "value": "2"}]},
            "earlyStopping": {"algorithmName": "successive-halving",
                              "algorithmSettings": [{"name": "eta", "value": "3"}]},
            "parallelTrialCount": 2,
            "maxTrialCount": 24,
            "maxFailedTrialCount": 3,
            "parameters": [
                {"name": "learning_rate", "parameterType": "double",
                 "feasibleSpace": {"min": "1e-4", "max": "0.3", "distribution": "logUniform"}},
                {"name": "dropout", "parameterType": "double", "feasibleSpace": {"min": "0.1", "max": "0.6"}},
                {"name": "hidden_size", "parameterType": "categorical",
                 "feasibleSpace": {"list": ["64", "128", "256"]}},
            ],
        },
        "train": {"maxEpochs": 20, "patience": 3, "trainingRuns": 1},
        "resources": {"trialGPU": 1, "finalGPU": 1},
    },
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def problems_of(data: Any, **kwargs: Any) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse_spec(data, source="test.yaml", **kwargs)
    assert info.value.source == "test.yaml"
    return info.value.problems


def mutate(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = base()
    fn(data)
    return data


def search(d: dict[str, Any]) -> dict[str, Any]:
    return d["spec"]["search"]


def param(d: dict[str, Any], i: int) -> dict[str, Any]:
    return d["spec"]["search"]["parameters"][i]


# ----------------------------------------------------------------------------------------- valid specs

def test_base_spec_parses_into_typed_objects():
    job = parse_spec(base())
    assert isinstance(job, TuningJob)
    assert job.name == "trec6" and job.api_version == "kftune.dev/v1alpha1"
    spec = job.spec
    assert spec.corpus == CorpusSpec(name="TREC_6", downsample=1.0, dev_fraction=0.1, seed=1)
    assert spec.task.type == "text_classification" and spec.task.label_type == "question_class"
    assert spec.model["cnn_kernel_sizes"] == (3, 4, 5)
    assert spec.lr_range_test.enabled and spec.lr_range_test.start_lr == 1e-7
    assert spec.lr_range_test.apply_to == "learning_rate"
    s = spec.search
    assert (s.objective.type, s.objective.objective_metric_name, s.objective.goal) == ("maximize", "dev_score", 0.97)
    assert s.algorithm.algorithm_name == "coarse-to-fine" and s.algorithm.settings() == {"rounds": "2"}
    assert s.early_stopping is not None and s.early_stopping.settings() == {"eta": "3"}
    assert (s.parallel_trial_count, s.max_trial_count, s.max_failed_trial_count) == (2, 24, 3)
    assert s.parameters[0] == ParameterSpec(
        name="learning_rate", parameter_type="double",
        feasible_space=FeasibleSpace(min="1e-4", max="0.3", distribution="logUniform"))
    assert s.parameters[2].feasible_space.list == ("64", "128", "256")
    assert s.parameter_names == ("learning_rate", "dropout", "hidden_size")
    assert spec.train.max_epochs == 20 and spec.resources.trial_gpu == 1


def test_omitted_blocks_take_their_defaults():
    data = base()
    for key in ("model", "lrRangeTest", "train", "resources"):
        del data["spec"][key]
    del data["spec"]["task"]["labelType"]
    for key in ("parallelTrialCount", "maxFailedTrialCount", "earlyStopping"):
        del data["spec"]["search"][key]
    spec = parse_spec(data).spec
    assert dict(spec.model) == {}
    assert spec.train == TrainSpec()
    assert (spec.train.max_epochs, spec.train.patience, spec.train.device, spec.train.precision) == (20, 3, "auto", "auto")
    assert spec.lr_range_test.config == RangeTestConfig()
    assert spec.task.label_type == "question_class"  # the registered corpus' label type
    assert spec.search.parallel_trial_count == 1 and spec.search.early_stopping is None
    assert spec.search.failure_limit == 24  # no maxFailedTrialCount: every trial may fail
    assert (spec.search.finalists, spec.search.finalist_runs) == (3, 3)
    assert spec.resources.gpu_resource == "nvidia.com/gpu"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse_with_the_model_validator(path: Path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    job = parse_spec(data, source=str(path), model_validator=validate_model_block,
                     hyperparameter_names=HYPERPARAMETER_NAMES)
    assert job.spec.search.parameter(job.spec.lr_range_test.apply_to) is not None
    assert parse_spec(job_to_dict(job)) == job  # the canonical form reads back as the same job


def test_examples_cover_the_three_tasks():
    names = {p.name for p in EXAMPLES}
    assert {"trec6.yaml", "wnut17.yaml", "ud_english_pos.yaml"} <= names


def test_yaml_numbers_and_numeric_strings_are_accepted_where_katib_or_yaml_differ():
    data = base()
    data["spec"]["lrRangeTest"]["startLR"] = "1e-7"        # YAML 1.1 reads 1e-7 as a string
    param(data, 1)["feasibleSpace"] = {"min": 0.1, "max": 1}  # Katib wants strings; numbers become their text
    search(data)["algorithm"]["algorithmSettings"] = [{"name": "rounds", "value": 2}]
    job = parse_spec(data)
    assert job.spec.lr_range_test.start_lr == 1e-7
    assert job.spec.search.parameters[1].feasible_space == FeasibleSpace(min="0.1", max="1")
    assert job.spec.search.algorithm.algorithm_settings[0].value == "2"


def test_objects_are_frozen():
    job = parse_spec(base())
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.spec.search.max_trial_count = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.spec.search.parameters[0].feasible_space.min = "0"  # type: ignore[misc]
    with pytest.raises(TypeError):
        job.spec.model["dropout"] = 0.1  # type: ignore[index]
    assert isinstance(job.spec.model["cnn_kernel_sizes"], tuple)
    assert isinstance(job.spec.search.parameters, tuple)


def test_parsing_does_not_alias_the_input():
    data = base()
    job = parse_spec(data)
    data["spec"]["model"]["cnn_kernel_sizes"].append(7)
    data["spec"]["search"]["parameters"][2]["feasibleSpace"]["list"].append("512")
    assert job.spec.model["cnn_kernel_sizes"] == (3, 4, 5)
    assert job.spec.search.parameters[2].feasible_space.list == ("64", "128", "256")


# ------------------------------------------------------------------------------------------ Katib

KATIB_SEARCH: dict[str, Any] = {
    "objective": {"type": "minimize", "objectiveMetricName": "dev_loss", "goal": 0.05,
                  "additionalMetricNames": ["dev_score"],
                  "metricStrategies": [{"name": "dev_loss", "value": "min"}, {"name": "dev_score", "value": "latest"}]},
    "algorithm": {"algorithmName": "tpe", "algorithmSettings": [
        {"name": "gamma", "value": "0.25"}, {"name": "n_EI_candidates", "value": "24"},
        {"name": "prior_weight", "value": "1.0"}, {"name": "n_startup_jobs", "value": "5"},
        {"name": "random_state", "value": "42"}]},
    "earlyStopping": {"algorithmName": "medianstop", "algorithmSettings": [
        {"name": "min_trials_required", "value": "3"}, {"name": "start_step", "value": "2"}]},
    "parallelTrialCount": 3,
    "maxTrialCount": 12,
    "maxFailedTrialCount": 3,
    "parameters": [
        {"name": "learning_rate", "parameterType": "double",
         "feasibleSpace": {"min": "0.0001", "max": "0.1", "distribution": "logUniform"}},
        {"name": "dropout", "parameterType": "double", "feasibleSpace": {"min": "0.0", "max": "0.5", "step": "0.1"}},
        {"name": "weight_decay", "parameterType": "double",
         "feasibleSpace": {"min": "1e-6", "max": "1e-2", "distribution": "logNormal"}},
        {"name": "hidden_size", "parameterType": "int", "feasibleSpace": {"min": "32", "max": "256", "step": "32"}},
        {"name": "rnn_layers", "parameterType": "int",
         "feasibleSpace": {"min": "1", "max": "3", "distribution": "uniform"}},
        {"name": "mini_batch_size", "parameterType": "discrete", "feasibleSpace": {"list": ["16", "32", "64"]}},
        {"name": "optimizer", "parameterType": "categorical", "feasibleSpace": {"list": ["sgd", "adamw"]}},
    ],
}


def test_katib_search_block_round_trips_unchanged():
    data = base()
    data["spec"]["search"] = copy.deepcopy(KATIB_SEARCH)
    job = parse_spec(data)
    assert search_to_katib(job.spec.search) == KATIB_SEARCH
    assert to_katib_parameters(job.spec.search.parameters) == KATIB_SEARCH["parameters"]
    assert set(search_to_katib(job.spec.search)) <= set(KATIB_SEARCH_KEYS)


def test_kftune_extras_are_not_rendered_into_katib():
    data = base()
    search(data)["finalists"] = 2
    search(data)["finalistRuns"] = 4
    job = parse_spec(data)
    assert (job.spec.search.finalists, job.spec.search.finalist_runs) == (2, 4)
    rendered = search_to_katib(job.spec.search)
    assert "finalists" not in rendered and "finalistRuns" not in rendered
    assert job_to_dict(job)["spec"]["search"]["finalists"] == 2


def test_settings_go_to_the_sampler_and_the_rule_as_they_take_them():
    data = base()
    data["spec"]["search"] = copy.deepcopy(KATIB_SEARCH)
    search_spec = parse_spec(data).spec.search
    settings = search_spec.algorithm.settings()
    assert settings == {"gamma": "0.25", "n_EI_candidates": "24", "prior_weight": "1.0", "n_startup_jobs": "5",
                        "random_state": "42"}
    space = SearchSpace.from_parameters(search_spec.parameters)
    SAMPLERS["tpe"]().check(space, settings, max_trials=search_spec.max_trial_count)  # raises if it cannot use them
    rule = get_early_stopping("medianstop", search_spec.early_stopping.settings(), max_epochs=20)
    assert (rule.min_trials_required, rule.start_step) == (3, 2)


def test_algorithm_names_are_the_registries():
    assert set(ALGORITHMS) == set(SAMPLERS)
    assert set(EARLY_STOPPING_ALGORITHMS) == set(EARLY_STOPPING)


def test_grid_without_step_takes_default_points():
    data = base()
    search(data)["algorithm"] = {"algorithmName": "grid", "algorithmSettings": [{"name": "default_points", "value": "3"}]}
    assert parse_spec(data).spec.search.algorithm.settings() == {"default_points": "3"}


# --------------------------------------------------------------------------------------- problems

def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets ``a.b[1].c`` (``value=KeyError`` deletes it)."""
    import re

    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]

    def fn(d: dict[str, Any]) -> None:
        target = d
        for part in parts[:-1]:
            target = target[part]
        if value is KeyError:
            del target[parts[-1]]
        else:
            target[parts[-1]] = value
    return fn


P = "spec.search.parameters"
CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    # (id, mutation, path, fragment of the message)
    ("unknown-field", _set("spec.train.maxEpoch", 3), "spec.train.maxEpoch", 'did you mean "maxEpochs"?'),
    ("snake-case-field", _set("spec.search.max_trial_count", 3), "spec.search.max_trial_count",
     'did you mean "maxTrialCount"?'),
    ("wrong-type-int", _set("spec.train.maxEpochs", "ten"), "spec.train.maxEpochs", '"ten" is not an integer'),
    ("wrong-type-bool-int", _set("spec.train.patience", True), "spec.train.patience", "true is not an integer"),
    ("out-of-range", _set("spec.train.maxEpochs", 0), "spec.train.maxEpochs", "must be >= 1"),
    ("not-a-mapping", _set("spec.train", [1, 2]), "spec.train", "not a mapping"),
    ("missing-required", _set("spec.search.objective.objectiveMetricName", KeyError),
     "spec.search.objective.objectiveMetricName", "required"),
    ("missing-search", _set("spec.search", KeyError), "spec.search", "required"),
    ("not-a-number", _set(f"{P}[1].feasibleSpace.min", "abc"), f"{P}[1].feasibleSpace.min", '"abc" is not a number'),
    ("min-not-below-max", _set(f"{P}[1].feasibleSpace.min", "0.6"), f"{P}[1].feasibleSpace.max",
     "must be greater than min"),
    ("min-missing", _set(f"{P}[1].feasibleSpace.min", KeyError), f"{P}[1].feasibleSpace.min",
     "required for a double parameter"),
    ("step-zero", _set(f"{P}[1].feasibleSpace.step", "0"), f"{P}[1].feasibleSpace.step", "must be > 0"),
    ("step-negative", _set(f"{P}[1].feasibleSpace.step", "-0.1"), f"{P}[1].feasibleSpace.step", "must be > 0"),
    ("step-too-large", _set(f"{P}[1].feasibleSpace.step", "2"), f"{P}[1].feasibleSpace.step", "larger than the range"),
    ("log-min-zero", _set(f"{P}[0].feasibleSpace.min", "0"), f"{P}[0].feasibleSpace.min",
     "must be > 0 for distribution logUniform"),
    ("unknown-distribution", _set(f"{P}[0].feasibleSpace.distribution", "loguniform"),
     f"{P}[0].feasibleSpace.distribution", 'did you mean "logUniform"?'),
    ("categorical-without-list", _set(f"{P}[2].feasibleSpace", {}), f"{P}[2].feasibleSpace.list",
     "required for a categorical parameter"),
    ("categorical-empty-list", _set(f"{P}[2].feasibleSpace.list", []), f"{P}[2].feasibleSpace.list",
     "must not be empty"),
    ("categorical-with-min", _set(f"{P}[2].feasibleSpace.min", "1"), f"{P}[2].feasibleSpace.min",
     "not used by a categorical parameter"),
    ("categorical-bool", _set(f"{P}[2].feasibleSpace.list", [True, False]), f"{P}[2].feasibleSpace.list[0]",
     'quote it: "true"'),
    ("list-repeats", _set(f"{P}[2].feasibleSpace.list", ["64", "64"]), f"{P}[2].feasibleSpace.list[1]",
     "listed twice"),
    ("double-with-list", _set(f"{P}[1].feasibleSpace.list", ["0.1"]), f"{P}[1].feasibleSpace.list",
     "not double"),
    ("categorical-with-distribution", _set(f"{P}[2].feasibleSpace.distribution", "uniform"),
     f"{P}[2].feasibleSpace.distribution", "only double and int"),
    ("int-not-integer", _set(f"{P}[2]", {"name": "hidden_size", "parameterType": "int",
                                          "feasibleSpace": {"min": "1.5", "max": "8"}}),
     f"{P}[2].feasibleSpace.min", "not an integer"),
    ("discrete-not-number", _set(f"{P}[2]", {"name": "hidden_size", "parameterType": "discrete",
                                              "feasibleSpace": {"list": ["64", "big"]}}),
     f"{P}[2].feasibleSpace.list[1]", "not a number"),
    ("unknown-parameter-type", _set(f"{P}[2].parameterType", "float"), f"{P}[2].parameterType",
     "is not one of: double, int, discrete, categorical"),
    ("parameter-name", _set(f"{P}[2].name", "hidden size"), f"{P}[2].name", "not a name"),
    ("duplicate-parameter", _set(f"{P}[2].name", "dropout"), f"{P}[2].name", "already parameters[1]"),
    ("no-parameters", _set(f"{P}", []), P, "at least one parameter"),
    ("feasible-space-unknown-key", _set(f"{P}[1].feasibleSpace.maximum", "1"), f"{P}[1].feasibleSpace.maximum",
     'did you mean "max"?'),
    ("parallel-above-max", _set("spec.search.parallelTrialCount", 30), "spec.search.parallelTrialCount",
     "more than maxTrialCount 24"),
    ("failed-above-max", _set("spec.search.maxFailedTrialCount", 25), "spec.search.maxFailedTrialCount",
     "more than maxTrialCount 24"),
    ("finalists-above-max", _set("spec.search.finalists", 25), "spec.search.finalists", "more than maxTrialCount"),
    ("objective-metric", _set("spec.search.objective.objectiveMetricName", "accuracy"),
     "spec.search.objective.objectiveMetricName", "is not one of: dev_score, dev_loss"),
    ("objective-direction", _set("spec.search.objective.type", "minimize"), "spec.search.objective.type",
     "set type: maximize"),
    ("goal-percent", _set("spec.search.objective.goal", 95), "spec.search.objective.goal", "not 95"),
    ("additional-metric-is-objective", _set("spec.search.objective.additionalMetricNames", ["dev_score"]),
     "spec.search.objective.additionalMetricNames", "already the objective"),
    ("metric-strategy-unknown-metric", _set("spec.search.objective.metricStrategies",
                                            [{"name": "f1", "value": "max"}]),
     "spec.search.objective.metricStrategies[0].name", "neither the objective"),
    ("unknown-algorithm", _set("spec.search.algorithm.algorithmName", "bayesianoptimization"),
     "spec.search.algorithm.algorithmName", ", ".join(ALGORITHMS)),
    ("algorithm-typo", _set("spec.search.algorithm.algorithmName", "coarse_to_fine"),
     "spec.search.algorithm.algorithmName", 'did you mean "coarse-to-fine"?'),
    ("unknown-setting", _set("spec.search.algorithm.algorithmSettings", [{"name": "round", "value": "2"}]),
     "spec.search.algorithm.algorithmSettings[0].name", 'did you mean "rounds"?'),
    ("setting-not-int", _set("spec.search.algorithm.algorithmSettings",
                             [{"name": "top_k", "value": "2"}, {"name": "rounds", "value": "two"}]),
     "spec.search.algorithm.algorithmSettings[1].value", "rounds: 'two': is not an integer"),
    ("setting-out-of-range", _set("spec.search.algorithm.algorithmSettings", [{"name": "shrink", "value": "1.5"}]),
     "spec.search.algorithm.algorithmSettings[0].value", "must be a number in (0, 1]"),
    ("setting-bool", _set("spec.search.algorithm.algorithmSettings", [{"name": "rounds", "value": True}]),
     "spec.search.algorithm.algorithmSettings[0].value", 'quote it: "true"'),
    ("setting-twice", _set("spec.search.algorithm.algorithmSettings",
                           [{"name": "rounds", "value": "2"}, {"name": "rounds", "value": "3"}]),
     "spec.search.algorithm.algorithmSettings[1].name", "set twice"),
    ("setting-without-value", _set("spec.search.algorithm.algorithmSettings", [{"name": "rounds"}]),
     "spec.search.algorithm.algorithmSettings[0].value", "required"),
    ("grid-takes-no-settings", _set("spec.search.algorithm",
                                    {"algorithmName": "grid", "algorithmSettings": [{"name": "random_state", "value": "1"}]}),
     "spec.search.algorithm.algorithmSettings[0].name", "unknown setting for grid"),
    ("grid-double-needs-step", _set("spec.search.algorithm", {"algorithmName": "grid"}),
     f"{P}[0].feasibleSpace.step", "grid needs a step"),
    ("rounds-above-trials", _set("spec.search.algorithm.algorithmSettings", [{"name": "rounds", "value": "30"}]),
     "spec.search.algorithm.algorithmSettings[0].value", "every round needs at least one trial"),
    ("unknown-early-stopping", _set("spec.search.earlyStopping.algorithmName", "bohb"),
     "spec.search.earlyStopping.algorithmName", "medianstop, successive-halving, asha"),
    ("budget-above-epochs", _set("spec.search.earlyStopping.algorithmSettings",
                                 [{"name": "eta", "value": "3"}, {"name": "max_budget", "value": "30"}]),
     "spec.search.earlyStopping.algorithmSettings[1].value", "more than train.maxEpochs 20"),
    ("min-budget-above-max", _set("spec.search.earlyStopping.algorithmSettings",
                                  [{"name": "max_budget", "value": "3"}, {"name": "min_budget", "value": "9"}]),
     "spec.search.earlyStopping.algorithmSettings[0].value", "must be an integer > min_budget (9)"),
    ("early-stopping-unknown-setting", _set("spec.search.earlyStopping.algorithmSettings",
                                            [{"name": "reduction_factor", "value": "3"}]),
     "spec.search.earlyStopping.algorithmSettings[0].name", "unknown setting for successive-halving"),
    ("medianstop-start-step", _set("spec.search.earlyStopping", {"algorithmName": "medianstop", "algorithmSettings": [
        {"name": "start_step", "value": "0"}]}), "spec.search.earlyStopping.algorithmSettings[0].value", "must be >= 1"),
    ("katib-generated-field", _set("spec.search.trialTemplate", {"primaryContainerName": "x"}),
     "spec.search.trialTemplate", "generated by kftune"),
    ("api-version", _set("apiVersion", "kubeflow.org/v1beta1"), "apiVersion", "is not kftune.dev/v1alpha1"),
    ("kind-experiment", _set("kind", "Experiment"), "kind", "goes under spec.search"),
    ("metadata-name", _set("metadata.name", "TREC_6"), "metadata.name", "a lowercase name"),
    ("metadata-name-long", _set("metadata.name", "a" * 41), "metadata.name", "at most 40"),
    ("corpus-name-and-uri", _set("spec.corpus.uri", "data/x.csv"), "spec.corpus.name", "not both"),
    ("corpus-neither", _set("spec.corpus", {"seed": 1}), "spec.corpus.uri", "required"),
    ("corpus-unknown-name", _set("spec.corpus.name", "TREC6"), "spec.corpus.name", 'did you mean "TREC_6"?'),
    ("corpus-format-with-name", _set("spec.corpus.format", "csv"), "spec.corpus.format", "only for a corpus given by uri"),
    ("corpus-uri-without-format", _set("spec.corpus", {"uri": "s3://b/trec.txt"}), "spec.corpus.format", "required with uri"),
    ("corpus-uri-scheme", _set("spec.corpus", {"uri": "ftp://h/trec.txt", "format": "fasttext"}), "spec.corpus.uri",
     "not supported"),
    ("csv-needs-columns", _set("spec.corpus", {"uri": "a.csv", "format": "csv", "labelColumn": 0}),
     "spec.corpus.textColumn", "required for format csv"),
    ("option-of-other-format", _set("spec.corpus", {"uri": "a.txt", "format": "fasttext", "delimiter": ","}),
     "spec.corpus.delimiter", "not an option of format fasttext"),
    ("header-false-with-names", _set("spec.corpus", {"uri": "a.csv", "format": "csv", "textColumn": "text",
                                                      "labelColumn": "label", "header": False}),
     "spec.corpus.header", "given by name"),
    ("downsample-zero", _set("spec.corpus.downsample", 0), "spec.corpus.downsample", "must be in (0, 1]"),
    ("dev-fraction-one", _set("spec.corpus.devFraction", 1), "spec.corpus.devFraction", "must be in (0, 1)"),
    ("ud-label-column", _set("spec.corpus", {"name": "UD_ENGLISH", "labelColumn": "pos"}), "spec.corpus.labelColumn",
     "is not one of"),
    ("task-type", _set("spec.task.type", "classification"), "spec.task.type", 'did you mean "text_classification"?'),
    ("task-does-not-fit-corpus", _set("spec.task.type", "sequence_labeling"), "spec.task.type",
     "does not fit corpus TREC_6"),
    ("model-not-mapping", _set("spec.model", ["dropout"]), "spec.model", "not a mapping"),
    ("lr-end-below-start", _set("spec.lrRangeTest.endLR", 1e-8), "spec.lrRangeTest.endLR", "must be greater than startLR"),
    ("lr-unknown-field", _set("spec.lrRangeTest.suggestion", "valley"), "spec.lrRangeTest.suggestion", "unknown field"),
    ("lr-method", _set("spec.lrRangeTest.method", "fastest"), "spec.lrRangeTest.method", "valley, steepest, minimum"),
    ("lr-apply-to-missing", _set("spec.lrRangeTest.applyTo", "lr"), "spec.lrRangeTest.applyTo", "not a search parameter"),
    ("lr-apply-to-categorical", _set("spec.lrRangeTest.applyTo", "hidden_size"), "spec.lrRangeTest.applyTo",
     "make it parameterType double"),
    ("device", _set("spec.train.device", "gpu"), "spec.train.device", "auto, cpu, cuda"),
    ("cpu-with-gpus", _set("spec.train.device", "cpu"), "spec.resources.trialGPU", "would sit idle"),
    ("quantity", _set("spec.resources.trialMemory", "8 GB"), "spec.resources.trialMemory", "Kubernetes quantity"),
    ("toleration", _set("spec.resources.tolerations", [{"operator": "Exists", "value": "x"}]),
     "spec.resources.tolerations[0].value", "must be empty with operator Exists"),
]


@pytest.mark.parametrize("mutation,path,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_kind_of_problem_is_reported_with_its_path(mutation, path, fragment):
    problems = problems_of(mutate(mutation))
    matching = [p for p in problems if p.path == path]
    assert matching, f"no problem at {path}; got {[str(p) for p in problems]}"
    assert any(fragment in p.message for p in matching), [str(p) for p in matching]


def test_not_a_mapping_at_all():
    assert problems_of(["apiVersion"]) == [
        Problem("", "a TuningJob spec is a mapping (apiVersion, kind, metadata, spec), not a list")]


def test_every_problem_is_reported_at_once():
    data = base()
    data["spec"]["train"]["maxEpoch"] = 3                                      # unknown field
    param(data, 1)["feasibleSpace"]["min"] = "abc"                              # not a number
    search(data)["algorithm"]["algorithmName"] = "bayesianoptimization"         # unknown algorithm
    search(data)["parallelTrialCount"] = 99                                     # above maxTrialCount
    data["spec"]["corpus"]["downsample"] = 2                                    # out of range
    del data["metadata"]["name"]                                                # missing
    problems = problems_of(data)
    assert {p.path for p in problems} == {
        "spec.train.maxEpoch", f"{P}[1].feasibleSpace.min", "spec.search.algorithm.algorithmName",
        "spec.search.parallelTrialCount", "spec.corpus.downsample", "metadata.name"}
    assert len(problems) == 6
    assert spec_problems(data) == problems


def test_error_message_lists_every_problem_with_its_path():
    data = base()
    data["spec"]["train"]["maxEpoch"] = 3
    param(data, 1)["feasibleSpace"]["min"] = "abc"
    with pytest.raises(ConfigError) as info:
        parse_spec(data, source="trec6.yaml")
    text = str(info.value)
    assert text.startswith("trec6.yaml: 2 problems:")
    assert 'spec.search.parameters[1].feasibleSpace.min: "abc" is not a number' in text
    assert "spec.train.maxEpoch: unknown field" in text


# -------------------------------------------------------------------------------- pluggable checks

def test_model_validator_is_called_and_its_problems_reported():
    seen: list[tuple[dict[str, Any], str, str]] = []

    def validator(model, task_type, path):
        seen.append((dict(model), task_type, path))
        return [Problem(f"{path}.dropout", "too much")] if path == "spec.model" else []

    problems = problems_of(base(), model_validator=validator)
    assert seen[0] == (dict(parse_spec(base()).spec.model), "text_classification", "spec.model")
    assert problems == [Problem("spec.model.dropout", "too much")]


def test_model_validator_raising_config_error_is_collected():
    def validator(model, task_type, path):
        raise ConfigError([Problem(f"{path}.x", "bad")])

    assert Problem("spec.model.x", "bad") in problems_of(base(), model_validator=validator)


def test_real_model_validator_checks_model_values_and_search_values():
    data = base()
    data["spec"]["model"]["cnn_filters"] = "many"
    param(data, 2)["feasibleSpace"]["list"] = ["64", "big"]
    problems = problems_of(data, model_validator=validate_model_block, hyperparameter_names=HYPERPARAMETER_NAMES)
    paths = {p.path: p.message for p in problems}
    assert "spec.model.cnn_filters" in paths
    assert "not a valid hidden_size" in paths[f"{P}[2].feasibleSpace.list[1]"]
    assert len(problems) == 2


def test_parameter_checks_go_on_past_an_invalid_parameter():
    data = base()
    param(data, 1)["name"] = "dropot"                       # unknown name ...
    param(data, 1)["feasibleSpace"]["min"] = "abc"          # ... on a parameter that is invalid anyway
    param(data, 2)["feasibleSpace"]["list"] = ["64", "big"]  # a bad value on another parameter
    problems = problems_of(data, model_validator=validate_model_block, hyperparameter_names=HYPERPARAMETER_NAMES)
    assert {p.path for p in problems} == {f"{P}[1].name", f"{P}[1].feasibleSpace.min", f"{P}[2].feasibleSpace.list[1]"}


def test_search_parameters_must_be_known_hyperparameters():
    data = base()
    param(data, 1)["name"] = "dropot"
    problems = problems_of(data, hyperparameter_names=HYPERPARAMETER_NAMES)
    assert [p.path for p in problems] == [f"{P}[1].name"]
    assert 'did you mean "dropout"?' in problems[0].message


# ----------------------------------------------------------------------------- interfaces of others

def test_train_block_fields_are_the_trainers():
    train = parse_spec(base()).spec.train
    config = TrainerConfig(**dataclasses.asdict(train))
    assert config.max_epochs == 20 and config.patience == 3
    assert {f.name for f in dataclasses.fields(TrainSpec)} == {f.name for f in dataclasses.fields(TrainerConfig)}
    assert TrainerConfig(**dataclasses.asdict(TrainSpec())) == TrainerConfig()  # same defaults


def test_lr_range_test_block_is_the_range_test_config():
    data = base()
    data["spec"]["lrRangeTest"].update({"method": "steepest", "divergenceFactor": None, "skipStart": 5,
                                        "rangeFractions": [0.2, 0.8], "enabled": False})
    lr = parse_spec(data).spec.lr_range_test
    assert not lr.enabled
    assert lr.config == RangeTestConfig(start_lr=1e-7, end_lr=10, iterations=100, method="steepest",
                                        divergence_factor=None, skip_start=5, range_fractions=(0.2, 0.8))
    assert (lr.method, lr.divergence_factor) == ("steepest", None)
    assert parse_spec(job_to_dict(parse_spec(data))).spec.lr_range_test == lr  # null divergenceFactor survives


def test_registered_corpus_names_are_normalized():
    data = base()
    data["spec"]["corpus"]["name"] = "trec-6"
    assert parse_spec(data).spec.corpus.name == "TREC_6"


def test_reader_options_of_a_uri_corpus():
    data = base()
    data["spec"]["corpus"] = {"uri": "s3://bucket/news.tsv", "format": "tsv", "textColumn": ["title", "body"],
                              "labelColumn": "topic", "labelMap": {"1": "World"}, "quoting": "none"}
    corpus = parse_spec(data).spec.corpus
    assert corpus.reader_options() == {"delimiter": "\t", "text_columns": ("title", "body"),
                                       "label_column": "topic", "quoting": "none", "label_map": {"1": "World"}}
    data["spec"]["task"] = {"type": "sequence_labeling"}
    data["spec"]["corpus"] = {"uri": "data/ner/", "format": "conll", "train": "train.txt", "dev": "dev.txt",
                              "test": "test.txt", "tokenColumn": 0, "labelColumn": 3, "tagScheme": "BIOES"}
    data["spec"]["search"]["parameters"][2] = {"name": "hidden_size", "parameterType": "int",
                                               "feasibleSpace": {"min": "64", "max": "256"}}
    job = parse_spec(data)
    assert job.spec.task.label_type == "tag"
    assert job.spec.corpus.reader_options() == {"token_column": 0, "tag_column": 3, "scheme": "BIOES"}


def test_label_map_of_a_registered_csv_corpus_replaces_the_registry_names():
    """NSMC's raw labels 0/1 are negative/positive in the registry; a labelMap renames them (and survives
    job_to_dict, which the pipeline's spec dump and the trial runner rely on)."""
    data = mutate(_set("spec.corpus", {"name": "NSMC", "labelMap": {0: "부정", "1": "긍정"}}))
    job = parse_spec(data)
    assert dict(job.spec.corpus.label_map) == {"0": "부정", "1": "긍정"}
    assert job_to_dict(job)["spec"]["corpus"]["labelMap"] == {"0": "부정", "1": "긍정"}
    assert parse_spec(job_to_dict(job)) == job
    # two raw labels may share a name, as for a corpus given by uri
    assert parse_spec(mutate(_set("spec.corpus", {"name": "NSMC", "labelMap": {"0": "x", "1": "x"}})))
    assert parse_spec(mutate(_set("spec.corpus", {"uri": "a.tsv", "format": "tsv", "textColumn": "t",
                                                  "labelColumn": "l", "labelMap": {"0": "x", "1": "x"}})))


@pytest.mark.parametrize("corpus, path, fragments", [
    ({"name": "NSMC", "labelMap": {"0": "부정", "1": "긍정", "2": "중립"}}, "spec.corpus.labelMap.2",
     ["'2' is not a raw label of NSMC", "not one of ['0', '1']", "0 -> negative, 1 -> positive"]),
    ({"name": "NSMC", "labelMap": {"1": "긍정"}}, "spec.corpus.labelMap",
     ["raw label '0' of NSMC has no name", "replaces the registry's"]),
    ({"name": "TREC_6", "labelMap": {"DESC": "description"}}, "spec.corpus.labelMap",
     ["TREC_6 is a trec corpus", "csv/tsv corpora only"]),
    ({"name": "NSMC", "labelMap": {"0": ""}}, "spec.corpus.labelMap.0", ["raw labels and labels are strings"]),
])
def test_label_map_of_a_registered_corpus_errors(corpus, path, fragments):
    problems = problems_of(mutate(_set("spec.corpus", corpus)))
    found = [p for p in problems if p.path == path]
    assert found, problems
    assert all(f in found[0].message for f in fragments), found[0].message


def test_a_cpu_only_job_asks_for_no_gpu_and_round_trips() -> None:
    """A spec with train.device cpu and no resources block: no GPU by default, and
    job_to_dict -> parse_spec gives the same job (the search's trial runner relies on it)."""
    import yaml

    from kftune.core.spec import job_to_dict, parse_spec

    data = yaml.safe_load(next(p for p in EXAMPLES if p.name == "trec6.yaml").read_text())
    data["spec"].pop("resources", None)
    data["spec"]["train"]["device"] = "cpu"
    job = parse_spec(data)
    assert job.spec.resources.trial_gpu == 0 and job.spec.resources.final_gpu == 0
    assert parse_spec(job_to_dict(job)) == job


# ----------------------------------------------------------------------------------------- corpus.tokenizer

@pytest.mark.parametrize("value, expected", [
    ("morpheme", "morpheme"),
    ({"type": "morpheme"}, "morpheme"),  # every option at its default: written back as the bare name
    ({"type": "subword", "vocabSize": 4000, "modelType": "bpe"}, {"type": "subword", "vocabSize": 4000,
                                                                   "modelType": "bpe"}),
    ({"type": "char", "boundaries": True}, {"type": "char", "boundaries": True}),
])
def test_corpus_tokenizer_parses_and_round_trips(value, expected):
    job = parse_spec(mutate(_set("spec.corpus.tokenizer", value)))
    assert job.spec.corpus.tokenizer.to_spec() == expected
    assert job_to_dict(job)["spec"]["corpus"]["tokenizer"] == expected
    assert parse_spec(job_to_dict(job)) == job
    assert parse_spec(base()).spec.corpus.tokenizer is None  # unset: the corpus' default
    assert "tokenizer" not in job_to_dict(parse_spec(base()))["spec"]["corpus"]


@pytest.mark.parametrize("value, path, fragment", [
    ("mecab", "spec.corpus.tokenizer", "choices: regex, whitespace, char, morpheme, subword"),
    ("morphem", "spec.corpus.tokenizer", 'did you mean "morpheme"?'),
    ({"vocabSize": 10}, "spec.corpus.tokenizer.type", "required: one of regex, whitespace"),
    ({"type": "subword", "vocabSize": "big"}, "spec.corpus.tokenizer.vocabSize", "not an integer"),
    ({"type": "morpheme", "tags": "yes"}, "spec.corpus.tokenizer.tags", "not a boolean"),
    ({"type": "subword", "modelType": "word"}, "spec.corpus.tokenizer.modelType", "not one of: unigram, bpe"),
    ({"type": "whitespace", "lower": True}, "spec.corpus.tokenizer.lower", "it has no options"),
    (["regex"], "spec.corpus.tokenizer", "neither a tokenizer name"),
])
def test_corpus_tokenizer_problems_have_their_paths(value, path, fragment):
    found = problems_of(mutate(_set("spec.corpus.tokenizer", value)))
    assert [p.path for p in found] == [path] and fragment in found[0].message


def test_conll_corpora_take_only_the_whitespace_tokenizer():
    def wnut(d: dict[str, Any]) -> None:
        d["spec"]["corpus"] = {"name": "WNUT_17", "tokenizer": "subword"}
        d["spec"]["task"] = {"type": "sequence_labeling"}

    found = [p for p in problems_of(mutate(wnut)) if p.path.startswith("spec.corpus")]
    assert [p.path for p in found] == ["spec.corpus.tokenizer"] and "must be whitespace" in found[0].message

    def uri(d: dict[str, Any]) -> None:
        d["spec"]["corpus"] = {"uri": "data/train.conllu", "format": "conllu", "tokenizer": "whitespace"}
        d["spec"]["task"] = {"type": "sequence_labeling"}

    assert not [p for p in spec_problems(mutate(uri)) if p.path.startswith("spec.corpus")]


def test_a_missing_tokenizer_package_is_a_spec_problem(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "kiwipiepy" else real(name, *a, **k))
    found = problems_of(mutate(lambda d: d["spec"]["corpus"].update(name="NSMC")))
    assert [p.path for p in found] == ["spec.corpus.tokenizer"]
    assert "NSMC's default tokenizer is morpheme" in found[0].message
    assert "kiwipiepy" in found[0].message and "pip install 'kftune[korean]'" in found[0].message
    assert parse_spec(mutate(lambda d: d["spec"]["corpus"].update(name="NSMC", tokenizer="regex")))


def test_the_evaluation_block_turns_the_baseline_on_and_off():
    job = parse_spec(base())
    assert job.spec.evaluation.baseline is True  # on unless the spec says otherwise
    assert job_to_dict(job)["spec"]["evaluation"] == {"baseline": True}
    off = parse_spec(mutate(_set("spec.evaluation", {"baseline": False})))
    assert off.spec.evaluation.baseline is False and parse_spec(job_to_dict(off)) == off
    found = problems_of(mutate(_set("spec.evaluation", {"baseline": "no", "baselines": True})))
    assert sorted(p.path for p in found) == ["spec.evaluation.baseline", "spec.evaluation.baselines"]


# ----------------------------------------------------------------------------- several corpora, optimizers

QUESTIONS = {"uri": "data/questions.csv", "format": "csv", "textColumn": "text", "labelColumn": "label"}


def _with_corpus(corpus: dict[str, Any], task: str = "text_classification") -> dict[str, Any]:
    data = base()
    data["spec"]["corpus"] = corpus
    data["spec"]["task"] = {"type": task}
    return data


def test_several_corpora_parse_with_shared_fields_and_ids_and_round_trip():
    data = _with_corpus({"downsample": 0.1, "seed": 7, "tokenizer": "regex",
                         "corpora": [{"name": "trec-6"}, QUESTIONS]})
    job = parse_spec(data, model_validator=validate_model_block, hyperparameter_names=HYPERPARAMETER_NAMES)
    corpus = job.spec.corpus
    assert corpus.name is None and corpus.uri is None and corpus.downsample == 0.1 and corpus.seed == 7
    assert [c.id for c in corpus.corpora] == ["TREC_6", "questions"]  # registry spelling; the uri's stem
    assert [c.name or c.uri for c in corpus.sources] == ["TREC_6", "data/questions.csv"]
    assert corpus.corpora[1].reader_options()["text_columns"] == ("text",)
    assert corpus.describe() == "TREC_6 + questions"
    assert job.spec.task.label_type == "class"  # the corpora name their labels differently
    dumped = job_to_dict(job)["spec"]["corpus"]
    assert dumped["corpora"][1] == {"id": "questions", **QUESTIONS} and "name" not in dumped
    assert parse_spec(job_to_dict(job)) == job
    single = parse_spec(base()).spec.corpus
    assert single.corpora == () and single.sources == (single,) and single.describe() == "TREC_6"


def test_two_registered_corpora_of_one_label_type_keep_it():
    job = parse_spec(_with_corpus({"corpora": [{"name": "UD_ENGLISH"}, {"name": "UD_ENGLISH", "id": "ud-xpos",
                                                                        "labelColumn": "xpos"}]},
                                  "sequence_labeling"))
    assert job.spec.task.label_type == "upos" and [c.id for c in job.spec.corpus.corpora] == ["UD_ENGLISH", "ud-xpos"]


@pytest.mark.parametrize("corpus, task, path, fragments", [
    ({"corpora": [{"name": "TREC_6"}, {"name": "WNUT_17"}]}, "text_classification", "spec.corpus.corpora[1]",
     ["WNUT_17 holds sequence_labeling data", "TREC_6 (spec.corpus.corpora[0]) holds text_classification"]),
    ({"corpora": [{"name": "WNUT_17"}, {"name": "UD_ENGLISH"}]}, "sequence_labeling", "spec.corpus.corpora[1]",
     ["UD_ENGLISH has plain tags", "WNUT_17 (spec.corpus.corpora[0]) has BIO tags (entity spans)"]),
    ({"corpora": [{"name": "WNUT_17"}, {"uri": "ner.conll", "format": "conll", "tagScheme": "BIOES"}]},
     "sequence_labeling", "spec.corpus.corpora[1].tagScheme",
     ["ner has BIOES tags", "WNUT_17 (spec.corpus.corpora[0]) has BIO tags", "convert one corpus"]),
    ({"corpora": [{"name": "TREC_6"}, QUESTIONS]}, "text_classification", "spec.corpus.tokenizer",
     ["tokenize differently by default (TREC_6: whitespace, questions: regex)", "set spec.corpus.tokenizer"]),
    ({"corpora": [{"name": "WNUT_17"}, {"uri": "x.conll", "format": "conll"}], "tokenizer": "regex"},
     "sequence_labeling", "spec.corpus.tokenizer", ["must be whitespace"]),
    ({"corpora": [{"name": "TREC_6"}, {"name": "TREC_6"}]}, "text_classification", "spec.corpus.corpora[1].id",
     ["'TREC_6' is also the id of spec.corpus.corpora[0]"]),
    ({"corpora": [{"name": "TREC_6"}, {"name": "TREC_50", "seed": 2}]}, "text_classification",
     "spec.corpus.corpora[1].seed", ["set once in spec.corpus"]),
    ({"name": "TREC_6", "corpora": [{"name": "TREC_6"}, {"name": "TREC_50"}]}, "text_classification",
     "spec.corpus.name", ["with corpora, each corpus' fields go into its entry"]),
    ({"corpora": [{"name": "TREC_6"}]}, "text_classification", "spec.corpus.corpora", ["list two or more"]),
    ({"corpora": [{"name": "TREC_6"}, {"name": "TREC_50", "id": "bad id"}]}, "text_classification",
     "spec.corpus.corpora[1].id", ["an id of letters"]),
    ({"corpora": [{"name": "TREC_6"}, {"name": "TREC_5O"}]}, "text_classification",
     "spec.corpus.corpora[1].name", ["not a registered corpus"]),
    ({"corpora": [{"name": "TREC_6"}, {"name": "TREC_50"}]}, "sequence_labeling", "spec.task.type",
     ["does not fit corpus TREC_6 (spec.corpus.corpora[0])"]),
])
def test_several_corpora_problems_name_the_field_and_both_corpora(corpus, task, path, fragments):
    found = {p.path: p.message for p in problems_of(_with_corpus(corpus, task))}
    assert path in found, found
    assert all(f in found[path] for f in fragments), found[path]


def test_too_many_corpora():
    corpora = [{"name": "TREC_6", "id": f"t{i}"} for i in range(17)]
    assert "at most 16" in problems_of(_with_corpus({"corpora": corpora}))[0].message


def test_train_with_dev_parses_and_a_non_boolean_names_the_field():
    data = base()
    data["spec"]["train"]["trainWithDev"] = True
    job = parse_spec(data)
    assert job.spec.train.train_with_dev is True
    assert TrainerConfig(**dataclasses.asdict(job.spec.train)).train_with_dev
    assert parse_spec(BASE).spec.train.train_with_dev is False
    data["spec"]["train"]["trainWithDev"] = "sometimes"
    assert [p.path for p in problems_of(data)] == ["spec.train.trainWithDev"]


def test_write_weights_and_plain_adam_parse():
    data = base()
    data["spec"]["train"]["writeWeights"] = True
    data["spec"]["model"]["optimizer"] = "adam"
    search(data)["parameters"].append({"name": "optimizer", "parameterType": "categorical",
                                       "feasibleSpace": {"list": ["sgd", "adam", "adamw"]}})
    job = parse_spec(data, model_validator=validate_model_block, hyperparameter_names=HYPERPARAMETER_NAMES)
    assert job.spec.train.write_weights is True and TrainerConfig(**dataclasses.asdict(job.spec.train)).write_weights
    assert job.spec.model["optimizer"] == "adam"
    assert parse_spec(BASE).spec.train.write_weights is False
    data["spec"]["model"]["optimizer"] = "adamax"
    found = {p.path: p.message for p in problems_of(data, model_validator=validate_model_block)}
    assert "sgd, adam, adamw" in found["spec.model.optimizer"]
