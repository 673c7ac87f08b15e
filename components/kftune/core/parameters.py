"""Katib ``parameters`` as written: the string-valued ``ParameterSpec`` and ``FeasibleSpace``.

The spec's ``search.parameters`` (:mod:`kftune.core.spec`), the search space (:mod:`kftune.core.space`, which
parses these strings into typed parameters) and the Katib export all use these objects; they live here, below
all three, so that the space and the samplers never import the spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

ParameterType = Literal["double", "int", "discrete", "categorical"]
Distribution = Literal["uniform", "logUniform", "normal", "logNormal"]

#: Katib's ``parameterType`` values and ``feasibleSpace.distribution`` values.
PARAMETER_TYPES: tuple[str, ...] = ("double", "int", "discrete", "categorical")
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "logUniform", "normal", "logNormal")
LOG_DISTRIBUTIONS: tuple[str, ...] = ("logUniform", "logNormal")


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


def to_katib_parameters(params: Iterable[ParameterSpec]) -> list[dict[str, Any]]:
    """Katib ``parameters:`` entries (camelCase, values as strings), as a spec or an Experiment has them."""
    out = []
    for p in params:
        fs = p.feasible_space
        space: dict[str, Any] = {k: v for k, v in (("min", fs.min), ("max", fs.max), ("step", fs.step))
                                 if v is not None}
        if fs.list:
            space["list"] = list(fs.list)
        if fs.distribution is not None:
            space["distribution"] = fs.distribution
        out.append({"name": p.name, "parameterType": p.parameter_type, "feasibleSpace": space})
    return out


__all__ = ["DISTRIBUTIONS", "LOG_DISTRIBUTIONS", "PARAMETER_TYPES", "Distribution", "FeasibleSpace",
           "ParameterSpec", "ParameterType", "to_katib_parameters"]
