"""Metrics sinks: NullSink, MultiSink, sinks_from_env, PushgatewaySink, KatibStdoutSink, JsonlSink.

Unit tests use a tiny recording HTTP server on 127.0.0.1 in place of the Pushgateway; the
integration test pushes to Debian's real Pushgateway and reads back through Prometheus' query API.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import socket
import sys
import threading
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Mapping

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kftune.core.errors import DataError
from kftune.io.jsonl_sink import JsonlSink, read_jsonl_metrics
from kftune.io.katib_stdout import KATIB_DEFAULT_FILTER, KatibStdoutSink
from kftune.io.metrics import MetricsSink, MultiSink, NullSink, sinks_from_env
from kftune.io.pushgateway import PushgatewaySink, label_name, prometheus_name

ENV_VARS = ("KFTUNE_PUSHGATEWAY_URL", "KFTUNE_RUN_ID", "KFTUNE_KATIB_STDOUT")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# A recording stand-in for the Pushgateway (unit tests)
# ---------------------------------------------------------------------------------------------

class FakePushgateway:
    """Records (method, path, body) of every request; answers ``status``."""

    def __init__(self, port: int = 0, status: int = 200) -> None:
        self.requests: list[tuple[str, str, str]] = []
        self.status = status
        self.received = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                with outer.received:  # recorded before the client sees the response
                    outer.requests.append((self.command, self.path, body))
                    outer.received.notify_all()
                self.send_response(outer.status)
                self.end_headers()

            do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int) -> list[tuple[str, str, str]]:
        """Block until ``count`` requests arrived (bounded: fails after 30 s of nothing)."""
        with self.received:
            assert self.received.wait_for(lambda: len(self.requests) >= count, timeout=30), self.requests
            return list(self.requests)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_gateway() -> Iterator[FakePushgateway]:
    gateway = FakePushgateway()
    yield gateway
    gateway.stop()


def _families(sink: PushgatewaySink) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Parse what a push would send: sample name -> {sorted labels: value}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(sink.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


class Recorder:
    """A sink that records calls (for MultiSink tests)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log(self, values: Mapping[str, float], *, step: int | None = None) -> None:
        self.calls.append(("log", dict(values), step))

    def increment(self, name: str, amount: float = 1.0, *, labels: Mapping[str, str] | None = None) -> None:
        self.calls.append(("increment", name, amount, labels))

    def flush(self) -> None:
        self.calls.append(("flush",))

    def close(self) -> None:
        self.calls.append(("close",))


class Broken(Recorder):
    def log(self, values: Mapping[str, float], *, step: int | None = None) -> None:
        raise RuntimeError("disk on fire")

    def close(self) -> None:
        raise OSError("cannot close")


# ---------------------------------------------------------------------------------------------
# NullSink, MultiSink, sinks_from_env
# ---------------------------------------------------------------------------------------------

def test_every_sink_satisfies_the_protocol(tmp_path: Path) -> None:
    sinks = [NullSink(), MultiSink(), KatibStdoutSink(io.StringIO()), JsonlSink(tmp_path / "m.jsonl"),
             PushgatewaySink("http://127.0.0.1:9", grouping={"run": "r"})]
    for sink in sinks:
        assert isinstance(sink, MetricsSink), sink
        sink.close()
    NullSink().log({"dev_score": 1.0}, step=1)  # and does nothing


def test_multisink_fans_out_in_order() -> None:
    a, b = Recorder(), Recorder()
    with MultiSink([a, b]) as multi:
        multi.log({"dev_score": 0.5}, step=2)
        multi.increment("trials", labels={"state": "completed"})
        multi.flush()
    expected = [("log", {"dev_score": 0.5}, 2), ("increment", "trials", 1.0, {"state": "completed"}),
                ("flush",), ("close",)]
    assert a.calls == expected and b.calls == expected
    assert len(multi) == 2


def test_multisink_isolates_a_failing_sink(caplog: pytest.LogCaptureFixture) -> None:
    good = Recorder()
    multi = MultiSink([Broken(), good])
    with caplog.at_level(logging.DEBUG, logger="kftune.io.metrics"):
        for step in range(5):
            multi.log({"dev_score": 0.1 * step}, step=step)  # never raises
        multi.close()
    assert [c[0] for c in good.calls] == ["log"] * 5 + ["close"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "kftune.io.metrics"]
    # one WARNING per (sink, operation); repeats go to DEBUG
    assert len(warnings) == 2
    assert "Broken" in warnings[0].getMessage() and "disk on fire" in warnings[0].getMessage()
    assert "close" in warnings[1].getMessage()
    assert sum(r.levelno == logging.DEBUG and "disk on fire" in r.getMessage() for r in caplog.records) == 4


def test_sinks_from_env_empty_by_default() -> None:
    sinks = sinks_from_env("train")
    assert isinstance(sinks, MultiSink) and len(sinks) == 0
    sinks.log({"dev_score": 1.0})
    sinks.close()


def test_sinks_from_env_pushgateway_grouping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFTUNE_PUSHGATEWAY_URL", "http://127.0.0.1:9")
    with sinks_from_env("train") as sinks:
        [sink] = sinks.sinks
        assert isinstance(sink, PushgatewaySink)
        assert sink.url == "http://127.0.0.1:9" and sink.job == "kftune"
        assert sink.grouping == {"run": "local", "step": "train"}

    monkeypatch.setenv("KFTUNE_RUN_ID", "run-7")
    with sinks_from_env("search", trial="t3") as sinks:
        assert sinks.sinks[0].grouping == {"run": "run-7", "step": "search", "trial": "t3"}
    with sinks_from_env("search", run_id="explicit") as sinks:
        assert sinks.sinks[0].grouping == {"run": "explicit", "step": "search"}


def test_sinks_from_env_jsonl_and_katib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sinks = sinks_from_env("train", jsonl_path=tmp_path / "a" / "m.jsonl", katib_stdout=True)
    assert [type(s) for s in sinks.sinks] == [JsonlSink, KatibStdoutSink]
    sinks.close()
    monkeypatch.setenv("KFTUNE_KATIB_STDOUT", "1")
    assert [type(s) for s in sinks_from_env("train").sinks] == [KatibStdoutSink]
    monkeypatch.setenv("KFTUNE_KATIB_STDOUT", "0")
    assert len(sinks_from_env("train")) == 0


# ---------------------------------------------------------------------------------------------
# PushgatewaySink
# ---------------------------------------------------------------------------------------------

def test_prometheus_names() -> None:
    assert prometheus_name("dev_score") == "kftune_dev_score"
    assert prometheus_name("epoch-seconds") == "kftune_epoch_seconds"
    assert prometheus_name("dev.f1 score") == "kftune_dev_f1_score"
    assert label_name("state") == "state" and label_name("1st-try") == "_1st_try"
    with pytest.raises(ValueError):
        prometheus_name("")


def test_pushgateway_renders_gauges_steps_and_counters() -> None:
    sink = PushgatewaySink("http://127.0.0.1:9", grouping={"run": "r"})
    sink.log({"dev_score": 0.5, "train-loss": 1.25}, step=1)
    sink.log({"dev_score": 0.91}, step=3)
    sink.log({"test_score": float("nan")})  # final value, no step gauge
    sink.increment("trials", labels={"state": "failed"})
    sink.increment("trials", 2, labels={"state": "completed"})
    sink.increment("trials_total", labels={"state": "completed"})  # no _total_total
    sink.increment("checkpoints")
    fams = _families(sink)
    assert fams["kftune_dev_score"] == {(): 0.91}
    assert fams["kftune_dev_score_step"] == {(): 3.0}
    assert fams["kftune_train_loss"] == {(): 1.25} and fams["kftune_train_loss_step"] == {(): 1.0}
    assert math.isnan(fams["kftune_test_score"][()]) and "kftune_test_score_step" not in fams
    assert fams["kftune_trials_total"] == {(("state", "failed"),): 1.0, (("state", "completed"),): 3.0}
    assert fams["kftune_checkpoints_total"] == {(): 1.0}
    assert not [name for name in fams if name.endswith("_created")]
    sink.close()


def test_pushgateway_refuses_caller_errors_atomically() -> None:
    sink = PushgatewaySink("http://127.0.0.1:9", grouping={"run": "r", "step": "train"})
    sink.log({"dev_score": 0.5}, step=1)
    sink.increment("trials", labels={"state": "ok"})
    with pytest.raises(ValueError, match="kftune_dev_score_step"):
        sink.log({"other": 1.0, "dev_score_step": 2.0})
    with pytest.raises(ValueError, match="kftune_dev_score"):
        sink.log({"dev-score": 2.0})
    with pytest.raises(ValueError, match="non-negative"):
        sink.increment("trials", -1, labels={"state": "ok"})
    with pytest.raises(ValueError, match="same label names"):
        sink.increment("trials", labels={"state": "ok", "reason": "oom"})
    with pytest.raises(ValueError, match="grouping key"):
        sink.increment("retries", labels={"run": "x"})
    with pytest.raises(ValueError):
        sink.log({"dev_score": "high"})  # type: ignore[dict-item]
    fams = _families(sink)
    assert set(fams) == {"kftune_dev_score", "kftune_dev_score_step", "kftune_trials_total",  # "other" not left at 0
                         "kftune_step_running"}
    assert fams["kftune_dev_score"] == {(): 0.5}
    sink.close()


def test_pushgateway_pushes_live_then_on_flush_and_close(fake_gateway: FakePushgateway) -> None:
    sink = PushgatewaySink(fake_gateway.url, grouping={"run": "r1", "step": "search", "trial": "a/b"},
                           push_interval=3600)
    sink.log({"dev_score": 0.5}, step=1)
    [(method, path, body)] = fake_gateway.wait_for(1)  # pushed by the background thread, no flush()
    assert method == "POST"
    # grouping key in the URL; a value with '/' is base64-encoded as the Pushgateway requires
    assert path == "/metrics/job/kftune/run/r1/step/search/trial@base64/YS9i"
    assert "kftune_dev_score 0.5" in body

    sink.log({"dev_score": 0.7}, step=2)   # within push_interval: not pushed yet ...
    sink.flush()                            # ... until flush(), synchronously
    assert len(fake_gateway.requests) == 2 and "kftune_dev_score 0.7" in fake_gateway.requests[1][2]
    sink.flush()                            # nothing new: no request
    assert len(fake_gateway.requests) == 2
    sink.increment("trials", labels={"state": "completed"})
    sink.close()
    sink.close()                            # idempotent
    assert len(fake_gateway.requests) == 3 and 'kftune_trials_total{state="completed"} 1.0' in fake_gateway.requests[2][2]
    sink.log({"dev_score": 0.9})            # after close: ignored, nothing sent
    assert len(fake_gateway.requests) == 3
    assert sink.pushes_ok == 3 and sink.pushes_failed == 0


def test_dead_pushgateway_warns_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nobody listens here
    sink = PushgatewaySink(url, grouping={"run": "dead"}, timeout=2.0, push_interval=0)
    with caplog.at_level(logging.DEBUG, logger="kftune.io.pushgateway"):
        for step in range(50):
            sink.log({"dev_score": step / 50}, step=step)
            sink.increment("batches")
            if step % 10 == 0:
                sink.flush()
        sink.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert url in warnings[0].getMessage()
    assert sink.pushes_ok == 0 and sink.pushes_failed >= 6  # 5 flushes + close, plus background tries
    assert any(r.levelno == logging.DEBUG and "failed again" in r.getMessage() for r in caplog.records)


def test_pushgateway_keeps_trying_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    port = _free_port()
    sink = PushgatewaySink(f"http://127.0.0.1:{port}", grouping={"run": "late"}, push_interval=3600)
    with caplog.at_level(logging.INFO, logger="kftune.io.pushgateway"):
        sink.log({"dev_score": 0.25})
        sink.flush()                                   # refused: nobody listens yet
        assert sink.pushes_ok == 0 and sink.pushes_failed >= 1
        gateway = FakePushgateway(port=port)           # the Pushgateway comes up
        try:
            sink.flush()                               # still dirty: the failed values are retried
            assert sink.pushes_ok == 1
            assert "kftune_dev_score 0.25" in gateway.requests[-1][2]
            sink.close()
        finally:
            gateway.stop()
    assert any("works again" in r.getMessage() for r in caplog.records)
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1


def test_pushgateway_http_error_is_a_quiet_failure(caplog: pytest.LogCaptureFixture) -> None:
    gateway = FakePushgateway(status=500)
    try:
        sink = PushgatewaySink(gateway.url, grouping={"run": "r"}, push_interval=3600)
        with caplog.at_level(logging.WARNING, logger="kftune.io.pushgateway"):
            sink.log({"dev_score": 1.0})
            sink.close()
    finally:
        gateway.stop()
    assert sink.pushes_ok == 0 and sink.pushes_failed >= 1
    [warning] = caplog.records
    assert gateway.url in warning.getMessage() and "500" in warning.getMessage()


# ---------------------------------------------------------------------------------------------
# KatibStdoutSink
# ---------------------------------------------------------------------------------------------

def katib_parse(text: str, metrics: list[str]) -> list[tuple[str, str, str]]:
    """Python port of Katib's parseLogsInTextFormat with the default filter: (timestamp, name, value).

    kubeflow/katib pkg/metricscollector/v1beta1/file-metricscollector/file-metricscollector.go
    """
    observations = []
    for line in text.split("\n"):
        if not any(m in line for m in metrics):
            continue
        timestamp = "0001-01-01T00:00:00Z"
        first, sep, _ = line.partition(" ")
        if sep:
            try:
                datetime.fromisoformat(first)  # stands in for Go's time.Parse(time.RFC3339Nano)
                if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", first):
                    timestamp = first
            except ValueError:
                pass
        for match in KATIB_DEFAULT_FILTER.finditer(line):
            name, value = match.group(1).strip(), match.group(2).strip()
            if name in metrics:
                observations.append((timestamp, name, value))
    return observations


VALUES = [0.91, 1e-05, -7.53e-05, -7.53e05, 3, 1e300, 0.0, -0.0, 123456789.125, 2.5e-310, True]


def test_katib_lines_parse_back_exactly() -> None:
    stream = io.StringIO()
    sink = KatibStdoutSink(stream)
    names = [f"m{i}" for i in range(len(VALUES))]
    sink.log(dict(zip(names, VALUES)), step=4)
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(VALUES)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z m0=0\.91", lines[0])
    observations = katib_parse(stream.getvalue(), names)
    assert [name for _, name, _ in observations] == names           # one observation per metric
    for (timestamp, name, text), value in zip(observations, VALUES):
        assert timestamp != "0001-01-01T00:00:00Z"                    # the timestamp was recognised
        assert float(text) == float(value), (name, text, value)       # exact round trip
        assert math.copysign(1, float(text)) == math.copysign(1, float(value))


def test_katib_format_from_the_brief_parses() -> None:
    sink_out = io.StringIO()
    KatibStdoutSink(sink_out).log({"dev_score": 0.91, "train_loss": 0.3})
    [(_, name1, v1), (_, name2, v2)] = katib_parse(sink_out.getvalue(), ["dev_score", "train_loss"])
    assert (name1, v1, name2, v2) == ("dev_score", "0.91", "train_loss", "0.3")


def test_katib_skips_non_finite_and_unparsable_names(caplog: pytest.LogCaptureFixture) -> None:
    # why skipping matters: the default filter reads "dev_score=nan" as dev_score with an EMPTY value
    assert KATIB_DEFAULT_FILTER.search("dev_score=nan").group(2) == ""
    assert KATIB_DEFAULT_FILTER.search("dev.score=0.5").group(1) == "score"
    stream = io.StringIO()
    sink = KatibStdoutSink(stream)
    with caplog.at_level(logging.DEBUG, logger="kftune.io.katib_stdout"):
        sink.log({"dev_score": float("nan"), "loss": float("inf"), "dev.score": 0.5, "ok-name|x": 1.5})
        sink.log({"dev.score": 0.6})
    assert [line.split(" ", 1)[1] for line in stream.getvalue().splitlines()] == ["ok-name|x=1.5"]
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1  # once per bad name
    assert sum(r.levelno == logging.DEBUG and "non-finite" in r.getMessage() for r in caplog.records) == 2


def test_katib_counters_print_nothing_and_default_stream_is_current_stdout(
        capsys: pytest.CaptureFixture[str]) -> None:
    sink = KatibStdoutSink()
    sink.increment("trials", labels={"state": "failed"})
    sink.log({"dev_score": 0.5})
    sink.close()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.rstrip().endswith(" dev_score=0.5")
    assert sink.stream is sys.stdout


# ---------------------------------------------------------------------------------------------
# JsonlSink
# ---------------------------------------------------------------------------------------------

def test_jsonl_records_are_on_disk_at_once(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "metrics.jsonl"
    sink = JsonlSink(path)
    sink.log({"dev_score": 0.91, "train_loss": 0.3}, step=3)
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])  # before flush/close
    assert first["kind"] == "gauge" and first["step"] == 3
    assert first["values"] == {"dev_score": 0.91, "train_loss": 0.3}
    assert datetime.fromisoformat(first["time"]).utcoffset().total_seconds() == 0
    sink.increment("trials", labels={"state": "failed"})
    sink.log({"test_score": float("nan"), "lr": float("inf"), "x": float("-inf")})
    sink.close()
    sink.close()
    sink.log({"dev_score": 1.0})  # after close: dropped, not raised
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():  # strict JSON (no NaN/Infinity tokens), keys sorted
        obj = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
        assert list(obj) == sorted(obj)
    records = read_jsonl_metrics(path)
    assert len(records) == 3
    assert records[1] == {"kind": "counter", "name": "trials", "amount": 1.0, "labels": {"state": "failed"},
                          "time": records[1]["time"]}
    final = records[2]
    assert final["step"] is None and math.isnan(final["values"]["test_score"])
    assert final["values"]["lr"] == math.inf and final["values"]["x"] == -math.inf


def test_jsonl_appends_and_reader_handles_a_cut_last_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with JsonlSink(path) as sink:
        sink.log({"a": 1.0}, step=1)
    with JsonlSink(path) as sink:
        sink.log({"a": 2.0}, step=2)
    assert [r["values"]["a"] for r in read_jsonl_metrics(path)] == [1.0, 2.0]
    with path.open("a", encoding="utf-8") as f:
        f.write('{"kind": "gauge", "val')       # a crash mid-write
    assert len(read_jsonl_metrics(path)) == 2
    path.write_text('{"kind": "gauge", "values": {}}\nnot json\n{"kind": "gauge", "values": {}}\n')
    with pytest.raises(DataError, match="line 2"):
        read_jsonl_metrics(path)


# ---------------------------------------------------------------------------------------------
# Integration: real Pushgateway + Prometheus
# ---------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_pushed_metrics_reach_prometheus(prometheus_stack, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    run = f"it-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("KFTUNE_PUSHGATEWAY_URL", prometheus_stack.pushgateway_url)
    monkeypatch.setenv("KFTUNE_RUN_ID", run)
    sinks = sinks_from_env("train", trial="t/1", jsonl_path=tmp_path / "m.jsonl")
    assert [type(s) for s in sinks.sinks] == [PushgatewaySink, JsonlSink]
    selector = f'run="{run}",step="train",trial="t/1"'

    # visible while the step runs: the background push, no flush()
    sinks.log({"dev_score": 0.5}, step=1)
    [sample] = prometheus_stack.query(f"kftune_dev_score{{{selector}}}")
    assert float(sample["value"][1]) == 0.5
    assert sample["metric"]["job"] == "kftune"

    sinks.log({"dev_score": 0.91, "epoch_seconds": 12.5}, step=3)
    sinks.increment("trials", labels={"state": "completed"})
    sinks.increment("trials", labels={"state": "completed"})
    sinks.close()
    [sample] = prometheus_stack.query(f"kftune_dev_score{{{selector}}} == 0.91")
    assert sample["metric"]["run"] == run
    [step] = prometheus_stack.query(f"kftune_dev_score_step{{{selector}}} == 3")
    [seconds] = prometheus_stack.query(f"kftune_epoch_seconds{{{selector}}}")
    assert float(seconds["value"][1]) == 12.5
    [trials] = prometheus_stack.query(f'kftune_trials_total{{{selector},state="completed"}} == 2')
    assert trials["metric"]["state"] == "completed"
