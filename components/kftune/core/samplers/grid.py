"""Grid search: the cartesian product of every parameter's values, in a fixed order.

Each parameter's axis is, as in Katib's grid service (``convert_to_combinations`` in
``pkg/suggestion/v1beta1/internal/search_space.py``): the list of a discrete/categorical parameter;
``min, min+step, ..., <= max`` for an int (step 1 when absent) or a stepped double. A double without
``step`` takes ``default_points`` values (a kftune setting; Katib refuses such a parameter):
evenly spaced, or geometrically spaced for logUniform/logNormal, both ends included.

Order: parameters in space order, the last one varying fastest (``itertools.product``). Each call
returns the first ``n`` grid points that no trial of ``history`` (in any state) has taken, so a
search continues where its history left off and a failed point is not retried. When fewer than ``n``
are left the call returns what is left; :meth:`GridSampler.remaining` says how many. As in Katib,
``maxTrialCount`` larger than the grid is a configuration error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from kftune.core.errors import ConfigError, Problem
from kftune.core.samplers.base import Sampler, SettingsReader
from kftune.core.space import Parameter, SearchSpace
from kftune.core.trials import Assignment, Objective, Trial, Value


class _Axis:
    """The values of one parameter on the grid, without materializing long integer ranges."""

    def __init__(self, param: Parameter, points: int | None):
        self.param = param
        self._values: list[Value] | None = None
        if not param.is_numeric_range:
            self._values = list(param.choices)
        elif param.step is None:
            assert points is not None and param.low is not None and param.high is not None
            xs = (np.geomspace(param.low, param.high, points) if param.is_log
                  else np.linspace(param.low, param.high, points))
            vals: list[Value] = []
            for x in xs:
                v = float(param.snap(float(x)))
                if v not in vals:
                    vals.append(v)
            vals[0], vals[-1] = param.low, param.high
            self._values = vals

    def __len__(self) -> int:
        if self._values is not None:
            return len(self._values)
        return (self.param.n_steps or 0) + 1

    def __getitem__(self, k: int) -> Value:
        if self._values is not None:
            return self._values[k]
        return self.param.grid_value(k)

    def index_of(self, value: Any) -> int | None:
        """The position of ``value`` on this axis, or ``None`` when it is not a grid value."""
        if isinstance(value, bool):
            return None
        if self._values is not None:
            for i, v in enumerate(self._values):
                if v == value or (isinstance(v, float) and isinstance(value, (int, float))
                                  and math.isclose(v, value, rel_tol=1e-12, abs_tol=0.0)):
                    return i
            return None
        if not isinstance(value, (int, float)) or not self.param.contains(value):
            return None
        assert self.param.low is not None and self.param.step is not None
        return int(round((float(value) - self.param.low) / float(self.param.step)))


@dataclass(frozen=True)
class _Grid:
    axes: tuple[_Axis, ...]

    @property
    def size(self) -> int:
        return math.prod(len(a) for a in self.axes)

    def point(self, index: int) -> Assignment:
        out: dict[str, Value] = {}
        for axis in reversed(self.axes):  # mixed radix, last axis fastest
            index, k = divmod(index, len(axis))
            out[axis.param.name] = axis[k]
        return {a.param.name: out[a.param.name] for a in self.axes}

    def index_of(self, assignment: Mapping[str, Any]) -> int | None:
        index = 0
        for axis in self.axes:
            if axis.param.name not in assignment:
                return None
            k = axis.index_of(assignment[axis.param.name])
            if k is None:
                return None
            index = index * len(axis) + k
        return index


class GridSampler(Sampler):
    """Katib ``grid``: every combination once, in a fixed order, resuming after the history."""

    name = "grid"
    known_settings = {
        "default_points": "int >= 2; values for a double range without step (log-spaced for log distributions)",
    }

    def _read_settings(self, space: SearchSpace, settings: Mapping[str, Any] | None,
                       max_trials: int | None) -> _Grid:
        r = SettingsReader(settings, known=self.known_settings, algorithm=self.name)
        points = r.int("default_points", None, minimum=2, maximum=10_000, unit="values per parameter")
        r.done()
        problems = []
        for i, p in enumerate(space):
            if p.is_numeric_range and p.step is None and points is None:
                problems.append(Problem(
                    f"spec.search.parameters[{i}].feasibleSpace.step",
                    f"grid needs a step for double parameter {p.name!r}; give feasibleSpace.step or the "
                    "algorithm setting default_points (how many values to try between min and max)"))
        if problems:
            raise ConfigError(problems)
        grid = _Grid(tuple(_Axis(p, points) for p in space))
        if max_trials is not None and max_trials > grid.size:
            raise ConfigError([Problem("spec.search.maxTrialCount",
                                       f"{max_trials} is more than the {grid.size} points of the grid; "
                                       f"set maxTrialCount to at most {grid.size} or add grid points")])
        return grid

    def size(self, space: SearchSpace, settings: Mapping[str, Any] | None = None) -> int:
        """The number of points of the grid."""
        return self._read_settings(space, settings, None).size

    def _taken(self, grid: _Grid, history: Sequence[Trial]) -> set[int]:
        taken = set()
        for t in history:
            idx = grid.index_of(t.assignment)
            if idx is not None:
                taken.add(idx)
        return taken

    def remaining(self, space: SearchSpace, history: Sequence[Trial],
                  settings: Mapping[str, Any] | None = None) -> int:
        """How many grid points no trial of ``history`` has taken yet (0: the grid is exhausted)."""
        grid = self._read_settings(space, settings, None)
        return grid.size - len(self._taken(grid, history))

    def _suggest(self, space: SearchSpace, history: Sequence[Trial], n: int, *, seed: int, config: Any,
                 objective: Objective, max_trials: int | None) -> list[Assignment]:
        grid: _Grid = config
        taken = self._taken(grid, history)
        out: list[Assignment] = []
        index = 0
        while len(out) < n and index < grid.size:
            if index not in taken:
                out.append(grid.point(index))
            index += 1
        return out


suggest = GridSampler().suggest
"""The sampler as a plain function: ``suggest(space, history, n, *, seed, settings, objective, max_trials)``."""
