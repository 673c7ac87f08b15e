"""The search benchmark's report arithmetic (no training): the resolution split and re-rendering."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "search_efficiency.py"
_spec = importlib.util.spec_from_file_location("search_efficiency_under_test", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)  # type: ignore[union-attr]


def _seed_record(seed: int, assignment: dict, dev: list[float], test: list[float]) -> dict:
    runs = [{"seed": 1001 + i, "dev": d, "test": t} for i, (d, t) in enumerate(zip(dev, test))]
    return {"seed": seed, "retrain": {"assignment": assignment, "runs": runs}}


def test_resolution_splits_seed_noise_from_configuration_differences():
    a, b = {"lr": 0.001}, {"lr": 0.002}
    per_method = {
        "random": {"seeds": [_seed_record(1, a, [0.80, 0.82, 0.84], [0.90, 0.90, 0.90])]},
        # the same configuration chosen twice counts once
        "kftune": {"seeds": [_seed_record(1, b, [0.90, 0.92, 0.94], [0.90, 0.90, 0.90]),
                             _seed_record(2, b, [0.90, 0.92, 0.94], [0.90, 0.90, 0.90])]},
    }
    res = bench.resolution(per_method)
    assert res["configurations"] == 2 and res["seeds"] == 3
    within = statistics.variance([0.80, 0.82, 0.84])  # both configurations: sd 0.02
    assert res["dev"]["within_sd"] == pytest.approx(math.sqrt(within))
    assert res["dev"]["noise_sd"] == pytest.approx(math.sqrt(within / 3))
    # means 0.82 and 0.92: their variance 0.005 less the noise variance
    assert res["dev"]["between_sd"] == pytest.approx(math.sqrt(0.005 - within / 3))
    # identical test scores everywhere: no noise, no difference
    assert res["test"] == {"within_sd": 0.0, "noise_sd": 0.0, "between_sd": 0.0}


def test_resolution_floors_between_at_zero_and_needs_two_configurations():
    noisy = {"random": {"seeds": [_seed_record(1, {"x": 1}, [0.80, 0.90, 0.85], [0.8, 0.9, 0.85]),
                                  _seed_record(2, {"x": 2}, [0.90, 0.80, 0.85], [0.9, 0.8, 0.85])]}}
    res = bench.resolution(noisy)
    assert res["dev"]["between_sd"] == 0.0 and res["dev"]["within_sd"] > 0
    one = {"random": {"seeds": [_seed_record(1, {"x": 1}, [0.80, 0.90, 0.85], [0.8, 0.9, 0.85])]}}
    assert bench.resolution(one) is None
    assert bench.resolution({"random": {"seeds": [{"seed": 1}]}}) is None  # nothing retrained yet


def test_rerender_keeps_the_method_order_and_adds_the_resolution(tmp_path):
    saved = json.loads((bench.RESULTS / "search_efficiency_full.json").read_text(encoding="utf-8"))
    path = tmp_path / "report.json"
    path.write_text(json.dumps(saved, sort_keys=True), encoding="utf-8")
    bench.rerender(path)
    md = path.with_suffix(".md").read_text(encoding="utf-8")
    rows = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines() if line.startswith("| ") and "±" in line]
    assert rows[:len(bench.METHODS)] == [bench.LABELS[m] for m in bench.METHODS]
    assert "## How large a difference means something" in md
    assert json.loads(path.read_text(encoding="utf-8"))["resolution"]["configurations"] >= 2
    assert path.with_suffix(".png").stat().st_size > 0


def test_other_seeds_name_their_own_files():
    full = bench.SCALES["full"]
    assert bench.retrain_file_name(full) == "retrain.json"
    assert bench.report_name({"name": "full", "search_seeds": [1, 2, 3], "retrain_seeds": [1001, 1002, 1003]}) \
        == "search_efficiency_full"
    assert bench.report_name({"name": "full", "search_seeds": [4, 5, 6], "retrain_seeds": [1001, 1002, 1003]}) \
        == "search_efficiency_full_seeds-4-5-6"
    ten = list(range(1001, 1011))
    assert bench.retrain_file_name(bench.replace(full, retrain_seeds=tuple(ten))) == "retrain_1001to1010.json"
    assert bench.report_name({"name": "full", "search_seeds": [1, 2, 3, 4, 5, 6], "retrain_seeds": ten}) \
        == "search_efficiency_full_seeds-1to6_retrain-1001to1010"
    assert bench.seeds_tag([7, 3, 9, 11]) == "7-3-9-11"


@pytest.mark.parametrize("argv, message", [
    (["--retrain-seeds", "a,b"], "give integers separated by commas"),
    (["--retrain-seeds", "1001,1001"], "a seed is repeated"),
    (["--seeds", ","], "give at least one seed"),
])
def test_bad_seed_lists_name_the_option_and_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
