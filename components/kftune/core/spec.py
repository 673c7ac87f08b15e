"""The TuningJob spec as typed, frozen config objects, and its validation.

The ``search`` block uses Katib's ExperimentSpec vocabulary field for field; the Python fields are
the snake_case forms of Katib's camelCase names. Values of ``feasibleSpace`` stay strings, as in
Katib's API, and are parsed where they are used (the search space).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ParameterType = Literal["double", "int", "discrete", "categorical"]
Distribution = Literal["uniform", "logUniform", "normal", "logNormal"]


@dataclass(frozen=True)
class FeasibleSpace:
    """Katib ``feasibleSpace``: ``min``/``max``/``step`` for numbers, ``list`` for discrete/categorical."""

    min: str | None = None
    max: str | None = None
    step: str | None = None
    list: tuple[str, ...] = ()
    distribution: Distribution | None = None


@dataclass(frozen=True)
class ParameterSpec:
    """Katib ``ParameterSpec``: ``{name, parameterType, feasibleSpace}``."""

    name: str
    parameter_type: ParameterType
    feasible_space: FeasibleSpace = field(default_factory=FeasibleSpace)
