"""manifests/: both overlays build offline with kustomize, every core object passes strict schema
validation, Katib objects round-trip through Katib's API models, the KServe InferenceService is the
deploy step's own body (checked structurally: kubernetes-validate knows no CRDs), and the generated
files are current."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kftune._image import image

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ("cpu", "gpu")
#: The Kubernetes release whose schemas the core objects are validated against (kubernetes-validate).
K8S_VERSION = "1.30.0"
CORE_GROUPS = {"v1", "batch/v1", "apps/v1", "rbac.authorization.k8s.io/v1", "policy/v1", "networking.k8s.io/v1"}
KFTUNE_REPO = "ghcr.io/kftune/kftune"
SERVING_REPO = "ghcr.io/kftune/kftune-serving"
#: The example InferenceService: the final model of the run trec6 under the example store.
SERVED_MODEL = "s3://kftune/tuning/runs/trec6/final/model.pt"
#: ScheduledWorkflowSpec's fields (kubeflow/pipelines backend/src/crd/pkg/apis/scheduledworkflow/v1beta1/types.go).
SWF_SPEC_FIELDS = {"enabled", "maxConcurrency", "noCatchup", "maxHistory", "trigger", "workflow", "experimentId",
                   "pipelineId", "pipelineVersionId", "pipelineName", "serviceAccount"}

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed")


def build(overlay: str) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(MANIFESTS / "overlays" / overlay)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{out.stderr}"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the pipelines make the output large
    return [d for d in yaml.load_all(out.stdout, Loader=loader) if d]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    if KUBECTL is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    return {overlay: build(overlay) for overlay in OVERLAYS}


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(doc: dict) -> list[dict]:
    """Every pod spec inside an object (Job, CronJob, Katib trial template, InferenceService predictor)."""
    kind = doc["kind"]
    if kind == "InferenceService":
        return [doc["spec"]["predictor"]]  # KServe's PredictorSpec inlines a PodSpec
    if kind == "Job":
        return [doc["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    if kind == "Experiment":
        return [doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]]
    return []


def trial_pod(docs: list[dict]) -> dict:
    return pod_specs(one(docs, "Experiment"))[0]


# -- building ----------------------------------------------------------------------------------------

@needs_kubectl
def test_both_overlays_build_the_same_objects(built):
    names = {o: sorted((d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in docs) for o, docs in built.items()}
    assert names["cpu"] == names["gpu"]
    kinds = {k for _, k, _ in names["gpu"]}
    assert {"Experiment", "ScheduledWorkflow", "CronJob", "Job", "Secret", "ConfigMap", "ServiceAccount", "Role",
            "RoleBinding", "InferenceService"} <= kinds
    base = (MANIFESTS / "base" / "kustomization.yaml").read_text()
    if (MANIFESTS / "base" / "pipeline" / "kustomization.yaml").exists():
        assert "- pipeline" in base, "manifests/base/pipeline exists but base/kustomization.yaml does not list it"
    for docs in built.values():
        namespaces = {d["metadata"].get("namespace") for d in docs}
        assert len(namespaces) == 1 and None not in namespaces, namespaces


@needs_kubectl
def test_gpu_limits_tolerations_and_node_selector_only_in_gpu(built):
    def gpu_bits(docs: list[dict]) -> list[str]:
        found = []
        for d in docs:
            for spec in pod_specs(d):
                for c in spec["containers"]:
                    for section in ("limits", "requests"):
                        found += [f"{d['kind']}/{k}" for k in (c.get("resources") or {}).get(section, {}) if "gpu" in k]
                found += [f"{d['kind']}/tolerations" for _ in spec.get("tolerations") or []]
                found += [f"{d['kind']}/nodeSelector" for _ in spec.get("nodeSelector") or {}]
        return found

    assert gpu_bits(built["cpu"]) == []
    pod = trial_pod(built["gpu"])
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"]
    # only the trials and the model server take GPUs: the bucket Job and the CronJob do not
    assert sorted(set(gpu_bits(built["gpu"]))) == [
        "Experiment/nodeSelector", "Experiment/nvidia.com/gpu", "Experiment/tolerations",
        "InferenceService/nodeSelector", "InferenceService/nvidia.com/gpu", "InferenceService/tolerations"]
    predictor = one(built["gpu"], "InferenceService")["spec"]["predictor"]
    assert predictor["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in predictor["tolerations"]
    cpu = trial_pod(built["cpu"])["containers"][0]["resources"]
    assert cpu["requests"]["cpu"] and cpu["requests"]["memory"]


@needs_kubectl
def test_images_are_this_version_and_the_right_kind(built, monkeypatch):
    monkeypatch.delenv("KFTUNE_IMAGE_REGISTRY", raising=False)
    for overlay, docs in built.items():
        for d in docs:
            for spec in pod_specs(d):
                for c in spec["containers"]:
                    serving = d["kind"] == "InferenceService"
                    assert c["image"].startswith((SERVING_REPO if serving else KFTUNE_REPO) + ":"), c["image"]
                    want = "cuda" if overlay == "gpu" and d["kind"] in ("Experiment", "InferenceService") else "cpu"
                    expected = image(want, serving=serving)
                    assert c["image"] == expected, f"{overlay}: {d['kind']} runs {c['image']}, not {expected}"


# -- schemas -----------------------------------------------------------------------------------------

def validate_core(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(built, overlay):
    from kubeflow_katib_api.models import V1beta1Experiment

    checked = []
    for d in built[overlay]:
        api, kind = d["apiVersion"], d["kind"]
        if api in CORE_GROUPS:
            validate_core(d)
        elif (api, kind) == ("kubeflow.org/v1beta1", "Experiment"):
            assert V1beta1Experiment.from_dict(d).to_dict() == d, "a field is lost in Katib's API models"
            trial = d["spec"]["trialTemplate"]["trialSpec"]
            validate_core({"apiVersion": trial["apiVersion"], "kind": trial["kind"], "metadata": {"name": "trial"},
                           "spec": trial["spec"]})
        elif (api, kind) == ("kubeflow.org/v1beta1", "ScheduledWorkflow"):
            assert set(d["spec"]) <= SWF_SPEC_FIELDS, set(d["spec"]) - SWF_SPEC_FIELDS
            assert set(d["spec"]["trigger"]) <= {"cronSchedule", "periodicSchedule"}
            assert len(d["spec"]["trigger"]["cronSchedule"]["cron"].split()) == 6  # KFP's cron has seconds
            assert all(set(p) == {"name", "value"} for p in d["spec"]["workflow"]["parameters"])
        elif api.startswith("pipelines.kubeflow.org/"):
            assert kind in ("Pipeline", "PipelineVersion") and d["metadata"]["name"], d
            continue  # manifests/base/pipeline is checked by its own tests
        elif (api, kind) == ("serving.kserve.io/v1beta1", "InferenceService"):
            validate_inference_service(d)
        else:
            pytest.fail(f"no validator for {api} {kind} {d['metadata']['name']}")
        checked.append(kind)
    assert "Experiment" in checked and "CronJob" in checked


def validate_inference_service(doc: dict) -> None:
    """KServe's CRD is not in kubernetes-validate: the predictor's fields must be fields of KServe's own
    PredictorSpec model (kserve 0.21), and its pod part must validate strictly as a core PodSpec."""
    from kserve.models import V1beta1PredictorSpec
    from kubernetes.client import V1PodSpec

    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, set(doc)
    assert set(doc["spec"]) == {"predictor"}, "a predictor only (no transformer or explainer)"
    predictor = doc["spec"]["predictor"]
    known = set(V1beta1PredictorSpec.attribute_map.values())
    assert set(predictor) <= known, f"not fields of KServe's PredictorSpec: {set(predictor) - known}"
    pod_fields = set(V1PodSpec.attribute_map.values())
    validate_core({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
                   "spec": {k: v for k, v in predictor.items() if k in pod_fields}})


def test_the_validator_is_strict():
    import kubernetes_validate

    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
           "spec": {"template": {"spec": {"restartPolicy": "Never",
                                          "containers": [{"name": "c", "image": "i:1", "comand": ["x"]}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(job)


# -- what the objects refer to -----------------------------------------------------------------------

@needs_kubectl
def test_references_resolve(built):
    docs = built["gpu"]
    secrets = {d["metadata"]["name"] for d in of_kind(docs, "Secret")}
    configmaps = {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")}
    accounts = {d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")}
    roles = {d["metadata"]["name"] for d in of_kind(docs, "Role")}
    for d in docs:
        for spec in pod_specs(d):
            for c in spec["containers"]:
                for ref in c.get("envFrom", []):
                    assert ref["secretRef"]["name"] in secrets
            for v in spec.get("volumes", []):
                if "configMap" in v:
                    assert v["configMap"]["name"] in configmaps, v
            if "serviceAccountName" in spec:
                assert spec["serviceAccountName"] in accounts
    for sa in of_kind(docs, "ServiceAccount"):
        assert all(ref["name"] in secrets for ref in sa.get("secrets", [])), sa
    # the pipeline runner is KFP's ServiceAccount (the one the ScheduledWorkflow runs as), not one of ours;
    # a subject without a namespace is the ServiceAccount in the RoleBinding's own namespace (RBAC defaults it)
    runner = one(docs, "ScheduledWorkflow")["spec"]["serviceAccount"]
    for rb in of_kind(docs, "RoleBinding"):
        assert rb["roleRef"]["name"] in roles
        for s in rb["subjects"]:
            assert s["kind"] == "ServiceAccount"
            assert (s["name"] in accounts and s["namespace"] == rb["metadata"]["namespace"]) or (
                s["name"] == runner and "namespace" not in s), s
    for overlay, objects in built.items():
        pipelines = {d["metadata"]["name"] for d in of_kind(objects, "Pipeline")}
        assert pipelines, "manifests/base/pipeline is not included"
        assert one(objects, "ScheduledWorkflow")["spec"]["pipelineName"] in pipelines, overlay


@needs_kubectl
def test_launcher_role_grants_exactly_what_the_launcher_calls(built):
    from kftune.io import katib

    role = one(built["gpu"], "Role", "kftune-launcher")
    assert role["rules"] == [{"apiGroups": [katib.GROUP], "resources": [katib.PLURAL], "verbs": list(katib.VERBS)}]


@needs_kubectl
def test_deployer_role_grants_exactly_what_the_deploy_step_calls_to_the_pipeline_runner(built):
    from kftune.io import kserve

    for docs in built.values():
        role = one(docs, "Role", kserve.DEPLOYER_ROLE)
        assert role["rules"] == [{"apiGroups": [kserve.GROUP], "resources": [kserve.PLURAL],
                                  "verbs": list(kserve.VERBS)}]
        assert sorted(kserve.VERBS) == ["create", "get", "patch"]
        binding = one(docs, "RoleBinding", kserve.DEPLOYER_ROLE)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": kserve.DEPLOYER_ROLE}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner"}]
    assert (MANIFESTS / kserve.DEPLOYER_ROLE_FILE.removeprefix("manifests/")).is_file()


@needs_kubectl
def test_inference_service_is_the_deploy_steps_body_in_each_overlay(built, monkeypatch):
    """The InferenceService of the manifests is what `kftune deploy` / the pipeline's deploy step make
    for the example run: one function builds both (kftune.core.inference_service)."""
    from kftune.core.inference_service import inference_service
    from kftune.steps.deploy import DeployConfig, manifest

    monkeypatch.delenv("KFTUNE_IMAGE_REGISTRY", raising=False)
    committed = yaml.safe_load((MANIFESTS / "base/serving/inferenceservice.yaml").read_text())
    assert committed == manifest(DeployConfig(name="trec6", model=SERVED_MODEL)), (
        "manifests/base/serving/inferenceservice.yaml differs from the deploy step's InferenceService: make its "
        f"body what `kftune deploy --name trec6 --model {SERVED_MODEL} --dry-run` prints (keep the header comments)")
    cpu = one(built["cpu"], "InferenceService")
    assert cpu == inference_service("trec6", SERVED_MODEL, image("cpu", serving=True), namespace="kftune")
    gpu = one(built["gpu"], "InferenceService")
    assert gpu == manifest(DeployConfig(name="trec6", model=SERVED_MODEL, gpus=1,
                                        node_selector={"nvidia.com/gpu.present": "true"}), namespace="kftune")


@needs_kubectl
def test_inference_service_runs_kftune_serve_on_the_stored_model_with_probes_and_resources(built):
    import json
    import re

    for overlay, docs in built.items():
        isvc = one(docs, "InferenceService")
        assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
        predictor = isvc["spec"]["predictor"]
        [c] = predictor["containers"]
        assert c["name"] == "kserve-container"  # the name KServe knows the model server by
        assert c["command"] == ["kftune", "serve"]
        assert dict(zip(c["args"][::2], c["args"][1::2])) == {
            "--model": "/mnt/models/model.pt", "--name": isvc["metadata"]["name"], "--host": "0.0.0.0",
            "--port": "8080"}
        # a custom predictor's storage URI: the storage initializer downloads it to /mnt/models
        assert c["env"] == [{"name": "STORAGE_URI", "value": SERVED_MODEL}] and SERVED_MODEL.startswith("s3://")
        assert c["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
        assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
        assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
        resources = c["resources"]
        for section in ("requests", "limits"):
            assert resources[section]["cpu"] and resources[section]["memory"], (overlay, section)
        assert c["securityContext"]["runAsNonRoot"] is True
        assert predictor["serviceAccountName"] == "kftune-serving"
        # credentials only through the ServiceAccount's Secret: nothing of them in the InferenceService
        assert not re.search(r"(?i)access.?key|secret|password|token|aws_|valueFrom", json.dumps(isvc)), overlay
        [ref] = one(docs, "ServiceAccount", predictor["serviceAccountName"])["secrets"]
        secret = one(docs, "Secret", ref["name"])
        notes = secret["metadata"]["annotations"]
        assert notes["serving.kserve.io/s3-endpoint"] == "minio-service.kubeflow.svc.cluster.local:9000"  # no scheme
        assert notes["serving.kserve.io/s3-usehttps"] == "0" and notes["serving.kserve.io/s3-region"]
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert set(data) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # the names KServe reads
        assert all(v.startswith("REPLACE-ME") for v in data.values()), "placeholders only: nothing real is committed"


@needs_kubectl
def test_secret_is_a_placeholder_with_kftunes_variable_names(built):
    from kftune.io.s3_store import S3Settings

    secret = one(built["gpu"], "Secret", "kftune-s3")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(data) == {"KFTUNE_S3_ENDPOINT", "KFTUNE_S3_ACCESS_KEY", "KFTUNE_S3_SECRET_KEY"}
    assert "REPLACE-ME" in data["KFTUNE_S3_ACCESS_KEY"] and "REPLACE-ME" in data["KFTUNE_S3_SECRET_KEY"]
    settings = S3Settings.from_env(data)  # the values are well-formed for kftune's S3 client
    assert settings.secure is False


# -- schedules ---------------------------------------------------------------------------------------

@needs_kubectl
def test_scheduled_workflow_runs_the_example_on_the_overlays_pipeline(built):
    import json

    from kftune.core.spec import job_to_dict
    from kftune.io.specfile import load_spec

    example = json.dumps(job_to_dict(load_spec(ROOT / "examples/trec6.yaml")), sort_keys=True)
    for overlay, docs in built.items():
        swf = one(docs, "ScheduledWorkflow")
        assert swf["spec"]["pipelineName"] == f"kftune-{overlay}"
        params = {p["name"]: p["value"] for p in swf["spec"]["workflow"]["parameters"]}
        assert params["spec"] == example, (
            "the ScheduledWorkflow's spec parameter is not examples/trec6.yaml; set its value to the output of: "
            "python -c 'import json; from kftune.io.specfile import load_spec; from kftune.core.spec import "
            "job_to_dict; print(json.dumps(json.dumps(job_to_dict(load_spec(\"examples/trec6.yaml\")), "
            "sort_keys=True)))'")
        assert all(isinstance(v, str) for v in params.values())
    try:
        from kftune.pipelines.pipeline import pipeline_name
    except ImportError:  # kftune.pipelines installs with the package (pyproject's package-dir)
        return
    assert {one(docs, "ScheduledWorkflow")["spec"]["pipelineName"] for docs in built.values()} == {
        pipeline_name("cpu"), pipeline_name("gpu")}


@needs_kubectl
def test_cronjob_runs_kftune_submit_with_arguments_it_accepts(built):
    import re

    from kftune.commands.submit import build_parser

    for overlay, docs in built.items():
        cron = one(docs, "CronJob")
        pod = pod_specs(cron)[0]
        c = pod["containers"][0]
        assert c["command"] == ["kftune", "submit"]
        env = {e["name"] for e in c.get("env", [])}
        for ref in re.findall(r"\$\((\w+)\)", " ".join(c["args"])):
            assert ref in env, f"$({ref}) is not an env var of the container"
        args = build_parser().parse_args(c["args"])  # the real CLI's parser; exits on a bad flag
        assert args.variant == overlay
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts[str(Path(args.spec).parent)] == "spec" and Path(args.spec).name == "spec.yaml"
        token = Path(args.token_file)
        projected = next(v for v in pod["volumes"] if v["name"] == mounts[str(token.parent)])["projected"]
        assert projected["sources"][0]["serviceAccountToken"] == {
            "path": token.name, "audience": "pipelines.kubeflow.org", "expirationSeconds": 7200}
        swf = one(docs, "ScheduledWorkflow")
        assert args.store == {p["name"]: p["value"] for p in swf["spec"]["workflow"]["parameters"]}["store"]
        assert cron["spec"]["suspend"] is True and swf["spec"]["enabled"] is False  # nothing starts by surprise


# -- generated files are current ---------------------------------------------------------------------

def test_spec_configmap_file_is_the_example():
    assert (MANIFESTS / "base/katib/spec.yaml").read_bytes() == (ROOT / "examples/trec6.yaml").read_bytes(), (
        "manifests/base/katib/spec.yaml differs from examples/trec6.yaml: cp examples/trec6.yaml manifests/base/katib/spec.yaml")


def test_committed_experiment_is_what_kftune_katib_prints(tmp_path, monkeypatch, capsys):
    from kftune.commands.katib import main

    monkeypatch.delenv("KFTUNE_IMAGE_REGISTRY", raising=False)
    monkeypatch.chdir(ROOT)
    target = tmp_path / "experiment.yaml"
    assert main(["examples/trec6.yaml", "-o", str(target)]) == 0
    capsys.readouterr()
    assert target.read_text() == (MANIFESTS / "base/katib/experiment.yaml").read_text(), (
        "manifests/base/katib/experiment.yaml is stale: kftune katib examples/trec6.yaml > manifests/base/katib/experiment.yaml")


# -- the bucket Job's command, run for real against an S3 server -------------------------------------

@needs_kubectl
@pytest.mark.integration
def test_bucket_job_command_creates_the_bucket(built, s3_env):
    import uuid

    from kftune.io.s3_store import S3Store

    job = one(built["gpu"], "Job", "kftune-create-bucket")
    c = job["spec"]["template"]["spec"]["containers"][0]
    bucket = f"kftune-test-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, **{e["name"]: e["value"] for e in c["env"]}, "KFTUNE_BUCKET": f"s3://{bucket}"}
    argv = [sys.executable if c["command"][0] == "python" else c["command"][0], *c["command"][1:]]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"s3://{bucket} created"
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert again.stdout.strip() == f"s3://{bucket} exists already"
    store = S3Store.from_uri(f"s3://{bucket}")
    store.put_bytes("x", b"1")
    assert store.get_bytes("x") == b"1"
    store.delete("x")
    store._client.remove_bucket(bucket)
