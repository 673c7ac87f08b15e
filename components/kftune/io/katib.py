"""The Katib edge: create an ``Experiment``, follow it to the end, read the best trial, clean up.

Katib as the search's other backend: instead of running the trials itself, kftune hands a Katib
``Experiment`` (``kubeflow.org/v1beta1``, rendered by :mod:`kftune.core.katib_export`) to the cluster and
waits for Katib's answer. ``kftune katib SPEC.yaml --apply [--watch]`` (:mod:`kftune.commands.katib`) does
that from a shell or a pod; in code::

    launcher = KatibLauncher(load_api())              # in-cluster config, else kubeconfig
    result = launcher.run(experiment, "kubeflow-user", timeout=6 * 3600, delete="on_success")
    result.assignment        # {"learning_rate": 0.0123, "hidden_size": 256}  (typed values)
    result.objective_value   # 0.934

Everything goes through the custom-objects API (:class:`CustomObjectsApi`, the four methods of
``kubernetes.client.CustomObjectsApi`` used here), on the path
``/apis/kubeflow.org/v1beta1/namespaces/<ns>/experiments[/<name>]``.

Following an Experiment (:meth:`KatibLauncher.wait_for_experiment`): one GET, then a watch on that
one object (``fieldSelector=metadata.name=<name>`` from the GET's ``resourceVersion``, each watch at
most ``watch_timeout`` seconds and never past the deadline), then a fresh GET whenever a watch ends,
expires (410 Gone) or drops, so an event lost between two watches cannot be missed. With
``watch=False`` it polls with a GET every ``poll_interval`` seconds instead. The Experiment is
finished when ``status.conditions`` has ``Succeeded`` or ``Failed`` with status ``"True"`` (Katib's
own test, ``Experiment.IsSucceeded``/``IsFailed``). Transient API errors while waiting (5xx, 429,
a dropped connection) are logged and retried until the deadline; every other error ends the wait.

What the errors say (all :class:`KatibError`, a :class:`~kftune.core.errors.KftuneError`):

- :class:`KatibNotInstalledError`: a 404 for the resource path itself, i.e. the API server has no
  ``experiments.kubeflow.org`` CRD ("Katib is not installed: ...").
- :class:`KatibPermissionError`: a 403 from RBAC (names the verb, the resource, the namespace, the
  identity the server saw, and the Role the ServiceAccount needs) or a 401.
- :class:`ExperimentFailedError`: the ``Failed`` condition's reason and message (e.g. Katib's
  "Experiment has failed because max failed count has reached") and the trial counts.
- :class:`ExperimentTimeoutError`: the deadline passed; the last status seen, and whether the
  Experiment was left running.
- :class:`ExperimentNotFoundError`: the Experiment vanished (deleted by someone) while waiting.

The best trial is ``status.currentOptimalTrial``: its ``parameterAssignments`` (strings in Katib)
are typed with the Experiment's own ``spec.parameters`` (``int``, ``float``, ``str``; see
:meth:`kftune.core.space.SearchSpace.assignment_from_katib`), and the objective value is read from
``observation.metrics`` with the objective's metric strategy (``max`` when maximizing, ``min`` when
minimizing, unless ``spec.objective.metricStrategies`` says otherwise), as Katib's controller does.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Mapping, Protocol, runtime_checkable

from kftune._progress import Progress
from kftune.core.errors import ConfigError, KftuneError
from kftune.io import kube
from kftune.io.kube import SERVICEACCOUNT_NAMESPACE_FILE, current_namespace  # noqa: F401 - part of this API

log = logging.getLogger(__name__)

GROUP = "kubeflow.org"
VERSION = "v1beta1"
PLURAL = "experiments"
KIND = "Experiment"
CRD_NAME = f"{PLURAL}.{GROUP}"
#: The verbs the launcher uses; the ServiceAccount's Role must grant them on experiments.kubeflow.org.
VERBS = ("create", "get", "list", "watch", "delete")
#: The ServiceAccount the manifests create for the launcher (manifests/base/rbac).
LAUNCHER_SERVICE_ACCOUNT = "kftune-launcher"

DeletePolicy = Literal["never", "on_success", "always"]
IfExists = Literal["fail", "follow"]


@runtime_checkable
class CustomObjectsApi(Protocol):
    """The part of ``kubernetes.client.CustomObjectsApi`` the launcher calls (same names, same
    arguments; each returns the decoded JSON object, or raises ``kubernetes.client.ApiException``).

    ``list_namespaced_custom_object`` is only called through ``kubernetes.watch.Watch`` (with
    ``watch=True``); an implementation that cannot stream is used with ``watch=False``."""

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: Any, **kwargs: Any) -> Any: ...

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                     name: str, **kwargs: Any) -> Any: ...

    def list_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                      **kwargs: Any) -> Any: ...

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        name: str, **kwargs: Any) -> Any: ...


# -- errors ----------------------------------------------------------------------------------------


class KatibError(KftuneError, RuntimeError):
    """Anything that stops the Katib backend: API errors, a failed or lost Experiment, a timeout."""


class KatibNotInstalledError(KatibError):
    """The API server does not serve ``experiments.kubeflow.org`` (no Katib CRDs)."""


class KatibPermissionError(KatibError):
    """RBAC (403) or authentication (401) refused a call."""


class ExperimentNotFoundError(KatibError):
    """The Experiment does not exist (any more)."""


class ExperimentFailedError(KatibError):
    """The Experiment ended with its ``Failed`` condition true."""

    def __init__(self, message: str, *, name: str, namespace: str, reason: str, condition_message: str):
        super().__init__(message)
        self.name, self.namespace = name, namespace
        self.reason, self.condition_message = reason, condition_message


class ExperimentTimeoutError(KatibError, TimeoutError):
    """The Experiment did not finish before the deadline."""

    def __init__(self, message: str, *, name: str, namespace: str, timeout: float):
        super().__init__(message)
        self.name, self.namespace, self.timeout = name, namespace, timeout


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricValue:
    """One metric of an observation: Katib keeps its ``min``, ``max`` and ``latest`` (``None`` when
    Katib reports ``unavailable`` or a value that is not a number)."""

    name: str
    min: float | None
    max: float | None
    latest: float | None


@dataclass(frozen=True)
class ExperimentResult:
    """A succeeded Experiment's answer: the best trial, its typed assignment and its metrics."""

    name: str
    namespace: str
    reason: str                          # the Succeeded condition's reason, e.g. ExperimentGoalReached
    message: str
    best_trial_name: str
    assignment: dict[str, Any]           # parameter name -> int | float | str
    objective_metric_name: str
    objective_type: str                  # "maximize" | "minimize"
    objective_value: float | None        # read with the objective's metric strategy
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    trials: int = 0
    trials_succeeded: int = 0
    trials_failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the next pipeline step or a report)."""
        return asdict(self)


# -- reading an Experiment object (pure) -----------------------------------------------------------


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Condition type -> condition (the last one of each type wins)."""
    out: dict[str, Mapping[str, Any]] = {}
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(condition, Mapping) and "type" in condition:
            out[str(condition["type"])] = condition
    return out


def experiment_phase(obj: Mapping[str, Any]) -> str:
    """``"Succeeded"``, ``"Failed"``, or the newest true condition (``Running``, ``Restarting``,
    ``Created``), or ``"Pending"`` when the controller has not written a status yet."""
    conditions = _conditions(obj)
    for terminal in ("Succeeded", "Failed"):
        if str(conditions.get(terminal, {}).get("status")) == "True":
            return terminal
    for kind in ("Restarting", "Running", "Created"):
        if str(conditions.get(kind, {}).get("status")) == "True":
            return kind
    return "Pending"


def _float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _summary(obj: Mapping[str, Any]) -> str:
    status = obj.get("status") or {}
    parts = [f"{_int(status.get('trials'))} trials"]
    for key, word in (("trialsRunning", "running"), ("trialsPending", "pending"),
                      ("trialsSucceeded", "succeeded"), ("trialsFailed", "failed"),
                      ("trialsEarlyStopped", "early stopped"), ("trialsKilled", "killed")):
        if _int(status.get(key)):
            parts.append(f"{_int(status.get(key))} {word}")
    best = (status.get("currentOptimalTrial") or {})
    metric = ((obj.get("spec") or {}).get("objective") or {}).get("objectiveMetricName")
    value = _objective_value(obj, best) if best.get("bestTrialName") else None
    if value is not None:
        parts.append(f"best {metric}={value:g} ({best['bestTrialName']})")
    return ", ".join(parts)


def _strategy(spec: Mapping[str, Any], metric: str) -> str:
    objective = spec.get("objective") or {}
    for item in objective.get("metricStrategies") or []:
        if item.get("name") == metric and item.get("value"):
            return str(item["value"])
    return "min" if objective.get("type") == "minimize" else "max"


def _objective_value(obj: Mapping[str, Any], optimal: Mapping[str, Any]) -> float | None:
    """The objective metric of ``optimal`` read as Katib's controller does: the strategy's field,
    falling back to ``latest`` when that field is unavailable."""
    spec = obj.get("spec") or {}
    metric = (spec.get("objective") or {}).get("objectiveMetricName")
    for item in ((optimal.get("observation") or {}).get("metrics") or []):
        if item.get("name") == metric:
            strategy = _strategy(spec, metric)
            value = _float(item.get(strategy)) if strategy in ("min", "max", "latest") else None
            return value if value is not None else _float(item.get("latest"))
    return None


def experiment_result(obj: Mapping[str, Any]) -> ExperimentResult:
    """Read a succeeded Experiment's best trial (see the module docstring for the typing rules).

    Raises :class:`KatibError` when there is no optimal trial (no trial reported the objective
    metric) or when an assignment does not read as its parameter's type.
    """
    meta = obj.get("metadata") or {}
    name, namespace = str(meta.get("name", "")), str(meta.get("namespace", ""))
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    objective = spec.get("objective") or {}
    metric = str(objective.get("objectiveMetricName", ""))
    succeeded = _conditions(obj).get("Succeeded", {})
    optimal = status.get("currentOptimalTrial") or {}
    best_trial = optimal.get("bestTrialName") or ""
    raw = optimal.get("parameterAssignments") or []
    if not best_trial or not raw:
        raise KatibError(
            f"Experiment {namespace}/{name} ended ({succeeded.get('reason', 'no reason')}) without an optimal "
            f"trial: no trial reported the objective metric {metric!r} ({_summary(obj)}). Check that the "
            f"trials print '{metric}=<value>' lines for the metrics collector.")
    pairs = {str(item.get("name")): str(item.get("value")) for item in raw}
    try:
        from kftune.core.space import SearchSpace

        assignment = SearchSpace.from_katib(spec.get("parameters") or []).assignment_from_katib(pairs)
    except ConfigError as exc:
        raise KatibError(f"Experiment {namespace}/{name}: the best trial's parameterAssignments {pairs} do "
                         f"not fit the Experiment's spec.parameters: {exc}") from exc
    metrics = {
        str(item.get("name")): MetricValue(str(item.get("name")), _float(item.get("min")),
                                           _float(item.get("max")), _float(item.get("latest")))
        for item in ((optimal.get("observation") or {}).get("metrics") or [])
    }
    return ExperimentResult(
        name=name, namespace=namespace,
        reason=str(succeeded.get("reason", "")), message=str(succeeded.get("message", "")),
        best_trial_name=str(best_trial), assignment=dict(assignment),
        objective_metric_name=metric, objective_type=str(objective.get("type", "")),
        objective_value=_objective_value(obj, optimal), metrics=metrics,
        trials=_int(status.get("trials")), trials_succeeded=_int(status.get("trialsSucceeded")),
        trials_failed=_int(status.get("trialsFailed")),
    )


# -- API errors ------------------------------------------------------------------------------------


_status_body = kube.status_body
_server_message = kube.server_message
_is_transient = kube.is_transient


def translate_error(exc: BaseException, verb: str, namespace: str, name: str | None = None,
                    host: str | None = None) -> KatibError:
    """A :class:`KatibError` that says what went wrong and what to do, for an error raised by the
    kubernetes client while doing ``verb`` on ``experiments.kubeflow.org`` in ``namespace``."""
    from kubernetes.client.exceptions import ApiException

    what = f"{CRD_NAME} {name!r}" if name else CRD_NAME
    where = f"in namespace {namespace!r}"
    if not isinstance(exc, ApiException):
        at = f" at {host}" if host else ""
        return KatibError(f"cannot reach the Kubernetes API{at} to {verb} {what} {where}: "
                          f"{type(exc).__name__}: {exc}")
    code, message, status = exc.status, _server_message(exc), _status_body(exc)
    details = status.get("details") or {}
    if code == 401:
        return KatibPermissionError(
            f"the Kubernetes API refused the credentials (401 Unauthorized) to {verb} {what} {where}: "
            f"{message}. Check the kubeconfig context or the pod's ServiceAccount token.")
    if code == 403 and "admission webhook" in message:
        return KatibError(f"Katib rejected the Experiment ({verb} {what} {where}): {message}")
    if code == 403:
        return KatibPermissionError(
            f"RBAC denied: cannot {verb} {CRD_NAME} {where} (403 Forbidden: {message}). Grant the user the "
            f"server named (in a pod: its ServiceAccount, set by the pod's serviceAccountName) a Role in "
            f"{namespace!r} with verbs {list(VERBS)} on apiGroups [{GROUP!r}] resources [{PLURAL!r}] and a "
            f"RoleBinding to it (manifests/base/rbac/launcher-role.yaml does so for the ServiceAccount "
            f"{LAUNCHER_SERVICE_ACCOUNT}); check with `kubectl auth can-i {verb} {CRD_NAME} -n {namespace} "
            f"--as system:serviceaccount:{namespace}:{LAUNCHER_SERVICE_ACCOUNT}`.")
    if code == 404:
        if details.get("kind") == "namespaces" or message.startswith("namespaces "):
            return KatibError(f"namespace {namespace!r} does not exist ({verb} {what}): {message}")
        if name and details.get("name") == name and details.get("kind") in (PLURAL, KIND):
            return ExperimentNotFoundError(f"Experiment {namespace}/{name} not found: {message}")
        return KatibNotInstalledError(
            f"Katib is not installed: no {CRD_NAME} CRD (the API server answered 404 for "
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}: {message}). Install Katib "
            f"(its manifests/v1beta1/installs/katib-standalone) or run the search with kftune's own backend.")
    if code == 409:
        return KatibError(f"Experiment {namespace}/{name} already exists: {message}. Delete it "
                          f"(kubectl delete {CRD_NAME} {name} -n {namespace}), choose another name, "
                          f"or follow it (kftune katib --apply --if-exists follow; if_exists='follow' here).")
    if code in (400, 422):
        return KatibError(f"the API server rejected the Experiment ({verb} {what} {where}, {code}): {message}")
    return KatibError(f"Kubernetes API error {code} ({getattr(exc, 'reason', '')}) while trying to {verb} "
                      f"{what} {where}: {message}")


# -- client configuration --------------------------------------------------------------------------


def load_api(kubeconfig: str | None = None, context: str | None = None) -> CustomObjectsApi:
    """A ``kubernetes.client.CustomObjectsApi``: in-cluster config inside a pod (when
    ``KUBERNETES_SERVICE_HOST`` is set and no ``kubeconfig`` is given), else the kubeconfig file
    (``kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``) and its ``context``
    (:func:`kftune.io.kube.load_custom_objects_api`)."""
    try:
        return kube.load_custom_objects_api(kubeconfig, context)
    except kube.NoCredentialsError as exc:
        raise KatibError(str(exc)) from None


# -- the launcher ----------------------------------------------------------------------------------


class KatibLauncher:
    """Create, follow and delete Katib Experiments through a :class:`CustomObjectsApi`.

    ``watch``: follow with a watch (default) or, when false, poll every ``poll_interval`` seconds.
    ``watch_timeout``: the longest single watch before a fresh GET (seconds). ``request_timeout``:
    the timeout of each non-watch request (seconds). ``clock``/``sleep`` are injectable for tests.
    """

    def __init__(self, api: CustomObjectsApi, *, watch: bool = True, poll_interval: float = 10.0,
                 watch_timeout: float = 300.0, request_timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if poll_interval <= 0 or watch_timeout <= 0 or request_timeout <= 0:
            raise ValueError("poll_interval, watch_timeout and request_timeout must be > 0, got "
                             f"{poll_interval}, {watch_timeout}, {request_timeout}")
        self.api = api
        self.watch = watch
        self.poll_interval = poll_interval
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout
        self._clock, self._sleep = clock, sleep

    @property
    def _host(self) -> str | None:
        return kube.api_host(self.api)

    def _call(self, verb: str, namespace: str, name: str | None, fn: Callable[..., Any], *args: Any,
              **kwargs: Any) -> Any:
        try:
            return fn(GROUP, VERSION, namespace, PLURAL, *args, _request_timeout=self.request_timeout, **kwargs)
        except Exception as exc:
            if _is_api_or_transport_error(exc):
                raise translate_error(exc, verb, namespace, name, self._host) from exc
            raise

    # -- single calls ---------------------------------------------------------------------------

    def create_experiment(self, body: Mapping[str, Any], namespace: str, *,
                          if_exists: IfExists = "fail") -> dict[str, Any]:
        """Create the Experiment ``body`` in ``namespace`` and return the object the server stored
        (with its ``metadata.name``, also when ``body`` only has ``generateName``).

        ``if_exists="follow"`` returns the existing Experiment of that name instead of failing
        (a retried pipeline step picks up the Experiment its first attempt created).
        """
        problems = _body_problems(body)
        if problems:
            raise ConfigError(problems, source="Katib Experiment")
        name = (body.get("metadata") or {}).get("name")
        payload = dict(body)
        payload["metadata"] = {**(body.get("metadata") or {}), "namespace": namespace}
        try:
            created = self._call("create", namespace, name, self.api.create_namespaced_custom_object, payload)
        except KatibError as exc:
            cause = exc.__cause__
            if if_exists == "follow" and name and getattr(cause, "status", None) == 409:
                log.info("Experiment %s/%s already exists: following it", namespace, name)
                return self.get_experiment(name, namespace)
            raise
        log.info("created Katib Experiment %s/%s", namespace, (created.get("metadata") or {}).get("name"))
        return created

    def get_experiment(self, name: str, namespace: str) -> dict[str, Any]:
        """The Experiment object as the server has it (raises :class:`ExperimentNotFoundError`)."""
        return self._call("get", namespace, name, self.api.get_namespaced_custom_object, name)

    def delete_experiment(self, name: str, namespace: str) -> bool:
        """Delete the Experiment (its trials and their pods go with it, foreground). Returns
        ``False`` when it was already gone."""
        try:
            self._call("delete", namespace, name, self.api.delete_namespaced_custom_object, name,
                       propagation_policy="Foreground")
        except ExperimentNotFoundError:
            return False
        log.info("deleted Katib Experiment %s/%s", namespace, name)
        return True

    # -- following ------------------------------------------------------------------------------

    def wait_for_experiment(self, name: str, namespace: str, timeout: float) -> ExperimentResult:
        """Follow the Experiment until it succeeds (return its :class:`ExperimentResult`), fails
        (raise :class:`ExperimentFailedError`) or ``timeout`` seconds pass (raise
        :class:`ExperimentTimeoutError`; the Experiment is left as it is)."""
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        deadline = self._clock() + timeout
        obj: dict[str, Any] | None = None
        tracker = _Tracker(name, namespace)
        try:
            while True:
                try:
                    obj = self.get_experiment(name, namespace)
                except KatibError as exc:
                    if not _is_transient(exc.__cause__ or exc) or self._clock() >= deadline:
                        raise
                    log.warning("reading Experiment %s/%s failed (%s); retrying", namespace, name, exc)
                    self._sleep(min(self.poll_interval, max(deadline - self._clock(), 0)))
                    continue
                tracker.see(obj)
                if experiment_phase(obj) in ("Succeeded", "Failed"):
                    return self._finish(obj)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise self._timeout(name, namespace, timeout, obj)
                if self.watch:
                    final = self._watch(name, namespace, obj, remaining, tracker)
                    if final is not None:
                        return self._finish(final)
                else:
                    self._sleep(min(self.poll_interval, remaining))
        finally:
            tracker.close()

    def _watch(self, name: str, namespace: str, obj: Mapping[str, Any], remaining: float,
               tracker: "_Tracker") -> dict[str, Any] | None:
        """Watch one object from ``obj``'s resourceVersion for at most ``remaining`` seconds; return
        the object once it is finished, or ``None`` when the watch ended first (the caller GETs again)."""
        from kubernetes import watch

        seconds = max(1, math.ceil(min(remaining, self.watch_timeout)))
        resource_version = (obj.get("metadata") or {}).get("resourceVersion")
        watcher = watch.Watch()
        kwargs: dict[str, Any] = {"field_selector": f"metadata.name={name}", "timeout_seconds": seconds,
                                  "_request_timeout": (self.request_timeout, seconds + self.request_timeout)}
        if resource_version:
            kwargs["resource_version"] = resource_version
        try:
            for event in watcher.stream(self.api.list_namespaced_custom_object, GROUP, VERSION, namespace,
                                        PLURAL, **kwargs):
                kind, current = event.get("type"), event.get("raw_object") or {}
                if kind == "DELETED":
                    raise ExperimentNotFoundError(f"Experiment {namespace}/{name} was deleted while waiting "
                                                  f"for it ({_summary(current)})")
                if kind not in ("ADDED", "MODIFIED"):
                    continue
                tracker.see(current)
                if experiment_phase(current) in ("Succeeded", "Failed"):
                    watcher.stop()
                    return current
        except KatibError:
            raise
        except Exception as exc:
            if not _is_api_or_transport_error(exc):
                raise
            if getattr(exc, "status", None) == 410 or _is_transient(exc):
                log.debug("watch on Experiment %s/%s ended (%s); reading it again", namespace, name, exc)
                return None
            raise translate_error(exc, "watch", namespace, name, self._host) from exc
        return None

    def _finish(self, obj: Mapping[str, Any]) -> ExperimentResult:
        meta = obj.get("metadata") or {}
        name, namespace = str(meta.get("name")), str(meta.get("namespace"))
        if experiment_phase(obj) == "Failed":
            condition = _conditions(obj)["Failed"]
            reason, message = str(condition.get("reason", "")), str(condition.get("message", ""))
            raise ExperimentFailedError(
                f"Katib Experiment {namespace}/{name} failed: {reason}: {message} ({_summary(obj)}); "
                f"see `kubectl get trials -n {namespace} -l katib.kubeflow.org/experiment={name}`",
                name=name, namespace=namespace, reason=reason, condition_message=message)
        result = experiment_result(obj)
        log.info("Katib Experiment %s/%s succeeded (%s): best trial %s, %s=%s, assignment %s", namespace, name,
                 result.reason, result.best_trial_name, result.objective_metric_name, result.objective_value,
                 result.assignment)
        return result

    def _timeout(self, name: str, namespace: str, timeout: float, obj: Mapping[str, Any]) -> ExperimentTimeoutError:
        return ExperimentTimeoutError(
            f"Katib Experiment {namespace}/{name} did not finish within {timeout:g} s "
            f"(phase {experiment_phase(obj)}: {_summary(obj)}); it is still in the cluster: follow it again, or "
            f"stop it with `kubectl delete {CRD_NAME} {name} -n {namespace}`",
            name=name, namespace=namespace, timeout=timeout)

    # -- all of it --------------------------------------------------------------------------------

    def run(self, body: Mapping[str, Any], namespace: str, timeout: float, *, delete: DeletePolicy = "never",
            if_exists: IfExists = "fail") -> ExperimentResult:
        """Create the Experiment, wait for it, and return the best trial.

        ``delete``: ``"never"`` keeps the Experiment (Katib's UI shows it), ``"on_success"`` deletes it
        once its result is read, ``"always"`` also deletes it after a failure or a timeout (which
        stops its running trials). A failed delete is logged, never raised over the result.
        """
        if delete not in ("never", "on_success", "always"):
            raise ConfigError(f"delete: {delete!r} is not one of 'never', 'on_success', 'always'")
        created = self.create_experiment(body, namespace, if_exists=if_exists)
        name = str((created.get("metadata") or {}).get("name"))
        succeeded = False
        try:
            result = self.wait_for_experiment(name, namespace, timeout)
            succeeded = True
            return result
        finally:
            if delete == "always" or (delete == "on_success" and succeeded):
                try:
                    self.delete_experiment(name, namespace)
                except KatibError as exc:
                    log.warning("could not delete Katib Experiment %s/%s: %s", namespace, name, exc)
            elif not succeeded:
                log.info("Katib Experiment %s/%s is left in the cluster (delete=%r)", namespace, name, delete)


_is_api_or_transport_error = kube.is_api_or_transport_error


def _body_problems(body: Any) -> list[Any]:
    from kftune.core.errors import Problem

    if not isinstance(body, Mapping):
        return [Problem("", f"expected a Katib Experiment mapping, got {type(body).__name__}")]
    problems = []
    if body.get("apiVersion") != f"{GROUP}/{VERSION}":
        problems.append(Problem("apiVersion", f"{body.get('apiVersion')!r}; a Katib Experiment has "
                                              f"apiVersion {GROUP}/{VERSION}"))
    if body.get("kind") != KIND:
        problems.append(Problem("kind", f"{body.get('kind')!r}; expected {KIND}"))
    meta = body.get("metadata") or {}
    if not (meta.get("name") or meta.get("generateName")):
        problems.append(Problem("metadata.name", "missing; give the Experiment a name or a generateName"))
    spec = body.get("spec") or {}
    for key in ("objective", "parameters", "trialTemplate"):
        if not spec.get(key):
            problems.append(Problem(f"spec.{key}", "missing; `kftune katib SPEC.yaml` renders a complete Experiment"))
    return problems


class _Tracker:
    """Progress of one Experiment: a bar (or log lines) over finished trials, and a log line at
    each phase change."""

    def __init__(self, name: str, namespace: str) -> None:
        self.label = f"{namespace}/{name}"
        self.phase: str | None = None
        self.done = 0
        self._progress: Progress | None = None

    def see(self, obj: Mapping[str, Any]) -> None:
        status = obj.get("status") or {}
        if self._progress is None:
            total = _int((obj.get("spec") or {}).get("maxTrialCount")) or None
            self._progress = Progress(total, f"katib {self.label}", unit="trial")
        phase = experiment_phase(obj)
        if phase != self.phase:
            log.info("Katib Experiment %s: %s (%s)", self.label, phase, _summary(obj))
            self.phase = phase
        done = sum(_int(status.get(k)) for k in ("trialsSucceeded", "trialsFailed", "trialsKilled",
                                                 "trialsEarlyStopped"))
        if done > self.done:
            self._progress.set_postfix_str(_summary(obj))
            self._progress.update(done - self.done)
            self.done = done

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
