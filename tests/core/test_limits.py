"""Every number a spec sets has an upper bound with a unit; values beyond it, NaN and infinities are spec errors.

The probes of issue 17 (``cnn_filters: 9223372036854775808``, ``cnn_filters: 1e308``, ``weight_decay: 1e308``,
``train.patience: 9223372036854775808``, ``corpus.seed: 1e30``) exit 2 from ``kftune validate``; every bounded
field refuses the value just past its bound naming the bound and the unit, and NaN/inf; a search parameter's
range must lie inside its hyperparameter's bounds; docs/spec.md lists the same bounds as the code.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import pytest

from kftune.commands.validate import main
from kftune.core import limits
from kftune.core.errors import ConfigError, Problem
from kftune.core.limits import Bound
from kftune.core.lr_range import RangeTestConfig
from kftune.core.spec import field_bounds, parse_spec
from kftune.io import specfile
from kftune.nlp.config import (
    HYPERPARAMETER_BOUNDS,
    HYPERPARAMETER_NAMES,
    TRAINER_BOUNDS,
    Hyperparameters,
    TrainerConfig,
    validate_model_block,
)

REPO = Path(__file__).resolve().parents[2]
TREC6 = REPO / "examples" / "trec6.yaml"
DOCS = REPO / "docs" / "spec.md"

BASE: dict[str, Any] = {
    "apiVersion": "kftune.dev/v1alpha1",
    "kind": "TuningJob",
    "metadata": {"name": "bounds"},
    "spec": {
        "corpus": {"uri": "data/", "format": "csv", "textColumn": 0, "labelColumn": 1, "header": False,
                   "downsample": 1.0, "devFraction": 0.1, "seed": 1},
        "task": {"type": "text_classification"},
        "lrRangeTest": {"enabled": False},
        "search": {
            "objective": {"type": "maximize", "objectiveMetricName": "dev_score"},
            "algorithm": {"algorithmName": "random"},
            "maxTrialCount": 10_000, "parallelTrialCount": 2, "maxFailedTrialCount": 3,
            "finalists": 2, "finalistRuns": 2,
            "parameters": [{"name": "dropout", "parameterType": "double",
                            "feasibleSpace": {"min": "0.1", "max": "0.5"}}],
        },
        "train": {"maxEpochs": 10_000, "patience": 3, "trainingRuns": 1, "seed": 1, "device": "auto",
                  "evalBatchSize": 64, "numThreads": 2, "minLearningRate": 1e-7},
        "resources": {"trialGPU": 1, "finalGPU": 1},
    },
}


def _problems(data: dict[str, Any]) -> list[Problem]:
    try:
        parse_spec(data, model_validator=validate_model_block, hyperparameter_names=HYPERPARAMETER_NAMES)
    except ConfigError as exc:
        return exc.problems
    return []


def _with(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    target = data
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value
    return data


def _at(problems: list[Problem], path: str) -> list[str]:
    return [p.message for p in problems if p.path == path]


def test_the_base_spec_is_valid():
    assert _problems(BASE) == []


# ------------------------------------------------------------------------------------------ the probes
@pytest.mark.parametrize("old, new, path, fragment", [
    ("cnn_filters: 100", "cnn_filters: 9223372036854775808", "spec.model.cnn_filters", "must be <= 4096"),
    ("cnn_filters: 100", "cnn_filters: 1e308", "spec.model.cnn_filters", "must be <= 4096"),
    ("cnn_filters: 100", "cnn_filters: 1.0e+308", "spec.model.cnn_filters", "must be <= 4096"),
    ("weight_decay: 0.0", "weight_decay: 1e308", "spec.model.weight_decay", "must be <= 1"),
    ("weight_decay: 0.0", "weight_decay: .nan", "spec.model.weight_decay", "not a finite number"),
    ("patience: 2", "patience: 9223372036854775808", "spec.train.patience", "must be <= 10000"),
    ("    seed: 1\n\n  task", "    seed: 1e30\n\n  task", "spec.corpus.seed", "not an integer"),
    ("    seed: 1\n\n  task", "    seed: 1.0e+30\n\n  task", "spec.corpus.seed", "not an integer"),
    ("    seed: 1\n\n  task", "    seed: 4294967296\n\n  task", "spec.corpus.seed", "must be <= 4294967295"),
    ("maxEpochs: 6", "maxEpochs: 1000000000000", "spec.train.maxEpochs", "must be <= 10000 (units: epochs)"),
    ("maxTrialCount: 8", "maxTrialCount: .inf", "spec.search.maxTrialCount", "not an integer"),
], ids=["cnn_filters-2**63", "cnn_filters-1e308", "cnn_filters-1.0e+308", "weight_decay-1e308",
        "weight_decay-nan", "patience-2**63", "corpus.seed-1e30", "corpus.seed-1.0e+30", "corpus.seed-2**32",
        "maxEpochs-1e12", "maxTrialCount-inf"])
def test_the_issue_probes_exit_2_naming_field_bound_and_line(tmp_path, capsys, old, new, path, fragment):
    text = TREC6.read_text(encoding="utf-8")
    assert text.count(old) == 1
    spec = tmp_path / "probe.yaml"
    spec.write_text(text.replace(old, new), encoding="utf-8")
    assert main([str(spec)]) == 2
    out = capsys.readouterr().out
    line = next(i for i, row in enumerate(text.replace(old, new).splitlines(), 1) if new.split("\n")[0] in row)
    [printed] = [row for row in out.splitlines() if row.startswith(f"  - {path}: ")]
    assert fragment in printed and printed.endswith(f"(line {line})"), printed


def test_a_bound_message_names_the_bound_and_the_unit():
    problems = validate_model_block({"hidden_size": 9000}, "text_classification")
    assert [str(p) for p in problems] == [
        "spec.model.hidden_size: 9000 is out of range: must be <= 8192 (units: hidden units)"]


# ------------------------------------------------------------------------------ every bound, at its edge
def _past(bound: Bound, integer: bool) -> Any:
    hi = bound.hi
    assert hi is not None
    if bound.hi_open:
        return int(hi) if integer else hi
    return int(hi) + 1 if integer else hi + max(abs(hi), 1) * 1e-3


FLOAT_SPEC_FIELDS = {"spec.corpus.downsample", "spec.corpus.devFraction", "spec.train.minLearningRate"}
FLOAT_HYPERPARAMETERS = {f.name for f in dataclasses.fields(Hyperparameters) if "float" in str(f.type)}


SPEC_FIELDS = sorted(field_bounds().items())


@pytest.mark.parametrize("path, bound", SPEC_FIELDS, ids=[p for p, _ in SPEC_FIELDS])
def test_every_spec_field_refuses_the_value_past_its_bound(path, bound):
    assert bound.hi is not None, f"{path} has no upper bound"
    integer = path not in FLOAT_SPEC_FIELDS
    messages = _at(_problems(_with(path, _past(bound, integer))), path)
    assert any("out of range" in m and bound.units() in m for m in messages), messages
    assert not [m for m in _at(_problems(_with(path, int(bound.hi) if integer else bound.hi * 0.999)), path)
                if "out of range" in m]


@pytest.mark.parametrize("path, value", [
    (path, value) for path, _ in SPEC_FIELDS for value in (float("nan"), float("inf"), float("-inf"), "nan", "1e999")
    if not (path in ("spec.corpus.textColumn", "spec.corpus.labelColumn") and isinstance(value, str))  # names
])
def test_every_spec_field_refuses_nan_and_infinities(path, value):
    assert _at(_problems(_with(path, value)), path), f"{path}: {value!r} accepted"


HYPERPARAMETERS = sorted(HYPERPARAMETER_BOUNDS.items())


@pytest.mark.parametrize("name, bound", HYPERPARAMETERS, ids=[n for n, _ in HYPERPARAMETERS])
def test_every_hyperparameter_refuses_the_value_past_its_bound(name, bound):
    assert bound.hi is not None, f"{name} has no upper bound"
    integer = name not in FLOAT_HYPERPARAMETERS
    value = [_past(bound, integer)] if name == "cnn_kernel_sizes" else _past(bound, integer)
    messages = _at(_problems(_with(f"spec.model.{name}", value)), f"spec.model.{name}")
    assert any("out of range" in m and bound.units() in m for m in messages), messages


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "-inf", 10**400, "9" * 5000])
@pytest.mark.parametrize("name", [n for n, _ in HYPERPARAMETERS])
def test_every_hyperparameter_refuses_nan_infinities_and_huge_numbers(name, value):
    problems = validate_model_block({name: value}, "text_classification")
    assert [p for p in problems if p.path == f"spec.model.{name}"], f"{name}: {value!r} accepted"


def test_the_train_block_and_the_trainer_share_their_bounds():
    spec = {k.split(".")[-1]: b for k, b in field_bounds().items() if k.startswith("spec.train.")}
    snake = {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): b for k, b in spec.items()}
    assert snake == dict(TRAINER_BOUNDS)
    with pytest.raises(ConfigError, match="must be <= 10000"):
        TrainerConfig.from_mapping({"patience": 2**63})


# ------------------------------------------------------------------------------ search parameter ranges
@pytest.mark.parametrize("parameter, where, fragment", [
    ({"name": "hidden_size", "parameterType": "int", "feasibleSpace": {"min": "64", "max": "9000"}},
     "feasibleSpace.max", "not a valid hidden_size: 9000 is out of range: must be <= 8192 (units: hidden units)"),
    ({"name": "learning_rate", "parameterType": "double", "feasibleSpace": {"min": "1e-4", "max": "1e308"}},
     "feasibleSpace.max", "must be <= 10 (units: learning rate)"),
    ({"name": "weight_decay", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "nan"}},
     "feasibleSpace.max", "not a finite number"),
    ({"name": "cnn_filters", "parameterType": "categorical", "feasibleSpace": {"list": ["100", "1e308"]}},
     "feasibleSpace.list[1]", "must be <= 4096"),
    ({"name": "ngram_buckets", "parameterType": "discrete", "feasibleSpace": {"list": ["1024", "inf"]}},
     "feasibleSpace.list[1]", "not a finite number"),
    ({"name": "learning_rate", "parameterType": "double",
      "feasibleSpace": {"min": "1e-4", "max": "1e-1", "step": "1e-12"}},
     "feasibleSpace.step", "makes more than 100,000,000 values"),
    ({"name": "hidden_size", "parameterType": "categorical", "feasibleSpace": {"list": [str(i) for i in range(1, 1002)]}},
     "feasibleSpace.list", "1001 values: at most 1000"),
])
def test_a_search_range_must_lie_inside_the_hyperparameter_bounds(parameter, where, fragment):
    data = _with("spec.search.parameters", [parameter])
    messages = _at(_problems(data), f"spec.search.parameters[0].{where}")
    assert any(fragment in m for m in messages), messages


def test_too_many_search_parameters():
    params = [{"name": "dropout", "parameterType": "double", "feasibleSpace": {"min": "0.1", "max": "0.5"}}] * 101
    assert any("at most 100" in m for m in _at(_problems(_with("spec.search.parameters", params)),
                                                "spec.search.parameters"))


# ------------------------------------------------------------------------- lr range test, settings, n-grams
@pytest.mark.parametrize("key, value, fragment", [
    ("iterations", 10**6, "[2, 100000]"),
    ("endLR", 1e308, "must be <= 1000000 (units: learning rate)"),
    ("startLR", 1e-300, "must be >= 1e-12 (units: learning rate)"),
    ("startLR", 10**400, "finite number"),
    ("skipStart", 10**9, "[0, 100000]"),
    ("trendWindow", 10**9 + 1, "[1, 100000]"),
    ("minPoints", 10**9, "[3, 100000]"),
    ("noiseTolerance", float("inf"), "finite number"),
    ("divergenceFactor", 1e300, "<= 1e+06"),
])
def test_the_lr_range_test_is_bounded(key, value, fragment):
    messages = _at(_problems(_with("spec.lrRangeTest", {"enabled": False, key: value})), f"spec.lrRangeTest.{key}")
    assert any(fragment in m for m in messages), messages
    with pytest.raises(ConfigError):
        RangeTestConfig.from_dict({key: value})


@pytest.mark.parametrize("block, name, value, fragment", [
    ("algorithm", "random_state", "4294967296", "must be <= 4294967295 (units: seed (32-bit))"),
    ("algorithm", "random_state", "-1", "must be >= 0"),
    ("algorithm", "random_state", "9" * 5000, "is not an integer"),
    ("earlyStopping", "eta", "100000", "must be <= 10000"),
    ("earlyStopping", "max_budget", "9223372036854775808", "must be <= 10000 (units: epochs)"),
])
def test_algorithm_settings_are_bounded(block, name, value, fragment):
    algorithm = {"algorithm": "random", "earlyStopping": "successive-halving"}[block]
    data = _with(f"spec.search.{block}", {"algorithmName": algorithm,
                                          "algorithmSettings": [{"name": name, "value": value}]})
    messages = [p.message for p in _problems(data) if p.path.startswith(f"spec.search.{block}.algorithmSettings")]
    assert any(fragment in m for m in messages), messages


def test_too_many_algorithm_settings():
    settings = [{"name": f"s{i}", "value": "1"} for i in range(limits.MAX_SETTINGS + 1)]
    data = _with("spec.search.algorithm", {"algorithmName": "random", "algorithmSettings": settings})
    assert any("at most 100" in m for m in _at(_problems(data), "spec.search.algorithm.algorithmSettings"))


def test_the_ngram_bag_is_bounded_in_weights_not_only_per_field():
    ok = Hyperparameters.from_mapping({"document_encoder": "ngram", "ngram_buckets": 2**24, "ngram_dim": 64})
    assert ok.ngram_buckets * ok.ngram_dim == 2**30
    with pytest.raises(ConfigError, match=r"more than 2\*\*30"):
        Hyperparameters.from_mapping({"document_encoder": "ngram", "ngram_buckets": 2**24, "ngram_dim": 128})


def test_values_that_overflow_a_float_are_spec_errors_not_overflow_errors():
    for name in ("learning_rate", "weight_decay", "dropout"):
        with pytest.raises(ConfigError, match="finite"):
            Hyperparameters.from_mapping({name: 10**400})
    assert _at(_problems(_with("spec.corpus.downsample", 10**400)), "spec.corpus.downsample")
    assert _at(_problems(_with("spec.train.minLearningRate", 10**400)), "spec.train.minLearningRate")


def test_limits_short_never_prints_a_huge_integer():
    assert limits.short(10**5000) == "an integer of about 5001 digits"
    assert limits.short(2**63) == "9223372036854775808"
    assert math.isclose(Bound(0, 1, unit="x").hi, 1)


# -------------------------------------------------------------------------------------- docs/spec.md
def _limits_section() -> str:
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("\n## Limits\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _documented_rows(section: str) -> dict[str, tuple[str, str]]:
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+?) \| ([^|]*?) \|$", section, re.M)
    return {name: (allowed, unit) for name, allowed, unit in rows}


def expected_rows() -> dict[str, tuple[str, str]]:
    rows = {path: (b.text(), b.unit) for path, b in field_bounds().items()}
    rows.update({name: (b.text(), b.unit) for name, b in HYPERPARAMETER_BOUNDS.items()})
    return rows


def test_docs_list_every_bound_as_the_code_has_it():
    documented = _documented_rows(_limits_section())
    expected = expected_rows()
    table = "\n".join(f"| `{k}` | {a} | {u} |" for k, (a, u) in expected.items())
    assert documented == expected, f"docs/spec.md, section Limits, should list:\n{table}"


def test_docs_state_the_loader_limits():
    section = _limits_section()
    for text in (f"{specfile.MAX_SPEC_BYTES:,} bytes", f"{specfile.MAX_DEPTH} levels",
                 f"{specfile.MAX_NODES:,} values", f"{specfile.MAX_NUMBER_CHARS} characters",
                 f"{limits.MAX_PARAMETERS} parameters", f"{limits.MAX_LIST_VALUES:,} values",
                 f"{limits.MAX_SETTINGS} entries"):
        assert text in section, f"docs/spec.md, section Limits, does not say {text!r}"
