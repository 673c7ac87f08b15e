"""The KServe edge: create or patch an ``InferenceService``, and wait until it is ready.

The ``deploy`` step's I/O. Everything goes through three methods of the custom-objects API
(:class:`InferenceServiceApi`, a part of ``kubernetes.client.CustomObjectsApi``) on the path
``/apis/serving.kserve.io/v1beta1/namespaces/<ns>/inferenceservices[/<name>]``::

    deployer = KServeDeployer(load_api())                     # in-cluster config, else kubeconfig
    applied = deployer.apply(manifest, "kubeflow-user")       # GET; 404: POST; else merge-PATCH
    ready = deployer.wait_until_ready(applied.name, applied.namespace, timeout=600)

:meth:`KServeDeployer.apply` reads the InferenceService first (GET): when there is none (404 for the
object) it creates it (POST, the whole body); when there is one it patches it with a JSON merge
patch (PATCH, ``Content-Type: application/merge-patch+json``, :func:`kftune.core.inference_service.merge_patch`),
which replaces the predictor's container and leaves what others set (annotations, replicas) alone.
A create that loses a race to another (409) patches instead. Those three verbs are all the step needs:
``manifests/base/rbac/deployer-role.yaml`` grants exactly them (:data:`VERBS`). Waiting polls with GET
(no watch, so no ``list``/``watch`` permission): ready is KServe's ``Ready`` condition for the current
generation; a model that KServe says failed to load ends the wait at once.

Errors (all :class:`KServeError`, a :class:`~kftune.core.errors.KftuneError`): a 403 names the Role
to apply (:class:`KServePermissionError`); a 404 for the resource path itself says KServe is not
installed (:class:`KServeNotInstalledError`); 401, a missing namespace, a rejected body (400/422, an
admission webhook) and an unreachable API server each say so; :class:`InferenceServiceNotReadyError`
carries what KServe reported when the wait ends without readiness.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from kftune.core.errors import KftuneError
from kftune.core.inference_service import GROUP, KIND, PLURAL, VERSION, merge_patch, model_failure, readiness
from kftune.io import kube

log = logging.getLogger(__name__)

RESOURCE = f"{PLURAL}.{GROUP}"
#: The verbs the deploy step uses; the run's ServiceAccount needs exactly these on inferenceservices.serving.kserve.io.
VERBS = ("get", "create", "patch")
#: The Role the manifests define for the deploy step, and where.
DEPLOYER_ROLE = "kftune-deployer"
DEPLOYER_ROLE_FILE = "manifests/base/rbac/deployer-role.yaml"
#: The field manager kftune's writes are recorded under (``metadata.managedFields``).
FIELD_MANAGER = "kftune"
MERGE_PATCH = "application/merge-patch+json"


@runtime_checkable
class InferenceServiceApi(Protocol):
    """The part of ``kubernetes.client.CustomObjectsApi`` the deployer calls (same names, same
    arguments; each returns the decoded JSON object or raises ``kubernetes.client.ApiException``).
    The real client sends ``patch_namespaced_custom_object``'s body as ``application/merge-patch+json``."""

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                     name: str, **kwargs: Any) -> Any: ...

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: Any, **kwargs: Any) -> Any: ...

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                       name: str, body: Any, **kwargs: Any) -> Any: ...


class KServeError(KftuneError, RuntimeError):
    """Anything that stops a deployment: API errors, a service that does not turn ready."""


class KServePermissionError(KServeError):
    """RBAC (403) or authentication (401) refused a call."""


class KServeNotInstalledError(KServeError):
    """The API server does not serve ``inferenceservices.serving.kserve.io`` (no KServe CRDs)."""


class InferenceServiceNotReadyError(KServeError, TimeoutError):
    """The InferenceService did not turn ready in time, or KServe says its model failed to load."""

    def __init__(self, message: str, *, name: str, namespace: str, status: str):
        super().__init__(message)
        self.name, self.namespace, self.status = name, namespace, status


@dataclass(frozen=True)
class Applied:
    """What :meth:`KServeDeployer.apply` did: ``action`` is ``"created"`` or ``"patched"``; ``object`` is
    the InferenceService as the API server returned it."""

    name: str
    namespace: str
    action: str
    object: dict[str, Any]


def load_api(kubeconfig: str | None = None, context: str | None = None) -> InferenceServiceApi:
    """A ``kubernetes.client.CustomObjectsApi`` from in-cluster config, else the kubeconfig
    (:func:`kftune.io.kube.load_custom_objects_api`)."""
    try:
        return kube.load_custom_objects_api(kubeconfig, context)
    except kube.NoCredentialsError as exc:
        raise KServeError(str(exc)) from None


def translate_error(exc: BaseException, verb: str, namespace: str, name: str | None = None,
                    host: str | None = None) -> KServeError:
    """A :class:`KServeError` that says what went wrong and what to do, for an error the kubernetes
    client raised while doing ``verb`` on ``inferenceservices.serving.kserve.io`` in ``namespace``."""
    from kubernetes.client.exceptions import ApiException

    what = f"{RESOURCE} {name!r}" if name else RESOURCE
    where = f"in namespace {namespace!r}"
    if not isinstance(exc, ApiException):
        at = f" at {host}" if host else ""
        return KServeError(f"cannot reach the Kubernetes API{at} to {verb} {what} {where}: {type(exc).__name__}: {exc}")
    code, message, status = exc.status, kube.server_message(exc), kube.status_body(exc)
    details = status.get("details") or {}
    if code == 401:
        return KServePermissionError(
            f"the Kubernetes API refused the credentials (401 Unauthorized) to {verb} {what} {where}: {message}. "
            "Check the kubeconfig context or the pod's ServiceAccount token.")
    if code == 403 and "admission webhook" in message:
        return KServeError(f"KServe rejected the InferenceService ({verb} {what} {where}): {message}")
    if code == 403:
        user = re.search(r'User "([^"]+)"', message)
        who = user.group(1) if user else f"system:serviceaccount:{namespace}:<service account>"
        return KServePermissionError(
            f"RBAC denied: cannot {verb} {RESOURCE} {where} (403 Forbidden: {message}). Apply the Role "
            f"{DEPLOYER_ROLE} ({DEPLOYER_ROLE_FILE}: verbs {list(VERBS)} on {RESOURCE}) in {namespace!r} and bind "
            "it to the ServiceAccount the server named (a pipeline run's pods use the run's ServiceAccount, e.g. "
            f"pipeline-runner or default-editor); check with `kubectl auth can-i {verb} {RESOURCE} -n {namespace} "
            f"--as {who}`.")
    if code == 404:
        if details.get("kind") == "namespaces" or message.startswith("namespaces "):
            return KServeError(f"namespace {namespace!r} does not exist ({verb} {what}): {message}")
        return KServeNotInstalledError(
            f"KServe is not installed: no {RESOURCE} CRD (the API server answered 404 for "
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}: {message}). Install KServe "
            "(Kubeflow includes it) or serve the model with `kftune serve` elsewhere.")
    if code in (400, 422):
        return KServeError(f"the API server rejected the InferenceService ({verb} {what} {where}, {code}): {message}")
    return KServeError(f"Kubernetes API error {code} ({getattr(exc, 'reason', '')}) while trying to {verb} {what} "
                       f"{where}: {message}")


def _object_missing(exc: BaseException, name: str) -> bool:
    """A 404 that says this very InferenceService does not exist (not a missing CRD or namespace)."""
    status = kube.status_body(exc)
    details = status.get("details") or {}
    return (getattr(exc, "status", None) == 404 and details.get("name") == name
            and details.get("kind") in (PLURAL, KIND) and details.get("group", GROUP) == GROUP)


class KServeDeployer:
    """Create or patch InferenceServices and wait for them through an :class:`InferenceServiceApi`.

    ``request_timeout``: the timeout of each request (seconds); ``poll_interval``: seconds between
    two reads while waiting. ``clock``/``sleep`` are injectable for tests.
    """

    def __init__(self, api: InferenceServiceApi, *, request_timeout: float = 30.0, poll_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if request_timeout <= 0 or poll_interval <= 0:
            raise ValueError(f"request_timeout and poll_interval must be > 0, got {request_timeout}, {poll_interval}")
        self.api = api
        self.request_timeout = request_timeout
        self.poll_interval = poll_interval
        self._clock, self._sleep = clock, sleep

    def _call(self, verb: str, namespace: str, name: str | None, fn: Callable[..., Any], *args: Any,
              **kwargs: Any) -> Any:
        try:
            return fn(GROUP, VERSION, namespace, PLURAL, *args, _request_timeout=self.request_timeout, **kwargs)
        except Exception as exc:
            if kube.is_api_or_transport_error(exc):
                raise translate_error(exc, verb, namespace, name, kube.api_host(self.api)) from exc
            raise

    def get(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The InferenceService as the server has it, or ``None`` when there is none of that name."""
        try:
            return self._call("get", namespace, name, self.api.get_namespaced_custom_object, name)
        except KServeError as exc:
            if exc.__cause__ is not None and _object_missing(exc.__cause__, name):
                return None
            raise

    def apply(self, manifest: Mapping[str, Any], namespace: str) -> Applied:
        """Make the InferenceService ``manifest`` exist in ``namespace``: create it when there is none of
        its name, else merge-patch the existing one (see the module docstring)."""
        name = str(manifest["metadata"]["name"])
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
        if self.get(name, namespace) is None:
            try:
                created = self._call("create", namespace, name, self.api.create_namespaced_custom_object, body,
                                     field_manager=FIELD_MANAGER)
            except KServeError as exc:
                if getattr(exc.__cause__, "status", None) != 409:
                    raise
                log.info("InferenceService %s/%s was created meanwhile: patching it", namespace, name)
            else:
                log.info("created InferenceService %s/%s", namespace, name)
                return Applied(name, namespace, "created", created)
        patched = self._call("patch", namespace, name, self.api.patch_namespaced_custom_object, name,
                             merge_patch(body), field_manager=FIELD_MANAGER)
        log.info("patched InferenceService %s/%s", namespace, name)
        return Applied(name, namespace, "patched", patched)

    def wait_until_ready(self, name: str, namespace: str, timeout: float) -> dict[str, Any]:
        """Read the InferenceService every ``poll_interval`` seconds until it is ready (return it), KServe
        says its model failed to load, or ``timeout`` seconds pass (raise
        :class:`InferenceServiceNotReadyError` with what KServe reported last). Transient API errors are
        retried until the deadline."""
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        deadline = self._clock() + timeout
        why, last = "not read yet", None
        while True:
            try:
                obj = self.get(name, namespace)
            except KServeError as exc:
                if not kube.is_transient(exc.__cause__ or exc) or self._clock() >= deadline:
                    raise
                log.warning("reading InferenceService %s/%s failed (%s); retrying", namespace, name, exc)
                obj = last
            else:
                if obj is None:
                    raise KServeError(f"InferenceService {namespace}/{name} was deleted while waiting for it")
                last = obj
                ready, now = readiness(obj)
                if ready:
                    log.info("InferenceService %s/%s is ready", namespace, name)
                    return obj
                if now != why:
                    log.info("InferenceService %s/%s not ready yet: %s", namespace, name, now)
                    why = now
                failure = model_failure(obj)
                if failure:
                    raise InferenceServiceNotReadyError(
                        f"InferenceService {namespace}/{name} will not turn ready: {why}. See `kubectl describe "
                        f"{RESOURCE} {name} -n {namespace}` and the predictor pod's logs (storage-initializer and "
                        f"kserve-container)", name=name, namespace=namespace, status=why)
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise InferenceServiceNotReadyError(
                    f"InferenceService {namespace}/{name} was not ready within {timeout:g} s ({why}); it stays in "
                    f"the cluster: see `kubectl get {RESOURCE} {name} -n {namespace}` and the predictor pod's logs",
                    name=name, namespace=namespace, status=why)
            self._sleep(min(self.poll_interval, remaining))
