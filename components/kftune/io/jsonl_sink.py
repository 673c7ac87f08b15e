"""A :class:`~kftune.io.metrics.MetricsSink` that appends JSON lines to a local file.

One JSON object per call, keys sorted, ``ensure_ascii=False``::

    {"kind": "gauge", "step": 3, "time": "2026-01-01T00:00:00.123456Z", "values": {"dev_score": 0.91}}
    {"amount": 1.0, "kind": "counter", "labels": {"state": "failed"}, "name": "trials", "time": "..."}

``time`` is RFC 3339 UTC with microseconds; ``step`` is ``null`` for a final value. Strict JSON has
no NaN or infinity, so non-finite values are written as the strings ``"nan"``, ``"inf"`` and
``"-inf"`` (``float()`` reads them back; :func:`read_jsonl_metrics` does it for you). The file is
opened in append mode and line-buffered, so every record is on disk (in the OS) when ``log()``
returns and a crashed step leaves every complete line readable; parent directories are created.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from kftune.core.errors import DataError

log = logging.getLogger(__name__)


def _number(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else repr(value)  # 'nan', 'inf', '-inf'


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class JsonlSink:
    """Append one JSON object per ``log()``/``increment()`` call to ``path`` (see the module docstring).

    Raises ``OSError`` at construction when the file cannot be created (a local path the user gave);
    a value that is not a number raises ``TypeError``/``ValueError`` at the call. Thread-safe.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r})"

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
        with self._lock:
            if self._file.closed:
                log.debug("JsonlSink(%s) closed; dropped %s", self.path, line.strip())
                return
            self._file.write(line)

    def log(self, values: Mapping[str, float], *, step: int | None = None) -> None:
        self._write({"kind": "gauge", "time": _now(), "step": None if step is None else int(step),
                     "values": {str(name): _number(value) for name, value in values.items()}})

    def increment(self, name: str, amount: float = 1.0, *, labels: Mapping[str, str] | None = None) -> None:
        self._write({"kind": "counter", "time": _now(), "name": str(name), "amount": _number(amount),
                     "labels": {str(k): str(v) for k, v in (labels or {}).items()}})

    def flush(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()

    def close(self) -> None:
        """Close the file (idempotent); later calls are dropped with a DEBUG log."""
        with self._lock:
            self._file.close()

    def __enter__(self) -> "JsonlSink":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_jsonl_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a file written by :class:`JsonlSink`, with ``"nan"``/``"inf"``/``"-inf"``
    turned back into floats. A last line cut short (a crash mid-write) is skipped with a WARNING;
    any other line that is not JSON raises :class:`~kftune.core.errors.DataError`."""
    records: list[dict[str, Any]] = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                log.warning("%s: skipping an incomplete last line %d", path, number)
                continue
            raise DataError(f"{path}: line {number} is not JSON ({exc}); "
                            "was it written by kftune's JsonlSink?") from exc
        if "values" in record:
            record["values"] = {k: float(v) for k, v in record["values"].items()}
        if "amount" in record:
            record["amount"] = float(record["amount"])
        records.append(record)
    return records
