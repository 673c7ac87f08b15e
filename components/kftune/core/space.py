"""The search space: Katib ``parameters`` as typed parameters, and their hyperopt expressions.

The mapping to hyperopt follows Katib's own hyperopt suggestion service
(``kubeflow/katib: pkg/suggestion/v1beta1/hyperopt/base_service.py`` and
``pkg/suggestion/v1beta1/internal/search_space.py``), with the label of every hyperopt node equal to
the parameter's name:

=====================  ====================================  ==========================================
parameter              Katib / hyperopt                      kftune
=====================  ====================================  ==========================================
double, uniform        ``hp.uniform(min, max)``              same
double, uniform, step  ``hp.quniform(min, max, step)``       ``min + step * hp.uniformint(0, n)``
int, uniform           ``hp.quniform(min, max, step or 1)``  ``min + step * hp.uniformint(0, n)``
logUniform             ``hp.loguniform(log min, log max)``   same
logUniform, step/int   ``hp.qloguniform(.., step)``          same, snapped onto the grid
normal                 ``hp.normal(mu, sigma)``,             same, clipped to ``[min, max]``
                       mu = (min+max)/2, sigma = (max-min)/6
logNormal              ``hp.lognormal`` with mu, sigma of    same, clipped to ``[min, max]``
                       ``log min``/``log max`` as above
normal/logNormal,      ``hp.qnormal``/``hp.qlognormal``      same, snapped onto the grid
step/int
discrete, categorical  ``hp.choice(list)``                   same; decoded with ``space_eval``
=====================  ====================================  ==========================================

Where kftune differs it is to keep every value inside the feasible space: ``hp.quniform(min, max, q)``
rounds to multiples of ``q`` and so leaves the space when ``min`` is not a multiple of ``q`` (e.g.
``min=1, step=3`` gives 0); sampling the step index instead gives exactly Katib's grid
``min, min+step, ..., <= max`` (the grid Katib's own grid service enumerates). The normal variants,
which Katib leaves unbounded (±3 sigma covers 99.7 %), are clipped to ``[min, max]``. An int
parameter without ``step`` has step 1, as in Katib.

Values come back as Python values: ``int`` for int, ``float`` for double, ``str`` for categorical,
and ``int`` (all items integers) or ``float`` for discrete. Katib's strings are kept verbatim, so
``SearchSpace.from_katib(block).to_katib() == block``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any, Iterator, Mapping, Sequence

from kftune.core.errors import ConfigError, Problem
from kftune.core.parameters import DISTRIBUTIONS, LOG_DISTRIBUTIONS, PARAMETER_TYPES, FeasibleSpace, ParameterSpec
from kftune.core.trials import Assignment, Value

log = logging.getLogger(__name__)

_PARAMS_PATH = "spec.search.parameters"


def _fmt_float(x: float) -> str:
    """Shortest string that reads back as the same float (``repr``)."""
    return repr(float(x))


def _dec(text: str) -> Decimal | None:
    try:
        d = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        return None
    return d if d.is_finite() else None


@dataclass(frozen=True)
class Parameter:
    """One parameter of the space: its Katib spec plus the parsed bounds, grid and choices.

    Build with :meth:`from_spec`. ``step`` is the effective step (``1`` for an int parameter without
    one, ``None`` for a continuous double); ``choices`` are the typed values of a discrete or
    categorical parameter.
    """

    spec: ParameterSpec
    distribution: str | None
    low: float | None
    high: float | None
    step: Decimal | None
    choices: tuple[Value, ...]

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: ParameterSpec, path: str = _PARAMS_PATH) -> "Parameter":
        """Parse and validate one Katib ``ParameterSpec``; raise :class:`ConfigError` with every problem."""
        problems: list[Problem] = []
        fs = spec.feasible_space
        fpath = f"{path}.feasibleSpace"
        if not isinstance(spec.name, str) or not spec.name.strip():
            problems.append(Problem(f"{path}.name", f"a parameter needs a non-empty name, got {spec.name!r}"))
        ptype = spec.parameter_type
        if ptype not in PARAMETER_TYPES:
            problems.append(Problem(f"{path}.parameterType",
                                    f"{ptype!r} is not one of {list(PARAMETER_TYPES)}"))
            raise ConfigError(problems)
        dist = fs.distribution or None
        if ptype in ("double", "int"):
            if dist is None:
                dist = "uniform"
            elif dist not in DISTRIBUTIONS:
                problems.append(Problem(f"{fpath}.distribution",
                                        f"{dist!r} is not one of {list(DISTRIBUTIONS)}"))
            if fs.list:
                problems.append(Problem(f"{fpath}.list", f"a {ptype} parameter takes min/max(/step), not a list; "
                                        "use parameterType discrete or categorical for a list"))
            lo, hi = (_dec(fs.min) if fs.min is not None else None), (_dec(fs.max) if fs.max is not None else None)
            for key, raw, val in (("min", fs.min, lo), ("max", fs.max, hi)):
                if raw is None or raw == "":
                    problems.append(Problem(f"{fpath}.{key}", f"a {ptype} parameter needs feasibleSpace.{key} "
                                            "(a number as a string, e.g. \"0.001\")"))
                elif val is None:
                    problems.append(Problem(f"{fpath}.{key}", f"{raw!r} is not a finite number"))
                elif ptype == "int" and val != val.to_integral_value():
                    problems.append(Problem(f"{fpath}.{key}", f"{raw!r} is not an integer (int parameter)"))
            step: Decimal | None = None
            if fs.step not in (None, ""):
                step = _dec(fs.step)
                if step is None or step <= 0:
                    problems.append(Problem(f"{fpath}.step", f"{fs.step!r} is not a positive number"))
                    step = None
                elif ptype == "int" and step != step.to_integral_value():
                    problems.append(Problem(f"{fpath}.step", f"{fs.step!r} is not an integer (int parameter)"))
            elif ptype == "int":
                step = Decimal(1)
            if lo is not None and hi is not None:
                if not lo < hi:
                    problems.append(Problem(fpath, f"min ({fs.min}) must be less than max ({fs.max})"))
                elif step is not None and step > hi - lo:
                    problems.append(Problem(f"{fpath}.step", f"step {fs.step} is larger than max - min "
                                            f"({hi - lo}); use a smaller step"))
                if dist in LOG_DISTRIBUTIONS and lo <= 0:
                    problems.append(Problem(f"{fpath}.min", f"{dist} needs min > 0, got {fs.min}; use "
                                            "distribution uniform or a positive min"))
            if problems:
                raise ConfigError(problems)
            return cls(spec=spec, distribution=dist, low=float(lo), high=float(hi), step=step,  # type: ignore[arg-type]
                       choices=())
        # discrete / categorical
        for key in ("min", "max", "step"):
            if getattr(fs, key) not in (None, ""):
                problems.append(Problem(f"{fpath}.{key}", f"a {ptype} parameter takes only feasibleSpace.list; "
                                        f"remove {key}"))
        if dist is not None:
            problems.append(Problem(f"{fpath}.distribution", f"a {ptype} parameter has no distribution; remove it"))
        items = list(fs.list)
        if not items:
            problems.append(Problem(f"{fpath}.list", f"a {ptype} parameter needs a non-empty list of values"))
        if any(not isinstance(x, str) for x in items):
            problems.append(Problem(f"{fpath}.list", f"list items must be strings (Katib), got {items!r}"))
            raise ConfigError(problems)
        if len(set(items)) != len(items):
            dup = sorted({x for x in items if items.count(x) > 1})
            problems.append(Problem(f"{fpath}.list", f"duplicate values {dup}; list each value once"))
        choices: tuple[Value, ...] = tuple(items)
        if ptype == "discrete":
            nums = [_dec(x) for x in items]
            bad = [x for x, d in zip(items, nums) if d is None]
            if bad:
                problems.append(Problem(f"{fpath}.list", f"discrete values must be numbers, not {bad}; "
                                        "use parameterType categorical for words"))
            elif all(d == d.to_integral_value() and "." not in x and "e" not in x.lower()
                     for x, d in zip(items, nums)):
                choices = tuple(int(d) for d in nums)  # type: ignore[arg-type]
            else:
                choices = tuple(float(d) for d in nums)  # type: ignore[arg-type]
            if not bad and len(set(choices)) != len(choices):
                problems.append(Problem(f"{fpath}.list", f"values {items} repeat the same number"))
        if problems:
            raise ConfigError(problems)
        return cls(spec=spec, distribution=None, low=None, high=None, step=None, choices=choices)

    # -- basic properties ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def type(self) -> str:
        """Katib ``parameterType``: double, int, discrete or categorical."""
        return self.spec.parameter_type

    @property
    def is_numeric_range(self) -> bool:
        """Whether the parameter is a min/max range (double or int)."""
        return self.type in ("double", "int")

    @property
    def is_log(self) -> bool:
        """Whether the distribution is logUniform or logNormal."""
        return self.distribution in LOG_DISTRIBUTIONS

    @property
    def n_steps(self) -> int | None:
        """For a stepped range, the number of steps: grid values are ``min + k*step``, ``k = 0..n_steps``."""
        if self.step is None:
            return None
        fs = self.spec.feasible_space
        return int((Decimal(fs.max) - Decimal(fs.min)) // self.step)  # type: ignore[arg-type]

    def grid_value(self, k: int) -> int | float:
        """The ``k``-th grid value ``min + k*step`` (exact decimal arithmetic), typed."""
        assert self.step is not None  # internal: only called for stepped ranges
        v = Decimal(self.spec.feasible_space.min) + k * self.step  # type: ignore[arg-type]
        return int(v) if self.type == "int" else float(v)

    def snap(self, x: float) -> int | float:
        """Clip ``x`` into ``[min, max]`` and, for a stepped range, move it to the nearest grid value."""
        assert self.low is not None and self.high is not None
        if self.step is None:
            v = min(max(float(x), self.low), self.high)
            return v
        n = self.n_steps or 0
        k = int(round((float(x) - self.low) / float(self.step)))
        return self.grid_value(min(max(k, 0), n))

    # -- values ------------------------------------------------------------------------------------
    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not in this parameter's feasible space, or ``None`` when it is."""
        if isinstance(value, bool):
            return f"{value!r} is a boolean, not a {self.type} value"
        if self.type == "categorical":
            if not isinstance(value, str):
                return f"{value!r} is not a string (categorical)"
            return None if value in self.choices else f"{value!r} is not in {list(self.choices)}"
        if self.type == "discrete":
            if not isinstance(value, (int, float)):
                return f"{value!r} is not a number (discrete)"
            return None if value in self.choices else f"{value!r} is not in {list(self.choices)}"
        assert self.low is not None and self.high is not None
        if self.type == "int" and not isinstance(value, int):
            return f"{value!r} is not an int"
        if self.type == "double" and not isinstance(value, (int, float)):
            return f"{value!r} is not a number (double)"
        if not (isinstance(value, int) or math.isfinite(value)):
            return f"{value!r} is not finite"
        if not self.low <= value <= self.high:
            return f"{value!r} is outside [{self.spec.feasible_space.min}, {self.spec.feasible_space.max}]"
        if self.step is not None:
            k = (float(value) - self.low) / float(self.step)
            if abs(k - round(k)) > 1e-9 * max(1.0, abs(k)):
                return (f"{value!r} is not on the grid min + k*step (min {self.spec.feasible_space.min}, "
                        f"step {self.step})")
        return None

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a feasible, correctly typed value of this parameter."""
        return self.problem(value) is None

    def parse(self, text: str) -> Value:
        """Read a Katib assignment string (``"0.01"``, ``"128"``, ``"adam"``) as this parameter's type.

        Raises :class:`ValueError` when the text does not read as the type (range is not checked).
        """
        if self.type == "categorical":
            return text
        if self.type == "int":
            d = Decimal(text)
            if d != d.to_integral_value():
                raise ValueError(f"{text!r} is not an integer")
            return int(d)
        if self.type == "double":
            return float(text)
        # discrete: the list item it equals, typed as the list's items
        x = float(text)
        for c in self.choices:
            if float(c) == x:
                return c
        return int(x) if isinstance(self.choices[0], int) and x.is_integer() else x

    def format(self, value: Value) -> str:
        """The Katib string form of ``value``: a list item's own string for discrete/categorical,
        ``repr`` for floats (it reads back exactly), ``str`` for ints."""
        if not self.is_numeric_range and value in self.choices:
            return self.spec.feasible_space.list[self.choices.index(value)]
        if isinstance(value, float):
            return _fmt_float(value)
        return str(value)

    # -- hyperopt ------------------------------------------------------------------------------
    def hyperopt_expression(self) -> Any:
        """The hyperopt expression for this parameter, labelled with its name (see the module table)."""
        from hyperopt import hp

        name = self.name
        if not self.is_numeric_range:
            return hp.choice(name, list(self.choices))
        assert self.low is not None and self.high is not None
        dist, q = self.distribution, (float(self.step) if self.step is not None else None)
        if dist == "uniform":
            if q is not None:
                return hp.uniformint(name, 0, self.n_steps)
            return hp.uniform(name, self.low, self.high)
        if dist == "logUniform":
            lo, hi = math.log(self.low), math.log(self.high)
            return hp.qloguniform(name, lo, hi, q) if q is not None else hp.loguniform(name, lo, hi)
        if dist == "normal":
            mu, sigma = (self.low + self.high) / 2, (self.high - self.low) / 6
            return hp.qnormal(name, mu, sigma, q) if q is not None else hp.normal(name, mu, sigma)
        lo, hi = math.log(self.low), math.log(self.high)  # logNormal
        mu, sigma = (lo + hi) / 2, (hi - lo) / 6
        return hp.qlognormal(name, mu, sigma, q) if q is not None else hp.lognormal(name, mu, sigma)

    def _uses_index(self) -> bool:
        """Whether hyperopt's value for this parameter is an index (choice, stepped uniform)."""
        return not self.is_numeric_range or (self.distribution == "uniform" and self.step is not None)

    def from_hyperopt(self, raw: Any) -> Value:
        """Turn the value ``space_eval`` gives for this parameter into a feasible typed value."""
        if not self.is_numeric_range:
            return raw  # space_eval already picked the list item
        if self.distribution == "uniform" and self.step is not None:
            return self.grid_value(min(max(int(raw), 0), self.n_steps or 0))
        v = self.snap(float(raw))
        return int(v) if self.type == "int" else float(v)

    def to_hyperopt(self, value: Value) -> float | int:
        """The number hyperopt stores in ``misc['vals']`` for ``value`` (the inverse of decoding)."""
        if not self.is_numeric_range:
            return self.choices.index(value)
        if self.distribution == "uniform" and self.step is not None:
            assert self.low is not None
            return int(round((float(value) - self.low) / float(self.step)))
        return float(value)


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of parameters. Immutable; :func:`narrow` and :func:`with_range` return new spaces.

    ``notes`` records, in order, every change made to the space since it was read from the spec
    (a narrowed range, a range replaced after the LR range test) and why.
    """

    parameters: tuple[Parameter, ...]
    notes: tuple[str, ...] = ()

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_parameters(cls, params: Sequence[ParameterSpec], path: str = _PARAMS_PATH) -> "SearchSpace":
        """Build the space from the spec's ``parameters``; raise :class:`ConfigError` with every problem."""
        problems: list[Problem] = []
        parsed: list[Parameter] = []
        if not params:
            raise ConfigError([Problem(path, "the search space needs at least one parameter")])
        seen: set[str] = set()
        for i, p in enumerate(params):
            ppath = f"{path}[{i}]"
            if not isinstance(p, ParameterSpec):
                problems.append(Problem(ppath, f"expected a ParameterSpec, got {type(p).__name__}"))
                continue
            if p.name in seen:
                problems.append(Problem(f"{ppath}.name", f"duplicate parameter name {p.name!r}"))
            seen.add(p.name)
            try:
                parsed.append(Parameter.from_spec(p, ppath))
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        return cls(tuple(parsed))

    @classmethod
    def from_katib(cls, parameters: Sequence[Mapping[str, Any]], path: str = _PARAMS_PATH) -> "SearchSpace":
        """Build the space from a Katib ``parameters:`` block (a list of dicts, camelCase keys)."""
        specs: list[ParameterSpec] = []
        problems: list[Problem] = []
        if not isinstance(parameters, Sequence) or isinstance(parameters, (str, bytes)):
            raise ConfigError([Problem(path, f"expected a list of parameters, got {type(parameters).__name__}")])
        for i, p in enumerate(parameters):
            ppath = f"{path}[{i}]"
            if not isinstance(p, Mapping):
                problems.append(Problem(ppath, f"expected a mapping, got {p!r}"))
                continue
            unknown = set(p) - {"name", "parameterType", "feasibleSpace"}
            if unknown:
                problems.append(Problem(ppath, f"unknown keys {sorted(unknown)}; a Katib parameter has "
                                        "name, parameterType, feasibleSpace"))
            fs = p.get("feasibleSpace") or {}
            if not isinstance(fs, Mapping):
                problems.append(Problem(f"{ppath}.feasibleSpace", f"expected a mapping, got {fs!r}"))
                continue
            unknown = set(fs) - {"min", "max", "step", "list", "distribution"}
            if unknown:
                problems.append(Problem(f"{ppath}.feasibleSpace", f"unknown keys {sorted(unknown)}; use "
                                        "min, max, step, list, distribution"))

            def text(v: Any, key: str) -> str | None:
                if v is None or isinstance(v, str):
                    return v
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    return str(v)
                problems.append(Problem(f"{ppath}.feasibleSpace.{key}", f"{v!r} must be a string"))
                return None

            lst = fs.get("list") or []
            specs.append(ParameterSpec(
                name=p.get("name"),  # type: ignore[arg-type]
                parameter_type=p.get("parameterType"),  # type: ignore[arg-type]
                feasible_space=FeasibleSpace(
                    min=text(fs.get("min"), "min"), max=text(fs.get("max"), "max"),
                    step=text(fs.get("step"), "step"),
                    list=tuple(text(x, "list") for x in lst),  # type: ignore[misc]
                    distribution=fs.get("distribution") or None,
                ),
            ))
        if problems:
            raise ConfigError(problems)
        return cls.from_parameters(specs, path)

    # -- round trips ---------------------------------------------------------------------------
    def to_parameters(self) -> tuple[ParameterSpec, ...]:
        """The spec objects this space was built from (after any :func:`narrow`/:func:`with_range`)."""
        return tuple(p.spec for p in self.parameters)

    def to_katib(self) -> list[dict[str, Any]]:
        """The Katib ``parameters:`` block: only the fields that were given, strings verbatim."""
        out: list[dict[str, Any]] = []
        for p in self.parameters:
            fs = p.spec.feasible_space
            block: dict[str, Any] = {}
            for key in ("min", "max", "step"):
                if getattr(fs, key) is not None:
                    block[key] = getattr(fs, key)
            if fs.list:
                block["list"] = list(fs.list)
            if fs.distribution:
                block["distribution"] = fs.distribution
            out.append({"name": p.name, "parameterType": p.type, "feasibleSpace": block})
        return out

    # -- access --------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def __iter__(self) -> Iterator[Parameter]:
        return iter(self.parameters)

    def __len__(self) -> int:
        return len(self.parameters)

    def __getitem__(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(f"no parameter {name!r} in the search space; parameters: {list(self.names)}")

    # -- assignments ---------------------------------------------------------------------------
    def problems(self, assignment: Mapping[str, Any], path: str = "assignment") -> list[Problem]:
        """Every reason ``assignment`` is not a point of this space (missing/unknown names, bad values)."""
        if not isinstance(assignment, Mapping):
            return [Problem(path, f"expected a mapping of parameter names to values, got {assignment!r}")]
        out: list[Problem] = []
        for p in self.parameters:
            if p.name not in assignment:
                out.append(Problem(f"{path}.{p.name}", "missing"))
                continue
            why = p.problem(assignment[p.name])
            if why:
                out.append(Problem(f"{path}.{p.name}", why))
        for extra in sorted(set(assignment) - set(self.names)):
            out.append(Problem(f"{path}.{extra}", f"not a parameter of the space {list(self.names)}"))
        return out

    def contains(self, assignment: Mapping[str, Any]) -> bool:
        """Whether ``assignment`` names exactly this space's parameters with feasible, typed values."""
        return not self.problems(assignment)

    def check(self, assignment: Mapping[str, Any], path: str = "assignment") -> Assignment:
        """Return ``assignment`` in parameter order, or raise :class:`ConfigError` with every problem."""
        problems = self.problems(assignment, path)
        if problems:
            raise ConfigError(problems)
        return {p.name: assignment[p.name] for p in self.parameters}

    def assignment_to_katib(self, assignment: Mapping[str, Value]) -> list[dict[str, str]]:
        """Katib ``parameterAssignments``: ``[{"name": ..., "value": "<string>"}, ...]``."""
        return [{"name": p.name, "value": p.format(assignment[p.name])} for p in self.parameters]

    def assignment_from_katib(self, items: Sequence[Mapping[str, str]] | Mapping[str, str],
                              path: str = "parameterAssignments") -> Assignment:
        """Read Katib ``parameterAssignments`` (or a name -> string mapping) back into typed values.

        Raises :class:`ConfigError` naming each value that does not parse or is not feasible.
        """
        raw = dict(items) if isinstance(items, Mapping) else {i["name"]: i["value"] for i in items}
        out: dict[str, Any] = {}
        problems: list[Problem] = []
        for name, text in raw.items():
            try:
                out[name] = self[name].parse(text)
            except KeyError:
                out[name] = text
            except (ValueError, InvalidOperation) as exc:
                problems.append(Problem(f"{path}.{name}", f"{text!r} does not read as {self[name].type}: {exc}"))
        if problems:
            raise ConfigError(problems)
        return self.check(out, path)

    # -- hyperopt ------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """Pickle the fields only (a space travels to trial processes); hyperopt objects are rebuilt."""
        return {"parameters": self.parameters, "notes": self.notes}

    @cached_property
    def hyperopt_space(self) -> dict[str, Any]:
        """``{name: hyperopt expression}``, one labelled node per parameter."""
        return {p.name: p.hyperopt_expression() for p in self.parameters}

    @cached_property
    def hyperopt_domain(self) -> Any:
        """A ``hyperopt.Domain`` over :attr:`hyperopt_space` (no objective function), as Katib builds it."""
        import hyperopt

        return hyperopt.Domain(None, self.hyperopt_space, pass_expr_memo_ctrl=None)

    def decode(self, vals: Mapping[str, Any]) -> Assignment:
        """Turn hyperopt's ``misc['vals']`` (``{label: [value]}`` or ``{label: value}``) into an assignment.

        Choices are decoded with ``hyperopt.space_eval``; numbers are snapped into the space.
        """
        from hyperopt import space_eval

        flat = {k: (v[0] if isinstance(v, (list, tuple)) else v) for k, v in vals.items()}
        point = space_eval(self.hyperopt_space, flat)
        return {p.name: p.from_hyperopt(point[p.name]) for p in self.parameters}

    def encode(self, assignment: Mapping[str, Value]) -> dict[str, list[float | int]]:
        """The ``misc['vals']`` hyperopt would hold for ``assignment`` (which must be in the space)."""
        return {p.name: [p.to_hyperopt(assignment[p.name])] for p in self.parameters}

    def sample(self, n: int, seed: int) -> list[Assignment]:
        """``n`` independent random points drawn with ``hyperopt.rand`` (deterministic for ``seed``)."""
        import hyperopt
        from hyperopt import rand

        if n <= 0:
            return []
        trials = hyperopt.Trials()
        docs = rand.suggest(list(range(n)), self.hyperopt_domain, trials, int(seed))
        return [self.decode(d["misc"]["vals"]) for d in docs]


# --------------------------------------------------------------------------------------------------
# Changing a space: coarse-to-fine narrowing and the LR range test hand-off.
# --------------------------------------------------------------------------------------------------

def _replace_fs(p: Parameter, **changes: Any) -> Parameter:
    fs = replace(p.spec.feasible_space, **changes)
    return Parameter.from_spec(replace(p.spec, feasible_space=fs))


def _narrow_range(p: Parameter, values: Sequence[float], shrink: float, log_aware: bool) -> Parameter:
    assert p.low is not None and p.high is not None
    use_log = log_aware and p.is_log
    t = math.log if use_log else (lambda x: x)
    inv = math.exp if use_log else (lambda x: x)
    lo_t, hi_t = t(p.low), t(p.high)
    width = hi_t - lo_t
    vs = [min(max(float(v), p.low), p.high) for v in values]
    a, b = t(min(vs)), t(max(vs))
    target = min(width, max(b - a, shrink * width))
    c = (a + b) / 2
    new_lo, new_hi = c - target / 2, c + target / 2
    if new_lo < lo_t:
        new_hi, new_lo = new_hi + (lo_t - new_lo), lo_t
    if new_hi > hi_t:
        new_lo, new_hi = max(lo_t, new_lo - (new_hi - hi_t)), hi_t
    fs = p.spec.feasible_space
    if p.step is not None:
        n = p.n_steps or 0
        step = float(p.step)
        k_lo = int(math.floor((inv(new_lo) - p.low) / step + 1e-9))
        k_hi = int(math.ceil((inv(new_hi) - p.low) / step - 1e-9))
        k_lo, k_hi = max(0, min(k_lo, n)), max(0, min(k_hi, n))
        if k_hi <= k_lo:  # keep at least two grid values
            if k_hi < n:
                k_hi = k_lo + 1
            else:
                k_lo = k_hi - 1
        base = Decimal(fs.min)  # type: ignore[arg-type]
        lo_s = fs.min if k_lo == 0 else str(base + k_lo * p.step)
        hi_s = str(base + k_hi * p.step)
        if k_hi == n and (base + n * p.step) == Decimal(fs.max):  # type: ignore[arg-type]
            hi_s = fs.max  # type: ignore[assignment]
        if p.type == "int":
            lo_s, hi_s = str(int(Decimal(lo_s))), str(int(Decimal(hi_s)))  # type: ignore[arg-type]
        if Decimal(hi_s) - Decimal(lo_s) < p.step:  # type: ignore[arg-type]
            return p  # cannot narrow below one step
        return _replace_fs(p, min=lo_s, max=hi_s)
    lo_v = p.low if new_lo <= lo_t else min(max(inv(new_lo), p.low), p.high)
    hi_v = p.high if new_hi >= hi_t else min(max(inv(new_hi), p.low), p.high)
    if not lo_v < hi_v:
        return p
    lo_s = fs.min if lo_v == p.low else _fmt_float(lo_v)
    hi_s = fs.max if hi_v == p.high else _fmt_float(hi_v)
    return _replace_fs(p, min=lo_s, max=hi_s)


def _narrow_list(p: Parameter, values: Sequence[Value]) -> Parameter:
    used = {v for v in values if v in p.choices}
    if not used:
        return p
    if p.type == "discrete":
        lo, hi = min(used), max(used)  # type: ignore[type-var]
        keep = [raw for raw, c in zip(p.spec.feasible_space.list, p.choices) if lo <= c <= hi]  # type: ignore[operator]
    else:
        keep = [raw for raw, c in zip(p.spec.feasible_space.list, p.choices) if c in used]
    return _replace_fs(p, list=tuple(keep))


def narrow(space: SearchSpace, center_values: Mapping[str, Sequence[Value]], shrink: float,
           log_aware: bool = True, reason: str = "") -> SearchSpace:
    """A smaller space around ``center_values`` (e.g. the top-k trials' values), never past ``space``.

    For each parameter named in ``center_values``:

    * a double/int range becomes an interval containing all the given values, at least
      ``shrink`` times the current width wide (in log space for logUniform/logNormal when
      ``log_aware``), centred on them and shifted inward where it would cross the current bounds;
      a stepped range keeps its grid (the new bounds are grid values, at least one step apart);
    * a categorical list keeps exactly the values used; a discrete list keeps the values between the
      smallest and the largest used (its items are ordered numbers).

    Parameters not named are unchanged. ``shrink`` must be in ``(0, 1]``. The change is appended to
    the new space's ``notes``.
    """
    if not (isinstance(shrink, (int, float)) and 0 < shrink <= 1):
        raise ConfigError([Problem("shrink", f"{shrink!r} must be a number in (0, 1]; 0.5 halves each range")])
    new_params = []
    changes = []
    for p in space.parameters:
        vals = center_values.get(p.name)
        if not vals:
            new_params.append(p)
            continue
        q = _narrow_range(p, vals, float(shrink), log_aware) if p.is_numeric_range else _narrow_list(p, vals)  # type: ignore[arg-type]
        if q != p:
            fs = q.spec.feasible_space
            changes.append(f"{p.name}: {list(fs.list)}" if fs.list else f"{p.name}: [{fs.min}, {fs.max}]")
        new_params.append(q)
    unknown = set(center_values) - set(space.names)
    if unknown:
        raise ConfigError([Problem("center_values", f"unknown parameters {sorted(unknown)}; "
                                   f"the space has {list(space.names)}")])
    note = f"narrowed (shrink {shrink}{', log-aware' if log_aware else ''}): " + ("; ".join(changes) or "no change")
    if reason:
        note += f" ({reason})"
    return SearchSpace(tuple(new_params), space.notes + (note,))


def with_range(space: SearchSpace, name: str, low: float | str, high: float | str,
               distribution: str = "logUniform", *, step: str | None = None, reason: str = "") -> SearchSpace:
    """Replace one double/int parameter's ``feasibleSpace`` by ``[low, high]`` with ``distribution``.

    Used to hand the LR range test's suggested range to the search. ``reason`` (e.g. "LR range test:
    steepest descent at 3e-3") is recorded in the new space's ``notes`` together with the old range.
    Raises :class:`ConfigError` for an unknown or non-numeric parameter or an infeasible range.
    """
    try:
        p = space[name]
    except KeyError as exc:
        raise ConfigError([Problem(f"{_PARAMS_PATH}.{name}", str(exc.args[0]))]) from exc
    if not p.is_numeric_range:
        raise ConfigError([Problem(f"{_PARAMS_PATH}.{name}",
                                   f"is {p.type}; only a double or int parameter takes a range")])

    def as_text(x: float | str) -> str:
        if isinstance(x, str):
            return x
        if p.type == "int":
            return str(int(x))
        return _fmt_float(x)

    old = p.spec.feasible_space
    fs = FeasibleSpace(min=as_text(low), max=as_text(high), step=step, distribution=distribution)  # type: ignore[arg-type]
    q = Parameter.from_spec(replace(p.spec, feasible_space=fs), f"{_PARAMS_PATH}.{name}")
    note = (f"{name}: feasibleSpace replaced by [{fs.min}, {fs.max}] {distribution} "
            f"(was [{old.min}, {old.max}] {old.distribution or 'uniform'})")
    if reason:
        note += f": {reason}"
    params = tuple(q if x.name == name else x for x in space.parameters)
    return SearchSpace(params, space.notes + (note,))


__all__ = [
    "DISTRIBUTIONS", "PARAMETER_TYPES", "Parameter", "SearchSpace", "narrow", "with_range",
]
