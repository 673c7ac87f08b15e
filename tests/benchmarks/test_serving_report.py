"""The serving benchmark's report code on made-up numbers (no server, no training): percentiles, /metrics
deltas, ratios to in-process predict, the verdict for the 0.5x goal, rendering and --render."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "serving.py"
_spec = importlib.util.spec_from_file_location("serving_bench_under_test", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)  # type: ignore[union-attr]


def test_percentile_interpolates_between_ranks_like_numpy():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert bench.percentile(values, 50) == 3.0
    assert bench.percentile(values, 0) == 1.0 and bench.percentile(values, 100) == 5.0
    assert bench.percentile(values, 25) == 2.0
    assert bench.percentile(list(range(1, 101)), 99) == pytest.approx(99.01)  # numpy.percentile(1..100, 99)
    assert bench.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        bench.percentile([], 50)
    with pytest.raises(ValueError):
        bench.percentile([1.0], 101)


def test_latency_summary_in_milliseconds_and_requests_per_second():
    s = bench.latency_summary([0.001] * 98 + [0.010, 0.100], wall_s=0.5, errors=0)
    assert s["requests"] == 100 and s["requests_per_s"] == pytest.approx(200.0)
    assert s["p50_ms"] == pytest.approx(1.0)
    assert s["p99_ms"] == pytest.approx(10.9)  # between the 99th (10 ms) and 100th (100 ms) value
    assert s["max_ms"] == pytest.approx(100.0)
    assert s["mean_ms"] == pytest.approx((98 * 1 + 10 + 100) / 100)


METRICS_BEFORE = """\
# HELP kftune_serving_batch_size Texts per model call (micro-batch size).
# TYPE kftune_serving_batch_size histogram
kftune_serving_batch_size_bucket{le="1.0"} 10.0
kftune_serving_batch_size_count 10.0
kftune_serving_batch_size_sum 10.0
kftune_serving_batch_duration_seconds_sum 0.05
kftune_serving_requests_total{code="200",route="predict"} 10.0
"""
METRICS_AFTER = """\
kftune_serving_batch_size_count 60.0
kftune_serving_batch_size_sum 810.0
kftune_serving_batch_duration_seconds_sum 1.05
kftune_serving_requests_total{code="200",route="predict"} 810.0
"""


def test_metrics_deltas_give_the_mean_server_batch():
    before, after = bench.parse_metrics(METRICS_BEFORE), bench.parse_metrics(METRICS_AFTER)
    assert before['kftune_serving_requests_total{code="200",route="predict"}'] == 10.0
    assert "# HELP kftune_serving_batch_size Texts per model call (micro-batch size)." not in before
    stats = bench.batch_stats(before, after)
    assert stats == {"model_calls": 50, "texts": 800, "mean_batch": 16.0, "model_seconds": pytest.approx(1.0)}
    assert bench.batch_stats(after, after)["mean_batch"] is None  # no model call: no mean


def _level(latencies_ms: list[float], wall_s: float, calls: int, errors: int = 0, cpu: float | None = 1.0) -> dict:
    texts = len(latencies_ms) + errors
    return {"latencies": [x / 1000 for x in latencies_ms], "wall_s": wall_s, "errors": errors,
            "problems": {"HTTP 503": errors} if errors else {},
            "batches": {"model_calls": calls, "texts": texts, "mean_batch": texts / calls, "model_seconds": 0.25},
            "server_cpu_s": cpu, "client_cpu_s": 0.5, "server_rss_mb": 900.0, "server_peak_rss_mb": 910.0}


def test_combine_pools_latencies_and_sums_wall_time_batches_and_cpu_over_rounds():
    a = _level([1.0, 2.0, 3.0, 4.0], wall_s=0.01, calls=2)
    b = _level([5.0, 6.0, 7.0], wall_s=0.03, calls=1, errors=1)
    b["server_rss_mb"], b["server_peak_rss_mb"] = 950.0, 960.0
    c = bench.combine([a, b])
    s = c["summary"]
    assert s["requests"] == 8 and s["errors"] == 1
    assert s["requests_per_s"] == pytest.approx(8 / 0.04)  # not the mean of 400 and 133 req/s
    assert s["p50_ms"] == pytest.approx(4.0) and s["max_ms"] == pytest.approx(7.0)
    assert [r["requests_per_s"] for r in c["rounds"]] == [pytest.approx(400.0), pytest.approx(4 / 0.03)]
    assert c["batches"] == {"model_calls": 3, "texts": 8, "mean_batch": pytest.approx(8 / 3), "model_seconds": 0.5}
    assert (c["server_cpu_s"], c["client_cpu_s"]) == (2.0, 1.0)
    assert (c["server_rss_mb"], c["server_peak_rss_mb"]) == (950.0, 960.0)
    assert c["problems"] == {"HTTP 503": 1}
    assert bench.combine([a, _level([1.0], wall_s=0.01, calls=1, cpu=None)])["server_cpu_s"] is None


def _passes(one_32: float, one_64: float, chunked: float) -> list[dict]:
    return [{"mode": "one-call", "batch_size": 32, "texts": 1000, "wall_s": 1000 / one_32, "cpu_s": 1.0,
             "texts_per_s": one_32},
            {"mode": "one-call", "batch_size": 64, "texts": 1000, "wall_s": 1000 / one_64, "cpu_s": 1.0,
             "texts_per_s": one_64},
            {"mode": "chunked", "batch_size": 32, "texts": 1000, "wall_s": 1000 / chunked, "cpu_s": 1.2,
             "texts_per_s": chunked}]


IN_PROCESS = {"1": [{"when": "before server 1", "passes": _passes(1800, 2000, 1500), "peak_rss_mb": 800.0},
                    {"when": "after server 1", "passes": _passes(1600, 2200, 1500), "peak_rss_mb": 810.0}]}


def test_ratio_uses_the_faster_one_call_batch_size_median_over_all_passes():
    assert bench.in_process_rate(IN_PROCESS, 1, "one-call", 32) == pytest.approx(1700.0)
    assert bench.in_process_rate(IN_PROCESS, 1, "one-call", 64) == pytest.approx(2100.0)
    assert bench.in_process_rate(IN_PROCESS, 2, "one-call", 64) is None
    r = bench.ratios(1050.0, IN_PROCESS, threads=1)
    assert r["ratio"] == pytest.approx(0.5) and r["denominator"] == {"batch_size": 64, "texts_per_s": 2100.0}
    assert r["one-call-32"] == pytest.approx(1050 / 1700) and r["chunked-32"] == pytest.approx(0.7)
    assert "chunked-64" not in r  # not measured
    assert bench.ratios(100.0, IN_PROCESS, threads=2) == {}  # no in-process run at that thread count


def _run(clients: int, rps: float, *, label: str = "window 5 ms, batch <= 32, 1 thread", route: str = "predict",
         errors: int = 0, threads: int = 1) -> dict:
    n = 2000
    return {"route": route, "clients": clients,
            "config": {"window_ms": 5.0, "max_batch": 32, "threads": threads, "label": label},
            "summary": {"requests": n, "errors": errors, "wall_s": n / rps, "requests_per_s": rps, "p50_ms": 3.25,
                        "p90_ms": 5.0, "p99_ms": 12.5, "mean_ms": 3.9, "max_ms": 40.0},
            "batches": {"model_calls": 100, "texts": n, "mean_batch": 20.0, "model_seconds": 0.5 * n / rps},
            "rounds": [{"requests_per_s": rps * 0.9, "p50_ms": 3.0, "p99_ms": 12.0, "mean_batch": 19.0},
                       {"requests_per_s": rps * 1.1, "p50_ms": 3.5, "p99_ms": 13.0, "mean_batch": 21.0}],
            "server_cpu_s": 3.0, "client_cpu_s": 1.5, "server_rss_mb": 900.0, "server_peak_rss_mb": 950.0,
            "problems": {}}


def _report(runs: list[dict]) -> dict:
    return {"name": "serving_test", "command": "python benchmarks/serving.py --requests 2000", "requests": 2000,
            "warmup": 200, "clients": [1, 8, 32], "routes": ["predict"],
            "configs": [{"window_ms": 5.0, "max_batch": 32, "threads": 1, "label": "window 5 ms, batch <= 32, 1 thread"}],
            "model": {"model": "/tmp/model.pt", "given": "/tmp/model.pt"},
            "environment": {"cpu_model": "Made-up CPU", "cores": 2, "affinity": 2, "memory_gb": 8.0,
                            "platform": "Linux", "python": "3.11", "versions": "Python 3.11, torch 2",
                            "load_before": "0.5", "load_after": "1.0"},
            "in_process": IN_PROCESS, "runs": runs, "notes": [], "wall_s": 300.0,
            "agreement": {"compared": 6000, "equal": 6000, "accuracy": 0.85}}


def test_verdict_at_32_clients_met_not_met_and_errors_count():
    report = bench.derive(_report([_run(1, 300.0), _run(8, 800.0), _run(32, 1100.0),
                                   _run(32, 900.0, label="window 0 ms, batch <= 32, 1 thread")]))
    v = report["verdict"]
    assert v["status"] == "met" and v["primary"]["ratio"] == pytest.approx(1100 / 2100)
    assert [row["status"] for row in v["rows"]] == ["met", "not met"]
    assert v["met_by"] == ["window 5 ms, batch <= 32, 1 thread (predict)"]
    # the same throughput with a failed request does not meet the goal
    failed = bench.derive(_report([_run(32, 1100.0, errors=1)]))
    assert failed["verdict"]["status"] == "not met"
    # a run without 32 clients: the goal is not run
    assert bench.derive(_report([_run(1, 300.0)]))["verdict"]["status"] == "not run"


def test_render_writes_a_table_per_level_and_the_verdict_and_rerender_recomputes(tmp_path):
    report = _report([_run(1, 300.0), _run(8, 800.0), _run(32, 840.0),
                      _run(32, 1260.0, label="window 0 ms, batch <= 32, 1 thread")])
    path = bench.write_report(report, tmp_path)
    md = path.with_suffix(".md").read_text(encoding="utf-8")
    assert "**not met**: **0.40x** (window 5 ms, batch <= 32, 1 thread, route predict)" in md
    assert "Best configuration measured: window 0 ms, batch <= 32, 1 thread, route predict: 0.60x (met)." in md
    for heading in ("## 1 client\n", "## 8 clients\n", "## 32 clients\n"):
        assert heading in md
    # CPU ratio: in-process 1.0 CPU ms/text (one-call, batch 64) / server 1.5 CPU ms/request
    assert ("| window 5 ms, batch <= 32, 1 thread | predict | 3.25 | 12.50 | 3.90 | 300 | 270 / 330 | 20.0 | 0.14x | "
            "0.67 | 50 % | 1.50 | 0.75 | 900 | 0 |") in md
    assert "| 840 | 756 / 924 | 20.0 | **0.40x** (< 0.5x) |" in md and "| 20.0 | **0.60x** |" in md
    assert "| 1 | one-call | 64 | 2100 | 2000 - 2200 (2 measurements) | 2 | 1.00 | 810 |" in md
    # ceiling: 2 cores / (1.5 + 0.75 CPU ms per request) = 889 req/s, over 2100 in-process texts/s
    assert "2 cores kept busy all the time would give at most 0.42x" in md
    assert "- Model: `/tmp/model.pt` (given with --model)." in md
    assert "Made-up CPU, 2 cores" in md and "`python benchmarks/serving.py --requests 2000`" in md
    assert "6000 of 6000 answers" in md
    # --render rebuilds the Markdown and the verdict from the saved raw numbers
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved["runs"][2]["summary"]["requests_per_s"] = 1155.0
    saved["verdict"] = {}
    path.write_text(json.dumps(saved), encoding="utf-8")
    subprocess.run([sys.executable, str(_PATH), "--render", str(path)], check=True, capture_output=True)
    again = json.loads(path.read_text(encoding="utf-8"))
    assert again["verdict"]["status"] == "met" and again["verdict"]["primary"]["ratio"] == pytest.approx(0.55)
    assert "Goal (issue 15)**: served requests/s at 32 clients >= 0.5x in-process batched predict_records " \
           "texts/s: met: **0.55x**" in path.with_suffix(".md").read_text(encoding="utf-8")


def test_render_refuses_a_file_that_is_not_a_report(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}", encoding="utf-8")
    done = subprocess.run([sys.executable, str(_PATH), "--render", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "not a saved report of this benchmark" in done.stderr
    assert bad.read_text(encoding="utf-8") == "{}"  # left as it was


def test_server_config_parsing_names_the_bad_part():
    c = bench.ServerConfig.parse("window=2,batch=64", threads=1)
    assert (c.window_ms, c.max_batch, c.threads) == (2.0, 64, 1)
    assert c.args() == ["--batch-window-ms", "2", "--max-batch-size", "64", "--threads", "1", "--workers", "1"]
    assert c.label == "window 2 ms, batch <= 64, 1 thread"
    assert bench.ServerConfig.parse("threads=2", threads=1).label == "window 5 ms, batch <= 32, 2 threads"
    assert bench.ServerConfig.parse("workers=2", threads=1).label == "window 5 ms, batch <= 32, 1 thread, 2 workers"
    with pytest.raises(ValueError, match="'size=3' is not window=MS"):
        bench.ServerConfig.parse("size=3", threads=1)
    with pytest.raises(ValueError, match="batch >= 1"):
        bench.ServerConfig.parse("batch=0", threads=1)
