"""BOHB (Falkner, Klein & Hutter, "BOHB: Robust and Efficient Hyperparameter Optimization at Scale", ICML 2018):
the model-based half of BOHB, which proposes configurations from kernel density estimates fitted per budget.

BOHB is Hyperband's brackets (who trains how long) plus this sampler (what to try). In kftune they meet
only through the planner, as hpbandster keeps ``config_generators/bohb.py`` apart from its iterations:
``algorithmName: bohb`` with ``earlyStopping.algorithmName: hyperband`` is the paper's method. With ``asha`` or
``successive-halving`` it works the same way over their rungs. With no early stopping every trial trains
the full budget, so there is one budget and BOHB is TPE-style model-based search (with BOHB's
densities and defaults).

What a call does, from the history alone:

1. **Observations per budget.** The budgets are those the finished trials stopped at: ``budget_used`` of
   every trial that is not ``running`` (with Hyperband, the rung budgets), or ``budget_asked`` for a
   ``failed`` trial when its record has it. A trial's value at budget ``b`` is its intermediate value at
   step ``b`` (trials report every epoch), so a pruned trial counts at every budget it reached, and a
   trial that trained past ``b`` in one go counts at ``b`` too. A trial with no value at its own budget
   counts with its objective there (e.g. trials read from Katib, which carry no intermediate values). A
   ``failed`` trial, or a non-finite value, counts as the worst loss at the budgets the trial was meant to
   reach and did not (every budget when its budget is unknown), as hpbandster gives a crashed run an
   infinite loss. ``running`` trials are pending points, not observations. Losses are ``-value`` when
   maximizing and ``value`` when minimizing.
2. **The model budget**: the largest budget whose observations allow both densities. With ``N``
   observations there, ``n_good = max(min_points_in_model, top_n_percent * N // 100)`` best ones make the
   good density ``l(x)`` and the next ``min(max(min_points_in_model, (100 - top_n_percent) * N // 100),
   N - n_good)`` the bad one ``g(x)`` (hpbandster's rule); each needs more points than there are
   parameters. Ties keep history order. No such budget: every proposal is random.
3. **Proposals.** Each of the ``n`` proposals is drawn with its own generator seeded
   ``derive_seed(seed, len(history), i)``. With probability ``random_fraction`` (and always without a
   model) it is a random draw from the space's own distributions (``hyperopt.rand``, as ``random``).
   Otherwise ``num_samples`` candidates are drawn from ``l(x)`` with its continuous bandwidths widened by
   ``bandwidth_factor`` (a truncated normal around a random good point, kept in [0, 1]; a categorical keeps
   the point's value with probability ``1 - bandwidth`` and is uniform otherwise), and the one with the
   largest ``l(x) / g(x)`` is proposed. A proposal equal to a trial of the history or an earlier proposal
   of the batch is replaced by the next best candidate (or the next random draw) where there is one.

The densities are product kernels over the unit cube: a double is scaled to [0, 1] (log scale for
logUniform/logNormal); an int, a stepped double and a discrete list are coded on equal cells of their grid
index (discrete lists ordered by value), as ConfigSpace codes an integer hyperparameter (log scale for
log distributions); these use a Gaussian kernel. A categorical uses the Aitchison-Aitken kernel. Bandwidths
are the normal-reference rule ``1.06 * std * n**(-1 / (4 + d))`` of each density's own points, at least
``min_bandwidth`` (statsmodels' ``KDEMultivariate(bw="normal_reference")``, as hpbandster fits them).

Settings (hpbandster's names and defaults): ``top_n_percent`` (15), ``min_points_in_model`` (the number of
parameters + 1, and no less), ``num_samples`` (64), ``random_fraction`` (1/3), ``bandwidth_factor`` (3),
``min_bandwidth`` (1e-3), ``random_state`` (seeds the proposals instead of the search seed).

Where this differs from hpbandster, and why:

* Stateless: the per-budget observations are rebuilt from ``history`` on every call instead of kept by
  ``new_result``, so a killed search restarts with the same answers. Observations at a budget include every
  trial that reported a value at that epoch, not only the runs scheduled with exactly that budget:
  kftune resumes a promoted trial from its checkpoint rather than starting a new run.
* A categorical's kernel uses the parameter's number of choices; statsmodels counts the values present
  in the data, which divides by zero when the good points share one value (the non-finite ratios
  hpbandster warns about). Its bandwidth is at most ``(c - 1) / c``, the uniform kernel: the
  normal-reference rule can exceed 1, where the Aitchison-Aitken kernel turns negative.
* Densities are compared in log space (log-sum-exp), so the ratio never underflows; hpbandster floors
  both densities at 1e-32.
* Random proposals come from the space's distributions (normal/logNormal included), not only uniform.
* A batch avoids duplicates (hpbandster proposes one configuration at a time and does not check).
* ``min_points_in_model`` below the number of parameters + 1 is an error naming the setting;
  hpbandster raises it silently with a warning in its log.
* Only numpy: the truncated normal is drawn by rejection (``scipy.stats.truncnorm`` in hpbandster).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from kftune.core import limits
from kftune.core.errors import Problem
from kftune.core.samplers.base import SETTINGS_PATH, Sampler, SettingsReader, derive_seed, usable_history
from kftune.core.space import Parameter, SearchSpace
from kftune.core.trials import Assignment, Objective, Trial, Value, sign

log = logging.getLogger(__name__)

#: Random draws tried per random proposal before accepting one that repeats an earlier point.
_RANDOM_TRIES = 8
#: Rounds of rejection sampling for the truncated normal before the rest is drawn uniformly.
_REJECTION_ROUNDS = 100


@dataclass(frozen=True)
class BOHBConfig:
    """Validated BOHB settings (``min_points_in_model`` resolved against the space)."""

    min_points_in_model: int
    random_state: int | None = None
    top_n_percent: int = 15
    num_samples: int = 64
    random_fraction: float = 1 / 3
    bandwidth_factor: float = 3.0
    min_bandwidth: float = 1e-3

    def split(self, n: int, dims: int) -> tuple[int, int] | None:
        """``(n_good, n_bad)`` for ``n`` observations in ``dims`` dimensions (hpbandster's rule), or ``None``
        when they cannot make both densities."""
        m = self.min_points_in_model
        if n < m:
            return None
        n_good = max(m, self.top_n_percent * n // 100)
        n_bad = min(max(m, (100 - self.top_n_percent) * n // 100), n - n_good)
        if n_good <= dims or n_bad <= dims:
            return None
        return n_good, n_bad

    def points_for_model(self, dims: int) -> int:
        """The fewest observations at one budget from which the densities can be fitted."""
        n = self.min_points_in_model
        while self.split(n, dims) is None:
            n += 1
        return n


# --------------------------------------------------------------------------------------------------
# The unit cube: one axis per parameter
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Axis:
    """One parameter as a coordinate: continuous in [0, 1] (``levels == 0``), or a categorical's choice
    index (``levels`` choices). ``cells > 0``: a grid coded on equal cells; ``order``: a discrete list's
    choice indices sorted by value."""

    param: Parameter
    levels: int = 0
    log: bool = False
    cells: int = 0
    order: tuple[int, ...] = ()

    @classmethod
    def of(cls, p: Parameter) -> "_Axis":
        if p.type == "categorical":
            return cls(p, levels=len(p.choices))
        if p.type == "discrete":
            order = tuple(sorted(range(len(p.choices)), key=lambda i: float(p.choices[i])))  # type: ignore[arg-type]
            return cls(p, cells=len(p.choices), order=order)
        if p.is_log:
            return cls(p, log=True)
        if p.step is not None:
            return cls(p, cells=(p.n_steps or 0) + 1)
        return cls(p)

    def encode(self, value: Value) -> float:
        p = self.param
        if self.levels:
            return float(p.choices.index(value))
        if self.order:
            return (self.order.index(p.choices.index(value)) + 0.5) / self.cells
        assert p.low is not None and p.high is not None
        if self.log:
            lo, hi = math.log(p.low), math.log(p.high)
            return (math.log(float(value)) - lo) / (hi - lo)
        if self.cells:
            k = int(round((float(value) - p.low) / float(p.step)))  # type: ignore[arg-type]
            return (k + 0.5) / self.cells
        return (float(value) - p.low) / (p.high - p.low)

    def decode(self, u: float) -> Value:
        p = self.param
        if self.levels:
            return p.choices[min(max(int(round(u)), 0), self.levels - 1)]
        if self.cells:
            k = min(max(int(math.floor(u * self.cells)), 0), self.cells - 1)
            return p.choices[self.order[k]] if self.order else p.grid_value(k)
        assert p.low is not None and p.high is not None
        u = min(max(float(u), 0.0), 1.0)
        if self.log:
            lo, hi = math.log(p.low), math.log(p.high)
            x = math.exp(lo + u * (hi - lo))
        else:
            x = p.low + u * (p.high - p.low)
        v = p.snap(x)
        return int(v) if p.type == "int" else float(v)


# --------------------------------------------------------------------------------------------------
# The densities
# --------------------------------------------------------------------------------------------------

def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(top, axis=axis) + np.log(np.sum(np.exp(a - top), axis=axis))


@dataclass(frozen=True)
class _KDE:
    """A product-kernel density over the unit cube: Gaussian kernels on continuous coordinates,
    Aitchison-Aitken on categorical ones (``levels[j] > 0``)."""

    data: np.ndarray
    bw: np.ndarray
    levels: np.ndarray

    @classmethod
    def fit(cls, data: np.ndarray, levels: np.ndarray, min_bandwidth: float) -> "_KDE":
        n, d = data.shape
        bw = 1.06 * data.std(axis=0) * n ** (-1.0 / (4 + d))  # normal reference, as statsmodels
        bw = np.maximum(bw, min_bandwidth)
        cat = levels > 0
        bw[cat] = np.minimum(bw[cat], (levels[cat] - 1) / levels[cat])  # at most the uniform kernel
        return cls(data=data, bw=bw, levels=levels)

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        """``log`` of the density at each row of ``x`` (shape ``(m, d)``)."""
        diff = x[:, None, :] - self.data[None, :, :]
        logk = np.zeros(diff.shape)
        cont = self.levels == 0
        if cont.any():
            h = self.bw[cont]
            z = diff[..., cont] / h
            logk[..., cont] = -0.5 * z * z - np.log(h) - 0.5 * math.log(2 * math.pi)
        cat = self.levels > 1  # a one-choice categorical has kernel 1
        if cat.any():
            h, c = self.bw[cat], self.levels[cat]
            logk[..., cat] = np.where(diff[..., cat] == 0, np.log1p(-h), np.log(h / (c - 1)))
        return _logsumexp(logk.sum(axis=2), axis=1) - math.log(len(self.data))

    def sample(self, rng: np.random.Generator, count: int, factor: float) -> np.ndarray:
        """``count`` points around random data points: continuous coordinates from a normal of ``factor``
        times the bandwidth truncated to [0, 1]; a categorical kept with probability ``1 - bandwidth``,
        else uniform (hpbandster's sampling)."""
        centres = self.data[rng.integers(0, len(self.data), size=count)]
        out = centres.copy()
        for j, levels in enumerate(self.levels):
            if levels == 0:
                out[:, j] = _truncated_normal(rng, centres[:, j], factor * self.bw[j])
            else:
                move = rng.random(count) >= 1 - self.bw[j]
                out[move, j] = rng.integers(0, levels, size=int(move.sum()))
        return out


def _truncated_normal(rng: np.random.Generator, mean: np.ndarray, scale: float) -> np.ndarray:
    """Draws of ``normal(mean, scale)`` restricted to [0, 1], by rejection."""
    out = np.empty_like(mean)
    todo = np.arange(len(mean))
    for _ in range(_REJECTION_ROUNDS):
        draw = rng.normal(mean[todo], scale)
        ok = (draw >= 0.0) & (draw <= 1.0)
        out[todo[ok]] = draw[ok]
        todo = todo[~ok]
        if not todo.size:
            return out
    out[todo] = rng.random(todo.size)  # the limit of a very wide truncated normal
    return out


@dataclass(frozen=True)
class BOHBModel:
    """The densities of one call: the budget they were fitted on and the observations they split."""

    budget: int
    n_good: int
    n_bad: int
    good: _KDE
    bad: _KDE


# --------------------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------------------

def _stop_budget(t: Trial) -> int:
    """The budget a finished trial stopped at: ``budget_used``; for a failed trial the budget it was asked
    to reach when its record says (0: unknown)."""
    if t.state == "failed":
        asked = t.extra.get("budget_asked")
        if isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked > 0:
            return max(int(asked), t.budget_used)
    return t.budget_used


def observations(space: SearchSpace, history: Sequence[Trial], objective: Objective
                 ) -> dict[int, list[tuple[Trial, float]]]:
    """``{budget: [(trial, loss), ...]}`` in history order, smallest budget first; ``loss`` is
    ``-value`` when maximizing, ``value`` when minimizing, ``inf`` for a failure (see the module docstring)."""
    s = sign(objective)
    finished = [t for t in usable_history(space, history) if t.state != "running"]
    budgets = sorted({_stop_budget(t) for t in finished})
    out: dict[int, list[tuple[Trial, float]]] = {b: [] for b in budgets}
    for t in finished:
        stop = _stop_budget(t)
        reported = dict(t.intermediate)
        for b in budgets:
            value = reported.get(b) if b > 0 else None
            if value is None and b == stop and t.state != "failed":
                value = t.objective if t.objective is not None else math.nan
            if value is not None:
                out[b].append((t, -s * value if math.isfinite(value) else math.inf))
            elif t.state == "failed" and (0 < b <= stop or stop == 0):
                out[b].append((t, math.inf))
    return out


# --------------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------------

def _key(space: SearchSpace, a: Mapping[str, Value]) -> tuple[Value, ...]:
    return tuple(a[name] for name in space.names)


class BOHBSampler(Sampler):
    """``bohb``: BOHB's per-budget density model (Falkner et al. 2018) over the explicit history."""

    name = "bohb"
    known_settings = {
        "random_state": "int; seeds the proposals instead of the search seed",
        "top_n_percent": "int in [1, 99]; percent of the observations at the model budget in the good density "
                         "(default 15)",
        "min_points_in_model": "int >= number of parameters + 1; observations a budget needs before a model "
                               "(default: number of parameters + 1)",
        "num_samples": "int >= 1; candidates drawn from the good density per proposal (default 64)",
        "random_fraction": "float in [0, 1]; share of proposals drawn at random (default 1/3)",
        "bandwidth_factor": "float > 0; widens the good density's bandwidths for drawing candidates (default 3)",
        "min_bandwidth": "float > 0; the smallest bandwidth of the densities (default 1e-3)",
    }

    def _read_settings(self, space: SearchSpace, settings: Mapping[str, Any] | None,
                       max_trials: int | None) -> BOHBConfig:
        r = SettingsReader(settings, known=self.known_settings, algorithm=self.name)
        least = len(space) + 1
        d = BOHBConfig(min_points_in_model=least)
        minimum_points = r.int("min_points_in_model", least, minimum=1, maximum=limits.MAX_TRIALS, unit="trials")
        if minimum_points is not None and minimum_points < least:
            r.problems.append(Problem(f"{SETTINGS_PATH}.min_points_in_model",
                                      f"{minimum_points} is less than the number of parameters + 1 ({least}): a "
                                      f"density over {len(space)} parameters needs more points than parameters; "
                                      f"use at least {least} or leave it out"))
            minimum_points = least
        cfg = BOHBConfig(
            min_points_in_model=minimum_points,  # type: ignore[arg-type]
            random_state=r.seed("random_state"),
            top_n_percent=r.int("top_n_percent", d.top_n_percent, minimum=1, maximum=99, unit="percent"),  # type: ignore[arg-type]
            num_samples=r.int("num_samples", d.num_samples, minimum=1, maximum=100_000, unit="candidates"),  # type: ignore[arg-type]
            random_fraction=r.float("random_fraction", d.random_fraction, low=0, high=1, low_open=False),  # type: ignore[arg-type]
            bandwidth_factor=r.float("bandwidth_factor", d.bandwidth_factor, low=0),  # type: ignore[arg-type]
            min_bandwidth=r.float("min_bandwidth", d.min_bandwidth, low=0),  # type: ignore[arg-type]
        )
        r.done()
        return cfg

    def config(self, space: SearchSpace, settings: Mapping[str, Any] | None = None) -> BOHBConfig:
        """The validated settings for ``space``; :class:`ConfigError` naming each bad one."""
        return self._read_settings(space, settings, None)

    # -- the model -------------------------------------------------------------------------------------
    def model(self, space: SearchSpace, history: Sequence[Trial], *, objective: Objective = "maximize",
              settings: Mapping[str, Any] | None = None) -> BOHBModel | None:
        """The densities a call with this history proposes from (``None``: not enough observations at any
        budget; every proposal is random)."""
        cfg = self.config(space, settings)
        return self._model(space, history, cfg, objective)

    def _model(self, space: SearchSpace, history: Sequence[Trial], cfg: BOHBConfig,
               objective: Objective) -> BOHBModel | None:
        axes = [_Axis.of(p) for p in space]
        levels = np.array([a.levels for a in axes], dtype=int)
        for budget, obs in sorted(observations(space, history, objective).items(), reverse=True):
            split = cfg.split(len(obs), len(axes))
            if split is None:
                continue
            n_good, n_bad = split
            losses = np.array([loss for _, loss in obs])
            order = np.argsort(losses, kind="stable")
            data = np.array([[a.encode(t.assignment[a.param.name]) for a in axes] for t, _ in obs], dtype=float)
            good = _KDE.fit(data[order[:n_good]], levels, cfg.min_bandwidth)
            bad = _KDE.fit(data[order[n_good:n_good + n_bad]], levels, cfg.min_bandwidth)
            log.debug("bohb: model on budget %d (%d observations: %d good, %d bad)", budget, len(obs), n_good, n_bad)
            return BOHBModel(budget=budget, n_good=n_good, n_bad=n_bad, good=good, bad=bad)
        return None

    # -- proposals ------------------------------------------------------------------------------------
    def _suggest(self, space: SearchSpace, history: Sequence[Trial], n: int, *, seed: int, config: Any,
                 objective: Objective, max_trials: int | None) -> list[Assignment]:
        cfg: BOHBConfig = config
        base = seed if cfg.random_state is None else cfg.random_state
        model = self._model(space, history, cfg, objective)
        axes = [_Axis.of(p) for p in space]
        taken = {_key(space, t.assignment) for t in usable_history(space, history)}
        out: list[Assignment] = []
        for i in range(n):
            seed_i = derive_seed(base, len(history), i)
            rng = np.random.default_rng(seed_i)
            at_random = rng.random() < cfg.random_fraction
            a = None
            if model is not None and not at_random:
                a = self._from_model(space, axes, model, cfg, rng, taken)
            if a is None:
                a = self._at_random(space, derive_seed(seed_i, 1), taken)
            taken.add(_key(space, a))
            out.append(a)
        return out

    @staticmethod
    def _from_model(space: SearchSpace, axes: Sequence[_Axis], model: BOHBModel, cfg: BOHBConfig,
                    rng: np.random.Generator, taken: set[tuple[Value, ...]]) -> Assignment | None:
        """The candidate with the largest ``l(x) / g(x)`` that is not taken, or ``None``."""
        x = model.good.sample(rng, cfg.num_samples, cfg.bandwidth_factor)
        score = model.good.logpdf(x) - model.bad.logpdf(x)
        for j in np.argsort(-score, kind="stable"):
            a = {ax.param.name: ax.decode(float(u)) for ax, u in zip(axes, x[j])}
            if _key(space, a) not in taken:
                return a
        return None

    @staticmethod
    def _at_random(space: SearchSpace, seed: int, taken: set[tuple[Value, ...]]) -> Assignment:
        """A draw from the space's distributions, the first of a few that is not taken."""
        draws = space.sample(_RANDOM_TRIES, seed)
        return next((a for a in draws if _key(space, a) not in taken), draws[0])


suggest = BOHBSampler().suggest
"""The sampler as a plain function: ``suggest(space, history, n, *, seed, settings, objective, max_trials)``."""

__all__ = ["BOHBConfig", "BOHBModel", "BOHBSampler", "observations", "suggest"]
