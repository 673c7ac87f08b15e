"""The metrics edge: one Protocol, three sinks (Prometheus Pushgateway, Katib stdout lines, JSONL).

Callers log plain names in base units without a prefix (``dev_score``, ``train_loss``,
``learning_rate``, ``epoch_seconds``, ``samples_per_second``); each sink renders them in its own
convention (Prometheus: ``kftune_`` prefix; Katib: ``dev_score=0.91`` lines). A sink never fails a
step: a dead Pushgateway is logged once and the step goes on.
"""

from __future__ import annotations

from typing import Mapping, Protocol, runtime_checkable


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
