"""Model server throughput and latency on loopback: ``kftune serve`` against in-process ``predict_records`` (issue 15).

A bounded load on 127.0.0.1, in one run:

- **the model**: a Korean NSMC sentiment classifier (labels 부정 / 긍정), trained through the real corpus and
  train steps on ``--reviews`` training reviews (every k-th review of ``ratings_train.txt``, blank ones
  skipped), morpheme tokenizer (kiwipiepy), the n-gram bag with the model settings of ``examples/nsmc.yaml``
  (learning rate 1e-3, the middle of its search range), ``--epochs`` epochs. It is cached in ``--work``
  (keyed by those settings); ``--model PATH`` serves a given ``model.pt`` instead.
- **the sentences**: the first ``--requests`` non-blank reviews of NSMC's test split (``ratings_test.txt``),
  the same ones at every client level, for every route and for the in-process measurement.
- **the servers**: ``kftune serve`` in a subprocess on 127.0.0.1 and a free port, one per server
  configuration (``--config window=MS,batch=N,threads=T``, repeatable; default the server's own defaults,
  window 5 ms (waited only under load) and batch 32, one worker, with ``--threads`` torch threads). All of them start first (an idle server costs
  memory, not CPU) and are stopped at the end, also on errors and on SIGTERM.
- **rounds**: the machine is shared, and its other load drifts; so every (server, route, client level) is
  measured ``--rounds`` times, round by round in turn, and its latencies are pooled, its requests/s being
  all its requests over all its wall time (each round's figure is kept).
- **the load**: an asyncio load generator in this process, ``C`` clients for each ``C`` of ``--clients``:
  each client is a coroutine with its own keep-alive connection (``--client raw``, the default: a lean HTTP/1.1
  client on asyncio streams, since the load generator shares the cores with the server; ``--client httpx``: its
  own ``httpx.AsyncClient``, where one client with a
  pool shared by 32 coroutines cost the generator 3.8 CPU ms per request here instead of 0.8, and halved the
  throughput) sending its share of the
  ``--requests`` sentences one request at a time (one text per request), after ``--warmup`` unmeasured
  requests at the same concurrency. Routes (``--routes``): ``predict`` (``POST /predict {"text": ...}``) and
  ``v2`` (``POST /v2/models/NAME/infer``, one BYTES input). Per request: latency (send to parsed answer);
  per level: p50 / p99 / mean latency, requests/s (requests / wall time of the level), errors (anything
  but a 200 with a label; must be 0), the mean server micro-batch (``kftune_serving_batch_size`` sum / count
  deltas of ``/metrics``), CPU seconds of the server process (``/proc/PID/stat``, every thread: event loop,
  inference thread, kiwi's workers) and of this process (the load generator), and the server's RSS.
- **in process**: ``predict_records(loaded, texts, batch_size=B)`` on the same sentences, B = 32 and 64, in a
  child process with the server's torch thread count: ``one call`` (all sentences in one call, the way an
  offline job predicts) and ``chunked`` (one call per B sentences, as the server's micro-batches call it),
  texts/s = sentences / wall time, ``--repeats`` passes per measurement, measured before each round and
  after the last one (the median over every pass is the denominator).

The ratio (the issue's measure) is served requests/s / in-process texts/s of the **faster** one-call batch
size (the stricter denominator); the ratios to each batch size and to the chunked calls are in the JSON.
Goal (issue 15): at 32 clients, ratio >= 0.5. Beside it, ``CPU ratio``: in-process CPU ms/text over
server CPU ms/request, the efficiency the server keeps per CPU second, which the other load moves far less;
and the ceiling the measured CPU costs put on the ratio (every core busy with server and load generator).
Every served label is also compared with the in-process label of the same sentence (agreement), and the
in-process labels with the gold ones (accuracy).

The server and the load generator share the machine: pin the server's torch threads (``--threads``, default
1) and read the CPU columns before the throughput. kiwipiepy's analyser starts one worker per CPU (at most
8) in the server and in the in-process child alike.

Usage::

    python benchmarks/serving.py [--model PATH | --work DIR --reviews 15000 --epochs 3] [--requests 2000]
        [--clients 1,8,32] [--routes predict,v2] [--threads 1] [--config window=5,batch=32,workers=1 ...] [--rounds 2]
        [--name serving]
    python benchmarks/serving.py --render benchmarks/results/serving.json

writes ``benchmarks/results/<name>.json`` (every number, the environment and the command) and ``<name>.md``
(a table per client level and the verdict); ``--render`` rebuilds the Markdown from the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CORPORA = (REPO.parent / "shared" / "corpora").resolve()
NSMC_TRAIN = CORPORA / "nsmc" / "ratings_train.txt"
NSMC_TEST = CORPORA / "nsmc" / "ratings_test.txt"
MODULE = "serving"

log = logging.getLogger(MODULE)

GOAL_RATIO = 0.5
GOAL_CLIENTS = 32
IN_PROCESS_BATCH_SIZES = (32, 64)
MODEL_NAME = "nsmc"
LABEL_MAP = {"0": "부정", "1": "긍정"}
# examples/nsmc.yaml's model block; learning rate 1e-3, the log-middle of the spec's search range (5e-4..2e-3).
MODEL_HP = {"document_encoder": "ngram", "ngram_dim": 64, "ngram_buckets": 262144, "word_ngrams": 3,
            "char_ngram_min": 1, "char_ngram_max": 4, "ngram_dropout": 0.0, "ngram_weighting": "nb-idf",
            "dropout": 0.0, "optimizer": "adamw", "weight_decay": 0.0, "mini_batch_size": 32,
            "scheduler": "linear_warmup", "warmup_fraction": 0.0, "max_length": 256, "learning_rate": 1e-3}
ROUTES = ("predict", "v2")


# --------------------------------------------------------------------------------------------------
# Report arithmetic (pure: unit-tested on made-up numbers)
# --------------------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linear between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q={q}: a percentile is between 0 and 100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_summary(latencies_s: Sequence[float], wall_s: float, errors: int) -> dict[str, Any]:
    """Milliseconds (p50, p90, p99, mean, max) of the answered requests, and requests/s over the wall time
    (every request sent, the failed ones included: they are counted, and must be 0)."""
    n = len(latencies_s) + errors
    ms = [x * 1000 for x in latencies_s]
    out: dict[str, Any] = {"requests": n, "errors": errors, "wall_s": wall_s,
                           "requests_per_s": n / wall_s if wall_s > 0 else float("nan")}
    if ms:
        out.update(p50_ms=percentile(ms, 50), p90_ms=percentile(ms, 90), p99_ms=percentile(ms, 99),
                   mean_ms=statistics.fmean(ms), max_ms=max(ms))
    return out


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {series (name and labels as written): value}; comments skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if "}" in value:  # no value after the labels: not a sample line
            continue
        try:
            out[series.strip()] = float(value)
        except ValueError:
            continue
    return out


def batch_stats(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, Any]:
    """Model calls, texts and mean micro-batch size between two ``/metrics`` snapshots."""
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    calls, texts = delta("kftune_serving_batch_size_count"), delta("kftune_serving_batch_size_sum")
    return {"model_calls": int(calls), "texts": int(texts), "mean_batch": texts / calls if calls else None,
            "model_seconds": delta("kftune_serving_batch_duration_seconds_sum")}


def combine(levels: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One (server, route, clients) cell over its rounds: latencies pooled, requests/s = requests / summed
    wall time, /metrics and CPU deltas summed, RSS of the last round (peak: the largest); ``rounds`` keeps
    each round's requests/s, p50, p99 and mean batch."""
    latencies = [x for lv in levels for x in lv["latencies"]]
    summary = latency_summary(latencies, sum(lv["wall_s"] for lv in levels), sum(lv["errors"] for lv in levels))
    calls = sum(lv["batches"]["model_calls"] for lv in levels)
    texts = sum(lv["batches"]["texts"] for lv in levels)
    cpu = [lv.get("server_cpu_s") for lv in levels]
    problems: dict[str, int] = {}
    for lv in levels:
        for k, v in lv.get("problems", {}).items():
            problems[k] = problems.get(k, 0) + v
    rounds = []
    for lv in levels:
        one = latency_summary(lv["latencies"], lv["wall_s"], lv["errors"])
        rounds.append({"requests_per_s": one["requests_per_s"], "p50_ms": one.get("p50_ms"),
                       "p99_ms": one.get("p99_ms"), "mean_batch": lv["batches"]["mean_batch"]})
    return {"summary": summary, "rounds": rounds,
            "batches": {"model_calls": calls, "texts": texts, "mean_batch": texts / calls if calls else None,
                        "model_seconds": sum(lv["batches"]["model_seconds"] for lv in levels)},
            "server_cpu_s": None if any(c is None for c in cpu) else sum(cpu),
            "client_cpu_s": sum(lv["client_cpu_s"] for lv in levels),
            "server_rss_mb": levels[-1].get("server_rss_mb"),
            "server_peak_rss_mb": max((lv.get("server_peak_rss_mb") or 0 for lv in levels), default=None),
            "problems": problems}


def in_process_rate(in_process: Mapping[str, Any], threads: int, mode: str, batch_size: int) -> float | None:
    """Median texts/s of ``mode`` (``one-call`` / ``chunked``) at ``batch_size`` over every pass of every
    in-process measurement with ``threads`` torch threads; ``None`` when not measured."""
    rates = [p["texts_per_s"] for m in in_process.get(str(threads), [])
             for p in m.get("passes", []) if p["mode"] == mode and p["batch_size"] == batch_size]
    return statistics.median(rates) if rates else None


def ratios(served_rps: float, in_process: Mapping[str, Any], threads: int) -> dict[str, Any]:
    """Served requests/s over in-process texts/s: to each mode and batch size, and ``ratio`` to the faster
    one-call batch size (the issue's measure, the stricter denominator)."""
    out: dict[str, Any] = {}
    best = None
    for mode in ("one-call", "chunked"):
        for b in IN_PROCESS_BATCH_SIZES:
            rate = in_process_rate(in_process, threads, mode, b)
            if rate:
                out[f"{mode}-{b}"] = served_rps / rate
                if mode == "one-call" and (best is None or rate > best[1]):
                    best = (b, rate)
    if best is not None:
        out["ratio"], out["denominator"] = served_rps / best[1], {"batch_size": best[0], "texts_per_s": best[1]}
    return out


def in_process_cpu_ms(in_process: Mapping[str, Any], threads: int, batch_size: int) -> float | None:
    """Median CPU ms per text of the one-call passes at ``batch_size`` (every thread of the child)."""
    cpu = [p["cpu_s"] * 1000 / p["texts"] for m in in_process.get(str(threads), [])
           for p in m.get("passes", []) if p["mode"] == "one-call" and p["batch_size"] == batch_size]
    return statistics.median(cpu) if cpu else None


def derive(report: dict[str, Any]) -> dict[str, Any]:
    """Recompute every ratio and the verdict from the report's raw numbers (used on writing and on --render).

    Besides the throughput ratio, ``cpu_ratio`` = in-process CPU ms/text (the denominator's batch size) /
    server CPU ms/request: the share of in-process efficiency the server keeps per CPU second, which the
    machine's other load moves far less than wall-clock throughput; ``ceiling``: see :func:`_ceiling`."""
    in_process = report.get("in_process", {})
    for run in report.get("runs", []):
        threads = run["config"]["threads"]
        run["ratios"] = ratios(run["summary"]["requests_per_s"], in_process, threads)
        denominator = run["ratios"].get("denominator")
        reference = in_process_cpu_ms(in_process, threads, denominator["batch_size"]) if denominator else None
        served = _per_request(run.get("server_cpu_s"), run["summary"]["requests"])
        run["ratios"]["cpu_ratio"] = reference / served if reference and served else None
        run["ratios"]["ceiling"] = _ceiling(run, _cores(report.get("environment", {})))
    goal = [r for r in report.get("runs", []) if r["clients"] == GOAL_CLIENTS]
    rows = []
    for r in goal:
        ratio = r["ratios"].get("ratio")
        errors = r["summary"]["errors"]
        status = ("not measured" if ratio is None else
                  "met" if ratio >= GOAL_RATIO and errors == 0 else "not met")
        rows.append({"config": r["config"]["label"], "route": r["route"], "ratio": ratio, "errors": errors,
                     "status": status})
    primary = next((v for v in rows if v["route"] == "predict"), rows[0] if rows else None)
    best = max((v for v in rows if v["ratio"] is not None), key=lambda v: v["ratio"], default=None)
    report["verdict"] = {"goal": f"served requests/s at {GOAL_CLIENTS} clients >= {GOAL_RATIO}x in-process "
                                 "batched predict_records texts/s", "rows": rows, "primary": primary, "best": best,
                         "status": (primary or {}).get("status", "not run"),
                         "met_by": [f"{v['config']} ({v['route']})" for v in rows if v["status"] == "met"]}
    return report


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

def _f(value: Any, fmt: str = ".1f", none: str = "-") -> str:
    return none if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _busy(model_s: float | None, wall_s: float) -> str:
    return "-" if model_s is None or not wall_s else f"{100 * model_s / wall_s:.0f} %"


def _per_request(seconds: float | None, requests: int) -> float | None:
    return None if seconds is None or not requests else seconds * 1000 / requests


def model_description(model: Mapping[str, Any]) -> str:
    if "reviews" not in model:
        return f"`{model.get('given', model.get('model'))}` (given with --model)"
    splits = model.get("splits") or {}
    return (f"NSMC sentiment (부정 / 긍정), the n-gram bag of examples/nsmc.yaml (learning rate 1e-3), morpheme "
            f"tokenizer; trained {model['epochs']} epochs on {model['reviews']} training reviews (every "
            f"{model['every']}th; train {splits.get('train')} / dev {splits.get('dev')} / held-out "
            f"{splits.get('test')}) in {model['corpus_s'] + model['train_s']:.0f} s, dev accuracy "
            f"{model['dev_score']:.4f}" + ("; cached from an earlier run" if model.get("cached") else ""))


def _cores(env: Mapping[str, Any]) -> Any:
    return env.get("affinity") if isinstance(env.get("affinity"), int) else env.get("cores")


def _ceiling(run: Mapping[str, Any], cores: Any) -> float | None:
    """The most the ratio could be on these CPU costs: every core busy with the server and the load generator
    only, divided by the in-process texts/s of the denominator."""
    denominator = run["ratios"].get("denominator")
    cpu = [run.get("server_cpu_s"), run.get("client_cpu_s")]
    if not denominator or None in cpu or not isinstance(cores, int) or not run["summary"]["requests"]:
        return None
    per_request = sum(cpu) / run["summary"]["requests"]  # type: ignore[arg-type]
    return cores / per_request / denominator["texts_per_s"] if per_request else None


def render_markdown(report: Mapping[str, Any]) -> str:
    env, model, v = report["environment"], report["model"], report["verdict"]
    lines = ["# Model server throughput: `kftune serve` vs in-process `predict_records` (NSMC)", ""]
    primary = v.get("primary")
    if primary is None:
        lines += [f"**Goal (issue 15)**: {v['goal']}: **not run** (no level with {GOAL_CLIENTS} clients).", ""]
    else:
        mark = "met" if primary["status"] == "met" else f"**{primary['status']}**"
        lines.append(f"**Goal (issue 15)**: {v['goal']}: {mark}: **{_f(primary['ratio'], '.2f')}x** "
                     f"({primary['config']}, route {primary['route']}).")
        best = v.get("best")
        if best is not None and (best["config"], best["route"]) != (primary["config"], primary["route"]):
            lines.append(f"Best configuration measured: {best['config']}, route {best['route']}: "
                         f"{_f(best['ratio'], '.2f')}x ({best['status']}).")
        cores = _cores(env)
        ceilings = [(r["config"]["label"], r["route"], r["ratios"].get("ceiling")) for r in report["runs"]
                    if r["clients"] == GOAL_CLIENTS]
        ceilings = [c for c in ceilings if c[2] is not None]
        if ceilings:
            top = max(ceilings, key=lambda c: c[2])
            lines.append(f"On the CPU each request cost here (server + load generator), {cores} cores kept busy all the "
                         f"time would give at most {top[2]:.2f}x ({top[0]}, route {top[1]}; the others lower): "
                         "reaching the goal here needs less CPU per request (server or load generator), not only "
                         "another setting of these knobs.")
        lines.append("")
    lines += [f"- Model: {model_description(model)}.",
              f"- Requests: the first {report['requests']} non-blank reviews of NSMC's test split, one text per "
              f"request, the same sentences at every level, in each of {report.get('rounds', 1)} round(s); "
              f"{report['warmup']} unmeasured warm-up requests before each level. Each client is a coroutine "
              "sending its share one request at a time over its own keep-alive connection ("
              + ("asyncio + httpx" if report.get("client") == "httpx" else
                 "asyncio streams, a lean HTTP/1.1 client: `--client raw`") + "), in the benchmark process.",
              f"- Servers: `kftune serve` on 127.0.0.1: {'; '.join(c['label'] for c in report['configs'])}; torch "
              "threads pinned as stated, kiwipiepy's analyser with one worker per CPU. The load generator runs on "
              f"the same {env['cores']} cores, so every request's client work competes with the server.",
              f"- Machine: {env['cpu_model']}, {env['cores']} cores ({env['affinity']} usable), "
              f"{env['memory_gb']} GB; {env['platform']}; load average {env['load_before']} before, "
              f"{env['load_after']} after (the machine is shared).",
              f"- Versions: {env['versions']}.",
              f"- Command: `{report['command']}` ({_f(report.get('wall_s', 0) / 60, '.1f')} min in all).", ""]
    lines += ["## In-process `predict_records` (same sentences)", "",
              "texts/s = sentences / wall time of the call(s), median over every pass; CPU ms/text is the child "
              "process's (every thread). `one-call`: all sentences in one call; `chunked`: one call per batch.", "",
              "| torch threads | mode | batch size | texts/s (median) | range of the measurements' medians | passes "
              "| CPU ms/text | peak RSS MB |",
              "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for threads, measurements in sorted(report["in_process"].items()):
        rss = max((m.get("peak_rss_mb", 0) for m in measurements), default=None)
        for mode in ("one-call", "chunked"):
            for b in IN_PROCESS_BATCH_SIZES:
                passes = [p for m in measurements for p in m["passes"] if p["mode"] == mode and p["batch_size"] == b]
                if not passes:
                    continue
                cpu = statistics.median(p["cpu_s"] * 1000 / p["texts"] for p in passes)
                each = [statistics.median(p["texts_per_s"] for p in m["passes"] if p["mode"] == mode
                                          and p["batch_size"] == b) for m in measurements]
                lines.append(f"| {threads} | {mode} | {b} | "
                             f"{_f(in_process_rate(report['in_process'], int(threads), mode, b), '.0f')} | "
                             f"{min(each):.0f} - {max(each):.0f} ({len(each)} measurements) | {len(passes)} | "
                             f"{_f(cpu, '.2f')} | {_f(rss, '.0f')} |")
    lines += ["", "The in-process child runs before each round and after the last one; the spread of its "
                  "measurements shows how much the machine's other load moved during the run.", ""]
    for clients in report["clients"]:
        runs = [r for r in report["runs"] if r["clients"] == clients]
        if not runs:
            continue
        lines += [f"## {clients} client{'s' if clients != 1 else ''}", "",
                  "| server | route | p50 ms | p99 ms | mean ms | req/s | req/s by round | mean batch | "
                  "ratio to in-process | CPU ratio | model busy | server CPU ms/req | load-gen CPU ms/req | "
                  "server RSS MB | errors |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                  "| ---: |"]
        for r in runs:
            s, b = r["summary"], r["batches"]
            ratio = r["ratios"].get("ratio")
            ratio_text = _f(ratio, ".2f") + ("x" if ratio is not None else "")
            if clients == GOAL_CLIENTS and ratio is not None:
                ratio_text = f"**{ratio_text}**" + ("" if ratio >= GOAL_RATIO else " (< 0.5x)")
            lines.append(f"| {r['config']['label']} | {r['route']} | {_f(s.get('p50_ms'), '.2f')} | "
                         f"{_f(s.get('p99_ms'), '.2f')} | {_f(s.get('mean_ms'), '.2f')} | {_f(s['requests_per_s'], '.0f')} | "
                         f"{' / '.join(_f(x['requests_per_s'], '.0f') for x in r.get('rounds', []))} | "
                         f"{_f(b.get('mean_batch'), '.1f')} | {ratio_text} | {_f(r['ratios'].get('cpu_ratio'), '.2f')} | "
                         f"{_busy(b.get('model_seconds'), s['wall_s'])} | "
                         f"{_f(_per_request(r.get('server_cpu_s'), s['requests']), '.2f')} | "
                         f"{_f(_per_request(r.get('client_cpu_s'), s['requests']), '.2f')} | "
                         f"{_f(r.get('server_rss_mb'), '.0f')} | {s['errors']} |")
        lines.append("")
    lines += ["## Notes", "",
              "- ratio = served requests/s / in-process texts/s of the faster one-call batch size "
              "(the JSON also has the ratio to each batch size and to the chunked calls). One request carries one "
              "text, so requests/s are texts/s.",
              "- mean batch: texts per model call on the server during the level (`kftune_serving_batch_size` "
              "deltas of `/metrics`).",
              "- req/s by round: every round runs every server, route and client level once, in turn, so that "
              "the machine's other load falls on all of them alike; latencies are pooled over the rounds.",
              "- CPU ratio: in-process CPU ms/text (same batch size as the ratio's denominator) / server CPU "
              "ms/request: the share of in-process predict's efficiency per CPU second that the server keeps (HTTP, "
              "validation, batching and contention for the GIL cost the rest). It moves far less with the machine's "
              "other load than req/s does; it is not the goal's measure.",
              "- model busy: the share of the level's wall time the server's inference thread spent in model calls "
              "(`kftune_serving_batch_duration_seconds` deltas); the rest it waited for the batch window or for "
              "requests.",
              "- server CPU: user + system seconds of the server process during the level (event loop, inference "
              "thread, kiwi workers); load-gen CPU: the same for the benchmark process. Their sum per request "
              f"against the {env['cores']} cores bounds the throughput of this set-up.",
              "- server RSS: after the level (`VmRSS`); its peak over the run (`VmHWM`) is in the JSON."]
    agree = report.get("agreement")
    if agree:
        lines.append(f"- Served labels equal the in-process labels for {agree['equal']} of {agree['compared']} "
                     f"answers; in-process accuracy on these {report['requests']} sentences: "
                     f"{_f(agree.get('accuracy'), '.3f')}.")
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    lines += ["", f"Regenerate: `{report['command']}`; re-render: `python benchmarks/serving.py --render "
                  f"benchmarks/results/{report.get('name', MODULE)}.json`."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], results_dir: Path) -> Path:
    derive(report)
    markdown = render_markdown(report)  # before writing anything: a report that cannot be rendered is not written
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{report.get('name', MODULE)}.json"
    path.write_text(json.dumps(report, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(markdown, encoding="utf-8")
    return path


def rerender(path: Path) -> None:
    """Rewrite a saved report's Markdown (and its derived ratios and verdict) from its raw numbers."""
    report = json.loads(path.read_text(encoding="utf-8"))
    write_report(report, path.parent)


# --------------------------------------------------------------------------------------------------
# Environment, sentences, model
# --------------------------------------------------------------------------------------------------

def environment() -> dict[str, Any]:
    model_name = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity: Any = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = "?"
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        memory = "?"
    versions = []
    for name in ("kftune", "torch", "kserve", "fastapi", "uvicorn", "httpx", "kiwipiepy"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} missing")
    return {"cpu_model": model_name, "cores": os.cpu_count(), "affinity": affinity, "memory_gb": memory,
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": f"Python {platform.python_version()}, " + ", ".join(versions),
            "load_before": _loadavg(), "load_after": None}


def _loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def read_nsmc(path: Path) -> list[tuple[str, str]]:
    """(text, raw label) of an NSMC file (``id<TAB>document<TAB>label`` with a header), blank texts skipped."""
    out = []
    with path.open(encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3 and parts[1].strip():
                out.append((parts[1], parts[2]))
    return out


def model_key(reviews: int, epochs: int) -> str:
    blob = json.dumps({"reviews": reviews, "epochs": epochs, "hp": MODEL_HP, "labels": LABEL_MAP, "seed": 1},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def train_worker(out: Path, reviews: int, epochs: int, threads: int) -> dict[str, Any]:
    """Corpus step + train step on every k-th of NSMC's training reviews (runs in a child process)."""
    from kftune.nlp.config import Hyperparameters, TrainerConfig
    from kftune.steps import corpus as corpus_step
    from kftune.steps import train as train_step

    rows = read_nsmc(NSMC_TRAIN)
    step = max(1, len(rows) // reviews)
    subset = rows[::step][:reviews]
    out.mkdir(parents=True, exist_ok=True)
    source = out / "nsmc-subset.tsv"
    source.write_text("id\tdocument\tlabel\n" + "".join(f"{i}\t{t}\t{y}\n" for i, (t, y) in enumerate(subset)),
                      encoding="utf-8")
    t0 = time.perf_counter()
    corpus_step.run(corpus_step.CorpusConfig(
        out=str(out / "corpus"), uri=str(source), format="tsv", text_columns=("document",), label_map=LABEL_MAP,
        tokenizer="morpheme", allow_unverified=True, seed=1))
    corpus_s = time.perf_counter() - t0
    result = train_step.run(train_step.TrainConfig(
        corpus=str(out / "corpus"), out=str(out / "train"),
        hyperparameters=Hyperparameters.from_mapping(MODEL_HP, "text_classification"),
        trainer=TrainerConfig(max_epochs=epochs, patience=epochs, num_threads=threads, seed=1, device="cpu"),
        handle_signals=False, show_progress=False))
    info = json.loads((out / "corpus" / "corpus.json").read_text(encoding="utf-8"))
    return {"model": result.model_uri, "reviews": len(subset), "every": step, "epochs": result.epochs,
            "dev_score": result.dev_score, "train_s": result.seconds, "corpus_s": corpus_s,
            "splits": {k: v.get("examples") for k, v in info.get("splits", {}).items()}}


def run_child(argv: list[str]) -> dict[str, Any]:
    """A child process of this script; its ``RESULT {json}`` line, and its peak RSS (``ru_maxrss``)."""
    env = {**os.environ, "KFTUNE_PROGRESS": "log", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv], stdout=out,
                                stderr=subprocess.STDOUT, text=True, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[:2]} failed (exit {os.waitstatus_to_exitcode(status)}):\n{text[-3000:]}")
    line = [x for x in text.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def ensure_model(work: Path, reviews: int, epochs: int, threads: int) -> dict[str, Any]:
    d = work / f"model-{model_key(reviews, epochs)}"
    record = d / "model.json"
    if record.exists():
        info = json.loads(record.read_text(encoding="utf-8"))
        if Path(info["model"]).exists():
            log.info("model cached: %s", info["model"])
            return {**info, "cached": True}
    d.mkdir(parents=True, exist_ok=True)
    log.info("training the model on %d NSMC reviews, %d epochs (a few minutes on 2 cores) in %s", reviews, epochs, d)
    info = run_child(["--worker", "train", "--work", str(d), "--reviews", str(reviews), "--epochs", str(epochs),
                      "--threads", str(threads)])
    record.write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info("trained in %.0f s (corpus %.0f s): dev accuracy %.4f", info["train_s"], info["corpus_s"], info["dev_score"])
    return {**info, "cached": False}


# --------------------------------------------------------------------------------------------------
# In-process predict_records (child process)
# --------------------------------------------------------------------------------------------------

def in_process_worker(model: str, texts_file: Path, threads: int, repeats: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from kftune.nlp.model_io import load_model
    from kftune.nlp.predict import predict_records

    texts = json.loads(texts_file.read_text(encoding="utf-8"))
    loaded = load_model(model)
    predict_records(loaded, texts[:256], batch_size=64)  # warm-up: kiwi loaded, first calls paid
    passes, labels = [], None
    for _ in range(repeats):
        for b in IN_PROCESS_BATCH_SIZES:
            for mode in ("one-call", "chunked"):
                wall0, cpu0 = time.perf_counter(), time.process_time()
                if mode == "one-call":
                    records = predict_records(loaded, texts, batch_size=b)
                else:
                    records = [r for i in range(0, len(texts), b) for r in predict_records(loaded, texts[i:i + b],
                                                                                            batch_size=b)]
                wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                passes.append({"mode": mode, "batch_size": b, "texts": len(texts), "wall_s": wall, "cpu_s": cpu,
                               "texts_per_s": len(texts) / wall})
                if labels is None and mode == "one-call":
                    labels = [r["label"] for r in records]
    return {"threads": torch.get_num_threads(), "passes": passes, "labels": labels}


def measure_in_process(model: str, texts_file: Path, threads: int, repeats: int, when: str) -> dict[str, Any]:
    res = run_child(["--worker", "in-process", "--model", model, "--texts", str(texts_file), "--threads", str(threads),
                     "--repeats", str(repeats)])
    res["when"] = when
    best = max(p["texts_per_s"] for p in res["passes"])
    log.info("in-process (%s, %d thread(s)): up to %.0f texts/s, peak RSS %.0f MB", when, threads, best,
             res["peak_rss_mb"])
    return res


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerConfig:
    window_ms: float
    max_batch: int
    threads: int
    workers: int = 1

    @property
    def label(self) -> str:
        label = (f"window {self.window_ms:g} ms, batch <= {self.max_batch}, "
                 f"{self.threads} thread{'s' if self.threads > 1 else ''}")
        return label + (f", {self.workers} workers" if self.workers > 1 else "")

    def args(self) -> list[str]:
        return ["--batch-window-ms", f"{self.window_ms:g}", "--max-batch-size", str(self.max_batch),
                "--threads", str(self.threads), "--workers", str(self.workers)]

    @classmethod
    def parse(cls, text: str, threads: int) -> "ServerConfig":
        """``window=0,batch=32[,threads=1][,workers=1]``; a missing key takes the server default (threads:
        ``--threads``)."""
        values: dict[str, str] = {}
        keys = ("window", "batch", "threads", "workers")
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in keys:
                raise ValueError(f"--config {text!r}: {part!r} is not window=MS, batch=N, threads=T or workers=W")
            values[key.strip()] = value.strip()
        try:
            config = cls(float(values.get("window", 5)), int(values.get("batch", 32)),
                         int(values.get("threads", threads)), int(values.get("workers", 1)))
        except ValueError:
            raise ValueError(f"--config {text!r}: window is a number of ms; batch, threads and workers integers") from None
        if config.window_ms < 0 or config.max_batch < 1 or config.threads < 1 or config.workers < 1:
            raise ValueError(f"--config {text!r}: window >= 0, batch >= 1, threads >= 1 and workers >= 1")
        return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``kftune serve`` on 127.0.0.1 and a free port, ready once ``/v2/health/ready`` answers 200; a context
    manager that always stops it."""

    def __init__(self, model: str, config: ServerConfig, log_path: Path, timeout_s: float = 180):
        self.model, self.config, self.log_path, self.timeout_s = model, config, log_path, timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        import httpx

        self._log = self.log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kftune", "serve", "--model", self.model, "--name", MODEL_NAME, "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", *self.config.args()],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"kftune serve exited {self.process.returncode}:\n{self.output()[-3000:]}")
                try:
                    if httpx.get(f"{self.url}/v2/health/ready", timeout=1, trust_env=False).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            raise RuntimeError(f"kftune serve not ready in {self.timeout_s:.0f} s:\n{self.output()[-3000:]}")
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def cpu_s(self) -> float | None:
        """User + system CPU seconds of the server process so far (every thread)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        except (OSError, AttributeError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)

    def memory_mb(self) -> dict[str, float]:
        out = {}
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) / 1024
        except (OSError, AttributeError):
            pass
        return out


# --------------------------------------------------------------------------------------------------
# The load generator
# --------------------------------------------------------------------------------------------------

def route_codec(route: str) -> tuple[str, Callable[[str], bytes], Callable[[Any], str | None]]:
    """(path, text -> request body, response JSON -> label) of a route."""
    if route == "predict":
        return ("/predict", lambda t: json.dumps({"text": t}, ensure_ascii=False).encode("utf-8"),
                lambda body: body.get("label"))
    if route == "v2":
        def v2_label(body: Any) -> str | None:
            for out in body.get("outputs", []):
                if out.get("name") == "label" and out.get("data"):
                    return out["data"][0]
            return None

        return (f"/v2/models/{MODEL_NAME}/infer",
                lambda t: json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]}]},
                                     ensure_ascii=False).encode("utf-8"), v2_label)
    raise ValueError(f"unknown route {route!r}; choose from {', '.join(ROUTES)}")


class _Answer:
    """The part of an ``httpx.Response`` the load generator reads."""

    def __init__(self, status_code: int, content: bytes):
        self.status_code, self.content = status_code, content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8")

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.content)


class RawSession:
    """A lean HTTP/1.1 client on one keep-alive connection (``--client raw``, the default): the load generator
    shares the machine with the server, and httpx spends about 0.85 ms of CPU per request here, as much as
    half of what the server spends; this one writes a prebuilt request and reads ``Content-Length`` bytes."""

    def __init__(self, base_url: str):
        host_port = base_url.split("://", 1)[1].rstrip("/")
        self.host, _, port = host_port.partition(":")
        self.port = int(port or 80)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> "RawSession":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _request(self, method: str, path: str, body: bytes = b"", content_type: str | None = None) -> _Answer:
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode("latin-1") + body)
        status_line, *header_lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        length = None
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise ValueError(f"{method} {path}: an answer without Content-Length")
        return _Answer(int(status_line.split(" ", 2)[1]), await self.reader.readexactly(length))

    async def post(self, path: str, content: bytes, headers: Mapping[str, str]) -> _Answer:
        return await self._request("POST", path, content, headers.get("content-type"))

    async def get(self, path: str) -> _Answer:
        return await self._request("GET", path)


async def drive(sessions: Sequence[Any], path: str, bodies: Sequence[bytes],
                label_of: Callable[[Any], str | None]) -> dict[str, Any]:
    """Send every body once: client ``c`` (a coroutine with its own connection, ``sessions[c]``) sends
    bodies ``c, c + C, c + 2C, ...`` one after another."""
    import httpx

    n, clients = len(bodies), len(sessions)
    latencies: list[float | None] = [None] * n
    labels: list[str | None] = [None] * n
    problems: dict[str, int] = {}
    headers = {"content-type": "application/json"}

    async def one(c: int) -> None:
        session = sessions[c]
        for i in range(c, n, clients):
            t0 = time.perf_counter()
            try:
                r = await session.post(path, content=bodies[i], headers=headers)
                label = label_of(r.json()) if r.status_code == 200 else None
                problem = None if label is not None else f"HTTP {r.status_code}"
            except (httpx.HTTPError, ValueError, OSError, asyncio.IncompleteReadError) as exc:
                label, problem = None, type(exc).__name__
            latencies[i] = time.perf_counter() - t0
            if problem is None:
                labels[i] = label
            else:
                problems[problem] = problems.get(problem, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(min(clients, n))))
    wall = time.perf_counter() - t0
    ok = [lat for lat, lab in zip(latencies, labels) if lab is not None]
    return {"wall_s": wall, "latencies": ok, "labels": labels, "problems": problems,
            "errors": sum(problems.values())}


async def load_level(server: Server, route: str, texts: Sequence[str], clients: int, warmup: int,
                     client: str = "raw") -> dict[str, Any]:
    """One client level: ``clients`` clients, each with one keep-alive connection (a :class:`RawSession`, or with
    ``client="httpx"`` an ``httpx.AsyncClient``: one shared pool for all of them costs the load generator about
    4x the CPU per request, see the module docstring), ``warmup`` unmeasured requests, then every sentence once."""
    import httpx

    path, encode, label_of = route_codec(route)
    bodies = [encode(t) for t in texts]
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    def session() -> Any:
        if client == "raw":
            return RawSession(server.url)
        return httpx.AsyncClient(base_url=server.url, limits=limits, timeout=httpx.Timeout(60.0), trust_env=False)

    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(session()) for _ in range(clients)]
        if warmup:
            await drive(sessions, path, [bodies[i % len(bodies)] for i in range(max(warmup, clients))], label_of)
        before = parse_metrics((await sessions[0].get("/metrics")).text)
        server_cpu0, client_cpu0 = server.cpu_s(), time.process_time()
        result = await drive(sessions, path, bodies, label_of)
        server_cpu1, client_cpu1 = server.cpu_s(), time.process_time()
        after = parse_metrics((await sessions[0].get("/metrics")).text)
    memory = server.memory_mb()
    return {**result, "batches": batch_stats(before, after),
            "server_cpu_s": None if server_cpu0 is None or server_cpu1 is None else server_cpu1 - server_cpu0,
            "client_cpu_s": client_cpu1 - client_cpu0, "server_rss_mb": memory.get("VmRSS"),
            "server_peak_rss_mb": memory.get("VmHWM")}


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------

def _int_list(p: argparse.ArgumentParser, option: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        p.error(f"{option} {text!r}: give positive integers separated by commas, e.g. 1,8,32")
    if not values or any(v < 1 for v in values):
        p.error(f"{option} {text!r}: give positive integers separated by commas, e.g. 1,8,32")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a kftune model.pt to serve (default: train one in --work, cached)")
    p.add_argument("--work", default=str(REPO / "benchmarks" / ".work" / "serving"),
                   help="scratch directory: the cached model, the sentences, the server logs")
    p.add_argument("--reviews", type=int, default=15000, help="NSMC training reviews for the model (default 15000)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    p.add_argument("--requests", type=int, default=2000, help="requests per client level and route (default 2000)")
    p.add_argument("--warmup", type=int, default=200, help="unmeasured requests before each level (default 200)")
    p.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated (default 1,8,32)")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw",
                   help="load generator: raw (a lean HTTP/1.1 client per connection, default) or httpx")
    p.add_argument("--routes", default="predict", help=f"comma-separated subset of {','.join(ROUTES)} (default predict)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the server (unless a --config says otherwise) and of in-process predict")
    p.add_argument("--config", action="append", metavar="window=MS,batch=N[,threads=T]",
                   help="a server configuration (repeatable; default window=5,batch=32: the server's defaults)")
    p.add_argument("--rounds", type=int, default=2,
                   help="times every server, route and client level is measured, in turn (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="in-process passes per mode and batch size (default 3)")
    p.add_argument("--name", default=MODULE, help="results file name (default serving)")
    p.add_argument("--results", default=str(RESULTS), help="where the report goes (default benchmarks/results)")
    p.add_argument("--render", metavar="REPORT_JSON", help="rebuild the .md of a saved report (nothing is run)")
    p.add_argument("--worker", choices=("train", "in-process"), help=argparse.SUPPRESS)
    p.add_argument("--texts", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):  # a log line per request would cost the load generator's CPU
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.render:
        try:
            rerender(Path(args.render))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            p.error(f"--render {args.render}: not a saved report of this benchmark ({exc!r})")
        return 0
    if args.worker == "train":
        print("RESULT " + json.dumps(train_worker(Path(args.work), args.reviews, args.epochs, args.threads)), flush=True)
        return 0
    if args.worker == "in-process":
        print("RESULT " + json.dumps(in_process_worker(args.model, Path(args.texts), args.threads, args.repeats),
                                     ensure_ascii=False), flush=True)
        return 0

    clients = _int_list(p, "--clients", args.clients)
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    if not routes or any(r not in ROUTES for r in routes):
        p.error(f"--routes {args.routes!r}: choose from {', '.join(ROUTES)}")
    for flag in ("requests", "threads", "repeats", "reviews", "epochs", "rounds"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} {getattr(args, flag)}: must be at least 1")
    if args.warmup < 0:
        p.error(f"--warmup {args.warmup}: must be 0 or more")
    try:
        configs = [ServerConfig.parse(c, args.threads) for c in (args.config or ["window=5,batch=32"])]
    except ValueError as exc:
        p.error(str(exc))
    if args.model and not Path(args.model).exists():
        p.error(f"--model {args.model}: no such file")
    if not NSMC_TEST.exists():
        p.error(f"{NSMC_TEST} not found: the benchmark reads NSMC from ../shared/corpora")
    # SIGTERM ends the run through the finally blocks (every server stopped)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    started = time.time()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = environment()
    command = "python benchmarks/serving.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.model:
        model = {"model": str(Path(args.model).resolve()), "given": args.model}
    else:
        model = ensure_model(work, args.reviews, args.epochs, max(2, args.threads))
    test = read_nsmc(NSMC_TEST)[:args.requests]
    if len(test) < args.requests:
        p.error(f"--requests {args.requests}: NSMC's test split has only {len(test)} non-blank reviews")
    texts, gold = [t for t, _ in test], [LABEL_MAP.get(y, y) for _, y in test]
    texts_file = work / f"sentences-{len(texts)}.json"
    texts_file.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")

    report: dict[str, Any] = {"name": args.name, "command": command, "client": args.client,
                              "requests": len(texts), "warmup": args.warmup,
                              "clients": clients, "routes": routes, "rounds": args.rounds,
                              "goal": {"clients": GOAL_CLIENTS, "ratio": GOAL_RATIO},
                              "configs": [{**asdict(c), "label": c.label} for c in configs],
                              "model": {k: v for k, v in model.items() if k != "labels"}, "environment": env,
                              "in_process": {}, "runs": [], "notes": []}
    thread_counts = sorted({c.threads for c in configs})
    in_process_labels: list[str | None] | None = None

    def in_process(when: str) -> None:
        nonlocal in_process_labels
        for t in thread_counts:
            res = measure_in_process(model["model"], texts_file, t, args.repeats, when)
            in_process_labels = in_process_labels or res.pop("labels")
            res.pop("labels", None)
            report["in_process"].setdefault(str(t), []).append(res)

    served: list[tuple[str | None, str | None]] = []
    levels: dict[tuple[int, str, int], list[dict[str, Any]]] = {}

    def record() -> None:
        report["runs"] = [{"config": {k: report["configs"][i][k] for k in ("window_ms", "max_batch", "threads", "workers", "label")},
                           "route": route, "clients": c, **combine(runs)}
                          for (i, route, c), runs in levels.items()]
        write_report(report, Path(args.results))  # a partial report survives a failure later on

    with contextlib.ExitStack() as stack:
        servers = []
        for i, config in enumerate(configs):  # every server up at once; an idle one costs memory, not CPU
            log.info("starting server %d/%d: %s", i + 1, len(configs), config.label)
            servers.append(stack.enter_context(Server(model["model"], config, work / f"server-{i + 1}.log")))
            report["configs"][i]["rss_at_start_mb"] = servers[-1].memory_mb().get("VmRSS")
        for rnd in range(1, args.rounds + 1):
            in_process(f"before round {rnd}")
            for i, (config, server) in enumerate(zip(configs, servers)):
                for route in routes:
                    for c in clients:
                        level = asyncio.run(load_level(server, route, texts, c, args.warmup, args.client))
                        labels = level.pop("labels")
                        served += list(zip(labels, in_process_labels or [None] * len(labels)))
                        levels.setdefault((i, route, c), []).append(level)
                        one = latency_summary(level["latencies"], level["wall_s"], level["errors"])
                        log.info("round %d, %s, %s, %d client(s): p50 %s ms, p99 %s ms, %.0f req/s, mean batch %s, "
                                 "%d error(s)", rnd, config.label, route, c, _f(one.get("p50_ms"), ".2f"),
                                 _f(one.get("p99_ms"), ".2f"), one["requests_per_s"],
                                 _f(level["batches"]["mean_batch"]), level["errors"])
                        if level["errors"]:
                            log.error("errors: %s (server log %s)", level["problems"], server.log_path)
                        record()
        firsts: dict[str, list[int]] = {}
        for i, server in enumerate(servers):
            server_log = server.output().strip().splitlines()
            report["configs"][i]["server_log"] = server_log[:40]
            heads = [x.strip()[:240] for x in server_log if x and not x[0].isspace()]
            if heads:
                firsts.setdefault(heads[0], []).append(i + 1)
        for first, which in firsts.items():
            report["notes"].append(f"server(s) {', '.join(map(str, which))} (`--log-level warning`) wrote to their "
                                   f"output; the first line: `{first}`")
    in_process(f"after round {args.rounds}")
    record()
    compared = [(s, ref) for s, ref in served if s is not None and ref is not None]
    report["agreement"] = {"compared": len(compared), "equal": sum(s == ref for s, ref in compared),
                           "accuracy": (sum(a == b for a, b in zip(in_process_labels, gold)) / len(gold)
                                        if in_process_labels else None)}
    env["load_after"] = _loadavg()
    report["wall_s"] = time.time() - started
    path = write_report(report, Path(args.results))
    v = report["verdict"]
    primary = v.get("primary") or {}
    log.info("goal (%s): %s (ratio %s); report %s (.md)", v["goal"], v["status"], _f(primary.get("ratio"), ".2f"), path)
    errors = sum(r["summary"]["errors"] for r in report["runs"])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
