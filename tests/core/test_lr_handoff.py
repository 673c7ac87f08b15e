"""Handing the range test's suggestion to the search: the new feasibleSpace (the decade below the suggested lr,
clipped to the tested span), the note, and when nothing changes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kftune.core.errors import ConfigError
from kftune.core.lr_handoff import RULE, apply_lr_range, katib_bound
from kftune.core.lr_range import DEFAULT_METHOD, analyze, schedule
from kftune.core.spec import FeasibleSpace, ParameterSpec, parse_spec, to_katib_parameters

LR = ParameterSpec("learning_rate", "double", FeasibleSpace(min="1e-4", max="1e-2", distribution="logUniform"))
DROPOUT = ParameterSpec("dropout", "double", FeasibleSpace(min="0.1", max="0.6"))
SIZE = ParameterSpec("hidden_size", "categorical", FeasibleSpace(list=("64", "128")))
PARAMS = (DROPOUT, LR, SIZE)

LRS = schedule(1e-7, 10.0, 100)
X = np.log10(LRS)
U_SHAPE = 0.5 + 1.5 / (1 + np.exp(3 * (X + 2.75))) + np.exp(4 * (X + 0.5))  # falls around 1e-3, blows up near 1


def result_json(losses) -> dict:
    """What result.json holds: RangeTestResult.to_dict() through JSON (plus lr-find's extras, ignored here)."""
    return json.loads(json.dumps(analyze(LRS, losses).to_dict()))


def test_replaces_the_space_with_the_decade_below_the_suggestion_and_notes_why() -> None:
    result = result_json(U_SHAPE)
    lr = result["lr"]
    low, high = lr / 10, lr
    assert result["range"] is not None and not high == pytest.approx(result["range"][1], rel=0.1)  # not the range
    new, note = apply_lr_range(PARAMS, result)
    assert [p.name for p in new] == ["dropout", "learning_rate", "hidden_size"]
    assert new[0] is DROPOUT and new[2] is SIZE  # the others untouched
    fs = new[1].feasible_space
    assert fs.distribution == "logUniform" and fs.step is None and fs.list == ()
    assert isinstance(fs.min, str) and isinstance(fs.max, str)
    assert float(fs.min) <= low < high == lr <= float(fs.max)  # rounded outwards: contains the decade
    assert float(fs.min) == pytest.approx(low, rel=0.01) and float(fs.max) == pytest.approx(high, rel=0.01)
    assert math.log10(float(fs.max) / float(fs.min)) == pytest.approx(1.0, abs=0.01)  # one decade wide
    assert note["applied"] is True and note["parameter"] == "learning_rate" and note["rule"] == RULE
    assert note["method"] == DEFAULT_METHOD and note["lr"] == lr and note["range"] == result["range"]
    assert note["old_feasible_space"] == {"min": "1e-4", "max": "1e-2", "distribution": "logUniform"}
    assert note["new_feasible_space"] == {"min": fs.min, "max": fs.max, "distribution": "logUniform"}
    assert "was [1e-4, 1e-2] logUniform" in note["reason"] and f"{DEFAULT_METHOD} suggests" in note["reason"]
    assert "the decade below it" in note["reason"] and "clipped" not in note["reason"]
    assert note["reason"].count("LR range test") >= 1  # the search's summary.md cites it
    json.dumps(note)  # the search writes it into its output
    # the new parameters are valid Katib parameters of a valid spec
    assert to_katib_parameters(new)[1]["feasibleSpace"] == {"min": fs.min, "max": fs.max,
                                                            "distribution": "logUniform"}


def test_suggested_lr_wins_over_lr_and_the_decade_is_clipped_to_the_tested_span() -> None:
    base = {"method": "minimum", "range": [1e-3, 1e-2], "diverged": False,
            "config": {"startLR": 1e-6, "endLR": 1.0}}
    new, note = apply_lr_range(PARAMS, {**base, "lr": 5e-2, "suggested_lr": 2e-3})
    assert note["lr"] == 2e-3 and new[1].feasible_space.min == "0.0002" and new[1].feasible_space.max == "0.002"
    # near the top of the sweep: the upper bound is the test's endLR
    new, note = apply_lr_range(PARAMS, {**base, "lr": 3.0})
    assert (new[1].feasible_space.min, new[1].feasible_space.max) == ("0.3", "1")
    assert note["applied"] is True and "lowered to the test's endLR 1" in note["reason"]
    # near the bottom: the lower bound is the test's startLR (taken from lrs when there is no config)
    new, note = apply_lr_range(PARAMS, {"method": "valley", "lr": 5e-6, "lrs": [1e-6, 1e-3, 1.0]})
    assert (new[1].feasible_space.min, new[1].feasible_space.max) == ("1e-06", "5e-06")
    assert "raised to the test's startLR 1e-06" in note["reason"] and note["range"] is None
    # no span known: the decade as is
    new, note = apply_lr_range(PARAMS, {"method": "valley", "lr": 1e-2})
    assert (new[1].feasible_space.min, new[1].feasible_space.max) == ("0.001", "0.01")


def test_the_new_space_passes_spec_validation() -> None:
    new, _ = apply_lr_range(PARAMS, result_json(U_SHAPE))
    job = parse_spec({
        "apiVersion": "kftune.dev/v1alpha1", "kind": "TuningJob", "metadata": {"name": "t"},
        "spec": {"corpus": {"name": "TREC_6"}, "task": {"type": "text_classification"},
                 "search": {"objective": {"type": "maximize", "objectiveMetricName": "dev_score"},
                            "algorithm": {"algorithmName": "random"}, "maxTrialCount": 2,
                            "parameters": to_katib_parameters(new)}}})
    assert job.spec.search.parameter("learning_rate") == new[1]


def test_no_suggestion_leaves_the_space_and_says_why() -> None:
    flat = result_json(np.full(100, 1.79))
    assert flat["range"] is None and flat["lr"] is None
    new, note = apply_lr_range(PARAMS, flat)
    assert new == PARAMS
    assert note["applied"] is False and note["range"] is None and note["lr"] is None
    assert note["new_feasible_space"] == note["old_feasible_space"]
    assert "suggested no learning rate" in note["reason"] and "flat" in note["reason"]
    assert "left as written" in note["reason"]
    exploded = result_json(2.0 * 1.3 ** np.arange(100))  # diverges at once
    new, note = apply_lr_range(PARAMS, exploded)
    assert new == PARAMS and note["applied"] is False and note["diverged"] is True


def test_a_named_parameter_and_the_errors() -> None:
    other = ParameterSpec("lr", "double", FeasibleSpace(min="0.001", max="0.1"))
    new, note = apply_lr_range((other,), result_json(U_SHAPE), parameter_name="lr")
    assert new[0].feasible_space.distribution == "logUniform" and note["parameter"] == "lr"
    assert note["old_feasible_space"] == {"min": "0.001", "max": "0.1"}
    with pytest.raises(ConfigError, match="'learning_rate' is not a search parameter"):
        apply_lr_range((DROPOUT,), result_json(U_SHAPE))
    with pytest.raises(ConfigError, match="needs parameterType double"):
        apply_lr_range(PARAMS, result_json(U_SHAPE), parameter_name="hidden_size")
    with pytest.raises(ConfigError, match="result.json"):
        apply_lr_range(PARAMS, [1e-3, 1e-2])  # type: ignore[arg-type]


def test_a_degenerate_or_malformed_suggestion_is_not_applied() -> None:
    at_the_end = {"method": "valley", "lr": 1.0, "range": None, "diverged": False,
                  "config": {"startLR": 1e-3, "endLR": 1.0}, "lrs": [1e-3, 1.0]}
    new, note = apply_lr_range(PARAMS, {**at_the_end, "config": {"startLR": 1.0, "endLR": 1.0}})
    assert new == PARAMS and note["applied"] is False and "single point" in note["reason"]
    for bad in (0.0, -1e-3, None, "1e-3", float("nan"), float("inf"), True):
        new, note = apply_lr_range(PARAMS, {"method": "valley", "lr": bad, "suggested_lr": bad,
                                            "range": [1e-3, 1e-2], "stop_reason": "completed 100 batches"})
        assert new == PARAMS and note["applied"] is False and note["lr"] is None
        assert "completed 100 batches" in note["reason"]


@pytest.mark.parametrize("x, down, up", [
    (0.0009326033468832206, "0.000932", "0.000933"), (0.017475284000076825, "0.0174", "0.0175"),
    (3.1622e-07, "3.16e-07", "3.17e-07"), (1.0, "1", "1"), (0.1, "0.1", "0.1"), (12345.6, "12300", "12400"),
])
def test_bounds_are_short_katib_strings_rounded_outwards(x: float, down: str, up: str) -> None:
    assert katib_bound(x, up=False) == down and katib_bound(x, up=True) == up
    assert float(down) <= x <= float(up)
    with pytest.raises(ValueError):
        katib_bound(0.0, up=True)
