"""The toolkit every section of the spec is checked with: a problem collector, value checks, field tables.

A section is a table of :class:`_F` (the YAML key, the dataclass attribute, the check); :func:`_section`
checks a mapping against it and :func:`_dump_section` writes an object back. A check is
``(value, path, ctx) -> parsed value``, or :data:`_INVALID` after reporting the problem to ``ctx``, so that
every problem of a document is found in one pass. The names are private to :mod:`kftune.core.spec`.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

from kftune.core import limits
from kftune.core.errors import Problem
from kftune.core.limits import Bound
from kftune.core.parameters import ParameterSpec

_INVALID: Any = object()
#: A name made of letters, digits and _ (hyperparameters, metrics, labels).
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: A Kubernetes label key (metadata.labels, resources.nodeSelector).
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def _show(value: Any) -> str:
    """A value as the user wrote it, JSON-quoted, shortened."""
    if _is_int(value):
        return limits.short(value)
    try:
        text = json.dumps(_thaw(value), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        try:
            text = repr(value)
        except ValueError:  # an integer inside of more digits than Python prints
            text = f"<{_type_name(value)}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_float(value: Any) -> float | None:
    """A finite float from a number or a numeric string (``"1e-4"``), else ``None`` (also for NaN, infinities
    and integers too large for a float)."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            result = float(value)
        elif isinstance(value, str):
            result = float(value.strip())
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return result if math.isfinite(result) else None


def _parse_int(value: Any) -> int | None:
    """An int from an integer or an integer string (``"3"``), else ``None`` (also for a string of more
    digits than Python converts)."""
    if _is_int(value):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        try:
            return int(value)
        except ValueError:  # more than sys.get_int_max_str_digits() digits
            return None
    return None


def _not_finite(value: Any) -> bool:
    """Whether ``value`` spells NaN or an infinity (``.nan``, ``"inf"``, ``1e999``)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        try:
            return not math.isfinite(float(value.strip()))
        except ValueError:
            return False
    return False


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _suggest(value: str, choices: Collection[str]) -> str | None:
    """The closest choice to ``value`` (case, snake_case and typos forgiven), or ``None``."""
    for choice in choices:
        if choice.lower() == value.lower() or choice == _camel(value):
            return choice
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_MAX_GUESSES = 50


class _Ctx:
    """Collects problems; every check reports here and goes on."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        # (index, parameter, whether it has no problem of its own) of each search parameter built, for
        # the checks across blocks even when another parameter (and so the search block) is invalid.
        self.parameters: list[tuple[int, ParameterSpec, bool]] = []

        self.guesses_left = _MAX_GUESSES

    def add(self, path: str, message: str) -> Any:
        self.problems.append(Problem(path, message))
        return _INVALID

    def guess(self, value: str, choices: Collection[str]) -> str | None:
        """:func:`_suggest`, for the first :data:`_MAX_GUESSES` misspellings of a document only (each costs a
        fuzzy match against every choice; a document of thousands of unknown keys is no typo)."""
        if self.guesses_left <= 0:
            return None
        self.guesses_left -= 1
        return _suggest(value, choices)


def _flag(ctx: _Ctx, path: str, message: str) -> bool:
    """Report a problem and return ``False`` (for ``ok = _flag(...)`` in loops that go on)."""
    ctx.add(path, message)
    return False


Check = Callable[[Any, str, _Ctx], Any]


# --------------------------------------------------------------------------------------------------
# Value checks: (value, path, ctx) -> parsed value, or _INVALID after reporting
# --------------------------------------------------------------------------------------------------

def _int(lo: int | None = None, hi: int | None = None, unit: str = "") -> Check:
    """An integer in ``[lo, hi]``; ``unit`` names what it counts in the message (``limits.Bound``)."""
    bound = Bound(lo, hi, unit=unit)

    def check(value: Any, path: str, ctx: _Ctx) -> Any:
        if not _is_int(value):
            return ctx.add(path, f"{_show(value)} is not an integer")
        message = bound.problem(value, limits.short(value))
        return value if message is None else ctx.add(path, message)
    check.bound = bound  # type: ignore[attr-defined]
    return check


def _float(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, unit: str = "") -> Check:
    """A finite number (or numeric string) in the interval; NaN and infinities are refused."""
    bound = Bound(lo, hi, lo_open, hi_open, unit)

    def check(value: Any, path: str, ctx: _Ctx) -> Any:
        number = _parse_float(value)
        if number is None:
            what = "a finite number" if _not_finite(value) or _is_int(value) else "a number"
            return ctx.add(path, f"{_show(value)} is not {what}")
        message = bound.problem(number, _show(value))
        return number if message is None else ctx.add(path, message)
    check.bound = bound  # type: ignore[attr-defined]
    return check


def _bool(value: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(value, bool):
        return ctx.add(path, f"{_show(value)} is not a boolean (true or false)")
    return value


def _str(pattern: re.Pattern[str] | None = None, what: str = "") -> Check:
    def check(value: Any, path: str, ctx: _Ctx) -> Any:
        if not isinstance(value, str):
            return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a string")
        if not value.strip():
            return ctx.add(path, "must not be empty")
        if pattern is not None and not pattern.match(value):
            return ctx.add(path, f"{_show(value)} is not {what}")
        return value
    return check


def _enum(choices: Sequence[str]) -> Check:
    def check(value: Any, path: str, ctx: _Ctx) -> Any:
        if isinstance(value, str) and value in choices:
            return value
        message = f"{_show(value)} is not one of: {', '.join(choices)}"
        guess = ctx.guess(value, choices) if isinstance(value, str) else None
        return ctx.add(path, message + (f'; did you mean "{guess}"?' if guess else ""))
    return check


def _katib_value(value: Any, path: str, ctx: _Ctx) -> Any:
    """Katib keeps feasibleSpace and setting values as strings; a plain YAML number is taken as its text."""
    if isinstance(value, str):
        return value
    if _is_int(value) or isinstance(value, float):
        return str(value)
    hint = f'; quote it: "{str(value).lower()}"' if isinstance(value, bool) else ""
    return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a string{hint}")


def _str_list(item: Check, *, unique: bool = True) -> Check:
    def check(value: Any, path: str, ctx: _Ctx) -> Any:
        if not isinstance(value, (list, tuple)):
            return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a list")
        out, seen, ok = [], set(), True
        for i, v in enumerate(value):
            parsed = item(v, f"{path}[{i}]", ctx)
            if parsed is _INVALID:
                ok = False
            elif unique and parsed in seen:
                ok = _flag(ctx, f"{path}[{i}]", f"{_show(v)} is listed twice")
            else:
                out.append(parsed)
                seen.add(parsed)
        return tuple(out) if ok else _INVALID
    return check


def _str_map(key_pattern: re.Pattern[str], key_what: str) -> Check:
    def check(value: Any, path: str, ctx: _Ctx) -> Any:
        if not isinstance(value, Mapping):
            return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a mapping")
        out, ok = {}, True
        for k, v in value.items():
            if not isinstance(k, str) or not key_pattern.match(k):
                ok = _flag(ctx, _join(path, str(k)), f"{_show(k)} is not {key_what}")
            elif isinstance(v, bool) or v is None or not isinstance(v, (str, int, float)):
                ok = _flag(ctx, _join(path, k), f"{_show(v)} is {_type_name(v)}; use a string")
            else:
                out[k] = str(v)
        return MappingProxyType(out) if ok else _INVALID
    return check


@dataclass(frozen=True)
class _F:
    """One YAML field of a section: its camelCase key, the dataclass attribute, how it is checked."""

    key: str
    attr: str
    check: Check
    required: bool = False
    hint: str = ""
    dump: Callable[[Any], Any] = _thaw


def _section(data: Any, path: str, spec: Sequence[_F], ctx: _Ctx,
             extra: Mapping[str, str] = MappingProxyType({})) -> dict[str, Any] | None:
    """Check a mapping against its fields. Returns ``{attr: parsed}`` for the valid, present fields
    (absent optional fields are left out so dataclass defaults apply), or ``None`` if it is no mapping."""
    if not isinstance(data, Mapping):
        ctx.add(path, f"{_show(data)} is {_type_name(data)}, not a mapping of fields "
                      f"({', '.join(f.key for f in spec)})")
        return None
    known = {f.key: f for f in spec}
    for key in data:
        if not isinstance(key, str):
            ctx.add(path, f"field names must be strings, got {_show(key)}")
        elif key in extra:
            ctx.add(_join(path, key), extra[key])
        elif key not in known:
            guess = ctx.guess(key, known)
            ctx.add(_join(path, key), "unknown field" + (f'; did you mean "{guess}"?' if guess else "")
                    + f" (fields here: {', '.join(known)})")
    out: dict[str, Any] = {}
    for f in spec:
        p = _join(path, f.key)
        if data.get(f.key) is None:
            if f.required:
                ctx.add(p, "required" + (f" ({f.hint})" if f.hint else ""))
            continue
        value = f.check(data[f.key], p, ctx)
        if value is not _INVALID:
            out[f.attr] = value
    return out


def _dump_section(obj: Any, spec: Sequence[_F]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in spec:
        value = getattr(obj, f.attr)
        if value is None or (isinstance(value, (tuple, Mapping)) and not value and not f.required):
            continue
        out[f.key] = f.dump(value)
    return out


def _build(cls: type, values: dict[str, Any] | None, required: Iterable[str]) -> Any:
    """Construct ``cls`` if its required attributes are all valid, else ``_INVALID`` (already reported)."""
    if values is None or any(r not in values for r in required):
        return _INVALID
    return cls(**values)
