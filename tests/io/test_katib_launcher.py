"""The Katib launcher against a loopback Kubernetes API (tests/fixtures/katib_api.py): the real ``kubernetes``
client (``CustomObjectsApi`` + ``watch.Watch``) talks HTTP to a small server on 127.0.0.1 that serves the
custom-objects endpoints the launcher calls, with Katib's shapes and a scripted "controller" that
moves each Experiment through its conditions.

Covered: success (watch and polling), a failed Experiment, timeouts (watch and polling), RBAC
denial (create and watch), a missing CRD, a missing namespace, an expired watch (410), transient
503s, an Experiment deleted while waiting, an existing Experiment, no optimal trial, delete
policies, kubeconfig loading; and the shapes used here round-trip through Katib's published models.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kftune.core.errors import ConfigError
from kftune.io.katib import (CustomObjectsApi, ExperimentFailedError, ExperimentNotFoundError,
                             ExperimentResult, ExperimentTimeoutError, KatibError, KatibLauncher,
                             KatibNotInstalledError, KatibPermissionError, experiment_phase, load_api,
                             translate_error)
from tests.fixtures.k8s_api import status as k8s_status
from tests.fixtures.katib_api import (DELETE, FAILURE, FOREVER, NS, TS, FakeKatib, Server, api, fake,  # noqa: F401
                                      kubeconfig, server, status_created, status_failed, status_running,
                                      status_succeeded)



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
    with pytest.raises(KatibError, match="already exists.*--if-exists follow; if_exists='follow'"):
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
    lau = launcher(load_api(str(kubeconfig(server, tmp_path / "config"))))
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
