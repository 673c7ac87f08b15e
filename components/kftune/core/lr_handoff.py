"""Hand the LR range test's suggestion to the search: a new ``feasibleSpace`` for one parameter.

:func:`apply_lr_range` takes the search's parameters (Katib ``ParameterSpec`` s, :mod:`kftune.core.parameters`)
and the range test's ``result.json`` (``RangeTestResult.to_dict()`` plus what ``kftune lr-find`` adds) and
replaces the ``feasibleSpace`` of the learning-rate parameter by the decade *below* the suggested learning
rate ``lr`` (the chosen method's, ``result["suggested_lr"]`` or ``result["lr"]``): ``[lr / 10, lr]``,
clipped to the span the test swept (``config.startLR`` .. ``config.endLR``), as ``logUniform`` with
``min``/``max`` as Katib strings. It also returns a *note*, a JSON-safe dict that the search writes into
its output so a reader sees why the space is what it is: the old and the new ``feasibleSpace``, the
method, the suggested learning rate, the rule, the test's ``[base_lr, max_lr]`` range (recorded, not
used), whether the test diverged.

Why the decade below the suggestion. The test's ``[base_lr, max_lr]`` runs from where the loss starts
falling to just before it stops falling within *one* short sweep: the rates a cyclical or one-cycle
schedule passes through, and its low end lies above the rates that train best at a fixed rate for several
epochs. The suggestion (default ``minimum``: the trough / 10, fastai's rule) is the fastest rate that
still trains well: ``benchmarks/lr_find_check.py`` found it within 1 point of the best of a 9-point grid
after 3 epochs. Longer trainings do better a little lower (on TREC_6 at 8 epochs the best rates every
search method found lay at 6e-4..1e-3, below a ``base_lr`` of 1.4e-3), and a search with early stopping
judges its trials after 1-2 epochs, when the faster rates lead: given room above the suggestion it
drifts there (``benchmarks/results/search_efficiency_reduced.md``). So the suggestion is the space's
upper end and one decade below it the lower end, as Smith's cyclical bounds put ``base_lr`` up to 10x
below ``max_lr``.

When the result holds no suggestion (a flat curve, a test that diverged at once, too few batches),
nothing is replaced and the note says why, quoting the range test's own reason. Pure: no I/O, no torch.

The bounds are written with 3 significant digits, rounded *outwards* (``min`` down, ``max`` up), so the
new space always contains the computed interval and reads well in a Katib Experiment (``"0.000933"``, not
``"0.0009326033468832206"``).
"""

from __future__ import annotations

import dataclasses
import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Mapping, Sequence

from kftune.core.errors import ConfigError, Problem
from kftune.core.parameters import FeasibleSpace, ParameterSpec

DEFAULT_PARAMETER = "learning_rate"
_DIGITS = 3
SPAN = 10.0
"""The new space is ``[lr / SPAN, lr]``: the decade below the suggested learning rate."""
RULE = "the decade below the suggested learning rate: [lr / 10, lr], clipped to the tested span"


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


def _suggested_lr(result: Mapping[str, Any]) -> float | None:
    lr = _finite_positive(result.get("suggested_lr"))
    return lr if lr is not None else _finite_positive(result.get("lr"))


def _tested_span(result: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """``(startLR, endLR)`` of the test's schedule from ``config``, else the ends of ``lrs``; ``None`` if unknown."""
    config = result.get("config")
    lo = hi = None
    if isinstance(config, Mapping):
        lo, hi = _finite_positive(config.get("startLR")), _finite_positive(config.get("endLR"))
    lrs = result.get("lrs")
    if isinstance(lrs, (list, tuple)) and lrs:
        lo = lo if lo is not None else _finite_positive(lrs[0])
        hi = hi if hi is not None else _finite_positive(lrs[-1])
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    return lo, hi


def _no_suggestion_reason(result: Mapping[str, Any], method: str | None) -> str:
    suggestions = result.get("suggestions")
    reason = None
    if isinstance(suggestions, Mapping) and method is not None and isinstance(suggestions.get(method), Mapping):
        reason = suggestions[method].get("reason")
    text = "the LR range test suggested no learning rate"
    if reason:
        text += f": {reason}"
    elif result.get("stop_reason"):
        text += f" (the test ended: {result['stop_reason']})"
    return text + "; the feasibleSpace is left as written in the spec"


def apply_lr_range(parameters: Sequence[ParameterSpec], result: Mapping[str, Any],
                   parameter_name: str = DEFAULT_PARAMETER) -> tuple[tuple[ParameterSpec, ...], dict[str, Any]]:
    """Replace ``parameter_name``'s ``feasibleSpace`` by the decade below the suggested lr, as ``logUniform``.

    The new space is ``[lr / 10, lr]`` clipped to the tested span (``config.startLR`` ..
    ``config.endLR``, else the ends of ``lrs``), ``lr`` being ``result["suggested_lr"]`` or ``result["lr"]``.
    Returns ``(parameters, note)``: the parameters in their order with that one replaced (or unchanged when
    the result has no usable suggestion), and a JSON-safe note with ``parameter``, ``applied`` (bool),
    ``reason``, ``rule``, ``method``, ``lr`` (the chosen method's suggestion or ``None``), ``range`` (the
    test's ``[base_lr, max_lr]`` or ``None``; recorded, not used), ``diverged``, ``old_feasible_space`` and
    ``new_feasible_space`` (Katib dicts).

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
    lr = _suggested_lr(result)
    rng = _result_range(result)
    old = space_to_dict(target.feasible_space)
    note: dict[str, Any] = {
        "parameter": parameter_name, "applied": False, "rule": RULE, "method": method, "lr": lr,
        "range": None if rng is None else [rng[0], rng[1]],
        "diverged": bool(result.get("diverged", False)), "old_feasible_space": old, "new_feasible_space": old,
    }
    if lr is None:
        note["reason"] = _no_suggestion_reason(result, method)
        return params, note
    low, high = lr / SPAN, lr
    span_lo, span_hi = _tested_span(result)
    clipped = []
    if span_lo is not None and low < span_lo:
        low = span_lo
        clipped.append(f"raised to the test's startLR {span_lo:.3g}")
    if span_hi is not None and high > span_hi:
        high = span_hi
        clipped.append(f"lowered to the test's endLR {span_hi:.3g}")
    lo_text, hi_text = katib_bound(low, up=False), katib_bound(high, up=True)
    if not float(lo_text) < float(hi_text):
        note["reason"] = (f"the decade below the suggested learning rate {lr:.3g}, clipped to the tested span, "
                          f"is a single point [{low:.3g}, {high:.3g}]: a search over it would try one learning "
                          "rate; the feasibleSpace is left as written in the spec")
        return params, note
    new_space = FeasibleSpace(min=lo_text, max=hi_text, distribution="logUniform")
    new_params = params[:index] + (dataclasses.replace(target, feasible_space=new_space),) + params[index + 1:]
    note["applied"] = True
    note["new_feasible_space"] = space_to_dict(new_space)
    was = f"[{old.get('min')}, {old.get('max')}] {old.get('distribution', 'uniform')}"
    who = f"the LR range test's {method} suggests" if method else "the LR range test suggests"
    tested = (f"; the test's [base_lr, max_lr] range was [{rng[0]:.3g}, {rng[1]:.3g}]" if rng is not None else "")
    note["reason"] = (f"{parameter_name}: feasibleSpace replaced by [{lo_text}, {hi_text}] logUniform (was {was}): "
                      f"{who} {lr:.3g}, and the space is the decade below it, lr / 10 .. lr"
                      + (f" ({'; '.join(clipped)})" if clipped else "") + tested
                      + (", before the test diverged" if note["diverged"] else ""))
    return new_params, note
