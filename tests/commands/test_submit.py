"""``kftune submit`` against a loopback server that speaks the KFP v2beta1 REST API.

No KFP cluster runs here; the fake (tests/fixtures/kfp_api.py) records every request, and these
tests check them field by field: the preflight, the experiment, the run body with the compiled
pipeline and the spec mapped to its parameters, the credentials on every request, and that a failing
host or login stops everything before the first request that creates something.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from kftune.commands import submit
from kftune.core.spec import job_to_dict
from kftune.io.specfile import load_spec
from tests.fixtures.kfp_api import API, FakeKFP, kfp_api  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "trec6.yaml"


def _err_lines(captured: Any) -> list[str]:
    return [line for line in captured.err.splitlines() if line.strip()]


def _spec_file(tmp_path: Path, **resources: Any) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["spec"]["resources"] = {**data["spec"].get("resources", {}), **resources}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_submit_creates_the_experiment_and_the_run_with_the_spec_as_parameters(
        kfp_api: FakeKFP, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    kfp_api.token = "s3cret"
    kfp_api.run_states = ["RUNNING", "RUNNING", "SUCCEEDED"]
    rc = submit.main([str(EXAMPLE), "--host", kfp_api.url, "--token", "s3cret", "--store", "s3://models/tuning",
                      "--run-name", "nightly trec6", "--max-trials", "4", "--wait", "--poll", "0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert [(r.method, r.path) for r in kfp_api.requests] == [
        ("GET", f"{API}/healthz"),      # our preflight
        ("GET", f"{API}/healthz"),      # kfp.Client's own check
        ("GET", f"{API}/experiments"),  # is there an experiment "trec6"?
        ("POST", f"{API}/experiments"),
        ("POST", f"{API}/runs"),
        ("GET", f"{API}/runs/run-1"), ("GET", f"{API}/runs/run-1"), ("GET", f"{API}/runs/run-1")]
    assert all(r.headers.get("authorization") == "Bearer s3cret" for r in kfp_api.requests)
    query = json.loads(kfp_api.requests[2].query["filter"][0])
    assert query["predicates"][0]["key"] == "display_name"
    assert query["predicates"][0].get("stringValue", query["predicates"][0].get("string_value")) == "trec6"
    experiment = kfp_api.find("POST", f"{API}/experiments").json
    assert experiment["display_name"] == "trec6"

    run = kfp_api.find("POST", f"{API}/runs").json
    assert set(run) == {"experiment_id", "display_name", "pipeline_spec", "runtime_config"}
    assert run["display_name"] == "nightly trec6"
    assert run["experiment_id"] in kfp_api.experiments
    assert set(run["pipeline_spec"]) == {"pipeline_spec", "platform_spec"}  # the GPU variant uses kfp-kubernetes
    pipeline = run["pipeline_spec"]["pipeline_spec"]
    assert pipeline["pipelineInfo"]["name"] == "kftune-gpu"
    assert "kubernetes" in run["pipeline_spec"]["platform_spec"]["platforms"]
    params = run["runtime_config"]["parameters"]
    job = load_spec(EXAMPLE)
    assert json.loads(params.pop("spec")) == job_to_dict(job)
    assert params == {"corpus": "TREC_6", "downsample": 1.0, "max_trials": 4, "parallel_trials": 2, "max_epochs": 6,
                      "seed": 1, "store": "s3://models/tuning", "run_id": "", "warm_start": False,
                      "trial_gpus": 1, "final_gpus": 1, "node_selector": {},
                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    # the pipeline has as many search rounds as this search takes (plus the finalists' round)
    suggests = [t for t in pipeline["root"]["dag"]["tasks"] if t.startswith("suggest")]
    assert len(suggests) >= 2
    assert f"created run run-1 ('nightly trec6', pipeline kftune-gpu, {len(suggests) - 1} search rounds" in out
    assert f"{kfp_api.url}/#/runs/details/run-1" in out
    assert "run run-1 RUNNING" in out and "run run-1 SUCCEEDED" in out


def test_cookies_and_a_namespace_reach_every_request_and_an_existing_experiment_is_reused(
        kfp_api: FakeKFP, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    kfp_api.multi_user = True
    kfp_api.experiments["e-1"] = {"experiment_id": "e-1", "display_name": "team-exp", "namespace": "team"}
    spec = _spec_file(tmp_path, trialGPU=0, finalGPU=0)
    rc = submit.main([str(spec), "--host", kfp_api.url + "/", "--cookies", "authservice_session=abc",
                      "--namespace", "team", "--experiment", "team-exp", "--store", "s3://b/p"])
    assert rc == 0, capsys.readouterr()
    assert all(r.headers.get("cookie") == "authservice_session=abc" for r in kfp_api.requests)
    assert "authorization" not in kfp_api.requests[0].headers
    assert kfp_api.calls("POST", f"{API}/experiments") == []
    assert kfp_api.calls("GET", f"{API}/experiments")[0].query["namespace"] == ["team"]
    run = kfp_api.find("POST", f"{API}/runs").json
    assert run["experiment_id"] == "e-1"
    # no GPUs asked for: the CPU pipeline, still with the Secret for the store (a PlatformSpec)
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "kftune-cpu"
    assert "trial_gpus" not in run["runtime_config"]["parameters"]


def test_the_token_can_come_from_the_environment_and_a_failed_run_fails_the_wait(
        kfp_api: FakeKFP, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    kfp_api.token = "from-env"
    kfp_api.run_states = ["FAILED"]
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "from-env")
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp_api.url)
    rc = submit.main([str(EXAMPLE), "--store", "s3://b/p", "--wait", "--poll", "0"])
    captured = capsys.readouterr()
    assert rc == 1
    assert _err_lines(captured) == ["kftune submit: run run-1 ended FAILED"]


def _assert_nothing_created(fake: FakeKFP) -> None:
    assert fake.created == []
    assert {r.path for r in fake.requests} <= {f"{API}/healthz", "/dex/auth"}


@pytest.mark.parametrize("status, token, expected", [
    (200, "wrong", "rejected the credentials (HTTP 401 on /apis/v2beta1/healthz)"),
    (302, None, "redirected /apis/v2beta1/healthz to /dex/auth?redirect=%2Fpipeline (a login page?)"),
    (403, None, "rejected the credentials (HTTP 403"),
    (404, None, "no KFP API at"),
], ids=["bad-token", "login-redirect", "forbidden", "not-kfp"])
def test_a_rejected_login_gives_one_line_and_creates_nothing(
        kfp_api: FakeKFP, capsys: pytest.CaptureFixture[str], status: int, token: str | None,  # noqa: F811
        expected: str) -> None:
    kfp_api.healthz_status = status
    if token is not None:
        kfp_api.token = "right"
    args = [str(EXAMPLE), "--host", kfp_api.url, "--store", "s3://b/p"] + (["--token", token] if token else [])
    assert submit.main(args) == 1
    lines = _err_lines(capsys.readouterr())
    assert len(lines) == 1 and expected in lines[0], lines
    _assert_nothing_created(kfp_api)
    assert len(kfp_api.requests) == 1  # the preflight only: kfp.Client never ran into its 25 s of retries


def test_an_unreachable_host_gives_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert submit.main([str(EXAMPLE), "--host", f"http://127.0.0.1:{port}", "--store", "s3://b/p"]) == 1
    lines = _err_lines(capsys.readouterr())
    assert len(lines) == 1 and lines[0].startswith(f"kftune submit: cannot reach KFP at http://127.0.0.1:{port}:")


def test_a_multi_user_host_needs_a_namespace(kfp_api: FakeKFP, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    kfp_api.multi_user = True
    assert submit.main([str(EXAMPLE), "--host", kfp_api.url, "--store", "s3://b/p"]) == 1
    assert "multi-user installation: give --namespace" in _err_lines(capsys.readouterr())[0]
    _assert_nothing_created(kfp_api)


@pytest.mark.parametrize("extra, resources, expected", [
    (["--variant", "gpu"], {"trialGPU": 0}, "spec.resources.trialGPU"),
    ([], {"gpuResource": "amd.com/gpu"}, "spec.resources.gpuResource"),
    ([], {"trialMemory": "8Gi"}, "spec.resources.trialMemory"),
    (["--max-trials", "-3"], {}, "parameter max_trials"),
    (["--store", "/data/local"], {}, "--store: '/data/local' is not an object store"),
], ids=["gpu-without-gpus", "other-gpu-resource", "memory", "negative-trials", "local-store"])
def test_a_spec_that_cannot_map_gives_one_line_exit_2_and_no_request(
        kfp_api: FakeKFP, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],  # noqa: F811
        resources: dict[str, Any], expected: str) -> None:
    spec = _spec_file(tmp_path, **resources)
    args = [str(spec), "--host", kfp_api.url] + (["--store", "s3://b/p"] if "--store" not in extra else []) + extra
    assert submit.main(args) == 2
    lines = _err_lines(capsys.readouterr())
    assert len(lines) == 1 and "cannot map onto the pipeline" in lines[0] and expected in lines[0], lines
    assert kfp_api.requests == []


def test_the_preflight_answers_without_following_redirects(kfp_api: FakeKFP) -> None:  # noqa: F811
    assert submit.preflight(kfp_api.url) == {"multi_user": False}
    kfp_api.healthz_status = 302
    with pytest.raises(submit.RemoteError, match="redirected"):
        submit.preflight(kfp_api.url)
    assert [r.path for r in kfp_api.requests] == [f"{API}/healthz", f"{API}/healthz"]  # never /dex/auth
