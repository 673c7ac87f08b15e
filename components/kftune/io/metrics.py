"""The metrics edge: one Protocol, three sinks (Prometheus Pushgateway, Katib stdout lines, JSONL).

Callers log plain names in base units without a prefix (``dev_score``, ``train_loss``,
``learning_rate``, ``epoch_seconds``, ``samples_per_second``); each sink renders them in its own
convention (Prometheus: ``kftune_`` prefix; Katib: ``dev_score=0.91`` lines). A sink never fails a
step: a dead Pushgateway is logged once and the step goes on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, runtime_checkable


@runtime_checkable
class MetricsSink(Protocol):
    def log(self, values: Mapping[str, float], *, step: int | None = None) -> None:
        """Record gauges (the latest value wins), e.g. ``{"dev_score": 0.91, "train_loss": 0.3}``
        at ``step`` (an epoch or an iteration; ``None`` for a final value)."""
        ...

    def increment(self, name: str, amount: float = 1.0, *, labels: Mapping[str, str] | None = None) -> None:
        """Add to a counter (``trials``, state=failed -> ``kftune_trials_total{state="failed"}``)."""
        ...

    def flush(self) -> None:
        """Send what is buffered (a no-op for sinks that write immediately)."""
        ...

    def close(self) -> None: ...


log = logging.getLogger(__name__)

#: Environment variables read by :func:`sinks_from_env`.
ENV_PUSHGATEWAY_URL = "KFTUNE_PUSHGATEWAY_URL"
ENV_RUN_ID = "KFTUNE_RUN_ID"
ENV_KATIB_STDOUT = "KFTUNE_KATIB_STDOUT"
_TRUE = {"1", "true", "yes", "on"}


class NullSink:
    """A sink that drops everything (the default when no metrics destination is configured)."""

    def log(self, values: Mapping[str, float], *, step: int | None = None) -> None:
        pass

    def increment(self, name: str, amount: float = 1.0, *, labels: Mapping[str, str] | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MultiSink:
    """Fan-out to several sinks, in order.

    Contract: every call reaches every sink; an exception raised by one sink is logged (at WARNING,
    with the sink's class name and the operation, once per sink and operation; later ones at DEBUG)
    and never propagates, so a broken metrics destination cannot fail a step or starve the others.
    An empty ``MultiSink`` behaves like :class:`NullSink`.
    """

    def __init__(self, sinks: Iterable[MetricsSink] = ()) -> None:
        self.sinks: tuple[MetricsSink, ...] = tuple(sinks)
        self._warned: set[tuple[int, str]] = set()

    def __len__(self) -> int:
        return len(self.sinks)

    def __repr__(self) -> str:
        return f"MultiSink({list(self.sinks)!r})"

    def _each(self, operation: str, call: Callable[[MetricsSink], None]) -> None:
        for index, sink in enumerate(self.sinks):
            try:
                call(sink)
            except Exception as exc:  # a sink must never fail the step
                key = (index, operation)
                level = logging.DEBUG if key in self._warned else logging.WARNING
                self._warned.add(key)
                log.log(level, "metrics sink %s failed in %s(): %s: %s (metrics continue without it)",
                        type(sink).__name__, operation, type(exc).__name__, exc,
                        exc_info=level == logging.DEBUG)

    def log(self, values: Mapping[str, float], *, step: int | None = None) -> None:
        self._each("log", lambda sink: sink.log(values, step=step))

    def increment(self, name: str, amount: float = 1.0, *, labels: Mapping[str, str] | None = None) -> None:
        self._each("increment", lambda sink: sink.increment(name, amount, labels=labels))

    def flush(self) -> None:
        self._each("flush", lambda sink: sink.flush())

    def close(self) -> None:
        self._each("close", lambda sink: sink.close())

    def __enter__(self) -> "MultiSink":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def sinks_from_env(step: str, *, run_id: str | None = None, trial: str | None = None,
                   jsonl_path: str | Path | None = None, katib_stdout: bool = False) -> MultiSink:
    """The sinks a step should log to, from its arguments and the environment.

    - ``KFTUNE_PUSHGATEWAY_URL`` set (non-empty): a :class:`~kftune.io.pushgateway.PushgatewaySink`
      grouped by ``run`` (``run_id``, else ``KFTUNE_RUN_ID``, else ``"local"``), ``step`` and, when
      given, ``trial``.
    - ``jsonl_path`` given: a :class:`~kftune.io.jsonl_sink.JsonlSink` appending to that file.
    - ``katib_stdout`` true, or ``KFTUNE_KATIB_STDOUT`` one of 1/true/yes/on: a
      :class:`~kftune.io.katib_stdout.KatibStdoutSink` on ``sys.stdout``.

    Always returns a :class:`MultiSink` (empty when nothing is configured), so callers can log
    unconditionally and ``close()`` it when the step ends (it is also a context manager).
    """
    sinks: list[MetricsSink] = []
    url = os.environ.get(ENV_PUSHGATEWAY_URL, "").strip()
    if url:
        from kftune.io.pushgateway import PushgatewaySink

        grouping = {"run": run_id or os.environ.get(ENV_RUN_ID, "").strip() or "local", "step": step}
        if trial is not None:
            grouping["trial"] = str(trial)
        sinks.append(PushgatewaySink(url, grouping=grouping))
    if jsonl_path is not None:
        from kftune.io.jsonl_sink import JsonlSink

        sinks.append(JsonlSink(jsonl_path))
    if katib_stdout or os.environ.get(ENV_KATIB_STDOUT, "").strip().lower() in _TRUE:
        from kftune.io.katib_stdout import KatibStdoutSink

        sinks.append(KatibStdoutSink())
    log.debug("metrics sinks for step %s: %s", step, [type(s).__name__ for s in sinks] or "none")
    return MultiSink(sinks)


def log_final(step: str, values: Mapping[str, float], sinks: MetricsSink | None = None) -> None:
    """Record a step's final values and send them now: through ``sinks`` when the caller gives some
    (the caller closes them), else through :func:`sinks_from_env` for ``step``, opened and closed here."""
    if sinks is not None:
        sinks.log(values)
        sinks.flush()
        return
    with sinks_from_env(step) as own:
        own.log(values)
        own.flush()
