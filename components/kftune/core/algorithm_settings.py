"""Katib ``algorithmSettings``: ``[{name, value}, ...]`` with string values, read into typed values.

Samplers (``spec.search.algorithm``) and early-stopping rules (``spec.search.earlyStopping``) read their
settings the same way, with :class:`SettingsReader`: unknown names and bad values raise
:class:`~kftune.core.errors.ConfigError` naming the setting, every problem at once. This module sits below
both (:mod:`kftune.core.samplers.base`, :mod:`kftune.core.early_stopping.base`), so neither imports the other.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from kftune.core import limits
from kftune.core.errors import ConfigError, Problem

#: Where the spec keeps the search algorithm's settings, and the early-stopping rule's.
ALGORITHM_SETTINGS_PATH = "spec.search.algorithm.algorithmSettings"
EARLY_STOPPING_SETTINGS_PATH = "spec.search.earlyStopping.algorithmSettings"
#: The upper bound of a float setting that names none of its own (e.g. TPE's ``prior_weight``).
_MAX_FLOAT_SETTING = 1e6


def normalize_settings(settings: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
                       path: str = ALGORITHM_SETTINGS_PATH) -> dict[str, str]:
    """``{name: value}`` from a mapping or Katib's ``[{name, value}, ...]`` list; values as strings."""
    if settings is None:
        return {}
    if isinstance(settings, Mapping):
        items = list(settings.items())
    else:
        items = []
        for i, item in enumerate(settings):
            if not isinstance(item, Mapping) or "name" not in item:
                raise ConfigError([Problem(f"{path}[{i}]", f"expected {{name, value}}, got {item!r}")])
            items.append((item["name"], item.get("value")))
    out: dict[str, str] = {}
    for name, value in items:
        if value is None or isinstance(value, bool):
            raise ConfigError([Problem(f"{path}.{name}", f"{value!r} is not a value; give a string such as \"3\"")])
        out[str(name)] = value if isinstance(value, str) else str(value)
    return out


class SettingsReader:
    """Reads typed values out of ``algorithmSettings``, collecting every problem before raising.

    >>> r = SettingsReader({"gamma": "0.25"}, known=("gamma",), algorithm="tpe")
    >>> r.float("gamma", 0.25, low=0, high=1)
    0.25
    >>> r.done()
    """

    def __init__(self, settings: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None, *,
                 known: Iterable[str], algorithm: str, path: str = ALGORITHM_SETTINGS_PATH):
        self.path, self.algorithm = path, algorithm
        self.problems: list[Problem] = []
        try:
            self.values = normalize_settings(settings, path)
        except ConfigError as exc:
            self.values = {}
            self.problems.extend(exc.problems)
        known = tuple(known)
        for name in self.values:
            if name not in known:
                self.problems.append(Problem(f"{path}.{name}", f"unknown setting for {algorithm}; "
                                             f"known settings: {sorted(known) or 'none'}"))

    def _bad(self, name: str, message: str) -> None:
        self.problems.append(Problem(f"{self.path}.{name}", f"{self.values[name]!r}: {message}"))

    def int(self, name: str, default: int | None, *, minimum: int | None = None, maximum: int | None = None,
            unit: str = "") -> int | None:
        """The setting as an int (``default`` when absent) in ``[minimum, maximum]``; ``unit`` for the message."""
        if name not in self.values:
            return default
        try:
            value = int(self.values[name])
        except ValueError:  # also for more digits than Python converts
            self._bad(name, "is not an integer")
            return default
        units = f" (units: {unit})" if unit else ""
        if minimum is not None and value < minimum:
            self._bad(name, f"must be >= {minimum}{units}")
            return default
        if maximum is not None and value > maximum:
            self._bad(name, f"must be <= {maximum}{units}")
            return default
        return value

    def seed(self, name: str) -> int | None:
        """A seed setting (``random_state``): an int in ``[0, 2**32-1]``, ``None`` when absent."""
        return self.int(name, None, minimum=0, maximum=limits.MAX_SEED, unit="seed (32-bit)")

    def float(self, name: str, default: float | None, *, low: float | None = None, high: float | None = None,
              low_open: bool = True, high_open: bool = False) -> float | None:
        """The setting as a finite float in the interval given (open or closed ends)."""
        if name not in self.values:
            return default
        try:
            value = float(self.values[name])
        except ValueError:
            self._bad(name, "is not a number")
            return default
        if high is None:
            high, high_open = _MAX_FLOAT_SETTING, False
        ok = np.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            lb = "(" if low_open else "["
            hb = ")" if high_open else "]"
            self._bad(name, f"must be a number in {lb}{'-inf' if low is None else low}, "
                            f"{'inf' if high is None else high}{hb}")
            return default
        return value

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        """The setting as one of ``choices``."""
        if name not in self.values:
            return default
        if self.values[name] not in choices:
            self._bad(name, f"must be one of {list(choices)}")
            return default
        return self.values[name]

    def done(self) -> None:
        """Raise :class:`ConfigError` with every problem found so far, if any."""
        if self.problems:
            raise ConfigError(self.problems)


__all__ = ["ALGORITHM_SETTINGS_PATH", "EARLY_STOPPING_SETTINGS_PATH", "SettingsReader", "normalize_settings"]
