"""The Katib launcher against a loopback Kubernetes API: the real ``kubernetes`` client
(``CustomObjectsApi`` + ``watch.Watch``) talks HTTP to a small server on 127.0.0.1 that serves the
custom-objects endpoints the launcher calls, with Katib's shapes and a scripted "controller" that
moves each Experiment through its conditions:

    POST   /apis/kubeflow.org/v1beta1/namespaces/<ns>/experiments
    GET    /apis/kubeflow.org/v1beta1/namespaces/<ns>/experiments/<name>
    GET    /apis/kubeflow.org/v1beta1/namespaces/<ns>/experiments?watch=true&fieldSelector=...
    DELETE /apis/kubeflow.org/v1beta1/namespaces/<ns>/experiments/<name>

Covered: success (watch and polling), a failed Experiment, timeouts (watch and polling), RBAC
denial (create and watch), a missing CRD, a missing namespace, an expired watch (410), transient
503s, an Experiment deleted while waiting, an existing Experiment, no optimal trial, delete
policies, kubeconfig loading; and the shapes used here round-trip through Katib's published models.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from kubernetes import client

from kftune.core.errors import ConfigError
from kftune.io.katib import (CustomObjectsApi, ExperimentFailedError, ExperimentNotFoundError,
                             ExperimentResult, ExperimentTimeoutError, KatibError, KatibLauncher,
                             KatibNotInstalledError, KatibPermissionError, experiment_phase, load_api,
                             translate_error)
from tests.fixtures.k8s_api import status as k8s_status

NS = "kubeflow-user"
TS = "2026-01-01T00:00:00Z"
TICK_S = 0.02   # the fake controller's step
PATH = re.compile(r"^/apis/kubeflow\.org/v1beta1/namespaces/([^/]+)/experiments(?:/([^/]+))?$")


# ---------------------------------------------------------------------------------------------------
# Katib-shaped objects


def experiment_body(name: str = "trec6-search", objective_type: str = "maximize") -> dict[str, Any]:
    """An Experiment as `kftune katib` renders one (Katib v1beta1 field names)."""
    return {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "kftune"}},
        "spec": {
            "objective": {"type": objective_type, "goal": 0.97, "objectiveMetricName": "dev_score",
                          "additionalMetricNames": ["train_loss"]},
            "algorithm": {"algorithmName": "tpe", "algorithmSettings": [{"name": "random_state", "value": "1"}]},
            "parallelTrialCount": 2,
            "maxTrialCount": 4,
            "maxFailedTrialCount": 1,
            "parameters": [
                {"name": "learning_rate", "parameterType": "double",
                 "feasibleSpace": {"min": "1e-4", "max": "0.3", "distribution": "logUniform"}},
                {"name": "hidden_size", "parameterType": "int", "feasibleSpace": {"min": "64", "max": "512"}},
                {"name": "batch_size", "parameterType": "discrete", "feasibleSpace": {"list": ["16", "32", "64"]}},
                {"name": "optimizer", "parameterType": "categorical", "feasibleSpace": {"list": ["sgd", "adam"]}},
            ],
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "trialTemplate": {
                "primaryContainerName": "training",
                "successCondition": 'status.conditions.#(type=="Complete")#|#(status=="True")#',
                "failureCondition": 'status.conditions.#(type=="Failed")#|#(status=="True")#',
                "trialParameters": [
                    {"name": "learningRate", "reference": "learning_rate"},
                    {"name": "hiddenSize", "reference": "hidden_size"},
                    {"name": "batchSize", "reference": "batch_size"},
                    {"name": "optimizer", "reference": "optimizer"},
                ],
                "trialSpec": {
                    "apiVersion": "batch/v1", "kind": "Job",
                    "spec": {"template": {"spec": {
                        "restartPolicy": "Never",
                        "containers": [{
                            "name": "training", "image": "ghcr.io/kftune/kftune:0.1.0-cuda",
                            "command": ["kftune", "trial", "--learning-rate=${trialParameters.learningRate}",
                                        "--hidden-size=${trialParameters.hiddenSize}",
                                        "--batch-size=${trialParameters.batchSize}",
                                        "--optimizer=${trialParameters.optimizer}"],
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }],
                    }}},
                },
            },
        },
    }


def _condition(kind: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if status else "False", "reason": reason, "message": message,
            "lastUpdateTime": TS, "lastTransitionTime": TS}


CREATED = _condition("Created", True, "ExperimentCreated", "Experiment is created")
RUNNING = _condition("Running", True, "ExperimentRunning", "Experiment is running")
NOT_RUNNING = _condition("Running", False, "ExperimentRunning", "Experiment is running")

OPTIMAL = {
    "bestTrialName": "trec6-search-x7k2p9",
    "parameterAssignments": [
        {"name": "learning_rate", "value": "0.0123"}, {"name": "hidden_size", "value": "256"},
        {"name": "batch_size", "value": "32"}, {"name": "optimizer", "value": "adam"},
    ],
    "observation": {"metrics": [
        {"name": "dev_score", "min": "0.712", "max": "0.934", "latest": "0.931"},
        {"name": "train_loss", "min": "0.105", "max": "1.73", "latest": "0.105"},
    ]},
}


def status_created() -> dict[str, Any]:
    return {"startTime": TS, "conditions": [CREATED]}


def status_running(succeeded: int = 0, running: int = 2, optimal: bool = False) -> dict[str, Any]:
    names = [f"trec6-search-t{i}" for i in range(succeeded + running)]
    status: dict[str, Any] = {
        "startTime": TS, "conditions": [CREATED, RUNNING],
        "trials": succeeded + running, "trialsRunning": running, "trialsSucceeded": succeeded,
        "runningTrialList": names[succeeded:], "succeededTrialList": names[:succeeded] or None,
        "currentOptimalTrial": copy.deepcopy(OPTIMAL) if optimal else {"observation": {}},
    }
    return {k: v for k, v in status.items() if v is not None}


def status_succeeded(optimal: dict[str, Any] | None = OPTIMAL) -> dict[str, Any]:
    done = _condition("Succeeded", True, "ExperimentMaxTrialsReached",
                      "Experiment has succeeded because max trial count has reached")
    return {"startTime": TS, "completionTime": TS, "conditions": [CREATED, NOT_RUNNING, done],
            "trials": 4, "trialsSucceeded": 4, "succeededTrialList": [f"trec6-search-t{i}" for i in range(4)],
            "currentOptimalTrial": copy.deepcopy(optimal) if optimal else {"observation": {}}}


def status_failed() -> dict[str, Any]:
    failed = _condition("Failed", True, "ExperimentFailed",
                        "Experiment has failed because max failed count has reached")
    return {"startTime": TS, "completionTime": TS, "conditions": [CREATED, NOT_RUNNING, failed],
            "trials": 3, "trialsSucceeded": 1, "trialsFailed": 2,
            "succeededTrialList": ["trec6-search-t0"], "failedTrialList": ["trec6-search-t1", "trec6-search-t2"],
            "currentOptimalTrial": copy.deepcopy(OPTIMAL)}


SUCCESS = [status_created(), status_running(), status_running(2, 2, optimal=True), status_succeeded()]
FAILURE = [status_created(), status_running(), status_failed()]
FOREVER = [status_created(), status_running()]
DELETE = "DELETE"   # a timeline step: someone deletes the Experiment


# ---------------------------------------------------------------------------------------------------
# the loopback API server


@dataclass
class Event:
    rv: int
    type: str
    namespace: str
    name: str
    obj: dict[str, Any]


@dataclass
class FakeKatib:
    """The cluster state and the test's knobs (all guarded by ``cond``)."""

    namespaces: set[str] = field(default_factory=lambda: {NS})
    crd_installed: bool = True
    forbid: set[str] = field(default_factory=set)                # verbs answered with 403
    fail_next: dict[str, int] = field(default_factory=dict)      # verb -> how many 503s first
    expire_watches: int = 0                                       # how many watches get ERROR 410
    timeline: list[Any] = field(default_factory=lambda: list(SUCCESS))
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str], str]] = field(default_factory=list)
    pending: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)
    _rv: Iterator[int] = field(default_factory=lambda: itertools.count(100))

    def verbs(self) -> list[str]:
        return [verb for verb, *_ in self.requests]

    def put(self, kind: str, namespace: str, name: str, obj: dict[str, Any] | None) -> None:
        """Record a change (called with ``cond`` held)."""
        if obj is None:
            gone = self.objects.pop((namespace, name))
            gone["metadata"]["resourceVersion"] = str(next(self._rv))
            self.events.append(Event(int(gone["metadata"]["resourceVersion"]), kind, namespace, name, gone))
        else:
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self.objects[(namespace, name)] = obj
            self.events.append(Event(int(obj["metadata"]["resourceVersion"]), kind, namespace, name,
                                     copy.deepcopy(obj)))
        self.cond.notify_all()

    def controller(self) -> None:
        """Katib's controller, scripted: one timeline step per tick for each Experiment."""
        while not self.stop.wait(TICK_S):
            with self.cond:
                for key, steps in list(self.pending.items()):
                    if not steps or key not in self.objects:
                        continue
                    step = steps.pop(0)
                    if step == DELETE:
                        self.put("DELETED", *key, None)
                    else:
                        obj = copy.deepcopy(self.objects[key])
                        obj["status"] = copy.deepcopy(step)
                        self.put("MODIFIED", *key, obj)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "Server"

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _route(self, method: str) -> None:
        fake = self.server.fake
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        match = PATH.match(url.path)
        body = self._read_body() if method in ("POST", "DELETE") else None
        watching = query.get("watch", "").lower() in ("true", "1")
        if method == "POST":
            verb = "create"
        elif method == "DELETE":
            verb = "delete"
        elif match and match.group(2):
            verb = "get"
        else:
            verb = "watch" if watching else "list"
        with fake.cond:
            fake.requests.append((verb, url.path, query, self.headers.get("Authorization", "")))
        if not match or not fake.crd_installed:
            # What the API server answers for a group/version it does not serve.
            data = b"404 page not found\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        namespace, name = match.group(1), match.group(2)
        if verb in fake.forbid:
            # The API server's RBAC answer, word for word in its shape.
            subject = f'experiments.kubeflow.org "{name}"' if name else "experiments.kubeflow.org"
            self._send_json(403, k8s_status(
                403, "Forbidden",
                f'{subject} is forbidden: User "system:serviceaccount:{namespace}:default-editor" cannot {verb} '
                f'resource "experiments" in API group "kubeflow.org" in the namespace "{namespace}"',
                {"name": name or "", "group": "kubeflow.org", "kind": "experiments"}))
            return
        with fake.cond:
            if fake.fail_next.get(verb, 0) > 0:
                fake.fail_next[verb] -= 1
                self._send_json(503, k8s_status(503, "ServiceUnavailable", "the server is currently unable to handle "
                                                                         "the request"))
                return
        if namespace not in fake.namespaces:
            self._send_json(404, k8s_status(404, "NotFound", f'namespaces "{namespace}" not found',
                                         {"name": namespace, "kind": "namespaces"}))
            return
        if verb == "create":
            self._create(namespace, body)
        elif verb == "get":
            with fake.cond:
                obj = copy.deepcopy(fake.objects.get((namespace, name)))
            if obj is None:
                self._not_found(name)
            else:
                self._send_json(200, obj)
        elif verb == "delete":
            with fake.cond:
                if (namespace, name) not in fake.objects:
                    self._not_found(name)
                    return
                fake.put("DELETED", namespace, name, None)
            self._send_json(200, k8s_status(200, "", "") | {"status": "Success"})
        elif verb == "watch":
            self._watch(namespace, query)
        else:
            with fake.cond:
                items = [copy.deepcopy(o) for (ns, _), o in fake.objects.items() if ns == namespace]
            self._send_json(200, {"apiVersion": "kubeflow.org/v1beta1", "kind": "ExperimentList", "items": items,
                                  "metadata": {"resourceVersion": "1"}})

    def _not_found(self, name: str) -> None:
        self._send_json(404, k8s_status(404, "NotFound", f'experiments.kubeflow.org "{name}" not found',
                                     {"name": name, "group": "kubeflow.org", "kind": "experiments"}))

    def _create(self, namespace: str, body: dict[str, Any]) -> None:
        fake = self.server.fake
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            meta["name"] = meta["generateName"] + "abcde"
        name = meta["name"]
        with fake.cond:
            if (namespace, name) in fake.objects:
                self._send_json(409, k8s_status(409, "AlreadyExists", f'experiments.kubeflow.org "{name}" already exists',
                                             {"name": name, "group": "kubeflow.org", "kind": "experiments"}))
                return
            meta.update(namespace=namespace, uid=f"uid-{name}", creationTimestamp=TS, generation=1)
            fake.put("ADDED", namespace, name, body)
            fake.pending[(namespace, name)] = copy.deepcopy(fake.timeline)
            created = copy.deepcopy(body)
        self._send_json(201, created)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, namespace: str, query: dict[str, str]) -> None:
        fake = self.server.fake
        selector = query.get("fieldSelector", "")
        name = selector.split("=", 1)[1] if selector.startswith("metadata.name=") else None
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 30)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        try:
            with fake.cond:
                expire = fake.expire_watches > 0
                if expire:
                    fake.expire_watches -= 1
            if expire:
                self._chunk(json.dumps({"type": "ERROR", "object": k8s_status(
                    410, "Expired", f"too old resource version: {since} ({since + 50})")}).encode() + b"\n")
            else:
                while not fake.stop.is_set() and time.monotonic() < deadline:
                    with fake.cond:
                        new = [e for e in fake.events if e.rv > since and e.namespace == namespace
                               and (name is None or e.name == name)]
                        if not new:
                            fake.cond.wait(min(0.05, max(deadline - time.monotonic(), 0)))
                            continue
                    for event in new:
                        self._chunk(json.dumps({"type": event.type, "object": event.obj}).encode() + b"\n")
                        since = event.rv
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped watching

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeKatib


@pytest.fixture
def fake() -> Iterator[FakeKatib]:
    yield FakeKatib()


@pytest.fixture
def server(fake: FakeKatib) -> Iterator[Server]:
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.fake = fake
    threads = [threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True),
               threading.Thread(target=fake.controller, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        yield httpd
    finally:
        fake.stop.set()
        with fake.cond:
            fake.cond.notify_all()
        httpd.shutdown()
        httpd.server_close()
        for thread in threads:
            thread.join()


@pytest.fixture
def api(server: Server) -> client.CustomObjectsApi:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    configuration.retries = False
    return client.CustomObjectsApi(client.ApiClient(configuration))


def launcher(api: CustomObjectsApi, **kwargs: Any) -> KatibLauncher:
    kwargs.setdefault("poll_interval", 0.02)
    kwargs.setdefault("request_timeout", 10)
    return KatibLauncher(api, **kwargs)


# ---------------------------------------------------------------------------------------------------
# success


def check_best(result: ExperimentResult) -> None:
    assert result.name == "trec6-search" and result.namespace == NS
    assert result.reason == "ExperimentMaxTrialsReached"
    assert result.best_trial_name == "trec6-search-x7k2p9"
    assert result.assignment == {"learning_rate": 0.0123, "hidden_size": 256, "batch_size": 32, "optimizer": "adam"}
    assert [type(v) for v in result.assignment.values()] == [float, int, int, str]
    assert result.objective_metric_name == "dev_score" and result.objective_type == "maximize"
    assert result.objective_value == pytest.approx(0.934)        # the max strategy for a maximized objective
    assert result.metrics["train_loss"].latest == pytest.approx(0.105)
    assert (result.trials, result.trials_succeeded, result.trials_failed) == (4, 4, 0)
    assert json.loads(json.dumps(result.to_dict()))["assignment"]["hidden_size"] == 256


def test_the_real_client_satisfies_the_protocol(api: client.CustomObjectsApi) -> None:
    assert isinstance(api, CustomObjectsApi)


def test_success_followed_with_a_watch(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    result = launcher(api).run(experiment_body(), NS, timeout=30)
    check_best(result)
    assert fake.verbs()[:2] == ["create", "get"] and "watch" in fake.verbs()
    watch_query = next(q for verb, _, q, _ in fake.requests if verb == "watch")
    assert watch_query["fieldSelector"] == "metadata.name=trec6-search"
    assert int(watch_query["resourceVersion"]) >= 100 and int(watch_query["timeoutSeconds"]) >= 1
    # what was posted is the body plus the namespace; the Experiment stays (delete="never")
    stored = fake.objects[(NS, "trec6-search")]
    assert stored["spec"] == experiment_body()["spec"]
    assert experiment_phase(stored) == "Succeeded"


def test_success_followed_by_polling(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    result = launcher(api, watch=False).run(experiment_body(), NS, timeout=30)
    check_best(result)
    assert "watch" not in fake.verbs() and fake.verbs().count("get") >= 2


def test_generate_name_is_followed_under_the_server_given_name(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    body = experiment_body()
    body["metadata"] = {"generateName": "trec6-search-"}
    result = launcher(api).run(body, NS, timeout=30)
    assert result.name == "trec6-search-abcde"
    assert (NS, "trec6-search-abcde") in fake.objects


def test_minimized_objective_reads_the_min_strategy(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    result = launcher(api).run(experiment_body(objective_type="minimize"), NS, timeout=30)
    assert result.objective_value == pytest.approx(0.712)


def test_delete_on_success_deletes_with_foreground_propagation(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    launcher(api).run(experiment_body(), NS, timeout=30, delete="on_success")
    assert fake.verbs()[-1] == "delete"
    assert fake.requests[-1][2].get("propagationPolicy") == "Foreground"
    assert (NS, "trec6-search") not in fake.objects


def test_an_expired_watch_is_recovered_with_a_fresh_read(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    fake.expire_watches = 1
    check_best(launcher(api).run(experiment_body(), NS, timeout=30))
    assert fake.verbs().count("watch") >= 2
    assert fake.verbs().count("get") >= 2


def test_transient_server_errors_while_waiting_are_retried(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    fake.fail_next = {"get": 2}
    check_best(launcher(api).run(experiment_body(), NS, timeout=30))
    assert fake.verbs().count("get") >= 3


# ---------------------------------------------------------------------------------------------------
# failure, timeout, deletion


@pytest.mark.parametrize("watch", [True, False], ids=["watch", "poll"])
def test_failed_experiment_raises_with_its_condition(api: client.CustomObjectsApi, fake: FakeKatib,
                                                     watch: bool) -> None:
    fake.timeline = list(FAILURE)
    with pytest.raises(ExperimentFailedError) as caught:
        launcher(api, watch=watch).run(experiment_body(), NS, timeout=30)
    error = caught.value
    assert error.reason == "ExperimentFailed"
    assert error.condition_message == "Experiment has failed because max failed count has reached"
    text = str(error)
    assert "kubeflow-user/trec6-search failed" in text and "max failed count has reached" in text
    assert "2 failed" in text and "katib.kubeflow.org/experiment=trec6-search" in text
    assert (NS, "trec6-search") in fake.objects     # delete="never" keeps it for inspection


def test_failed_experiment_is_deleted_with_delete_always(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    fake.timeline = list(FAILURE)
    with pytest.raises(ExperimentFailedError):
        launcher(api).run(experiment_body(), NS, timeout=30, delete="always")
    assert (NS, "trec6-search") not in fake.objects


def test_failed_experiment_is_kept_with_delete_on_success(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    fake.timeline = list(FAILURE)
    with pytest.raises(ExperimentFailedError):
        launcher(api).run(experiment_body(), NS, timeout=30, delete="on_success")
    assert "delete" not in fake.verbs()


@pytest.mark.parametrize("watch,timeout", [(True, 0.5), (False, 0.3)], ids=["watch", "poll"])
def test_timeout_names_the_last_status_and_leaves_the_experiment(api: client.CustomObjectsApi, fake: FakeKatib,
                                                                  watch: bool, timeout: float) -> None:
    fake.timeline = list(FOREVER)
    lau = launcher(api, watch=watch)
    lau.create_experiment(experiment_body(), NS)
    with pytest.raises(ExperimentTimeoutError) as caught:
        lau.wait_for_experiment("trec6-search", NS, timeout=timeout)
    text = str(caught.value)
    assert caught.value.timeout == timeout
    assert f"did not finish within {timeout:g} s" in text and "phase Running" in text and "2 running" in text
    assert "still in the cluster" in text
    assert (NS, "trec6-search") in fake.objects
    assert ("watch" in fake.verbs()) == watch


def test_timeout_with_delete_always_stops_the_experiment(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    fake.timeline = list(FOREVER)
    with pytest.raises(ExperimentTimeoutError):
        launcher(api, watch=False).run(experiment_body(), NS, timeout=0.2, delete="always")
    assert fake.verbs()[-1] == "delete" and (NS, "trec6-search") not in fake.objects


def test_experiment_deleted_while_waiting(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    fake.timeline = [status_created(), status_running(), DELETE]
    with pytest.raises(ExperimentNotFoundError, match="deleted while waiting"):
        launcher(api).run(experiment_body(), NS, timeout=30)


def test_experiment_deleted_while_polling(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    fake.timeline = [status_created(), DELETE]
    with pytest.raises(ExperimentNotFoundError, match='kubeflow-user/trec6-search not found'):
        launcher(api, watch=False).run(experiment_body(), NS, timeout=30)


def test_success_without_an_optimal_trial_says_which_metric_is_missing(api: client.CustomObjectsApi,
                                                                       fake: FakeKatib) -> None:
    fake.timeline = [status_created(), status_succeeded(optimal=None)]
    with pytest.raises(KatibError, match="without an optimal trial: no trial reported the objective metric "
                                         "'dev_score'"):
        launcher(api).run(experiment_body(), NS, timeout=30)


# ---------------------------------------------------------------------------------------------------
# cluster problems: RBAC, no Katib, no namespace, an existing Experiment, bad input


def test_rbac_denial_on_create_names_verb_resource_namespace_and_serviceaccount(api: client.CustomObjectsApi,
                                                                                fake: FakeKatib) -> None:
    fake.forbid = {"create"}
    with pytest.raises(KatibPermissionError) as caught:
        launcher(api).run(experiment_body(), NS, timeout=30)
    text = str(caught.value)
    assert text.startswith("RBAC denied: cannot create experiments.kubeflow.org in namespace 'kubeflow-user'")
    assert 'User "system:serviceaccount:kubeflow-user:default-editor"' in text      # who the server saw
    assert "ServiceAccount" in text and "serviceAccountName" in text and "RoleBinding" in text
    assert ("kubectl auth can-i create experiments.kubeflow.org -n kubeflow-user "
            "--as system:serviceaccount:kubeflow-user:kftune-launcher") in text
    assert fake.verbs() == ["create"]


def test_rbac_denial_on_watch_names_the_watch_verb(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    fake.timeline = list(FOREVER)
    fake.forbid = {"watch"}
    with pytest.raises(KatibPermissionError, match="cannot watch experiments.kubeflow.org in namespace "
                                                   "'kubeflow-user'"):
        launcher(api).run(experiment_body(), NS, timeout=30)


def test_missing_crd_says_katib_is_not_installed(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    fake.crd_installed = False
    with pytest.raises(KatibNotInstalledError) as caught:
        launcher(api).run(experiment_body(), NS, timeout=30)
    assert str(caught.value).startswith("Katib is not installed: no experiments.kubeflow.org CRD")
    assert "/apis/kubeflow.org/v1beta1/namespaces/kubeflow-user/experiments" in str(caught.value)


def test_missing_namespace_is_not_mistaken_for_missing_katib(api: client.CustomObjectsApi) -> None:
    with pytest.raises(KatibError, match="namespace 'team-b' does not exist") as caught:
        launcher(api).create_experiment(experiment_body(), "team-b")
    assert not isinstance(caught.value, KatibNotInstalledError)


def test_existing_experiment_fails_or_is_followed(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    lau = launcher(api)
    lau.create_experiment(experiment_body(), NS)
    with pytest.raises(KatibError, match="already exists.*if_exists='follow'"):
        lau.create_experiment(experiment_body(), NS)
    check_best(lau.run(experiment_body(), NS, timeout=30, if_exists="follow"))


def test_delete_of_a_missing_experiment_returns_false(api: client.CustomObjectsApi) -> None:
    assert launcher(api).delete_experiment("nope", NS) is False


def test_unreachable_api_server_names_the_host() -> None:
    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:9"   # discard port: nothing listens
    configuration.retries = False
    lau = launcher(client.CustomObjectsApi(client.ApiClient(configuration)))
    with pytest.raises(KatibError, match="cannot reach the Kubernetes API at http://127.0.0.1:9 to create"):
        lau.create_experiment(experiment_body(), NS)


def test_invalid_body_is_refused_before_any_request(api: client.CustomObjectsApi, fake: FakeKatib) -> None:
    body = experiment_body()
    body["apiVersion"] = "kubeflow.org/v1"
    del body["spec"]["trialTemplate"]
    with pytest.raises(ConfigError) as caught:
        launcher(api).create_experiment(body, NS)
    assert {p.path for p in caught.value.problems} == {"apiVersion", "spec.trialTemplate"}
    assert fake.requests == []


def test_bad_arguments_are_refused(api: client.CustomObjectsApi) -> None:
    with pytest.raises(ValueError, match="timeout must be > 0"):
        launcher(api).wait_for_experiment("x", NS, timeout=0)
    with pytest.raises(ConfigError, match="delete"):
        launcher(api).run(experiment_body(), NS, timeout=1, delete="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="poll_interval"):
        KatibLauncher(api, poll_interval=0)


def test_admission_webhook_denial_is_not_reported_as_rbac() -> None:
    from kubernetes.client.exceptions import ApiException

    exc = ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps(k8s_status(403, "Forbidden", 'admission webhook "validator.experiment.katib.kubeflow.org" '
                                                    'denied the request: spec.parameters must be specified'))
    error = translate_error(exc, "create", NS, "trec6-search")
    assert not isinstance(error, KatibPermissionError)
    assert "Katib rejected the Experiment" in str(error) and "spec.parameters must be specified" in str(error)


# ---------------------------------------------------------------------------------------------------
# configuration from a kubeconfig


def test_load_api_from_a_kubeconfig_sends_its_token(server: Server, fake: FakeKatib, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "loop",
        "clusters": [{"name": "loop", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "ci", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "loop", "context": {"cluster": "loop", "user": "ci", "namespace": NS}}],
    }))
    lau = launcher(load_api(str(kubeconfig)))
    lau.create_experiment(experiment_body(), NS)
    assert fake.requests[-1][3] == "Bearer t0ken"


def test_load_api_without_any_configuration_says_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KatibError, match="no Kubernetes credentials.*KUBECONFIG"):
        load_api(str(tmp_path / "missing"))


# ---------------------------------------------------------------------------------------------------
# the shapes used here are Katib's: they round-trip through Katib's published API models


def _paths(obj: Any, prefix: str = "") -> set[str]:
    if isinstance(obj, dict):
        out = set()
        for key, value in obj.items():
            out |= {f"{prefix}.{key}".lstrip(".")} | _paths(value, f"{prefix}.{key}")
        return out
    if isinstance(obj, list):
        return set().union(*(_paths(v, f"{prefix}[]") for v in obj)) if obj else set()
    return set()


@pytest.mark.parametrize("status", [status_running(2, 2, optimal=True), status_succeeded(), status_failed()],
                         ids=["running", "succeeded", "failed"])
def test_experiment_shapes_round_trip_through_katib_api_models(status: dict[str, Any]) -> None:
    try:
        from kubeflow_katib_api.models import V1beta1Experiment
    except ImportError:
        pytest.fail("kubeflow-katib-api is not installed: pip install kubeflow-katib-api (Katib's API models; "
                    "not the kubeflow-katib SDK)")
    obj = experiment_body()
    obj["metadata"].update(namespace=NS, uid="u1", resourceVersion="7", creationTimestamp=TS)
    obj["status"] = status
    model = V1beta1Experiment.from_dict(copy.deepcopy(obj))
    back = json.loads(json.dumps(model.to_dict(), default=str))
    lost = _paths(obj) - _paths(back)
    # the trial template's Job is free-form (runtime.RawExtension): Katib keeps it verbatim
    assert not {p for p in lost if not p.startswith("spec.trialTemplate.trialSpec.")}, lost
    assert back["spec"]["trialTemplate"]["trialSpec"] == obj["spec"]["trialTemplate"]["trialSpec"]
    assert back["status"]["conditions"][-1]["type"] == status["conditions"][-1]["type"]
