"""``kftune schedule`` against a loopback server that speaks the KFP v2beta1 REST API."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from kftune.commands import schedule
from tests.fixtures.kfp_api import API, FakeKFP, kfp_api  # noqa: F401 - the fixture

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trec6.yaml"


def _err_lines(captured: pytest.CaptureResult[str]) -> list[str]:
    return [line for line in captured.err.splitlines() if line.strip()]


def test_schedule_creates_a_recurring_run_with_max_concurrency_1_no_catchup_and_warm_start(
        kfp_api: FakeKFP, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    kfp_api.token = "t0k"
    rc = schedule.main([str(EXAMPLE), "--host", kfp_api.url, "--token", "t0k", "--store", "s3://models/trec6",
                        "--cron", "0 0 3 * * *", "--name", "trec6 nightly"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert [(r.method, r.path) for r in kfp_api.requests] == [
        ("GET", f"{API}/healthz"), ("GET", f"{API}/healthz"), ("GET", f"{API}/experiments"),
        ("POST", f"{API}/experiments"), ("POST", f"{API}/recurringruns")]
    assert all(r.headers.get("authorization") == "Bearer t0k" for r in kfp_api.requests)
    body = kfp_api.find("POST", f"{API}/recurringruns").json
    assert set(body) == {"display_name", "pipeline_spec", "runtime_config", "max_concurrency", "trigger", "mode",
                         "no_catchup", "experiment_id"}
    assert body["display_name"] == "trec6 nightly"
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert body["mode"] == "ENABLE"
    assert kfp_api.experiments[body["experiment_id"]]["display_name"] == "trec6"  # the one just created
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "kftune-gpu"
    params = body["runtime_config"]["parameters"]
    assert params["warm_start"] is True  # each run refines around the earlier runs' best trials
    assert params["run_id"] == ""  # every run gets its own folder: runs/<KFP run id>/
    assert params["store"] == "s3://models/trec6"  # ... under the same store root
    assert json.loads(params["spec"])["metadata"]["name"] == "trec6"
    assert "created recurring run rr-1 ('trec6 nightly', cron '0 0 3 * * *', max concurrency 1, no catch-up, " \
           "warm start on" in out


def test_an_existing_experiment_is_reused_and_warm_start_can_be_turned_off(
        kfp_api: FakeKFP, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    kfp_api.experiments["exp-7"] = {"experiment_id": "exp-7", "display_name": "trec6"}
    rc = schedule.main([str(EXAMPLE), "--host", kfp_api.url, "--store", "s3://b/p", "--cron", "0 30 2 * * 1-5",
                        "--no-warm-start", "--disabled", "--variant", "cpu"])
    assert rc == 0, capsys.readouterr()
    assert kfp_api.calls("POST", f"{API}/experiments") == []
    body = kfp_api.find("POST", f"{API}/recurringruns").json
    assert body["experiment_id"] == "exp-7"
    assert body["mode"] == "DISABLE"
    assert body["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * 1-5"
    assert body["runtime_config"]["parameters"]["warm_start"] is False
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "kftune-cpu"


@pytest.mark.parametrize("cron", ["0 3 * * *", "every day", "0 0 3 * * * *"])
def test_a_cron_expression_without_six_fields_is_refused_before_any_request(
        kfp_api: FakeKFP, capsys: pytest.CaptureFixture[str], cron: str) -> None:  # noqa: F811
    assert schedule.main([str(EXAMPLE), "--host", kfp_api.url, "--store", "s3://b/p", "--cron", cron]) == 2
    lines = _err_lines(capsys.readouterr())
    assert len(lines) == 1 and "is not a 6-field cron expression, seconds first" in lines[0]
    assert kfp_api.requests == []


def test_an_unreachable_host_or_a_rejected_login_creates_nothing(kfp_api: FakeKFP,  # noqa: F811
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    kfp_api.token = "right"
    assert schedule.main([str(EXAMPLE), "--host", kfp_api.url, "--token", "wrong", "--store", "s3://b/p",
                          "--cron", "0 0 3 * * *"]) == 1
    lines = _err_lines(capsys.readouterr())
    assert len(lines) == 1 and "rejected the credentials (HTTP 401" in lines[0]
    assert kfp_api.created == []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert schedule.main([str(EXAMPLE), "--host", f"http://127.0.0.1:{port}", "--store", "s3://b/p",
                          "--cron", "0 0 3 * * *"]) == 1
    lines = _err_lines(capsys.readouterr())
    assert len(lines) == 1 and "cannot reach KFP" in lines[0]
