"""A KServe ``InferenceService`` (``serving.kserve.io/v1beta1``) that serves a kftune model: the pure mapping.

:func:`inference_service` returns the object as a plain dict; the ``deploy`` step
(:mod:`kftune.steps.deploy`) creates or patches it, and ``manifests/base/serving/inferenceservice.yaml``
is the same body for the example run (``tests/test_manifests.py`` compares the two). What it holds:

- a *custom predictor*: one container named ``kserve-container`` (the name KServe looks for) running
  the serving image (``kftune._image.image(kind, serving=True)``) as
  ``kftune serve --model /mnt/models/model.pt --name <service> --host 0.0.0.0 --port 8080``;
- the model's URI in the container's ``STORAGE_URI`` variable: that is where a custom predictor gives
  KServe its storage URI (the predictor has no ``storageUri`` field of its own; KServe's
  ``CustomPredictor.GetStorageUri`` reads this variable). KServe's storage initializer downloads it to
  ``/mnt/models`` before the server starts: a single object (``s3://.../final/model.pt``) lands as
  ``/mnt/models/model.pt``, a prefix as the files under it;
- ``serviceAccountName``: the ServiceAccount whose Secret holds the object store's credentials and
  KServe's ``serving.kserve.io/s3-*`` annotations (``manifests/base/serving``). No credential is ever
  in the object itself;
- port 8080 (``http1``), readiness on ``/v2/health/ready`` and liveness on ``/v2/health/live`` (the
  Open Inference Protocol's health routes), CPU and memory requests and limits, a non-root container;
- with ``gpus`` > 0: an ``nvidia.com/gpu`` limit and a toleration of the GPU nodes' taint (and the
  given node selector), as the GPU overlay and the GPU pipeline's trials have.

:func:`merge_patch` turns the object into the JSON merge patch (RFC 7386) that makes an existing
InferenceService equal to it in everything kftune sets, leaving fields others set alone.
No I/O, no Kubernetes client here.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from kftune.core.errors import Problem

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"
#: The container name KServe recognizes as the predictor's model server (``constants.InferenceServiceContainerName``).
CONTAINER_NAME = "kserve-container"
#: The variable that carries a custom predictor's storage URI (``constants.CustomSpecStorageUriEnvVarKey``).
STORAGE_URI_ENV = "STORAGE_URI"
#: Where KServe's storage initializer puts the model (``constants.DefaultModelLocalMountPath``).
MODEL_MOUNT = "/mnt/models"
PORT = 8080
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
#: The ServiceAccount of the manifests (manifests/base/serving), whose Secret holds the S3 credentials.
DEFAULT_SERVICE_ACCOUNT = "kftune-serving"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
LABELS = {"app.kubernetes.io/part-of": "kftune", "app.kubernetes.io/component": "serving"}
#: URI schemes KServe's default storage initializer downloads from (its ClusterStorageContainer formats).
STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "http://", "hdfs://", "webhdfs://")
#: Longest service name: the predictor's Knative service, ``<name>-predictor``, must fit a 63-character
#: DNS label.
MAX_NAME = 63 - len("-predictor")

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# A Kubernetes resource quantity: "500m", "2", "1.5", "4Gi", "512Mi", "1e3".
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]+)?$")


@dataclass(frozen=True)
class Resources:
    """CPU and memory of the model server (Kubernetes quantities). The defaults fit the example
    models (a CNN with an n-gram bag: about 0.5 GB resident while serving) with room for batches."""

    cpu: str = "1"
    memory: str = "2Gi"
    cpu_limit: str = "2"
    memory_limit: str = "4Gi"

    def problems(self, path: str = "resources") -> list[Problem]:
        out = []
        for name in ("cpu", "memory", "cpu_limit", "memory_limit"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _QUANTITY.match(value):
                out.append(Problem(f"{path}.{name}", f"{value!r} is not a Kubernetes quantity such as "
                                                     f"{'500m or 2' if 'cpu' in name else '512Mi or 4Gi'}"))
        return out


def name_problems(name: Any, path: str = "name") -> list[Problem]:
    """What is wrong with ``name`` as an InferenceService name (empty when it is usable)."""
    if not isinstance(name, str) or not name:
        return [Problem(path, "missing: give the InferenceService's name, e.g. trec6")]
    if len(name) > MAX_NAME or not _DNS_1035.match(name):
        return [Problem(path, f"{name!r} cannot name an InferenceService: use at most {MAX_NAME} lower-case letters, "
                              "digits and '-', starting with a letter and ending with a letter or digit "
                              f"(KServe adds -predictor to it for a DNS name), e.g. {service_name_for(name)!r}")]
    return []


def namespace_problems(namespace: Any, path: str = "namespace") -> list[Problem]:
    """What is wrong with ``namespace`` (empty or a DNS-1123 label)."""
    if namespace and (not isinstance(namespace, str) or len(namespace) > 63 or not _DNS_1123.match(namespace)):
        return [Problem(path, f"{namespace!r} is not a namespace name (lower-case letters, digits and '-')")]
    return []


def storage_uri_problems(uri: Any, path: str = "model") -> list[Problem]:
    """What is wrong with ``uri`` as a storage URI KServe can download (empty when it is usable)."""
    if not isinstance(uri, str) or not uri.strip():
        return [Problem(path, "missing: give the model's URI in the object store, e.g. "
                              "s3://kftune/tuning/runs/<run>/final/model.pt")]
    if not uri.startswith(STORAGE_SCHEMES):
        return [Problem(path, f"{uri!r} is not in an object store KServe can download from: a pod on the cluster "
                              f"cannot read a local path. Use {', '.join(s for s in STORAGE_SCHEMES[:3])}... "
                              "(a run with --store s3://bucket/prefix puts its final model at "
                              "s3://bucket/prefix/runs/<run>/final/model.pt)")]
    rest = uri.split("://", 1)[1].strip("/")
    if not rest:
        return [Problem(path, f"{uri!r} names no bucket or object")]
    return []


def service_name_for(text: str) -> str:
    """A valid InferenceService name made from ``text`` (e.g. a TuningJob's name): lower-case, other
    characters replaced by ``-``, starting with a letter (``kftune-`` is put in front otherwise), at
    most :data:`MAX_NAME` characters. ``"TREC_6 demo"`` -> ``"trec-6-demo"``."""
    name = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"kftune-{name}".rstrip("-")
    return name[:MAX_NAME].rstrip("-")


def model_path(storage_uri: str) -> str:
    """Where the model is inside the container once the storage initializer has run: a ``.pt`` object
    lands as ``/mnt/models/<its file name>``; anything else is a prefix whose files land under
    ``/mnt/models`` (the server then finds ``model.pt`` there)."""
    base = posixpath.basename(storage_uri.rstrip("/"))
    return f"{MODEL_MOUNT}/{base}" if base.endswith(".pt") and not storage_uri.endswith("/") else MODEL_MOUNT


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": PORT}, "periodSeconds": period, "timeoutSeconds": 5,
            "failureThreshold": failures}


def inference_service(name: str, storage_uri: str, image: str, *, namespace: str | None = None,
                      service_account: str = DEFAULT_SERVICE_ACCOUNT, gpus: int = 0,
                      resources: Resources = Resources(), node_selector: Mapping[str, str] | None = None,
                      tolerations: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The InferenceService that serves the model at ``storage_uri`` with ``image`` (see the module
    docstring). ``tolerations`` default to the GPU nodes' taint when ``gpus`` > 0, none otherwise;
    ``node_selector`` and ``tolerations`` are left out when empty. Inputs are not checked here: the
    step checks them with :func:`name_problems`, :func:`storage_uri_problems` and
    :meth:`Resources.problems` first."""
    limits: dict[str, Any] = {"cpu": resources.cpu_limit, "memory": resources.memory_limit}
    if gpus:
        limits[GPU_RESOURCE] = int(gpus)
    container = {
        "name": CONTAINER_NAME,
        "image": image,
        "command": ["kftune", "serve"],
        "args": ["--model", model_path(storage_uri), "--name", name, "--host", "0.0.0.0", "--port", str(PORT)],
        "env": [{"name": STORAGE_URI_ENV, "value": storage_uri}],
        "ports": [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}],
        # readiness turns true once the model is loaded; liveness gives a slow first load time to finish
        "readinessProbe": _probe(READY_PATH, 10, 3),
        "livenessProbe": {**_probe(LIVE_PATH, 20, 3), "initialDelaySeconds": 30},
        "resources": {"requests": {"cpu": resources.cpu, "memory": resources.memory}, "limits": limits},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    predictor: dict[str, Any] = {"serviceAccountName": service_account, "containers": [container]}
    if node_selector:
        predictor["nodeSelector"] = {str(k): str(v) for k, v in node_selector.items()}
    if tolerations is None:
        tolerations = [GPU_TOLERATION] if gpus else []
    if tolerations:
        predictor["tolerations"] = [dict(t) for t in tolerations]
    metadata: dict[str, Any] = {"name": name, "labels": dict(LABELS)}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": {"predictor": predictor}}


#: Predictor fields :func:`inference_service` sets only sometimes: a patch clears them when absent, so that
#: a GPU deployment patched into a CPU one keeps no GPU node selector or toleration.
OPTIONAL_PREDICTOR_FIELDS = ("nodeSelector", "tolerations")


def merge_patch(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (``application/merge-patch+json``) that brings an existing InferenceService
    to ``manifest``: its labels and its predictor (the container list is replaced as a whole; a field
    of :data:`OPTIONAL_PREDICTOR_FIELDS` that ``manifest`` lacks is set to ``null``, i.e. removed).
    Fields kftune does not set (annotations, replicas, a transformer, ...) are left as they are."""
    predictor = dict(manifest["spec"]["predictor"])
    for key in OPTIONAL_PREDICTOR_FIELDS:
        predictor.setdefault(key, None)
    return {"metadata": {"labels": dict(manifest["metadata"].get("labels") or {})},
            "spec": {"predictor": predictor}}


def service_url(obj: Mapping[str, Any]) -> str | None:
    """The InferenceService's URL as KServe reports it (``status.url``, else ``status.address.url``)."""
    status = obj.get("status") or {}
    url = status.get("url") or (status.get("address") or {}).get("url")
    return str(url) if url else None


def readiness(obj: Mapping[str, Any]) -> tuple[bool, str]:
    """``(ready, why)``: ready when the ``Ready`` condition is ``"True"`` for the object's current
    generation (``status.observedGeneration`` >= ``metadata.generation`` when KServe reports it); ``why``
    says what KServe reports otherwise (the conditions that are not true, the model's failure)."""
    status = obj.get("status") or {}
    conditions = {str(c.get("type")): c for c in status.get("conditions") or [] if isinstance(c, Mapping)}
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    current = generation is None or observed is None or int(observed) >= int(generation)
    ready = str(conditions.get("Ready", {}).get("status")) == "True"
    if ready and current:
        return True, "Ready"
    parts = []
    if not current:
        parts.append(f"KServe has not seen generation {generation} yet (observed {observed})")
    for kind, c in conditions.items():
        if str(c.get("status")) != "True":
            text = f"{kind}={c.get('status')}"
            if c.get("reason") or c.get("message"):
                text += f" ({': '.join(str(x) for x in (c.get('reason'), c.get('message')) if x)})"
            parts.append(text)
    failure = model_failure(obj)
    if failure:
        parts.append(failure)
    return False, "; ".join(parts) or "no status yet"


#: KServe's model transition states that will not turn ready without a change to the InferenceService.
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")


def model_failure(obj: Mapping[str, Any]) -> str | None:
    """KServe's word that the model cannot load (``status.modelStatus``), or ``None``."""
    model = (obj.get("status") or {}).get("modelStatus") or {}
    info = model.get("lastFailureInfo") or {}
    if model.get("transitionStatus") in FAILED_TRANSITIONS or (model.get("states") or {}).get(
            "activeModelState") == "FailedToLoad":
        detail = ": ".join(str(x) for x in (info.get("reason"), info.get("message")) if x)
        return f"the model failed to load ({model.get('transitionStatus') or 'FailedToLoad'}" + (
            f": {detail})" if detail else ")")
    return None
