"""Progress on long work: a tqdm bar when stderr is a terminal, periodic log lines otherwise.

Pods and CI have no terminal; there a bar would flood the logs with carriage returns, so the same
call logs ``desc: 40/100 (40%) 12.3 it/s`` at most every ``log_every`` seconds instead.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("kftune.progress")


def _use_bar() -> bool:
    if os.environ.get("KFTUNE_PROGRESS", "").lower() in {"0", "off", "false", "log"}:
        return False
    return sys.stderr.isatty()


class Progress:
    """A progress reporter with the small part of tqdm's API we use: ``update``, ``set_postfix_str``, ``close``."""

    def __init__(self, total: float | None, desc: str, unit: str = "it", log_every: float = 10.0,
                 unit_scale: bool = False):
        self.total, self.desc, self.unit, self.log_every = total, desc, unit, log_every
        self.n = 0.0
        self._postfix = ""
        self._start = time.monotonic()
        self._last = self._start
        self._bar = None
        if _use_bar():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=False,
                             dynamic_ncols=True)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.log_every:
            self._last = now
            self._log_line(now)

    def set_postfix_str(self, text: str) -> None:
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def _log_line(self, now: float) -> None:
        rate = self.n / max(now - self._start, 1e-9)
        done = f"{self.n:g}/{self.total:g} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n:g}"
        extra = f" {self._postfix}" if self._postfix else ""
        log.info("%s: %s %.1f %s/s%s", self.desc, done, rate, self.unit, extra)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable[T], desc: str, total: float | None = None, unit: str = "it",
             log_every: float = 10.0) -> Iterator[T]:
    """Iterate with progress reporting (see the module docstring)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit, log_every) as bar:
        for item in iterable:
            yield item
            bar.update(1)
