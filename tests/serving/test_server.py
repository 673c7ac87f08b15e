"""`kftune serve` as a real process on 127.0.0.1: every route over HTTP, V1 and V2 checked field by field,
bad input interleaved with good, start-up failures, concurrency (micro-batching) and the metrics."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fixtures.models import NEGATIVE, POSITIVE
from tests.serving.conftest import Server, free_port, start_server, stop_server

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}


def post(server: Server, path: str, body: object, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=30, **kw)


def test_listens_on_loopback_only_by_default(korean_server):
    assert re.search(r"Uvicorn running on http://127\.0\.0\.1:\d+", korean_server.output())
    assert "8081" not in korean_server.output()  # KServe's gRPC server is not started


def test_plain_predict_answers_the_korean_example(korean_server):
    r = post(korean_server, "/predict", {"text": POSITIVE})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["model"] == "nsmc" and body["label"] == "긍정" and body["raw_label"] == "1"
    assert 0.5 < body["score"] <= 1.0 and set(body["probabilities"]) == {"긍정", "부정"}
    assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-4
    assert list(body["probabilities"])[0] == "긍정"  # most probable first
    r = post(korean_server, "/predict", {"texts": [NEGATIVE, POSITIVE], "top_k": 1})
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] == ["부정", "긍정"] and [p["raw_label"] for p in preds] == ["0", "1"]
    assert all(len(p["probabilities"]) == 1 for p in preds)


def test_v1_predict_and_model_routes(korean_server):
    name = korean_server.name
    r = post(korean_server, f"/v1/models/{name}:predict",
             {"instances": [POSITIVE, {"text": NEGATIVE}], "parameters": {"top_k": 2}})
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["predictions"] and len(body["predictions"]) == 2
    first, second = body["predictions"]
    assert set(first) == {"label", "raw_label", "score", "probabilities"}
    assert (first["label"], second["label"]) == ("긍정", "부정")
    assert first["score"] == max(first["probabilities"].values())
    assert httpx.get(f"{korean_server.url}/v1/models").json() == {"models": [name]}
    assert httpx.get(f"{korean_server.url}/v1/models/{name}").json() == {"name": name, "ready": True}


def test_v2_infer_field_by_field(korean_server):
    name = korean_server.name
    request = {"id": "req-7", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                          "data": [NEGATIVE, POSITIVE]}]}
    r = post(korean_server, f"/v2/models/{name}/infer", request)
    assert r.status_code == 200
    body = r.json()
    assert body["model_name"] == name and body["id"] == "req-7"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert list(outputs) == ["label", "score", "probabilities"]
    assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["shape"] == [2]
    assert outputs["label"]["data"] == ["부정", "긍정"]
    assert outputs["score"]["datatype"] == "FP32" and outputs["score"]["shape"] == [2]
    probs = outputs["probabilities"]
    labels = json.loads(probs["parameters"]["labels"])
    assert sorted(labels) == ["긍정", "부정"] and probs["datatype"] == "FP32" and probs["shape"] == [2, 2]
    rows = [probs["data"][0:2], probs["data"][2:4]]
    for row, label, score in zip(rows, outputs["label"]["data"], outputs["score"]["data"]):
        assert abs(sum(row) - 1) < 1e-4 and labels[row.index(max(row))] == label
        assert abs(max(row) - score) < 1e-6
    # [N, 1] is accepted too; a request may ask for some outputs only
    r = post(korean_server, f"/v2/models/{name}/infer",
             {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [POSITIVE]}],
              "outputs": [{"name": "label"}]})
    assert [o["name"] for o in r.json()["outputs"]] == ["label"] and r.json()["outputs"][0]["data"] == ["긍정"]


def test_v2_metadata_and_health(korean_server):
    url, name = korean_server.url, korean_server.name
    meta = httpx.get(f"{url}/v2/models/{name}").json()
    assert meta["name"] == name and meta["platform"] == ""
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                               {"name": "score", "datatype": "FP32", "shape": [-1]},
                               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{url}/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    assert httpx.get(f"{url}/v2").json()["name"]  # server metadata
    # one model per server: the repository routes that would unload it are not there
    assert httpx.post(f"{url}/v2/repository/models/{name}/unload").status_code in (404, 405)


def test_openapi_documents_the_plain_route(korean_server):
    assert httpx.get(f"{korean_server.url}/docs").status_code == 200
    spec = httpx.get(f"{korean_server.url}/openapi.json").json()
    route = spec["paths"]["/predict"]["post"]
    assert route["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictRequest")
    assert {"text", "texts", "top_k"} <= set(spec["components"]["schemas"]["PredictRequest"]["properties"])
    assert "label" in spec["components"]["schemas"]["PredictResponse"]["properties"]
    assert {"/v1/models/{model_name}:predict", "/v2/models/{model_name}/infer"} <= set(spec["paths"])


def _big_text() -> dict:
    return {"text": "가" * (1024 * 1024 // 3 + 1)}  # 1 MB of UTF-8


BAD = [
    # (route, body or raw bytes, headers, status, words the message must contain)
    ("/predict", {"text": ""}, JSON, 400, "empty"),
    ("/predict", {"text": "   "}, JSON, 400, "empty"),
    ("/predict", {}, JSON, 422, "exactly one of"),
    ("/predict", {"txt": "좋아"}, JSON, 422, "txt"),
    ("/predict", {"text": 5}, JSON, 422, "text"),
    ("/predict", {"texts": []}, JSON, 422, "texts"),
    ("/predict", {"texts": ["좋아", ""]}, JSON, 400, "texts[1] is empty"),
    ("/predict", {"text": "좋아", "top_k": 0}, JSON, 422, "top_k"),
    ("/predict", _big_text(), JSON, 400, "characters"),
    ("/predict", b'{"text": "\xff\xfe"}', JSON, 400, "UTF-8"),
    ("/predict", b"not json", JSON, 422, "not valid JSON"),
    ("/predict", b'{"text": "a"}', {"content-type": "text/plain"}, 415, "Content-Type"),
    ("/predict", b"x" * (5 * 1024 * 1024), JSON, 413, "bytes"),
    ("/v1/models/nsmc:predict", {"instances": []}, JSON, 400, "instances"),
    ("/v1/models/nsmc:predict", {"instances": [""]}, JSON, 400, "instances[0] is empty"),
    ("/v1/models/nsmc:predict", {"inputs": ["좋아"]}, JSON, 400, '"instances"'),
    ("/v1/models/nsmc:predict", {"instances": [{"txt": "a"}]}, JSON, 400, 'no "text" field'),
    ("/v1/models/nsmc:predict", b'{"instances": ["a"]}', {"content-type": "text/plain"}, 400, "Content-Type"),
    ("/v1/models/nsmc:predict", b'{"instances": ["\xc3"]}', JSON, 400, "UTF-8"),
    ("/v1/models/other:predict", {"instances": ["좋아"]}, JSON, 404, "other"),
    ("/v2/models/nsmc/infer", {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
     JSON, 400, "datatype FP32"),
    ("/v2/models/nsmc/infer", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a"]}]},
     JSON, 400, "shape [3]"),
    ("/v2/models/nsmc/infer", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 2],
                                           "data": ["a", "b"]}]}, JSON, 400, "shape [1, 2]"),
    ("/v2/models/nsmc/infer", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [""]}]},
     JSON, 400, "empty"),
    ("/v2/models/nsmc/infer", {"inputs": []}, JSON, 400, "no inputs"),
    ("/v2/models/nsmc/infer", {"id": "x"}, JSON, 422, "inputs"),
    ("/v2/models/nsmc/infer", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["좋아"]}],
                               "outputs": [{"name": "logits"}]}, JSON, 400, "logits"),
    ("/v2/models/other/infer", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
     JSON, 404, "other"),
]


def test_bad_input_gets_a_4xx_that_names_the_problem_and_the_server_goes_on(korean_server):
    """Each bad request, then a good one: the bad get a 4xx whose message names the problem, the good
    still get the right answer."""
    for route, body, headers, status, words in BAD:
        if isinstance(body, bytes):
            r = httpx.post(f"{korean_server.url}{route}", content=body, headers=headers, timeout=30)
        else:
            r = httpx.post(f"{korean_server.url}{route}", json=body, headers=headers, timeout=30)
        assert r.status_code == status, (route, body if not isinstance(body, dict) else str(body)[:80], r.text[:300])
        message = r.json()["error"]
        assert words in message, (route, message)
        good = post(korean_server, "/predict", {"text": NEGATIVE})
        assert good.status_code == 200 and good.json()["label"] == "부정"


def test_concurrent_requests_are_micro_batched(korean_server):
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=korean_server.url, timeout=60) as client:
            texts = [POSITIVE if i % 2 else NEGATIVE for i in range(64)]
            return await asyncio.gather(*(client.post("/predict", json={"text": t}) for t in texts))

    def batches() -> tuple[float, float]:
        text = httpx.get(f"{korean_server.url}/metrics").text
        count = float(re.search(r"^kftune_serving_batch_size_count (\S+)$", text, re.M).group(1))
        total = float(re.search(r"^kftune_serving_batch_size_sum (\S+)$", text, re.M).group(1))
        return count, total

    before = batches()
    responses = asyncio.run(run())
    after = batches()
    assert [r.json()["label"] for r in responses] == ["부정" if i % 2 == 0 else "긍정" for i in range(64)]
    calls, texts = after[0] - before[0], after[1] - before[1]
    assert texts == 64 and calls < 64  # several requests shared a model call


def test_metrics_count_requests_errors_and_latency(korean_server):
    post(korean_server, "/predict", {"text": POSITIVE})
    post(korean_server, "/predict", {"text": ""})
    text = httpx.get(f"{korean_server.url}/metrics").text
    assert re.search(r'^kftune_serving_requests_total\{code="200",route="predict"\} [1-9]', text, re.M)
    assert re.search(r'^kftune_serving_request_errors_total\{code="400",route="predict"\} [1-9]', text, re.M)
    assert re.search(r'^kftune_serving_request_duration_seconds_bucket\{le="\+Inf",route="predict"\} [1-9]',
                     text, re.M)
    assert "kftune_serving_batch_duration_seconds_count" in text


@pytest.mark.parametrize("kind", ["missing", "corrupt", "directory without model.pt"])
def test_a_bad_model_uri_fails_at_start_with_one_line(kind, tmp_path):
    target = {"missing": tmp_path / "nope.pt", "corrupt": tmp_path / "model.pt",
              "directory without model.pt": tmp_path / "empty"}[kind]
    if kind == "corrupt":
        target.write_bytes(b"PK\x03\x04 not a model")
    if kind.startswith("directory"):
        target.mkdir()
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "kftune", "serve", "--model", str(target), "--port", str(port)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kftune serve: cannot load the model"), proc.stderr
    assert str(target.name) in lines[0]
    with pytest.raises(httpx.ConnectError):  # it never listened, so it was never ready
        httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)


def test_bad_arguments_exit_2():
    proc = subprocess.run([sys.executable, "-m", "kftune", "serve", "--model", "x.pt", "--name", "Bad Name",
                           "--max-batch-size", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--name" in proc.stderr and "--max-batch-size" in proc.stderr


def test_a_tagger_answers_tags_and_spans(tagger_model, tmp_path):
    server = start_server(tagger_model, tmp_path / "server.log", name="wnut")
    try:
        text = "Barack Obama visited New York yesterday"
        r = post(server, "/predict", {"text": text})
        body = r.json()
        assert r.status_code == 200 and body["tokens"] == text.split()
        assert len(body["tags"]) == len(body["tokens"]) == len(body["tag_scores"])
        for span in body["spans"]:
            assert span["text"] == " ".join(body["tokens"][span["start"]:span["end"]])
        v2 = post(server, "/v2/models/wnut/infer",
                  {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}).json()
        outputs = {o["name"]: o for o in v2["outputs"]}
        assert list(outputs) == ["tokens", "tags", "spans"]
        assert json.loads(outputs["tags"]["data"][0]) == body["tags"]
        assert json.loads(outputs["spans"]["data"][0]) == body["spans"]
        v1 = post(server, "/v1/models/wnut:predict", {"instances": [text]}).json()
        assert v1["predictions"][0]["tags"] == body["tags"]
    finally:
        stop_server(server)


def test_serves_a_model_from_the_object_store(korean_model: Path, s3_env, tmp_path):
    from kftune.io.store import open_store

    open_store(s3_env).put_file("runs/r1/train/model.pt", korean_model)
    server = start_server(f"{s3_env}/runs/r1/train/model.pt", tmp_path / "server.log")  # type: ignore[arg-type]
    try:
        assert post(server, "/predict", {"text": POSITIVE}).json()["label"] == "긍정"
    finally:
        stop_server(server)
