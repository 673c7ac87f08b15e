"""A :class:`~kftune.io.metrics.MetricsSink` that prints lines for Katib's default StdOut collector.

One line per metric, flushed at once::

    2026-01-01T00:00:00.123Z dev_score=0.91

What this format relies on (checked against kubeflow/katib, ``pkg/metricscollector/v1beta1/
file-metricscollector/file-metricscollector.go`` ``parseLogsInTextFormat`` and
``pkg/metricscollector/v1beta1/common/const.go`` ``DefaultFilter``; the StdOut collector is the file
collector reading the container's redirected stdout+stderr):

- A line is considered only if it contains one of the experiment's metric names as a substring.
- The line is split at its first space; the first field becomes the observation's timestamp when
  Go's ``time.Parse(time.RFC3339Nano, ...)`` accepts it (else Katib records the zero time). We write
  UTC with millisecond precision and a ``Z`` suffix, so several epochs within one second keep their
  order for Katib's ``latest`` metric strategy.
- Every match of ``DefaultFilter`` = ``([\\w|-]+)\\s*=\\s*([+-]?\\d*(\\.\\d+)?([Ee][+-]?\\d+)?)``
  anywhere in the line yields (name = group 1, value = group 2); Go's ``\\w`` is ASCII
  ``[0-9A-Za-z_]``. The value is kept as text and later parsed as a float.

Consequences, and what this sink does about them:

- Values are written with Python's ``repr(float)`` (shortest round-trip: ``0.91``, ``1e-05``,
  ``-7.53e+05``, ``3.0``), which the value group matches in full.
- Non-finite values (``nan``, ``inf``) would match with an *empty* value (``dev_score=nan`` ->
  ``("dev_score", "")``), so they are not printed; they are logged at DEBUG. A trial whose objective
  is never printed is recorded by Katib as ``unavailable``, which is the right outcome for a
  diverged run.
- A name that the name group cannot match in full (``dev.score`` would be read as ``score``) is not
  printed either; it is logged once at WARNING.
- Counters (``increment``) are not Katib metrics and are not printed.

Because Katib also reads stderr, steps should not log their objective as ``name=value`` text in
ordinary log messages, or Katib will count it twice (with the zero timestamp).
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
from datetime import datetime, timezone
from typing import Mapping, TextIO

log = logging.getLogger(__name__)

#: Katib's ``DefaultFilter`` (see the module docstring); ``re.ASCII`` makes ``\w``/``\d`` match like Go's.
KATIB_DEFAULT_FILTER = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)", re.ASCII)
_KATIB_NAME = re.compile(r"[\w|-]+", re.ASCII)


def rfc3339_now() -> str:
    """The current UTC time as RFC 3339 with milliseconds: ``2026-01-01T00:00:00.123Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_line(name: str, value: float, timestamp: str) -> str | None:
    """The line for one metric, or ``None`` when Katib could not parse it back (see module docstring)."""
    value = float(value)
    if not _KATIB_NAME.fullmatch(name) or not math.isfinite(value):
        return None
    return f"{timestamp} {name}={value!r}"


class KatibStdoutSink:
    """Print ``<RFC3339 UTC time> name=value`` lines (see the module docstring).

    ``stream`` defaults to whatever ``sys.stdout`` is at the time of each write (so test capture
    and redirection work). Each ``log()`` writes and flushes immediately; ``flush()`` flushes the
    stream; ``close()`` never closes the stream (it is not ours). Thread-safe.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def log(self, values: Mapping[str, float], *, step: int | None = None) -> None:
        """Print one line per finite value with a Katib-parsable name; ``step`` is not printed
        (Katib orders observations by timestamp)."""
        timestamp = rfc3339_now()
        lines = []
        for name, value in values.items():
            line = format_line(name, value, timestamp)
            if line is not None:
                lines.append(line)
            elif not _KATIB_NAME.fullmatch(name):
                if name not in self._warned:
                    self._warned.add(name)
                    log.warning("metric name %r cannot be read by Katib's default metrics filter "
                                "(allowed: letters, digits, _, -, |); not printed", name)
            else:
                log.debug("not printing non-finite %s=%r for Katib (it would parse as an empty value)",
                          name, value)
        if lines:
            with self._lock:
                stream = self.stream
                stream.write("".join(line + "\n" for line in lines))
                stream.flush()

    def increment(self, name: str, amount: float = 1.0, *, labels: Mapping[str, str] | None = None) -> None:
        """Counters are not Katib metrics: nothing is printed."""

    def flush(self) -> None:
        with self._lock:
            self.stream.flush()

    def close(self) -> None:
        self.flush()
