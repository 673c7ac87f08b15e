"""Hand the LR range test's suggested range to the search: a new ``feasibleSpace`` for one parameter.

:func:`apply_lr_range` takes the search's parameters (Katib ``ParameterSpec`` s, :mod:`kftune.core.spec`)
and the range test's ``result.json`` (``RangeTestResult.to_dict()`` plus what ``kftune lr-find`` adds) and
replaces the ``feasibleSpace`` of the learning-rate parameter by the suggested ``[base_lr, max_lr]`` as
``logUniform``, with ``min``/``max`` as Katib strings. It also returns a *note*, a JSON-safe dict that the
search writes into its output so a reader sees why the space is what it is: the old and the new
``feasibleSpace``, the method, the suggested learning rate, the range, whether the test diverged.

When the result holds no range (a flat curve, a test that diverged at once, too few batches), nothing is
replaced and the note says why, quoting the range test's own reason. Pure: no I/O, no torch.

The bounds are written with 3 significant digits, rounded *outwards* (``min`` down, ``max`` up), so the
new space always contains the measured range and reads well in a Katib Experiment (``"0.000933"``, not
``"0.0009326033468832206"``).
"""

from __future__ import annotations

import dataclasses
import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Mapping, Sequence

from kftune.core.errors import ConfigError, Problem
from kftune.core.spec import FeasibleSpace, ParameterSpec

DEFAULT_PARAMETER = "learning_rate"
_DIGITS = 3


def katib_bound(x: float, *, up: bool) -> str:
    """``x`` as a Katib number string with 3 significant digits, rounded up (``up``) or down.

    ``katib_bound(0.0009326, up=False) == "0.000932"``, ``katib_bound(0.017475, up=True) == "0.0175"``;
    very small or large numbers use exponent notation (``"3.17e-07"``). ``x`` must be finite and > 0.
    """
    if not math.isfinite(x) or x <= 0:
        raise ValueError(f"a learning-rate bound must be finite and > 0, got {x!r}")
    d = Decimal(repr(float(x)))
    exponent = d.adjusted() - (_DIGITS - 1)
    q = d.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_CEILING if up else ROUND_FLOOR)
    return format(q.normalize(), "f") if -5 <= q.adjusted() < 6 else format(float(q), ".3g")


def space_to_dict(fs: FeasibleSpace) -> dict[str, Any]:
    """A ``feasibleSpace`` as Katib writes it (only the fields that are set)."""
    out: dict[str, Any] = {k: v for k, v in (("min", fs.min), ("max", fs.max), ("step", fs.step)) if v is not None}
    if fs.list:
        out["list"] = list(fs.list)
    if fs.distribution is not None:
        out["distribution"] = fs.distribution
    return out


def _finite_positive(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) and x > 0 else None


def _result_range(result: Mapping[str, Any]) -> tuple[float, float] | None:
    rng = result.get("range")
    if isinstance(rng, (list, tuple)) and len(rng) == 2:
        lo, hi = _finite_positive(rng[0]), _finite_positive(rng[1])
        if lo is not None and hi is not None:
            return lo, hi
    detail = result.get("range_detail")
    if isinstance(detail, Mapping):
        lo, hi = _finite_positive(detail.get("base_lr")), _finite_positive(detail.get("max_lr"))
        if lo is not None and hi is not None:
            return lo, hi
    return None


def _no_range_reason(result: Mapping[str, Any], method: str | None) -> str:
    suggestions = result.get("suggestions")
    reason = None
    if isinstance(suggestions, Mapping) and method is not None and isinstance(suggestions.get(method), Mapping):
        reason = suggestions[method].get("reason")
    text = "the LR range test found no range"
    if reason:
        text += f": {reason}"
    elif result.get("stop_reason"):
        text += f" (the test ended: {result['stop_reason']})"
    return text + "; the feasibleSpace is left as written in the spec"


def apply_lr_range(parameters: Sequence[ParameterSpec], result: Mapping[str, Any],
                   parameter_name: str = DEFAULT_PARAMETER) -> tuple[tuple[ParameterSpec, ...], dict[str, Any]]:
    """Replace ``parameter_name``'s ``feasibleSpace`` by the range test's range, as ``logUniform``.

    Returns ``(parameters, note)``: the parameters in their order with that one replaced (or unchanged when
    the result has no usable range), and a JSON-safe note with ``parameter``, ``applied`` (bool),
    ``reason``, ``method``, ``lr`` (the chosen method's suggestion or ``None``), ``range`` (``[low, high]``
    or ``None``), ``diverged``, ``old_feasible_space`` and ``new_feasible_space`` (Katib dicts).

    Raises :class:`ConfigError` when no parameter has that name, when it is not a ``double`` parameter (a
    log-uniform learning-rate range needs one), or when ``result`` is not a mapping.
    """
    params = tuple(parameters)
    if not isinstance(result, Mapping):
        raise ConfigError([Problem("lr_find.result", f"expected the range test's result.json object, "
                                                     f"got {type(result).__name__}")])
    index = next((i for i, p in enumerate(params) if p.name == parameter_name), None)
    if index is None:
        names = ", ".join(p.name for p in params) or "none"
        raise ConfigError([Problem("spec.lrRangeTest.applyTo",
                                   f"{parameter_name!r} is not a search parameter (parameters: {names}); name "
                                   "the double parameter whose range the LR range test should set")])
    target = params[index]
    if target.parameter_type != "double":
        raise ConfigError([Problem(f"spec.search.parameters[{index}].parameterType",
                                   f"parameter {parameter_name} is {target.parameter_type}; the LR range test sets "
                                   "a log-uniform range, which needs parameterType double")])
    method = result.get("method") if isinstance(result.get("method"), str) else None
    lr = _finite_positive(result.get("lr"))
    old = space_to_dict(target.feasible_space)
    note: dict[str, Any] = {
        "parameter": parameter_name, "applied": False, "method": method, "lr": lr, "range": None,
        "diverged": bool(result.get("diverged", False)), "old_feasible_space": old, "new_feasible_space": old,
    }
    rng = _result_range(result)
    if rng is None:
        note["reason"] = _no_range_reason(result, method)
        return params, note
    low, high = rng
    note["range"] = [low, high]
    lo_text, hi_text = katib_bound(low, up=False), katib_bound(high, up=True)
    if not float(lo_text) < float(hi_text):
        note["reason"] = (f"the LR range test's range [{low:.3g}, {high:.3g}] is a single point: a search over it "
                          "would try one learning rate; the feasibleSpace is left as written in the spec")
        return params, note
    new_space = FeasibleSpace(min=lo_text, max=hi_text, distribution="logUniform")
    new_params = params[:index] + (dataclasses.replace(target, feasible_space=new_space),) + params[index + 1:]
    note["applied"] = True
    note["new_feasible_space"] = space_to_dict(new_space)
    was = f"[{old.get('min')}, {old.get('max')}] {old.get('distribution', 'uniform')}"
    how = f"{method} suggests {lr:.3g}; " if method and lr is not None else ""
    note["reason"] = (f"{parameter_name}: feasibleSpace replaced by the LR range test's range [{lo_text}, {hi_text}] "
                      f"logUniform (was {was}); {how}the range runs from where the loss starts falling clearly to "
                      f"just before it stops falling" + (", before the test diverged" if note["diverged"] else ""))
    return new_params, note
