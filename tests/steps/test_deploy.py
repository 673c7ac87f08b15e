"""``kftune deploy``: the real ``kubernetes`` client against a loopback Kubernetes API (tests/fixtures/k8s_api.py),
its calls checked field by field: the GET, then a POST of the exact body on 404, or a merge PATCH of the
exact patch when the InferenceService exists; errors (RBAC, no KServe, a service that does not turn
ready) as one line with exit 1; bad arguments exit 2 before any request. Also the pipeline's deploy
component, called as the pipeline calls it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kftune._image import image
from kftune.core import inference_service as isvc
from kftune.core.errors import ConfigError
from kftune.io.kserve import DEPLOYER_ROLE, DEPLOYER_ROLE_FILE, InferenceServiceNotReadyError, KServeDeployer
from kftune.steps import deploy as step
from tests.fixtures.k8s_api import FakeKubernetes, k8s_api, use_as_default_kubeconfig  # noqa: F401 - the fixture

NS = "kubeflow-user"
MODEL = "s3://kftune/tuning/runs/trec6-20260101/final/model.pt"
ARGS = ["--name", "trec6", "--model", MODEL]


def _main(fake: FakeKubernetes, tmp_path: Path, *args: str, namespace: str | None = NS) -> int:
    return step.main([*ARGS, "--kubeconfig", str(fake.kubeconfig(tmp_path / "kubeconfig", namespace)), *args])


def _printed(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return json.loads(out[0])


def _expected(namespace: str = NS, **changes: Any) -> dict[str, Any]:
    """The InferenceService the step sends for ARGS (built independently of the step's code path)."""
    return isvc.inference_service("trec6", MODEL, changes.pop("image", image("cpu", serving=True)),
                                  namespace=namespace, **changes)


# ---------------------------------------------------------------------------------------------------
# create, patch


def test_a_new_service_is_read_then_created_with_the_exact_body(k8s_api: FakeKubernetes, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(k8s_api, tmp_path) == 0
    assert [(r.method, r.path) for r in k8s_api.requests] == [
        ("GET", k8s_api.item(NS, "trec6")), ("POST", k8s_api.collection(NS))]
    get, post = k8s_api.requests
    for r in (get, post):
        assert r.headers["authorization"] == "Bearer t0ken"  # the kubeconfig's credentials
        assert r.headers["accept"] == "application/json"
    assert get.body == b""
    assert post.headers["content-type"] == "application/json"
    assert post.query == {"fieldManager": ["kftune"]}
    body = post.json
    assert body == _expected()
    # field by field, what KServe needs from a custom predictor
    assert body["apiVersion"] == "serving.kserve.io/v1beta1" and body["kind"] == "InferenceService"
    assert body["metadata"] == {"name": "trec6", "namespace": NS,
                                "labels": {"app.kubernetes.io/part-of": "kftune", "app.kubernetes.io/component": "serving"}}
    predictor = body["spec"]["predictor"]
    assert set(predictor) == {"serviceAccountName", "containers"}  # no GPU toleration on CPU
    assert predictor["serviceAccountName"] == "kftune-serving"
    [c] = predictor["containers"]
    assert c["name"] == "kserve-container"
    assert c["image"] == image("cpu", serving=True) == "ghcr.io/kftune/kftune-serving:" + c["image"].split(":")[-1]
    assert c["command"] == ["kftune", "serve"]
    assert c["args"] == ["--model", "/mnt/models/model.pt", "--name", "trec6", "--host", "0.0.0.0", "--port", "8080"]
    assert c["env"] == [{"name": "STORAGE_URI", "value": MODEL}]
    assert c["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert c["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    assert printed_is(capsys, {"name": "trec6", "namespace": NS, "action": "created", "url": None, "ready": None,
                               "model": MODEL, "image": image("cpu", serving=True)})
    assert k8s_api.objects[(NS, "trec6")]["spec"] == body["spec"]


def printed_is(capsys: pytest.CaptureFixture[str], expected: dict[str, Any]) -> bool:
    assert _printed(capsys) == expected
    return True


def test_an_existing_service_is_merge_patched_and_keeps_what_others_set(k8s_api: FakeKubernetes, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # deployed before on a GPU, with an annotation and replicas someone added by hand
    old = _expected(gpus=1, image=image("cuda", serving=True), node_selector={"nvidia.com/gpu.present": "true"})
    old["metadata"]["annotations"] = {"serving.kserve.io/deploymentMode": "RawDeployment"}
    old["spec"]["predictor"]["minReplicas"] = 2
    old["spec"]["predictor"]["containers"][0]["env"][0]["value"] = "s3://kftune/tuning/runs/old/final/model.pt"
    k8s_api.seed(NS, old)
    assert _main(k8s_api, tmp_path) == 0
    assert [(r.method, r.path) for r in k8s_api.requests] == [
        ("GET", k8s_api.item(NS, "trec6")), ("PATCH", k8s_api.item(NS, "trec6"))]
    patch = k8s_api.requests[1]
    assert patch.headers["content-type"] == "application/merge-patch+json"
    assert patch.query == {"fieldManager": ["kftune"]}
    new = _expected()
    assert patch.json == {"metadata": {"labels": new["metadata"]["labels"]},
                          "spec": {"predictor": {**new["spec"]["predictor"], "nodeSelector": None, "tolerations": None}}}
    assert patch.json == isvc.merge_patch(new)
    stored = k8s_api.objects[(NS, "trec6")]
    # the model, the image and the container are the new ones; the GPU placement is gone
    assert stored["spec"]["predictor"]["containers"] == new["spec"]["predictor"]["containers"]
    assert "nodeSelector" not in stored["spec"]["predictor"] and "tolerations" not in stored["spec"]["predictor"]
    # what kftune does not set stays
    assert stored["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "RawDeployment"}
    assert stored["spec"]["predictor"]["minReplicas"] == 2
    assert stored["metadata"]["generation"] == 2
    assert _printed(capsys)["action"] == "patched"


def test_a_create_that_loses_a_race_patches_instead(k8s_api: FakeKubernetes) -> None:
    from kubernetes import client

    class Racing:
        """GET says 404, but someone creates the service before our POST arrives."""

        def __init__(self, real: Any) -> None:
            self.real = real
            self.api_client = real.api_client

        def get_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
            return self.real.get_namespaced_custom_object(*args, **kwargs)

        def create_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
            k8s_api.seed(NS, _expected())
            return self.real.create_namespaced_custom_object(*args, **kwargs)

        def patch_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
            return self.real.patch_namespaced_custom_object(*args, **kwargs)

    configuration = client.Configuration()
    configuration.host = k8s_api.url
    api = Racing(client.CustomObjectsApi(client.ApiClient(configuration)))
    result = step.run(step.DeployConfig(name="trec6", model=MODEL, namespace=NS), api=api)
    assert result.action == "patched"
    assert [r.method for r in k8s_api.requests] == ["GET", "POST", "PATCH"]


def test_gpus_use_the_cuda_serving_image_a_gpu_limit_and_the_gpu_nodes(k8s_api: FakeKubernetes, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(k8s_api, tmp_path, "--gpus", "1", "--node-selector", "nvidia.com/gpu.present=true",
                 "--memory", "6Gi", "--memory-limit", "8Gi") == 0
    body = k8s_api.find("POST", k8s_api.collection(NS)).json
    predictor = body["spec"]["predictor"]
    [c] = predictor["containers"]
    assert c["image"] == image("cuda", serving=True)
    assert c["resources"] == {"requests": {"cpu": "1", "memory": "6Gi"},
                              "limits": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": 1}}
    assert predictor["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert _printed(capsys)["image"] == image("cuda", serving=True)


def test_the_namespace_defaults_to_the_kubeconfig_context_s_and_the_image_can_be_given(
        k8s_api: FakeKubernetes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    custom = "registry.internal:5000/ml/kftune-serving:0.1.0-cpu-patched"
    assert _main(k8s_api, tmp_path, "--image", custom, namespace="default") == 0
    post = k8s_api.find("POST", k8s_api.collection("default"))
    assert post.json["spec"]["predictor"]["containers"][0]["image"] == custom
    assert _printed(capsys)["namespace"] == "default"
    assert _main(k8s_api, tmp_path, "--namespace", NS, "--registry", "localhost:5000", namespace="default") == 0
    post = k8s_api.find("POST", k8s_api.collection(NS))
    assert post.json["spec"]["predictor"]["containers"][0]["image"] == image("cpu", "localhost:5000", serving=True)


# ---------------------------------------------------------------------------------------------------
# waiting for Ready


def _ready(url: str | None, generation: int = 1) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": generation, "conditions": [
        {"type": "IngressReady", "status": "True"}, {"type": "PredictorReady", "status": "True"},
        {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:01:00Z"}]}
    if url:
        status["url"] = url
        status["address"] = {"url": "http://trec6.kubeflow-user.svc.cluster.local"}
    return status


NOT_READY = {"observedGeneration": 1, "conditions": [
    {"type": "PredictorReady", "status": "False", "reason": "RevisionMissing",
     "message": "Configuration \"trec6-predictor\" is waiting for a Revision to become ready."},
    {"type": "Ready", "status": "False", "reason": "RevisionMissing"}]}


def test_wait_reads_until_ready_and_reports_the_url(k8s_api: FakeKubernetes, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://trec6.kubeflow-user.example.com"
    k8s_api.statuses = [NOT_READY, NOT_READY, _ready(url)]
    assert _main(k8s_api, tmp_path, "--wait", "--timeout", "10", "--poll-interval", "0.01") == 0
    methods = [r.method for r in k8s_api.requests]
    assert methods[:2] == ["GET", "POST"] and set(methods[2:]) == {"GET"} and len(methods) == 5
    assert _printed(capsys) == {"name": "trec6", "namespace": NS, "action": "created", "url": url, "ready": True,
                                "model": MODEL, "image": image("cpu", serving=True)}


def test_a_ready_condition_of_the_previous_generation_is_not_ready(k8s_api: FakeKubernetes) -> None:
    k8s_api.seed(NS, _expected())
    obj = k8s_api.objects[(NS, "trec6")]
    obj["metadata"]["generation"] = 2
    assert isvc.readiness({**obj, "status": _ready("http://x", generation=1)})[0] is False
    assert isvc.readiness({**obj, "status": _ready("http://x", generation=2)}) == (True, "Ready")


def test_wait_ends_with_what_kserve_said_when_it_never_turns_ready(k8s_api: FakeKubernetes, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    k8s_api.statuses = [NOT_READY]
    assert _main(k8s_api, tmp_path, "--wait", "--timeout", "0.3", "--poll-interval", "0.05") == 1
    err = capsys.readouterr().err
    assert "InferenceService kubeflow-user/trec6 was not ready within 0.3 s" in err
    assert "PredictorReady=False (RevisionMissing: Configuration \"trec6-predictor\" is waiting" in err
    assert "Traceback" not in err


def test_a_model_that_fails_to_load_ends_the_wait_at_once(k8s_api: FakeKubernetes) -> None:
    failed = copy.deepcopy(NOT_READY)
    failed["modelStatus"] = {"transitionStatus": "BlockedByFailedLoad",
                             "states": {"activeModelState": "FailedToLoad", "targetModelState": "FailedToLoad"},
                             "lastFailureInfo": {"reason": "ModelLoadFailed",
                                                 "message": "no model.pt in /mnt/models"}}
    k8s_api.statuses = [failed]
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = k8s_api.url
    deployer = KServeDeployer(client.CustomObjectsApi(client.ApiClient(configuration)), poll_interval=5)
    with pytest.raises(InferenceServiceNotReadyError, match="will not turn ready.*BlockedByFailedLoad: "
                                                            "ModelLoadFailed: no model.pt in /mnt/models"):
        step.run(step.DeployConfig(name="trec6", model=MODEL, namespace=NS, wait=True, timeout=60), deployer=deployer)
    assert [r.method for r in k8s_api.requests] == ["GET", "POST", "GET"]  # no second read


# ---------------------------------------------------------------------------------------------------
# what the API refuses


@pytest.mark.parametrize("verb", ["get", "create", "patch"])
def test_rbac_denial_is_one_line_naming_the_role_to_apply(k8s_api: FakeKubernetes, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str], verb: str) -> None:
    if verb == "patch":
        k8s_api.seed(NS, _expected())
    k8s_api.forbid = {verb}
    assert _main(k8s_api, tmp_path) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if " ERROR " in line]  # one error line (beside INFO progress)
    assert f"RBAC denied: cannot {verb} inferenceservices.serving.kserve.io in namespace 'kubeflow-user'" in line
    assert f"Apply the Role {DEPLOYER_ROLE} ({DEPLOYER_ROLE_FILE}" in line
    assert 'User "system:serviceaccount:kubeflow-user:pipeline-runner" cannot' in line  # who the server saw
    assert f"kubectl auth can-i {verb} inferenceservices.serving.kserve.io -n kubeflow-user --as " \
           "system:serviceaccount:kubeflow-user:pipeline-runner`" in line
    assert Path(__file__).resolve().parents[2].joinpath(DEPLOYER_ROLE_FILE).is_file()
    assert [r.method for r in k8s_api.requests] == {"get": ["GET"], "create": ["GET", "POST"],
                                                    "patch": ["GET", "PATCH"]}[verb]


def test_without_kserve_the_error_says_it_is_not_installed(k8s_api: FakeKubernetes, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    k8s_api.crd_installed = False
    assert _main(k8s_api, tmp_path) == 1
    err = capsys.readouterr().err
    assert "KServe is not installed: no inferenceservices.serving.kserve.io CRD" in err
    assert [r.method for r in k8s_api.requests] == ["GET"]


def test_a_missing_namespace_and_bad_credentials_are_named(k8s_api: FakeKubernetes, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(k8s_api, tmp_path, "--namespace", "nowhere") == 1
    assert "namespace 'nowhere' does not exist" in capsys.readouterr().err
    k8s_api.token = "another"
    assert _main(k8s_api, tmp_path) == 1
    assert "refused the credentials (401 Unauthorized)" in capsys.readouterr().err


def test_an_unreachable_api_server_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeKubernetes(url="http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert step.main([*ARGS, "--kubeconfig", str(fake.kubeconfig(tmp_path / "kc")), "--namespace", NS]) == 1
    assert "cannot reach the Kubernetes API at http://127.0.0.1:9 to get" in capsys.readouterr().err


def test_no_credentials_at_all_says_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert step.main([*ARGS, "--namespace", NS, "--kubeconfig", str(tmp_path / "missing")]) == 1
    assert "no Kubernetes credentials" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# bad arguments: exit 2, nothing sent


@pytest.mark.parametrize("args, field, words", [
    (["--name", "Trec_6", "--model", MODEL], "deploy.name", "cannot name an InferenceService"),
    (["--name", "a" * 54, "--model", MODEL], "deploy.name", "at most 53"),
    (["--name", "trec6", "--model", "runs/trec6/final/model.pt"], "deploy.model", "cannot read a local path"),
    (["--name", "trec6", "--model", "ftp://host/model.pt"], "deploy.model", "not in an object store"),
    (["--name", "trec6", "--model", MODEL, "--gpus", "-1"], "deploy.gpus", ">= 0"),
    (["--name", "trec6", "--model", MODEL, "--namespace", "Kubeflow_User"], "deploy.namespace", "not a namespace"),
    (["--name", "trec6", "--model", MODEL, "--memory", "lots"], "deploy.resources.memory", "Kubernetes quantity"),
    (["--name", "trec6", "--model", MODEL, "--image", "ghcr.io/kftune/kftune-serving"], "deploy.image",
     "tag or digest"),
    (["--name", "trec6", "--model", MODEL, "--image", "ghcr.io/kftune/kftune-serving:" + "latest"], "deploy.image",
     "names no release"),
    (["--name", "trec6", "--model", MODEL, "--registry", "https://ghcr.io"], "deploy.registry", "not a registry"),
    (["--name", "trec6", "--model", MODEL, "--timeout", "0"], "deploy.timeout", "> 0"),
    (["--name", "trec6", "--model", MODEL, "--node-selector", "gpu"], "--node-selector", "LABEL=VALUE"),
])
def test_bad_arguments_exit_2_naming_the_field_before_any_request(
        k8s_api: FakeKubernetes, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], field: str,
        words: str) -> None:
    kubeconfig = str(k8s_api.kubeconfig(tmp_path / "kubeconfig"))
    assert step.main([*args, "--kubeconfig", kubeconfig]) == 2
    err = capsys.readouterr().err
    assert f"{field}: " in err and words in err, err
    assert k8s_api.requests == []


def test_missing_required_flags_are_usage_errors(k8s_api: FakeKubernetes, capsys: pytest.CaptureFixture[str]) -> None:
    assert step.main(["--name", "trec6"]) == 2
    assert "--model" in capsys.readouterr().err
    assert k8s_api.requests == []


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        step.DeployConfig(name="", model="", gpus=-2, timeout=-1).validate()
    assert {p.path for p in caught.value.problems} == {"deploy.name", "deploy.model", "deploy.gpus", "deploy.timeout"}


def test_dry_run_prints_the_inference_service_and_contacts_nothing(k8s_api: FakeKubernetes, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(k8s_api, tmp_path, "--dry-run", "--namespace", NS) == 0
    assert yaml.safe_load(capsys.readouterr().out) == _expected()
    assert k8s_api.requests == []


def test_the_cli_dispatches_to_the_step() -> None:
    from kftune.cli import COMMANDS

    assert COMMANDS["deploy"][0] == "kftune.steps.deploy"


# ---------------------------------------------------------------------------------------------------
# the pure pieces


@pytest.mark.parametrize("uri, path", [
    ("s3://kftune/tuning/runs/r/final/model.pt", "/mnt/models/model.pt"),
    ("s3://kftune/tuning/runs/r/final", "/mnt/models"),
    ("s3://kftune/tuning/runs/r/final/", "/mnt/models"),
    ("gs://bucket/best.pt", "/mnt/models/best.pt"),
])
def test_the_server_is_pointed_at_where_the_storage_initializer_puts_the_model(uri: str, path: str) -> None:
    assert isvc.model_path(uri) == path


@pytest.mark.parametrize("text, name", [("trec6", "trec6"), ("TREC_6 demo", "trec-6-demo"), ("6th", "kftune-6th"),
                                        ("", "kftune"), ("x" * 80, "x" * 53)])
def test_service_names_made_from_a_job_name_are_valid(text: str, name: str) -> None:
    assert step.service_name_for(text) == name
    assert isvc.name_problems(name) == []


# ---------------------------------------------------------------------------------------------------
# the pipeline's component, called as the pipeline calls it


def test_the_pipeline_component_names_the_service_after_the_job_and_places_gpus_only_with_gpus(
        k8s_api: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kfp import dsl

    from kftune.pipelines.components import deploy

    use_as_default_kubeconfig(k8s_api, tmp_path / "kubeconfig", monkeypatch)  # as a pod outside KFP would have it
    from kftune.pipelines.pipeline import DEFAULT_SPEC

    spec = tmp_path / "job_spec.json"  # resolve-spec's effective spec, which the task parses
    spec.write_text(json.dumps({**DEFAULT_SPEC, "metadata": {"name": "nsmc-sentiment"}}), encoding="utf-8")
    selector, tolerations = {"nvidia.com/gpu.present": "true"}, [{"key": "gpu", "operator": "Exists"}]
    common = dict(job_spec=dsl.Artifact(name="job_spec", uri=str(spec)), model_uri=MODEL, namespace="",
                  registry="ghcr.io/kftune", node_selector=selector, tolerations=tolerations, timeout=0)

    out = json.loads(deploy(service_name="", image="", gpus=0,
                            service=dsl.Markdown(name="s", uri=str(tmp_path / "s1.md")), **common))
    assert out["name"] == "nsmc-sentiment" and out["namespace"] == NS and out["action"] == "created"
    predictor = k8s_api.find("POST", k8s_api.collection(NS)).json["spec"]["predictor"]
    assert set(predictor) == {"serviceAccountName", "containers"}  # no GPU placement without GPUs
    assert predictor["containers"][0]["image"] == image("cpu", "ghcr.io/kftune", serving=True)
    assert "InferenceService kubeflow-user/nsmc-sentiment" in (tmp_path / "s1.md").read_text(encoding="utf-8")

    out = json.loads(deploy(service_name="reviews", image="", gpus=1,
                            service=dsl.Markdown(name="s", uri=str(tmp_path / "s2.md")), **common))
    assert out["name"] == "reviews" and out["image"] == image("cuda", "ghcr.io/kftune", serving=True)
    predictor = k8s_api.calls("POST")[-1].json["spec"]["predictor"]
    assert predictor["nodeSelector"] == selector and predictor["tolerations"] == tolerations
    assert predictor["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
