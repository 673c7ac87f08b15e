"""Property: whatever is done to an example spec, ``kftune validate`` answers 0 or 2, never a traceback.

Hypothesis mutates the example specs (``examples/*.yaml``) the way a hostile or careless user would: keys
dropped, renamed or added; values replaced by huge integers, huge/tiny/NaN/infinite floats, numeric and
unicode strings, control characters, lists, nested mappings, dates, ``null``; values shared (YAML anchors
and aliases), containers put inside themselves (recursive aliases), "billion laughs" nests; and on the
text, truncation, inserted characters (controls, YAML indicators, any code point), lines duplicated
(duplicate keys) or deleted, indentation broken, values replaced by raw YAML (tags, anchors, undefined
aliases, merge keys). Each mutated spec goes through the real entry point, ``kftune.commands.validate.main``,
in-process. The examples are bounded and derandomized (the same ones on every run, in CI too); the test
asserts no timing. The count of mutations and outcomes is printed and written to ``fuzz_outcomes.json``
in the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kftune.commands.validate import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
TEXTS = {p.name: p.read_text(encoding="utf-8") for p in EXAMPLES}
DATA = {name: yaml.safe_load(text) for name, text in TEXTS.items()}
MAX_EXAMPLES = 300

_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

# ------------------------------------------------------------------------------------------------ values
HUGE_INTS = st.sampled_from([2**31, 2**32, 2**63, 2**63 - 1, 2**64, -(2**63) - 1, 10**18, 10**30, 10**80,
                             10**300, -1, 0])
# (NaN is not among them: sampled_from labels itself by its elements' hashes, and a NaN's hash is its identity,
# which would make the examples differ from one process to the next.)
ODD_FLOATS = st.sampled_from([1e308, -1e308, 1.7976931348623157e308, 1e-320, 5e-324, -0.0, 1e30, 1e-30,
                              float("inf"), float("-inf")]) | st.just(float("nan"))
TRICKY_STRINGS = st.sampled_from([
    "", " ", "1e308", "1e-400", "nan", "NaN", ".nan", "inf", "-inf", "-1", "0", "9223372036854775808",
    "1e30", "true", "null", "~", "0x10", "1:30", "2001-13-45", "3,4,5", "0,0", "[]", "{}", "*x", "&x",
    "!!int x", "s3://", "file:///etc/passwd", "../../etc", "a" * 300, "\x00", "\x7f", "\u202e", "\ufeff",
    "영화", "\U0001F600", "a\nb", "\t",
])
CONTROL_CHARS = st.sampled_from(["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f",
                                 "\x80", "\x9f", "\ufffe", "\uffff"])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), HUGE_INTS,
    st.floats(allow_nan=True, allow_infinity=True), ODD_FLOATS, TRICKY_STRINGS, st.text(max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=6),
    st.dates(min_value=datetime.date(1, 1, 1)),
)
KEYS = st.one_of(st.text(max_size=12), TRICKY_STRINGS, st.integers(min_value=-5, max_value=5), st.none(),
                 st.booleans())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
RAW_YAML = st.sampled_from([
    "9223372036854775808", "1e308", "1.0e+308", "-1.0e+308", ".nan", ".inf", "-.inf", "1e30", "0b101", "0o17",
    "0x7fffffffffffffffffff", "1:2:3:4:5", "2001-13-45", "2001-12-14t21:59:43.10-05:00", "*undefined",
    "&a 1", "!!python/object/apply:os.system ['true']", "!!int abc", "!!int ''", "!!float x", "!!bool maybe",
    "!!timestamp x", "!!binary ===", "!!set {a, b}", "!!omap [a]", "!!pairs [1]", "!!str", "!!null x",
    "!custom 1", "{", "[", "]", "}", "|", ">", "'", '"', "@", "`", "%", "? x", "- x", "{<<: 1}",
    "{a: 1, a: 2}", "[" * 200, "{a: " * 100, "'" + "x" * 1000 + "'", '"\\x00"', '"\\ud800"', "~",
    "<<", "1_000_000", "+1", "-0", "0.", ".5", "1e", "e1", "0x", "9" * 120, "1" + ":1" * 60,
])
INSERTS = st.one_of(CONTROL_CHARS, st.sampled_from(list(":-[]{}&*!|>'\"%@`#,?\n\t \r") + ["\r\n", "\u2028",
                                                                                          "\x85"]),
                    st.characters(min_codepoint=0, max_codepoint=0x10FFFF))


# --------------------------------------------------------------------------------------- data mutations
def _slots(data: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in ``data``, walked without recursion."""
    out, stack, seen = [], [data], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        items = (list(node.items()) if isinstance(node, dict)
                 else list(enumerate(node)) if isinstance(node, list) else [])
        for key, value in items:
            out.append((node, key))
            stack.append(value)
    return out


def _containers(data: Any) -> list[Any]:
    return [data] + [c[k] for c, k in _slots(data) if isinstance(c[k], (dict, list))]


def _laughs(depth: int) -> list:
    x: list = ["lol"] * 10
    for _ in range(depth):
        x = [x] * 10
    return x


def _pick(draw: Any, items: list[Any]) -> Any:
    """One of ``items``, drawn by index: a strategy over the objects themselves would be labelled by their
    identity, and the examples would then differ from one process to the next."""
    return items[draw(st.integers(0, len(items) - 1))]


def mutate_data(data: Any, draw: Any) -> str:
    """Apply one drawn mutation to ``data`` in place; return its name."""
    kind = draw(st.sampled_from(["drop", "replace", "replace", "replace", "rename", "insert", "alias",
                                 "cycle", "laughs", "wrap"]))
    slots = _slots(data)
    if not slots:
        return "none"
    container, key = _pick(draw, slots)
    if kind == "drop":
        del container[key]
    elif kind == "replace":
        container[key] = draw(VALUES)
    elif kind == "wrap":
        container[key] = _pick(draw, [[container[key]], {"value": container[key]}, [container[key]] * 3])
    elif kind == "rename" and isinstance(container, dict):
        new = draw(st.one_of(KEYS, st.sampled_from([str(key).upper(), str(key) + "s", str(key)[:-1],
                                                    str(key).replace("_", ""), f" {key}"])))
        value = container.pop(key)
        container[new] = value
    elif kind == "insert":
        target = _pick(draw, _containers(data))
        if isinstance(target, dict):
            target[draw(KEYS)] = draw(VALUES)
        else:
            target.insert(draw(st.integers(0, len(target))), draw(VALUES))
    elif kind == "alias":  # the same object twice: safe_dump writes an anchor and an alias
        other, other_key = _pick(draw, slots)
        container[key] = other[other_key]
    elif kind == "cycle":  # a container inside itself: a recursive alias
        target = _pick(draw, _containers(data))
        if isinstance(target, dict):
            target[draw(KEYS)] = target
        else:
            target.append(target)
    elif kind == "laughs":
        container[key] = _laughs(draw(st.integers(1, 9)))
    else:
        return "none"
    return kind


# --------------------------------------------------------------------------------------- text mutations
def mutate_text(text: str, draw: Any) -> tuple[str, str]:
    kind = draw(st.sampled_from(["truncate", "insert", "insert", "dup_line", "del_line", "indent",
                                 "raw_value", "raw_value", "anchor_alias"]))
    lines = text.splitlines(keepends=True) or [""]
    if kind == "truncate":
        return text[:draw(st.integers(0, len(text)))], kind
    if kind == "insert":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(INSERTS) * draw(st.integers(1, 3)) + text[at:], kind
    i = draw(st.integers(0, len(lines) - 1))
    if kind == "dup_line":
        lines.insert(i, lines[i])
    elif kind == "del_line":
        del lines[i]
    elif kind == "indent":
        lines[i] = (" " + lines[i]) if draw(st.booleans()) else lines[i][1:]
    elif kind in ("raw_value", "anchor_alias"):
        with_values = [j for j, line in enumerate(lines) if ": " in line and not line.lstrip().startswith("#")]
        if not with_values:
            return text, "none"
        j = draw(st.sampled_from(with_values))
        head, _, _ = lines[j].partition(": ")
        if kind == "raw_value":
            lines[j] = f"{head}: {draw(RAW_YAML)}\n"
        else:  # give one value an anchor, replace another by its alias
            k = draw(st.sampled_from(with_values))
            first, second = sorted((j, k))
            h1, _, v1 = lines[first].partition(": ")
            lines[first] = f"{h1}: &fz {v1}" if not v1.lstrip().startswith(("&", "*", "!", "|", ">")) else lines[first]
            h2, _, _ = lines[second].partition(": ")
            if second != first:
                lines[second] = f"{h2}: *fz\n"
    return "".join(lines), kind


# ------------------------------------------------------------------------------------------------ test
def _validate(path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(path)])
    return rc, out.getvalue() + err.getvalue()


def _without_local_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recent Hypothesis also draws literals found in the local modules imported so far, so the examples would
    depend on which tests ran before this one; leave those out, so that the run is the same alone and in the
    suite (derandomized, it is then the same on every machine)."""
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover - another Hypothesis layout: nothing to leave out
        return
    if hasattr(providers, "_get_local_constants") and hasattr(providers, "Constants"):
        monkeypatch.setattr(providers, "_get_local_constants", providers.Constants)
        cache = getattr(getattr(providers, "CONSTANTS_CACHE", None), "cache", None)
        if cache is not None:
            cache.clear()


def test_every_mutated_example_exits_0_or_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _without_local_constants(monkeypatch)
    spec = tmp_path / "mutated.yaml"
    outcomes: Counter[str] = Counter()
    by_mutation: Counter[str] = Counter()

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(TEXTS)), label="example")
        kinds: list[str] = []
        n_data = data.draw(st.integers(0, 3), label="data mutations")
        n_text = data.draw(st.integers(0 if n_data else 1, 2), label="text mutations")
        if n_data:
            doc = copy.deepcopy(DATA[name])
            for _ in range(n_data):
                kinds.append(mutate_data(doc, data.draw))
            text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        else:
            text = TEXTS[name]
        for _ in range(n_text):
            text, kind = mutate_text(text, data.draw)
            kinds.append(kind)
        spec.write_text(text, encoding="utf-8", errors="surrogatepass")
        rc, output = _validate(spec)
        for kind in set(kinds):
            by_mutation[f"{kind} -> exit {rc}"] += 1
            event(f"mutation {kind}")
        outcomes[f"exit {rc}"] += 1
        event(f"exit {rc}")
        assert rc in (0, 2), f"exit {rc} after {kinds}:\n{output}"
        assert "Traceback" not in output, output
        if rc == 2:
            assert "problem" in output, output

    check()
    total = sum(outcomes.values())
    report = {"examples": total, "outcomes": dict(sorted(outcomes.items())),
              "by_mutation": dict(sorted(by_mutation.items()))}
    (tmp_path / "fuzz_outcomes.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    with capsys.disabled():
        print(f"\nfuzz: {total} mutated specs through kftune validate: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    assert total >= MAX_EXAMPLES
    assert outcomes["exit 2"] > 0 and outcomes["exit 0"] > 0
