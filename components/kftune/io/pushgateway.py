"""A :class:`~kftune.io.metrics.MetricsSink` that pushes to a Prometheus Pushgateway.

Naming (Prometheus conventions; the caller logs plain base-unit names without a prefix):

- ``log({"dev_score": 0.91}, step=3)`` sets the gauge ``kftune_dev_score`` to 0.91 (the latest
  value wins) and, because a step was given, the gauge ``kftune_dev_score_step`` to 3, so a
  dashboard can show "dev score 0.91 at epoch 3". A value logged with ``step=None`` (a final value)
  leaves the ``_step`` gauge as it was (or absent).
- ``increment("trials", labels={"state": "failed"})`` adds to the counter exposed as
  ``kftune_trials_total{state="failed"}`` (a trailing ``_total`` in the caller's name is not doubled).
- Characters outside ``[a-zA-Z0-9_]`` in names and label names become ``_``
  (``epoch-seconds`` -> ``kftune_epoch_seconds``).

Every series of one sink is pushed under one group: ``job`` plus ``grouping`` (kftune uses
``run``, ``step`` and, for trials, ``trial``; see :func:`kftune.io.metrics.sinks_from_env`).
Prometheus must scrape the Pushgateway with ``honor_labels: true`` so that these labels survive.
Pushes use POST (``pushadd_to_gateway``): they replace this sink's metric names in the group and
leave other names there alone. The group is not deleted at :meth:`PushgatewaySink.close`, so final
values stay visible (the usual batch-job pattern); counters are cumulative per sink, so two
processes must not share a group.

When pushes happen: at :meth:`~PushgatewaySink.flush` and :meth:`~PushgatewaySink.close`
(synchronously), and, so that long steps are visible while they run, from a background thread
at most every ``push_interval`` seconds after :meth:`~PushgatewaySink.log` or
:meth:`~PushgatewaySink.increment` recorded something new. ``log()`` itself never waits on
the network.

Failure contract: a dead, unreachable or refusing Pushgateway never raises. The first failed
push is logged at WARNING with the URL; later failures only at DEBUG, and later pushes keep trying
(a recovery is logged at INFO). Caller errors do raise, at the call: a value that is not a number
(``TypeError``/``ValueError``), a negative counter increment, a counter used with a different set
of label names than before, label names that clash with the grouping key, or two names that map
to the same Prometheus series (``ValueError``).
"""

from __future__ import annotations

import copy
import logging
import math
import re
import threading
from typing import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, pushadd_to_gateway
from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

PREFIX = "kftune_"
DEFAULT_JOB = "kftune"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(name: str) -> str:
    """The Prometheus metric name for a caller's base-unit name: ``dev_score`` -> ``kftune_dev_score``.

    Characters outside ``[a-zA-Z0-9_]`` become ``_``. Raises ``ValueError`` for an empty name.
    """
    if not name:
        raise ValueError("metric name is empty; use a base-unit name such as 'dev_score'")
    return PREFIX + _INVALID.sub("_", name)


def label_name(name: str) -> str:
    """A valid Prometheus label name: invalid characters become ``_``; a leading digit gets ``_``."""
    if not name:
        raise ValueError("label name is empty")
    clean = _INVALID.sub("_", name)
    return "_" + clean if clean[0].isdigit() else clean


RUNNING_GAUGE = "step_running"


class PushgatewaySink:
    """Push gauges and counters to the Pushgateway at ``url`` (see the module docstring).

    ``url`` is ``http://host:9091`` (``host:9091`` means http). ``grouping`` is the grouping key
    (label name -> value; names are sanitized like metric labels). ``timeout`` bounds each HTTP
    push in seconds; ``push_interval`` is the minimum time between background pushes.
    Thread-safe. Call :meth:`close` when the step ends (or use the sink as a context manager):
    the background pusher is a daemon thread, so values recorded after its last push are only
    sent by ``flush()``/``close()``.
    """

    def __init__(self, url: str, *, job: str = DEFAULT_JOB, grouping: Mapping[str, str],
                 timeout: float = 5.0, push_interval: float = 5.0, mark_running: bool = True) -> None:
        if not url:
            raise ValueError("Pushgateway URL is empty; set it like http://pushgateway:9091")
        if timeout <= 0 or push_interval < 0:
            raise ValueError(f"timeout must be > 0 and push_interval >= 0, got {timeout} and {push_interval}")
        self.url = url
        self.job = job
        self.grouping: dict[str, str] = {label_name(k): str(v) for k, v in grouping.items()}
        self.timeout = timeout
        self.push_interval = push_interval
        self._reserved = {"job", "instance", *self.grouping}
        self.registry = CollectorRegistry(auto_describe=True)
        self._gauges: dict[str, tuple[Gauge, str]] = {}
        self._counters: dict[str, tuple[Counter, tuple[str, ...]]] = {}
        self._lock = threading.Lock()        # guards metric creation and the flags below
        self._push_lock = threading.Lock()   # one push at a time
        self._dirty = False
        self._failing = False
        self._warned = False
        self._closed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pushes_ok = 0       # successful pushes (for tests and diagnostics)
        self.pushes_failed = 0   # failed pushes
        self._mark_running = mark_running
        if mark_running:
            # kftune_step_running is 1 while the step runs and 0 once it closed cleanly; a pod that
            # died leaves 1 behind, which the KftuneStepNoProgress alert (manifests/base/monitoring) catches.
            self.log({RUNNING_GAUGE: 1})

    def __repr__(self) -> str:
        return f"PushgatewaySink({self.url!r}, job={self.job!r}, grouping={self.grouping!r})"

    # -- recording ---------------------------------------------------------------------------

    def _gauge(self, prom_name: str, owner: str, documentation: str, created: list[Gauge]) -> Gauge:
        """The gauge ``prom_name``, created on first use (and appended to ``created``); ``owner``
        says what it records, so that two caller names never share one series."""
        entry = self._gauges.get(prom_name)
        if entry is None:
            gauge = Gauge(prom_name, documentation, registry=self.registry)  # ValueError on a clash
            created.append(gauge)
            entry = self._gauges[prom_name] = (gauge, owner)
        if entry[1] != owner:
            raise ValueError(f"{owner} and {entry[1]} both map to the Prometheus series {prom_name}; "
                             f"rename one of them")
        return entry[0]

    def log(self, values: Mapping[str, float], *, step: int | None = None) -> None:
        """Set one gauge per name (and its ``_step`` gauge when ``step`` is given); push soon.

        All or nothing: when one name is refused (``ValueError``), no gauge of this call changes.
        """
        numbers = {name: float(value) for name, value in values.items()}
        step_value = None if step is None else float(step)
        with self._lock:
            if self._closed:
                log.debug("PushgatewaySink.log after close() ignored: %s", numbers)
                return
            updates: list[tuple[Gauge, float]] = []
            created: list[Gauge] = []
            try:
                for name, value in numbers.items():
                    prom = prometheus_name(name)
                    updates.append((self._gauge(prom, f"metric {name!r}", f"kftune {name} (latest value)",
                                                created), value))
                    if step_value is not None:
                        updates.append((self._gauge(prom + "_step", f"the step gauge of {name!r}",
                                                    f"step (epoch or iteration) of the latest {prom}",
                                                    created), step_value))
            except ValueError:
                for gauge in created:  # an unset new gauge would be pushed as 0
                    self.registry.unregister(gauge)
                    self._gauges = {k: v for k, v in self._gauges.items() if v[0] is not gauge}
                raise
            for gauge, value in updates:
                gauge.set(value)
            if updates:
                self._mark_dirty()

    def increment(self, name: str, amount: float = 1.0, *, labels: Mapping[str, str] | None = None) -> None:
        """Add ``amount`` (>= 0) to the counter ``kftune_<name>_total`` with ``labels``; push soon."""
        amount = float(amount)
        if amount < 0 or math.isnan(amount):
            raise ValueError(f"counter {name!r}: increment must be a non-negative number, got {amount}")
        clean = {label_name(k): str(v) for k, v in (labels or {}).items()}
        clash = sorted(set(clean) & self._reserved)
        if clash:
            raise ValueError(f"counter {name!r}: label(s) {clash} clash with the grouping key "
                             f"{sorted(self._reserved)}; rename them")
        names = tuple(sorted(clean))
        prom = prometheus_name(name[:-len("_total")] if name.endswith("_total") else name)
        with self._lock:
            if self._closed:
                log.debug("PushgatewaySink.increment after close() ignored: %s", name)
                return
            entry = self._counters.get(prom)
            if entry is None:
                counter = Counter(prom, f"kftune {name} (count)", labelnames=names, registry=self.registry)
                entry = self._counters[prom] = (counter, names)
            counter, known = entry
            if known != names:
                raise ValueError(f"counter {name!r} was first used with labels {list(known)}, "
                                 f"now with {list(names)}; use the same label names every time")
            (counter.labels(**clean) if names else counter).inc(amount)
            self._mark_dirty()

    def _mark_dirty(self) -> None:  # called with self._lock held
        self._dirty = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._background, name="kftune-pushgateway", daemon=True)
            self._thread.start()
        self._wake.set()

    # -- pushing -----------------------------------------------------------------------------

    def _background(self) -> None:
        """Push whenever something new was recorded, then rest ``push_interval`` seconds."""
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            self._push()
            if self._stop.wait(self.push_interval):
                return

    def render(self) -> bytes:
        """The Prometheus text exposition that a push sends (for diagnostics and tests)."""
        return generate_latest(_WithoutCreated(self.registry))

    def _push(self) -> bool:
        """Push if anything changed since the last successful push. Never raises."""
        with self._push_lock:
            with self._lock:
                if not self._dirty:
                    return True
                self._dirty = False
            try:
                pushadd_to_gateway(self.url, job=self.job, registry=_WithoutCreated(self.registry),
                                   grouping_key=self.grouping, timeout=self.timeout)
            except Exception as exc:  # URLError, HTTPError, OSError, timeouts: never fail a step
                with self._lock:
                    self._dirty = True  # retry on the next push
                self.pushes_failed += 1
                if not self._warned:
                    self._warned = True
                    log.warning("cannot push metrics to the Pushgateway at %s: %s: %s "
                                "(the step goes on; later failures are logged at DEBUG)",
                                self.url, type(exc).__name__, exc)
                else:
                    log.debug("push to %s failed again: %s: %s", self.url, type(exc).__name__, exc)
                self._failing = True
                return False
            self.pushes_ok += 1
            if self._failing:
                self._failing = False
                log.info("pushing metrics to the Pushgateway at %s works again", self.url)
            return True

    def flush(self) -> None:
        """Push now (synchronously) if anything changed since the last successful push."""
        self._push()

    def close(self) -> None:
        """Stop the background pusher and push the final values once more. Idempotent."""
        with self._lock:
            closed = self._closed
        if not closed and self._mark_running:
            self.log({RUNNING_GAUGE: 0})
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join()
        self._push()

    def __enter__(self) -> "PushgatewaySink":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _WithoutCreated:
    """A view of a registry without the ``<counter>_created`` samples that prometheus_client adds:
    pushed, they would become a second, meaningless gauge per counter in Prometheus."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            if metric.type == "counter":
                metric = copy.copy(metric)
                metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric
