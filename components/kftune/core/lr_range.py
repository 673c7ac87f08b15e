"""Leslie Smith's learning-rate range test: schedules, smoothing, the divergence rule and suggestions.

A range test trains a fresh model for ``N`` mini-batches while the learning rate grows from ``start_lr``
to ``end_lr`` (exponentially or linearly), records the loss of every batch, and stops early when the loss
diverges. The curve of loss against learning rate then suggests a learning rate and a ``[base_lr, max_lr]``
range (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", section 3.3: "note the learning
rate value when the accuracy starts to increase and when the accuracy slows, becomes ragged, or starts to
fall"). This module is the pure part: no torch, no I/O. The training loop calls :class:`RangeTestState`
once per batch; :func:`analyze` replays a recorded curve.

What it follows, and where it differs (read in fastai ``callback/schedule.py``, Lightning
``tuner/lr_finder.py``, torch-lr-finder ``lr_finder.py``, Flair <= 0.12 ``trainers/trainer.py``
``find_learning_rate`` and ``visual/training_curves.py`` ``plot_learning_rate``):

* Schedules: ``lr_i = start * (end/start) ** (i/(N-1))`` or ``start + (end-start) * i/(N-1)``, as
  torch-lr-finder does, so the first batch runs at exactly ``start_lr`` and the last at exactly ``end_lr``.
  Flair logs the rate *after* ``scheduler.step()`` (each loss is paired with the next batch's rate).
* Smoothing: the bias-corrected exponential moving average of fastai's ``AvgSmoothLoss`` and Lightning's
  ``_LRCallback`` (``avg = beta*avg + (1-beta)*loss``, ``smoothed = avg / (1 - beta**(i+1))``, beta 0.98),
  so the first smoothed value equals the first loss. Flair leaves the first loss out of the average and
  corrects with the wrong power; torch-lr-finder's ``smooth_f`` is an uncorrected average.
* Divergence: stop when the smoothed loss exceeds ``k`` x the best smoothed loss so far (``k`` = 4 as in
  fastai, Lightning and Flair; torch-lr-finder uses 5) or a loss is not finite. Flair compares against the
  best *raw* loss tensor (``best_loss = loss``), not the smoothed one. Here the ratio test is skipped
  during a short warm-up (Lightning does not test its first step either) so that a few bad early batches
  do not end the test; a non-finite loss always ends it.
* Suggestions: the exponential average that drives the divergence rule lags the raw curve by up to
  ``beta/(1-beta)`` = 49 batches, i.e. several decades of learning rate in a 100-batch test. fastai,
  Lightning and torch-lr-finder (``smooth_f`` 0.05, a lag of up to 19) suggest from such a lagged curve;
  Flair only plots it. Lightning also differentiates it with respect to the *linear* learning rate, i.e.
  divides the log-lr slope by lr, so noise at the small rates dominates. The heuristics here read a
  zero-lag *trend* instead: a 5-point running median (drops isolated spikes) followed by a centred moving
  mean, over the finite part of the curve, with the noisy first and last points skipped (fastai skips the
  first ``N//10`` and last 5, Lightning the first 10 and last 1, Flair's plotter the first 10 and last 5).
  Each heuristic returns a :class:`Suggestion` whose ``lr`` is ``None``, with the reason, when the curve is
  too short, flat, or only rises, instead of an arbitrary point.

The valley
    fastai's ``valley`` takes the longest decreasing subsequence of the (lagged) loss and the point about
    half-way along it, counted in points of the subsequence. A decreasing subsequence happily threads
    through a slowly drifting plateau, which moves the "valley" decades to the left. Here a valley is a
    *descending swing* of the trend found with a zig-zag filter whose tolerance is the larger of
    ``noise_tolerance`` x the trend's noise (the robust spread of the raw values around the trend, divided by
    the square root of the window) and ``min_drop`` x the loss level: the trend falls from a peak to a trough
    and never rises by more than the tolerance on the way. A valley's drop ``D`` is measured from the best
    trend value up to its peak to its trough, so the dip that follows a divergence spike, which only climbs
    back towards an earlier low, improves on nothing and is not a valley. The valley with the largest ``D``
    is taken; when ``D`` does not exceed the tolerance the curve is flat and nothing is suggested. The
    suggestion is where the trend has come down ``valley_fraction`` (2/3) of ``D`` *for good*: the point
    after the last one above that level before the trough, so a noise dip that comes back does not count.

The range (``suggest_range``)
    ``base_lr`` is where the trend has fallen for good by ``range_fractions[0]`` (10 %) of ``D``, and at
    least by the tolerance ("the loss starts falling clearly": the score starts improving); ``max_lr`` is
    where it has fallen for good by ``range_fractions[1]`` (90 %) of ``D`` (just before the minimum, where
    it stops improving). Lower levels are reached later, so ``base_lr <= valley <= max_lr`` always.
    For a maximized metric curve (dev accuracy against the learning rate, Smith's linear variant) the same
    rule reads "where accuracy starts rising" and "where it peaks".

Other heuristics
    ``steepest``: the most negative derivative of the trend with respect to ``log10(lr)`` between the start
    of the analysis window and the valley's trough (fastai ``steep``, Lightning ``suggestion()``).
    ``minimum``: the learning rate at the valley's trough divided by 10 (fastai ``minimum``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from kftune.core import limits
from kftune.core.errors import ConfigError, Problem

log = logging.getLogger(__name__)

Mode = Literal["exponential", "linear"]
MODES: tuple[str, ...] = ("exponential", "linear")
METHODS: tuple[str, ...] = ("valley", "steepest", "minimum")
# The default is the heuristic that won benchmarks/lr_find_check.py on TREC_6 (within 1 point of the
# best of 9 grid learning rates for 3/3 range-test seeds; valley 2/3, landing above the best rate).
DEFAULT_METHOD = "minimum"

# Spec key of every config field, for error messages that name the field as the user wrote it.
_SPEC_KEYS = {
    "start_lr": "startLR", "end_lr": "endLR", "iterations": "iterations", "mode": "mode",
    "smoothing": "smoothing", "divergence_factor": "divergenceFactor",
    "divergence_warmup": "divergenceWarmup", "skip_start": "skipStart", "skip_end": "skipEnd",
    "trend_window": "trendWindow", "noise_tolerance": "noiseTolerance", "min_drop": "minDrop",
    "min_points": "minPoints", "valley_fraction": "valleyFraction", "range_fractions": "rangeFractions",
    "method": "method",
}


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _is_finite(x: object) -> bool:
    """A finite number (an int too large for a float is not)."""
    try:
        return _is_number(x) and math.isfinite(x)  # type: ignore[arg-type]
    except OverflowError:
        return False


def _is_count(x: object, lo: int) -> bool:
    """An integer in ``[lo, MAX_RANGE_TEST_ITERATIONS]``."""
    return (isinstance(x, (int, np.integer)) and not isinstance(x, bool)
            and lo <= x <= limits.MAX_RANGE_TEST_ITERATIONS)


_LR_BOUND = limits.Bound(limits.MIN_RANGE_TEST_LR, limits.MAX_RANGE_TEST_LR, unit="learning rate")
_MAX_FACTOR = 1e6


@dataclass(frozen=True)
class RangeTestConfig:
    """How to run and read one range test. Validated on construction (``ConfigError`` naming the field).

    ``None`` for ``divergence_warmup``, ``skip_start``, ``skip_end`` and ``trend_window`` means "scaled to
    ``iterations``" (see the ``resolved_*`` properties); ``divergence_factor=None`` turns the ratio test off
    (a non-finite loss still ends the test).
    """

    start_lr: float = 1e-7
    end_lr: float = 10.0
    iterations: int = 100
    mode: Mode = "exponential"
    smoothing: float = 0.98
    divergence_factor: float | None = 4.0
    divergence_warmup: int | None = None
    skip_start: int | None = None
    skip_end: int | None = None
    trend_window: int | None = None
    noise_tolerance: float = 6.0
    min_drop: float = 0.02
    min_points: int = 8
    valley_fraction: float = 2 / 3
    range_fractions: tuple[float, float] = (0.1, 0.9)
    method: str = DEFAULT_METHOD

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def problems(self, prefix: str = "lrRangeTest") -> list[Problem]:
        """Every problem with this config, each naming ``<prefix>.<specKey>``, the value and the fix."""
        p: list[Problem] = []

        def bad(name: str, message: str) -> None:
            p.append(Problem(f"{prefix}.{_SPEC_KEYS[name]}" if prefix else _SPEC_KEYS[name], message))

        def learning_rate(name: str) -> bool:
            v = getattr(self, name)
            if not _is_finite(v) or v <= 0:
                bad(name, f"must be a finite number > 0, got {limits.short(v)}")
                return False
            message = _LR_BOUND.problem(v)
            if message:
                bad(name, message)
                return False
            return True

        ok_start, ok_end = learning_rate("start_lr"), learning_rate("end_lr")
        if ok_start and ok_end and self.end_lr <= self.start_lr:
            bad("end_lr", f"must be greater than startLR={self.start_lr:g}, got {self.end_lr:g}")
        if not _is_count(self.iterations, 2):
            bad("iterations", f"must be an integer in [2, {limits.MAX_RANGE_TEST_ITERATIONS}] (units: "
                              f"mini-batches), got {limits.short(self.iterations)}")
        if self.mode not in MODES:
            bad("mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not _is_number(self.smoothing) or not 0 <= self.smoothing < 1:
            bad("smoothing", f"must be in [0, 1) (0 turns smoothing off; 0.98 is usual), got {self.smoothing!r}")
        if self.divergence_factor is not None and (
                not _is_finite(self.divergence_factor) or not 1 < self.divergence_factor <= _MAX_FACTOR):
            bad("divergence_factor", f"must be a finite number > 1 and <= {_MAX_FACTOR:g} (4 is usual) or null "
                                     f"to turn the ratio test off, got {limits.short(self.divergence_factor)}")
        for name in ("divergence_warmup", "skip_start", "skip_end"):
            v = getattr(self, name)
            if v is not None and not _is_count(v, 0):
                bad(name, f"must be an integer in [0, {limits.MAX_RANGE_TEST_ITERATIONS}] (units: mini-batches) "
                          f"or null (scaled to iterations), got {limits.short(v)}")
        tw = self.trend_window
        if tw is not None and (not _is_count(tw, 1) or tw % 2 == 0):
            bad("trend_window", f"must be an odd integer in [1, {limits.MAX_RANGE_TEST_ITERATIONS}] (units: "
                                f"points) or null (scaled to iterations), got {limits.short(tw)}")
        if not _is_finite(self.noise_tolerance) or not 0 <= self.noise_tolerance <= _MAX_FACTOR:
            bad("noise_tolerance", f"must be a finite number in [0, {_MAX_FACTOR:g}] (units: noise standard "
                                   f"deviations), got {limits.short(self.noise_tolerance)}")
        if not _is_number(self.min_drop) or not 0 <= self.min_drop < 1:
            bad("min_drop", f"must be in [0, 1) (a fraction of the loss level), got {self.min_drop!r}")
        if not _is_count(self.min_points, 3):
            bad("min_points", f"must be an integer in [3, {limits.MAX_RANGE_TEST_ITERATIONS}] (units: points), "
                              f"got {limits.short(self.min_points)}")
        if not _is_number(self.valley_fraction) or not 0 < self.valley_fraction < 1:
            bad("valley_fraction", f"must be in (0, 1), got {self.valley_fraction!r}")
        rf = self.range_fractions
        if (not isinstance(rf, (tuple, list)) or len(rf) != 2 or not all(_is_number(x) for x in rf)
                or not 0 <= rf[0] < rf[1] <= 1):
            bad("range_fractions", f"must be two fractions 0 <= low < high <= 1 of the valley's drop, got {rf!r}")
        elif _is_number(self.valley_fraction) and not rf[0] <= self.valley_fraction <= rf[1]:
            bad("valley_fraction", f"must lie within rangeFractions {list(rf)} so that the range contains "
                                   f"the valley suggestion, got {self.valley_fraction!r}")
        if self.method not in METHODS:
            bad("method", f"must be one of {', '.join(METHODS)}, got {self.method!r}")
        return p

    @property
    def resolved_skip_start(self) -> int:
        """Points skipped at the start before suggesting: ``iterations // 10`` unless set (fastai)."""
        return self.iterations // 10 if self.skip_start is None else self.skip_start

    @property
    def resolved_skip_end(self) -> int:
        """Points skipped at the end before suggesting: ``max(1, iterations // 20)`` unless set (5 for 100)."""
        return max(1, self.iterations // 20) if self.skip_end is None else self.skip_end

    @property
    def resolved_divergence_warmup(self) -> int:
        """Batches before the ratio test may fire: the start skip unless set (non-finite always stops)."""
        return self.resolved_skip_start if self.divergence_warmup is None else self.divergence_warmup

    @property
    def resolved_trend_window(self) -> int:
        """Width of the trend's centred mean: ``2*max(2, round(iterations/20)) + 1`` unless set (11 for 100)."""
        if self.trend_window is not None:
            return self.trend_window
        return 2 * max(2, round(self.iterations / 20)) + 1

    def to_dict(self) -> dict[str, Any]:
        """The config under its spec keys (camelCase), JSON-safe."""
        out = {_SPEC_KEYS[f.name]: getattr(self, f.name) for f in fields(self)}
        out["rangeFractions"] = list(self.range_fractions)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "lrRangeTest") -> "RangeTestConfig":
        """Build from spec keys (camelCase); unknown keys are a ``ConfigError`` listing the known ones."""
        by_key = {v: k for k, v in _SPEC_KEYS.items()}
        unknown = sorted(set(data) - set(by_key))
        if unknown:
            raise ConfigError([Problem(f"{prefix}.{k}", f"unknown field; known fields: {', '.join(by_key)}")
                               for k in unknown])
        kwargs: dict[str, Any] = {by_key[k]: v for k, v in data.items()}
        if isinstance(kwargs.get("range_fractions"), list):
            kwargs["range_fractions"] = tuple(kwargs["range_fractions"])
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError([Problem(f"{prefix}.{p.path.split('.', 1)[-1]}", p.message)
                               for p in e.problems]) from None


# --------------------------------------------------------------------------------------------- schedules


def lr_at(i: int, start_lr: float, end_lr: float, iterations: int, mode: Mode = "exponential") -> float:
    """The learning rate of batch ``i`` (0-based): exactly ``start_lr`` at 0 and ``end_lr`` at ``iterations-1``.

    Exponential: ``start * (end/start) ** (i/(N-1))`` (a straight line on a log axis); linear:
    ``start + (end - start) * i/(N-1)``. ``i`` beyond ``N-1`` extrapolates the same formula.
    """
    if iterations < 2:
        raise ConfigError([Problem("lrRangeTest.iterations", f"must be an integer >= 2, got {iterations!r}")])
    if i == 0:
        return float(start_lr)
    if i == iterations - 1:
        return float(end_lr)
    r = i / (iterations - 1)
    if mode == "exponential":
        return float(math.exp(math.log(start_lr) + r * (math.log(end_lr) - math.log(start_lr))))
    if mode == "linear":
        return float(start_lr + r * (end_lr - start_lr))
    raise ConfigError([Problem("lrRangeTest.mode", f"must be one of {', '.join(MODES)}, got {mode!r}")])


def schedule(start_lr: float, end_lr: float, iterations: int, mode: Mode = "exponential") -> np.ndarray:
    """All ``iterations`` learning rates of a range test (see :func:`lr_at`)."""
    cfg = RangeTestConfig(start_lr=start_lr, end_lr=end_lr, iterations=iterations, mode=mode)
    return np.array([lr_at(i, cfg.start_lr, cfg.end_lr, cfg.iterations, cfg.mode) for i in range(iterations)])


# --------------------------------------------------------------------------------------------- smoothing


def smooth(losses: Sequence[float], beta: float = 0.98) -> np.ndarray:
    """Bias-corrected exponential moving average: ``avg_i = beta*avg_{i-1} + (1-beta)*loss_i``,
    ``smoothed_i = avg_i / (1 - beta**(i+1))``. The first value equals the first loss; ``beta=0`` returns
    the losses. Values from the first non-finite loss on are NaN (a NaN would poison the average)."""
    if not 0 <= beta < 1:
        raise ConfigError([Problem("lrRangeTest.smoothing", f"must be in [0, 1), got {beta!r}")])
    y = np.asarray(losses, dtype=float)
    out = np.full(y.shape, np.nan)
    avg = 0.0
    for i, v in enumerate(y):
        if not math.isfinite(v):
            break
        avg = beta * avg + (1 - beta) * v
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def _finite_prefix(y: np.ndarray) -> int:
    bad = np.flatnonzero(~np.isfinite(y))
    return int(bad[0]) if bad.size else len(y)


def _shrinking_windows(n: int, half: int) -> Iterable[tuple[int, int, int]]:
    for i in range(n):
        h = min(half, i, n - 1 - i)
        yield i, i - h, i + h + 1


def trend(losses: Sequence[float], window: int = 11, median: int = 5) -> np.ndarray:
    """Zero-lag robust smoothing: a ``median``-point running median, then a centred ``window``-point mean.

    Windows shrink symmetrically at the ends, so no point is shifted (unlike an exponential average).
    Computed over the finite prefix; later points are NaN. ``window`` and ``median`` must be odd.
    """
    if window < 1 or window % 2 == 0 or median < 1 or median % 2 == 0:
        raise ConfigError([Problem("lrRangeTest.trendWindow", f"window and median must be odd integers >= 1, "
                                                              f"got window={window!r}, median={median!r}")])
    y = np.asarray(losses, dtype=float)
    m = _finite_prefix(y)
    out = np.full(y.shape, np.nan)
    if m == 0:
        return out
    x = y[:m]
    med = np.array([np.median(x[a:b]) for _, a, b in _shrinking_windows(m, median // 2)])
    csum = np.concatenate([[0.0], np.cumsum(med)])
    out[:m] = [(csum[b] - csum[a]) / (b - a) for _, a, b in _shrinking_windows(m, window // 2)]
    return out


# ------------------------------------------------------------------------------------------ suggestions


@dataclass(frozen=True)
class Suggestion:
    """One heuristic's answer. ``lr`` is ``None`` when the curve does not support one; ``reason`` says why
    (or how the value was found). ``index`` is the recorded batch nearest (in log lr) to ``lr``."""

    method: str
    lr: float | None
    index: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "lr": self.lr, "index": self.index, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Suggestion":
        return cls(method=str(d["method"]), lr=None if d.get("lr") is None else float(d["lr"]),
                   index=None if d.get("index") is None else int(d["index"]), reason=str(d.get("reason", "")))


@dataclass(frozen=True)
class LrRange:
    """``[base_lr, max_lr]`` read from a curve, with the batches they come from and how."""

    base_lr: float
    max_lr: float
    base_index: int
    max_index: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"base_lr": self.base_lr, "max_lr": self.max_lr, "base_index": self.base_index,
                "max_index": self.max_index, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LrRange":
        return cls(base_lr=float(d["base_lr"]), max_lr=float(d["max_lr"]), base_index=int(d["base_index"]),
                   max_index=int(d["max_index"]), reason=str(d.get("reason", "")))


@dataclass(frozen=True)
class Curve:
    """A recorded curve: learning rates and the raw value of each batch (loss, or a metric to maximize).

    ``iterations`` is the planned number of batches (the default skips scale with it); ``None`` means
    ``len(lrs)``.
    """

    lrs: tuple[float, ...]
    values: tuple[float, ...]
    maximize: bool = False
    iterations: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "lrs", tuple(float(x) for x in self.lrs))
        object.__setattr__(self, "values", tuple(float(x) for x in self.values))
        problems = _curve_problems(self.lrs, self.values, "values")
        if problems:
            raise ConfigError(problems)


def _curve_problems(lrs: Sequence[float], values: Sequence[float], what: str) -> list[Problem]:
    p = []
    if len(lrs) != len(values):
        p.append(Problem(what, f"has {len(values)} values but lrs has {len(lrs)}: record one per batch"))
    a = np.asarray(lrs, dtype=float)
    if a.size and (not np.all(np.isfinite(a)) or np.any(a <= 0)):
        p.append(Problem("lrs", "every learning rate must be finite and > 0"))
    elif a.size > 1 and np.any(np.diff(a) < 0):
        p.append(Problem("lrs", "learning rates must not decrease along a range test"))
    return p


@dataclass(frozen=True)
class _Valley:
    peak: int  # indices into the full curve
    trough: int
    top: float  # the best trend value up to the peak (the level the valley improves on)
    drop: float  # top - trend[trough], in "lower is better" units


@dataclass(frozen=True)
class _Analysis:
    """Everything the heuristics share, computed once per curve (values already in 'lower is better')."""

    lrs: np.ndarray
    trend: np.ndarray
    lo: int
    hi: int  # analysis window [lo, hi)
    tolerance: float
    valley: _Valley | None
    problem: str | None  # why there is no valley (too short, flat, only rising)


def _nearest_index(lrs: np.ndarray, lr: float) -> int:
    return int(np.argmin(np.abs(np.log(lrs) - math.log(lr))))


def _settled_below(y: np.ndarray, start: int, stop: int, level: float) -> int:
    """The index in [start, stop] from which ``y`` stays at or below ``level`` up to ``stop`` (the point
    after the last one above it). A noise dip that comes back above the level does not count, and lower
    levels give later (or equal) indices, so the range and valley points stay ordered."""
    above = np.flatnonzero(y[start:stop + 1] > level)
    return start + int(above[-1]) + 1 if above.size else start


def _zigzag_valleys(y: np.ndarray, lo: int, hi: int, tol: float) -> list[_Valley]:
    """Descending swings of ``y[lo:hi]``: peak -> trough, never rising more than ``tol`` on the way."""
    pivots: list[tuple[str, int]] = []
    hi_i = lo_i = lo
    direction = 0  # 0 unknown, -1 falling, +1 rising
    for i in range(lo, hi):
        v = y[i]
        if direction == 0:
            if v > y[hi_i]:
                hi_i = i
            if v < y[lo_i]:
                lo_i = i
            if y[hi_i] - v > tol and hi_i < i:
                pivots.append(("peak", hi_i))
                direction, lo_i = -1, i
            elif v - y[lo_i] > tol and lo_i < i:
                pivots.append(("trough", lo_i))
                direction, hi_i = 1, i
        elif direction < 0:
            if v < y[lo_i]:
                lo_i = i
            elif v - y[lo_i] > tol:
                pivots.append(("trough", lo_i))
                direction, hi_i = 1, i
        else:
            if v > y[hi_i]:
                hi_i = i
            elif y[hi_i] - v > tol:
                pivots.append(("peak", hi_i))
                direction, lo_i = -1, i
    if direction < 0:
        pivots.append(("trough", lo_i))
    elif direction > 0:
        pivots.append(("peak", hi_i))
    # A valley improves on the best value seen up to its peak; a dip after a divergence spike
    # that only climbs back towards an earlier low improves on nothing and scores <= 0.
    valleys = []
    for a, b in zip(pivots, pivots[1:]):
        if a[0] == "peak" and b[0] == "trough":
            top = float(np.min(y[lo:a[1] + 1]))
            valleys.append(_Valley(peak=a[1], trough=b[1], top=top, drop=top - float(y[b[1]])))
    return [v for v in valleys if v.drop > 0]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _analyze_curve(curve: Curve, config: RangeTestConfig) -> _Analysis:
    lrs = np.asarray(curve.lrs, dtype=float)
    raw = np.asarray(curve.values, dtype=float)
    y = -raw if curve.maximize else raw
    n_planned = curve.iterations or len(lrs)
    cfg = replace(config, iterations=max(2, n_planned)) if config.iterations != n_planned else config
    m = _finite_prefix(y)
    window = cfg.resolved_trend_window
    tr = trend(y, window=window)
    lo, hi = cfg.resolved_skip_start, m - cfg.resolved_skip_end
    what = "metric" if curve.maximize else "loss"

    def result(valley: _Valley | None, problem: str | None, tol: float = math.nan) -> _Analysis:
        return _Analysis(lrs=lrs, trend=tr, lo=lo, hi=max(hi, lo), tolerance=tol, valley=valley,
                         problem=problem)

    if hi - lo < cfg.min_points:
        stop = f" (the {what} stopped being finite at batch {m})" if m < len(y) else ""
        return result(None, f"too short: {max(0, hi - lo)} usable points after skipping the first "
                            f"{lo} and last {cfg.resolved_skip_end} of {m} finite ones{stop}; need at "
                            f"least {cfg.min_points}")
    seg = tr[lo:hi]
    # Noise: robust spread of the raw values around the trend, scaled to the trend's own spread.
    resid = y[lo:hi] - seg
    mad = float(np.median(np.abs(resid - np.median(resid))))
    noise = 1.4826 * mad / math.sqrt(window)
    level = float(np.median(np.abs(seg))) or 1.0
    tol = max(cfg.noise_tolerance * noise, cfg.min_drop * level)
    valleys = _zigzag_valleys(tr, lo, hi, tol)
    best = max(valleys, key=lambda v: (v.drop, v.trough - v.peak)) if valleys else None
    if best is not None and best.drop > tol:
        return result(best, None, tol)
    gain = 0.0 if best is None else best.drop
    worsening = float(seg.max() - seg[0])
    if worsening > 0.5 * level:
        verb = "falls" if curve.maximize else "rises"
        return result(None, f"the smoothed {what} never improves by more than the tolerance {_fmt(tol)} and "
                            f"{verb} by {_fmt(worsening)} from lr {_fmt(lrs[lo])}: it diverged at once; "
                            f"lower startLR", tol)
    gain_note = f"improves by at most {_fmt(gain)}" if gain > 0 else "never improves by more than the tolerance"
    return result(None, f"flat: the smoothed {what} {gain_note} over lr "
                        f"{_fmt(lrs[lo])}..{_fmt(lrs[hi - 1])} (tolerance {_fmt(tol)}: "
                        f"the larger of {cfg.noise_tolerance:g} x its noise and {cfg.min_drop:g} x its "
                        f"level); raise endLR, or check that the model learns", tol)


def _window_note(a: _Analysis) -> str:
    return f"(window lr {_fmt(a.lrs[a.lo])}..{_fmt(a.lrs[a.hi - 1])})"


def _suggest_from(a: _Analysis, method: str, config: RangeTestConfig, what: str) -> Suggestion:
    if method not in METHODS:
        raise ConfigError([Problem("lrRangeTest.method", f"must be one of {', '.join(METHODS)}, got {method!r}")])
    if a.valley is None:
        return Suggestion(method, None, None, a.problem or "no valley")
    v, tr, lrs = a.valley, a.trend, a.lrs
    top, bottom = v.top, float(tr[v.trough])
    sign = -1.0 if what == "metric" else 1.0
    open_end = " The minimum is at the end of the window: raise endLR to bracket it." \
        if v.trough >= a.hi - 1 else ""
    if method == "valley":
        f = config.valley_fraction
        i = _settled_below(tr, v.peak, v.trough, top - f * v.drop)
        return Suggestion(method, float(lrs[i]), i,
                          f"{f:.2g} of the way down the largest valley of the smoothed {what}, from "
                          f"{_fmt(sign * top)} at lr {_fmt(lrs[v.peak])} to {_fmt(sign * bottom)} at lr "
                          f"{_fmt(lrs[v.trough])}.{open_end}")
    if method == "minimum":
        lr = float(lrs[v.trough]) / 10
        word = "maximum" if what == "metric" else "minimum"
        return Suggestion(method, lr, _nearest_index(lrs, lr),
                          f"lr at the {word} of the smoothed {what} ({_fmt(sign * bottom)} at lr "
                          f"{_fmt(lrs[v.trough])}) divided by 10.{open_end}")
    # steepest: most negative d(trend)/d(log10 lr) from the window start to the valley's trough
    lo, stop = a.lo, v.trough + 1
    if stop - lo < 3:
        return Suggestion(method, None, None, f"too few points before the {what}'s best value to "
                                              f"take a derivative {_window_note(a)}")
    x = np.log10(lrs[lo:stop])
    if np.any(np.diff(x) <= 0):
        return Suggestion(method, None, None, "learning rates repeat: no derivative with respect to log lr")
    g = np.gradient(tr[lo:stop], x)
    j = int(np.argmin(g))
    if g[j] >= 0:
        return Suggestion(method, None, None, f"the smoothed {what} never improves {_window_note(a)}")
    i = lo + j
    return Suggestion(method, float(lrs[i]), i,
                      f"steepest {'rise' if what == 'metric' else 'descent'} of the smoothed {what}: "
                      f"{_fmt(sign * g[j])} per decade of lr at lr {_fmt(lrs[i])}")


def _as_curve(curve: "Curve | RangeTestResult") -> tuple[Curve, RangeTestConfig]:
    if isinstance(curve, RangeTestResult):
        return Curve(curve.lrs, curve.losses, iterations=curve.config.iterations), curve.config
    return curve, RangeTestConfig(iterations=max(2, curve.iterations or len(curve.lrs)))


def suggest(curve: "Curve | RangeTestResult", method: str = DEFAULT_METHOD,
            config: RangeTestConfig | None = None) -> Suggestion:
    """One heuristic (``valley``, ``steepest`` or ``minimum``) on a curve; ``lr`` is ``None`` with a reason
    when the curve is too short, flat or only rises. ``config`` overrides the curve's analysis settings."""
    if method not in METHODS:
        raise ConfigError([Problem("method", f"must be one of {', '.join(METHODS)}, got {method!r}")])
    return suggest_all(curve, config)[method]


def suggest_all(curve: "Curve | RangeTestResult", config: RangeTestConfig | None = None) -> dict[str, Suggestion]:
    """Every heuristic at once, keyed by method name (one shared analysis of the curve)."""
    c, cfg = _as_curve(curve)
    cfg = config or cfg
    a = _analyze_curve(c, cfg)
    what = "metric" if c.maximize else "loss"
    return {m: _suggest_from(a, m, cfg, what) for m in METHODS}


def _range_from(a: _Analysis, config: RangeTestConfig, what: str) -> LrRange | None:
    if a.valley is None:
        return None
    v, tr, lrs = a.valley, a.trend, a.lrs
    top = v.top
    f0, f1 = config.range_fractions
    # "Clearly" falling: by f0 of the drop and by more than the noise tolerance, but never past the
    # valley point, so that base_lr <= valley <= max_lr.
    f0 = min(max(f0, a.tolerance / v.drop), config.valley_fraction)
    i0 = _settled_below(tr, v.peak, v.trough, top - f0 * v.drop)
    i1 = _settled_below(tr, v.peak, v.trough, top - f1 * v.drop)
    start, stop = ("rising", "peaks") if what == "metric" else ("falling", "stops falling")
    return LrRange(float(lrs[i0]), float(lrs[i1]), i0, i1,
                   f"base_lr where the smoothed {what} has come {f0:.0%} of the way through its largest "
                   f"improvement (starts {start} clearly), max_lr where it has come {f1:.0%} of the way "
                   f"(just before it {stop}); the improvement runs from lr {_fmt(lrs[v.peak])} to "
                   f"{_fmt(lrs[v.trough])}")


def suggest_range(curve: "Curve | RangeTestResult",
                  config: RangeTestConfig | None = None) -> tuple[float, float] | None:
    """``(base_lr, max_lr)`` for the search and for cyclical/OneCycle schedules, or ``None`` when the curve
    has no valley. Contains the ``valley`` suggestion. See the module docstring for the exact rule."""
    r = lr_range(curve, config)
    return None if r is None else (r.base_lr, r.max_lr)


def lr_range(curve: "Curve | RangeTestResult", config: RangeTestConfig | None = None) -> LrRange | None:
    """:func:`suggest_range` with the batch indices and the explanation."""
    c, cfg = _as_curve(curve)
    cfg = config or cfg
    return _range_from(_analyze_curve(c, cfg), cfg, "metric" if c.maximize else "loss")


# ---------------------------------------------------------------------------------------------- result


def _json_list(xs: Iterable[float]) -> list[float | None]:
    return [float(x) if math.isfinite(x) else None for x in xs]


def _from_json_list(xs: Iterable[float | None]) -> tuple[float, ...]:
    return tuple(math.nan if x is None else float(x) for x in xs)


@dataclass(frozen=True)
class RangeTestResult:
    """A finished (or replayed) range test.

    ``losses`` are the raw batch losses (the last may be non-finite when that stopped the test),
    ``smoothed`` the bias-corrected moving average that drove the divergence rule, ``trend`` the zero-lag
    curve the suggestions read. ``stop_index`` is the last recorded batch; ``diverged`` says whether the
    divergence rule (not the batch budget) ended the test. ``suggestions`` has every method; ``method``
    is the chosen one and ``lr`` its value (``None`` when it has none). ``metric`` is an optional dev
    metric per batch (NaN where not measured), read as a curve to maximize.
    """

    config: RangeTestConfig
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    trend: tuple[float, ...]
    diverged: bool
    stop_index: int | None
    stop_reason: str
    suggestions: dict[str, Suggestion]
    range: LrRange | None
    method: str
    metric: tuple[float, ...] | None = None
    metric_suggestions: dict[str, Suggestion] | None = None
    metric_range: LrRange | None = None
    analysis_window: tuple[int, int] = (0, 0)
    tolerance: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lr(self) -> float | None:
        """The chosen method's suggestion (``None`` when it has none)."""
        return self.suggestions[self.method].lr

    @property
    def suggestion(self) -> Suggestion:
        return self.suggestions[self.method]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: non-finite numbers become ``null``."""
        return {
            "method": self.method,
            "lr": self.lr,
            "range": None if self.range is None else [self.range.base_lr, self.range.max_lr],
            "range_detail": None if self.range is None else self.range.to_dict(),
            "diverged": self.diverged,
            "stop_index": self.stop_index,
            "stop_reason": self.stop_reason,
            "suggestions": {k: s.to_dict() for k, s in self.suggestions.items()},
            "metric_suggestions": None if self.metric_suggestions is None else
            {k: s.to_dict() for k, s in self.metric_suggestions.items()},
            "metric_range": None if self.metric_range is None else self.metric_range.to_dict(),
            "analysis_window": list(self.analysis_window),
            "tolerance": self.tolerance if math.isfinite(self.tolerance) else None,
            "config": self.config.to_dict(),
            "lrs": _json_list(self.lrs),
            "losses": _json_list(self.losses),
            "smoothed": _json_list(self.smoothed),
            "trend": _json_list(self.trend),
            "metric": None if self.metric is None else _json_list(self.metric),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RangeTestResult":
        """Inverse of :meth:`to_dict` (``null`` numbers come back as NaN)."""
        ms = d.get("metric_suggestions")
        return cls(
            config=RangeTestConfig.from_dict(d["config"]),
            lrs=_from_json_list(d["lrs"]), losses=_from_json_list(d["losses"]),
            smoothed=_from_json_list(d["smoothed"]), trend=_from_json_list(d["trend"]),
            diverged=bool(d["diverged"]), stop_index=d.get("stop_index"), stop_reason=str(d["stop_reason"]),
            suggestions={k: Suggestion.from_dict(s) for k, s in d["suggestions"].items()},
            range=None if d.get("range_detail") is None else LrRange.from_dict(d["range_detail"]),
            method=str(d["method"]),
            metric=None if d.get("metric") is None else _from_json_list(d["metric"]),
            metric_suggestions=None if ms is None else {k: Suggestion.from_dict(s) for k, s in ms.items()},
            metric_range=None if d.get("metric_range") is None else LrRange.from_dict(d["metric_range"]),
            analysis_window=tuple(d.get("analysis_window", (0, 0))),  # type: ignore[arg-type]
            tolerance=math.nan if d.get("tolerance") is None else float(d["tolerance"]),
            extra=dict(d.get("extra") or {}),
        )


# ------------------------------------------------------------------------------------ incremental state


class RangeTestState:
    """The per-batch side of a range test, for the training loop::

        state = RangeTestState(config)
        for batch in batches:
            set_lr(optimizer, state.next_lr)
            loss = train_step(batch)
            if not state.update(loss):
                break
        result = state.result()

    ``update`` records the batch and returns whether to go on: ``False`` once ``iterations`` batches are
    recorded, a loss is not finite, or (after ``resolved_divergence_warmup`` batches) the smoothed loss
    exceeds ``best + (k-1)*|best|``, which is ``k x best`` for the positive losses training produces.
    """

    def __init__(self, config: RangeTestConfig | None = None):
        self.config = config or RangeTestConfig()
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.metric: list[float] = []
        self.best = math.inf
        self.best_index: int | None = None
        self.diverged = False
        self.stop_reason = ""
        self._avg = 0.0
        self._done = False

    @property
    def iteration(self) -> int:
        """The number of batches recorded so far (the index of the next one)."""
        return len(self.losses)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def next_lr(self) -> float:
        """The scheduled learning rate of the next batch."""
        c = self.config
        return lr_at(self.iteration, c.start_lr, c.end_lr, c.iterations, c.mode)

    def update(self, loss: float, *, lr: float | None = None, metric: float | None = None) -> bool:
        """Record one batch's loss (at ``lr``, default the scheduled one) and an optional dev metric;
        return whether the test should go on. Calling it after the test ended is a ``RuntimeError``."""
        if self._done:
            raise RuntimeError(f"range test already ended at batch {len(self.losses) - 1}: {self.stop_reason}")
        c = self.config
        i = self.iteration
        lr = self.next_lr if lr is None else float(lr)
        loss = float(loss)
        self.lrs.append(lr)
        self.losses.append(loss)
        self.metric.append(math.nan if metric is None else float(metric))
        if not math.isfinite(loss):
            self.smoothed.append(math.nan)
            return self._stop(True, f"loss is {loss} at batch {i} (lr {_fmt(lr)})")
        beta = c.smoothing
        self._avg = beta * self._avg + (1 - beta) * loss
        s = self._avg / (1 - beta ** (i + 1))
        self.smoothed.append(s)
        if s < self.best:
            self.best, self.best_index = s, i
        k = c.divergence_factor
        if k is not None and i >= c.resolved_divergence_warmup and s > self.best + (k - 1) * abs(self.best):
            return self._stop(True, f"smoothed loss {_fmt(s)} at batch {i} (lr {_fmt(lr)}) exceeds {k:g} x "
                                    f"the best {_fmt(self.best)} (batch {self.best_index})")
        if i + 1 >= c.iterations:
            return self._stop(False, f"completed {c.iterations} batches")
        return True

    def _stop(self, diverged: bool, reason: str) -> bool:
        self._done, self.diverged, self.stop_reason = True, diverged, reason
        log.info("range test stopped: %s", reason)
        return False

    def result(self, method: str | None = None) -> RangeTestResult:
        """Analyse what was recorded (also before the end, e.g. when the data ran out)."""
        c = self.config
        method = method or c.method
        if method not in METHODS:
            raise ConfigError([Problem("lrRangeTest.method", f"must be one of {', '.join(METHODS)}, "
                                                             f"got {method!r}")])
        stop_reason = self.stop_reason or f"ended by the caller after {len(self.losses)} of {c.iterations} batches"
        curve = Curve(self.lrs, self.losses, iterations=c.iterations)
        a = _analyze_curve(curve, c)
        suggestions = {m: _suggest_from(a, m, c, "loss") for m in METHODS}
        if self.diverged:
            note = f" The test diverged at batch {len(self.losses) - 1} of {c.iterations}: {self.stop_reason}."
            if len(self.losses) < c.iterations // 2:
                note += " Lower startLR (or raise divergenceFactor) to see where the loss falls."
            suggestions = {m: s if s.lr is not None else replace(s, reason=s.reason + note)
                           for m, s in suggestions.items()}
        rng = _range_from(a, c, "loss")
        metric = metric_sugg = metric_rng = None
        if any(math.isfinite(x) for x in self.metric):
            metric = tuple(self.metric)
            idx = [i for i, x in enumerate(self.metric) if math.isfinite(x)]
            every_batch = len(idx) == len(self.metric)
            mc = Curve([self.lrs[i] for i in idx], [self.metric[i] for i in idx], maximize=True,
                       iterations=c.iterations if every_batch else len(idx))
            # Measured on some batches only: the skips and the trend window scale with the points there are.
            mcfg = c if every_batch else replace(c, iterations=max(2, len(idx)), skip_start=None, skip_end=None,
                                                 trend_window=None, divergence_warmup=None)
            ma = _analyze_curve(mc, mcfg)
            metric_sugg = {m: _remap(_suggest_from(ma, m, mcfg, "metric"), idx) for m in METHODS}
            r = _range_from(ma, mcfg, "metric")
            metric_rng = None if r is None else replace(r, base_index=idx[r.base_index], max_index=idx[r.max_index])
        return RangeTestResult(
            config=c, lrs=tuple(self.lrs), losses=tuple(self.losses), smoothed=tuple(self.smoothed),
            trend=tuple(float(x) for x in a.trend), diverged=self.diverged,
            stop_index=len(self.losses) - 1 if self.losses else None, stop_reason=stop_reason,
            suggestions=suggestions, range=rng, method=method, metric=metric, metric_suggestions=metric_sugg,
            metric_range=metric_rng, analysis_window=(a.lo, a.hi), tolerance=a.tolerance)


def _remap(s: Suggestion, idx: list[int]) -> Suggestion:
    return s if s.index is None else replace(s, index=idx[s.index])


def _infer_mode(lrs: np.ndarray) -> Mode:
    if len(lrs) < 3:
        return "exponential"
    d_lin, d_log = np.diff(lrs), np.diff(np.log(lrs))
    lin_dev = float(np.std(d_lin) / (abs(np.mean(d_lin)) or 1.0))
    log_dev = float(np.std(d_log) / (abs(np.mean(d_log)) or 1.0))
    return "linear" if lin_dev < log_dev else "exponential"


def analyze(lrs: Sequence[float], losses: Sequence[float], config: RangeTestConfig | None = None, *,
            metric: Sequence[float | None] | None = None, method: str | None = None) -> RangeTestResult:
    """Replay a recorded curve through the divergence rule and read it (points after a stop are dropped).

    Without ``config`` the schedule is taken from the curve: ``start_lr=lrs[0]``, ``end_lr=lrs[-1]``,
    ``iterations=len(lrs)``, the mode inferred from the spacing, every other setting at its default.
    """
    problems = _curve_problems(lrs, losses, "losses")
    if metric is not None and len(metric) != len(lrs):
        problems.append(Problem("metric", f"has {len(metric)} values but lrs has {len(lrs)}"))
    if len(lrs) < 1:
        problems.append(Problem("lrs", "is empty: record at least one batch"))
    if problems:
        raise ConfigError(problems)
    a = np.asarray(lrs, dtype=float)
    if config is None:
        end = float(a[-1]) if a[-1] > a[0] else float(a[0]) * 10
        config = RangeTestConfig(start_lr=float(a[0]), end_lr=end, iterations=max(2, len(a)),
                                 mode=_infer_mode(a))
    state = RangeTestState(config)
    for i, (lr, loss) in enumerate(zip(lrs, losses)):
        m = None if metric is None else metric[i]
        if not state.update(loss, lr=lr, metric=m):
            break
    return state.result(method)
