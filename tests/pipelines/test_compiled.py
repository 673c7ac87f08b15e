"""The committed pipelines, read back into KFP's protobufs and checked structurally.

No KFP cluster runs here, so this is what stands for "the GPU pipeline requests GPUs": the compiled
GPU YAML parses into a ``PipelineSpec`` and a ``PlatformSpec``, every search round is a ParallelFor
over the suggest step's batches whose width is wired to the ``parallel_trials`` parameter, and every
trial and final-training executor requests ``nvidia.com/gpu`` (the CPU YAML requests none), and the
deploy step sits in both behind a condition on the ``deploy`` parameter, off by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from kftune import _image
from kftune.pipelines import COMPILED_DIR
from kftune.pipelines.pipeline import (DEFAULT_DEPLOY_TIMEOUT, DEFAULT_SEARCH_ROUNDS, DEPLOY_PARAMETERS,
                                       GPU_PARAMETERS, PARAMETERS, S3_ENV, S3_SECRET)


def _load(variant: str) -> tuple[Any, Any, Any]:
    docs = list(yaml.safe_load_all((COMPILED_DIR / f"kftune-{variant}.yaml").read_text(encoding="utf-8")))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    platform = json_format.ParseDict(docs[1] if len(docs) > 1 else {}, pipeline_spec_pb2.PlatformSpec())
    deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                       pipeline_spec_pb2.PipelineDeploymentConfig())
    return spec, platform, deployment


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def compiled(request: pytest.FixtureRequest) -> tuple[str, Any, Any, Any]:
    return (request.param, *_load(request.param))


def _walk(spec: Any, dag: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, Any]]:
    """Every task of ``dag`` and of the DAGs below it: (path of enclosing task names, name, task)."""
    for name, task in dag.tasks.items():
        yield path, name, task
        component = spec.components[task.component_ref.name]
        if component.WhichOneof("implementation") == "dag":
            yield from _walk(spec, component.dag, path + (name,))


def _executor(spec: Any, task: Any) -> str:
    return spec.components[task.component_ref.name].executor_label


def _k8s(platform: Any) -> dict[str, Any]:
    if "kubernetes" not in platform.platforms:
        return {}
    executors = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec).get("executors", {})
    return {name: json_format.ParseDict(cfg, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
            for name, cfg in executors.items()}


def test_the_parameters_a_ui_user_changes_are_pipeline_inputs(compiled: tuple[str, Any, Any, Any]) -> None:
    variant, spec, _, _ = compiled
    inputs = spec.root.input_definitions.parameters
    expected = {"spec", "corpus", "downsample", "max_trials", "parallel_trials", "max_epochs", "seed", "store",
                "run_id", "warm_start", "lease_owner", "deploy", "deploy_service_name", "deploy_namespace", "serving_image",
                "deploy_timeout"}
    if variant == "gpu":
        expected |= {"trial_gpus", "final_gpus", "node_selector", "tolerations", "deploy_gpus"}
    assert set(inputs) == expected == set(PARAMETERS + DEPLOY_PARAMETERS + (GPU_PARAMETERS if variant == "gpu" else ()))
    for name in expected:
        assert inputs[name].description, f"{name} has no description for the KFP UI"
    assert not any("secret" in n or "key" in n or "password" in n for n in inputs)  # credentials never parameters
    assert spec.pipeline_info.name == f"kftune-{variant}"


def test_each_search_round_is_a_parallel_for_over_trial_batches_wired_to_parallel_trials(
        compiled: tuple[str, Any, Any, Any]) -> None:
    _, spec, _, _ = compiled
    root_tasks = spec.root.dag.tasks
    suggests = sorted((n for n in root_tasks if n.startswith("suggest")), key=lambda n: int(n.rpartition("-")[2])
                      if n != "suggest" else 1)
    assert len(suggests) == DEFAULT_SEARCH_ROUNDS + 1  # the search rounds and the finalists' round
    loops = {n: t for n, t in root_tasks.items() if t.WhichOneof("iterator")}
    assert len(loops) == len(suggests)
    for s in suggests:
        task = root_tasks[s]
        wiring = task.inputs.parameters["parallel_trials"]
        assert wiring.component_input_parameter == "parallel_trials"  # the batch width is the pipeline parameter
        [(loop_name, loop)] = [(n, t) for n, t in loops.items()
                               if t.parameter_iterator.items.input_parameter == f"pipelinechannel--{s}-Output"]
        assert loop.iterator_policy.parallelism_limit == 1  # batches one after another
        inner = spec.components[loop.component_ref.name].dag.tasks
        [batch] = [t for t in inner.values() if t.component_ref.name.startswith("comp-trial-batch")]
        batch_dag = spec.components[batch.component_ref.name].dag
        [(_, trial_loop)] = [(n, t) for n, t in batch_dag.tasks.items() if t.WhichOneof("iterator")]
        assert trial_loop.parameter_iterator.items.input_parameter == "pipelinechannel--batch"
        assert trial_loop.iterator_policy.parallelism_limit == 0  # the whole batch at once
        trials = spec.components[trial_loop.component_ref.name].dag.tasks
        assert [t.component_ref.name.startswith("comp-trial") for t in trials.values()] == [True]
        [trial] = trials.values()
        assert trial.retry_policy.max_retry_count == 2
    # round r + 1 waits for round r: its history is round r's Collected results
    for previous, current in zip(suggests, suggests[1:]):
        history = root_tasks[current].inputs.parameters["history"].task_output_parameter
        assert history.producer_task.startswith("for-loop-")
        assert loops[history.producer_task].parameter_iterator.items.input_parameter == \
            f"pipelinechannel--{previous}-Output"


def test_gpu_requests_on_every_trial_and_final_training_and_nowhere_else(compiled: tuple[str, Any, Any, Any]) -> None:
    variant, spec, platform, deployment = compiled
    executors = {}
    for _, name, task in _walk(spec, spec.root.dag):
        if spec.components[task.component_ref.name].WhichOneof("implementation") == "executor_label":
            executors.setdefault(name.rstrip("0123456789").rstrip("-"), set()).add(_executor(spec, task))
    assert set(executors) == {"resolve-spec", "prepare-corpus", "lr-range-test", "suggest", "trial", "select-best",
                              "final-training", "evaluate", "report", "deploy"}
    assert len(executors["trial"]) == DEFAULT_SEARCH_ROUNDS + 1
    accelerated = executors["trial"] | executors["final-training"]
    k8s = _k8s(platform)
    for label, executor in deployment.executors.items():
        container = executor.container
        acc = container.resources.accelerator
        if variant == "gpu" and label in accelerated:
            assert acc.resource_type == "nvidia.com/gpu", label
            wanted = "trial_gpus" if label in executors["trial"] else "final_gpus"
            assert f"pipelinechannel--{wanted}" in acc.resource_count, label
            assert container.image == _image.image("cuda", _image.DEFAULT_REGISTRY)
            cfg = k8s[label]
            assert cfg.node_selector.node_selector_json.component_input_parameter.endswith("node_selector")
            [toleration] = cfg.tolerations
            assert toleration.toleration_json.component_input_parameter.endswith("tolerations")
        else:
            assert not acc.resource_type and not acc.type, f"{variant} {label} requests {acc.resource_type}"
            assert container.image == _image.image("cpu", _image.DEFAULT_REGISTRY)
        # lightweight components running kftune, never installing kfp at runtime
        assert "kfp.dsl.executor_main" in " ".join(container.command)
        assert "pip install" not in " ".join(container.command)


def test_store_credentials_come_from_the_secret_on_every_task_but_resolve(compiled: tuple[str, Any, Any, Any]) -> None:
    _, spec, platform, deployment = compiled
    k8s = _k8s(platform)
    for label in deployment.executors:
        if label in ("exec-resolve-spec", "exec-deploy"):  # neither reads the store
            assert label not in k8s or not k8s[label].secret_as_env
            continue
        [secret] = k8s[label].secret_as_env
        assert secret.secret_name == S3_SECRET and secret.optional
        assert sorted((k.secret_key, k.env_var) for k in secret.key_to_env) == sorted((k, k) for k in S3_ENV)


def test_caching_is_on_for_corpus_preparation_only(compiled: tuple[str, Any, Any, Any]) -> None:
    _, spec, _, _ = compiled
    for path, name, task in _walk(spec, spec.root.dag):
        if spec.components[task.component_ref.name].WhichOneof("implementation") != "executor_label":
            continue
        assert task.caching_options.enable_cache == (name == "prepare-corpus"), "/".join(path + (name,))


def test_deploy_runs_only_when_asked_after_the_report_on_the_final_model(compiled: tuple[str, Any, Any, Any]) -> None:
    variant, spec, _, deployment = compiled
    inputs = spec.root.input_definitions.parameters
    # off by default, named by the TuningJob and in the run's namespace unless set, waits for Ready
    assert inputs["deploy"].parameter_type == pipeline_spec_pb2.ParameterType.BOOLEAN
    assert inputs["deploy"].default_value.bool_value is False
    for name in ("deploy_service_name", "deploy_namespace", "serving_image"):
        assert inputs[name].default_value.string_value == "", name
    assert inputs["deploy_timeout"].default_value.number_value == DEFAULT_DEPLOY_TIMEOUT
    [(path, name, task)] = [(p, n, t) for p, n, t in _walk(spec, spec.root.dag) if n == "deploy"]
    [condition] = path
    branch = spec.root.dag.tasks[condition]
    assert branch.trigger_policy.condition == "inputs.parameter_values['pipelinechannel--deploy'] == true"
    assert branch.inputs.parameters["pipelinechannel--deploy"].component_input_parameter == "deploy"
    assert {"report", "final-training"} <= set(branch.dependent_tasks)  # after the report
    # the model is final-training's output (its URI in the store)
    model = branch.inputs.parameters["pipelinechannel--final-training-Output"].task_output_parameter
    assert (model.producer_task, model.output_parameter_key) == ("final-training", "Output")
    wired = {k: v for k, v in task.inputs.parameters.items()}
    assert wired["model_uri"].component_input_parameter == "pipelinechannel--final-training-Output"
    for param, source in (("service_name", "deploy_service_name"), ("namespace", "deploy_namespace"),
                          ("image", "serving_image"), ("timeout", "deploy_timeout")):
        assert wired[param].component_input_parameter == f"pipelinechannel--{source}", param
    assert wired["registry"].runtime_value.constant.string_value == _image.DEFAULT_REGISTRY
    if variant == "gpu":
        for param, source in (("gpus", "deploy_gpus"), ("node_selector", "node_selector"),
                              ("tolerations", "tolerations")):
            assert wired[param].component_input_parameter == f"pipelinechannel--{source}", param
        assert inputs["deploy_gpus"].default_value.number_value == 1
    else:
        assert wired["gpus"].runtime_value.constant.number_value == 0
    assert not task.caching_options.enable_cache
    # the step runs in the CPU image (it only talks to the API server) and imports kftune's deploy step
    container = deployment.executors["exec-deploy"].container
    assert container.image == _image.image("cpu", _image.DEFAULT_REGISTRY)
    assert "from kftune.steps import deploy as step" in " ".join(container.command)


def test_descriptions_come_from_the_docstrings(compiled: tuple[str, Any, Any, Any]) -> None:
    _, spec, _, _ = compiled
    assert "kftune" in spec.pipeline_info.description
    suggest = spec.components["comp-suggest"].input_definitions.parameters
    assert "batch width" in suggest["parallel_trials"].description


def test_the_manifests_hold_a_pipeline_and_a_version_of_each_variant() -> None:
    folder = Path(__file__).resolve().parents[2] / "manifests" / "base" / "pipeline"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["resources"] == ["kftune-cpu.yaml", "kftune-gpu.yaml"]
    for variant in ("cpu", "gpu"):
        docs = list(yaml.safe_load_all((folder / f"kftune-{variant}.yaml").read_text(encoding="utf-8")))
        assert [(d["apiVersion"], d["kind"]) for d in docs] == [("pipelines.kubeflow.org/v2beta1", "Pipeline"),
                                                                ("pipelines.kubeflow.org/v2beta1", "PipelineVersion")]
        pipeline, version = docs
        assert pipeline["metadata"] == {"name": f"kftune-{variant}"}  # no namespace: kustomize sets it
        assert version["spec"]["pipelineName"] == f"kftune-{variant}"
        assert version["metadata"]["name"].startswith(f"kftune-{variant}-")
        spec = json_format.ParseDict(version["spec"]["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
        assert spec.pipeline_info.name == f"kftune-{variant}"
        assert "platformSpec" in version["spec"]  # both variants use kfp-kubernetes (the Secret)
