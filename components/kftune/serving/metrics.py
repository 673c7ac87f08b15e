"""The server's Prometheus metrics, in the default registry (which KServe's ``/metrics`` route exposes
beside its own ``request_*_seconds`` histograms).

Names follow the house convention (``kftune_`` prefix, base units, ``_total`` counters):

- ``kftune_serving_requests_total{route,code}``: every HTTP request, by route family and status code;
- ``kftune_serving_request_errors_total{route,code}``: the 4xx and 5xx among them;
- ``kftune_serving_request_duration_seconds{route}``: request latency, histogram;
- ``kftune_serving_batch_size``: texts per model call (micro-batches), histogram;
- ``kftune_serving_batch_duration_seconds``: seconds per model call, histogram.
"""

from __future__ import annotations

import re

from prometheus_client import Counter, Histogram

REQUESTS = Counter("kftune_serving_requests", "HTTP requests to the model server, by route and status code.",
                   ["route", "code"])
ERRORS = Counter("kftune_serving_request_errors", "HTTP requests answered with a 4xx or 5xx status.",
                 ["route", "code"])
LATENCY = Histogram("kftune_serving_request_duration_seconds", "Model server request latency.", ["route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
BATCH_SIZE = Histogram("kftune_serving_batch_size", "Texts per model call (micro-batch size).",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
BATCH_SECONDS = Histogram("kftune_serving_batch_duration_seconds", "Seconds per model call.",
                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))

_ROUTES = (
    (re.compile(r"^/predict/?$"), "predict"),
    (re.compile(r"^/v1/models/[^/]+:predict$"), "v1_predict"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"), "v2_infer"),
    (re.compile(r"^/(v2/)?health/|^/v2/models/[^/]+(/versions/[^/]+)?/ready$|^/v1/models/[^/]+$|^/$"), "health"),
    (re.compile(r"^/v[12]/models(/[^/]+)?(/versions/[^/]+)?$|^/v2/?$"), "metadata"),
    (re.compile(r"^/metrics$"), "metrics"),
    (re.compile(r"^/(docs|openapi\.json)"), "docs"),
)


def route_family(path: str) -> str:
    """A small, fixed set of route labels (never the raw path: model names would grow the label set)."""
    for pattern, name in _ROUTES:
        if pattern.search(path):
            return name
    return "other"


def observe_batch(size: int, seconds: float) -> None:
    BATCH_SIZE.observe(size)
    BATCH_SECONDS.observe(seconds)
