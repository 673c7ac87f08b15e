"""The trainWithDev benchmark's report on made-up numbers (no training): means over seeds, the tuned-minus-baseline
columns for both phases, and that every case it names resolves to an example spec with trainWithDev off."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "train_with_dev.py"
_spec = importlib.util.spec_from_file_location("train_with_dev_bench_under_test", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)  # type: ignore[union-attr]


def _row(seed: int, plain: float, with_dev: float, base: float, base_dev: float) -> dict:
    return {"seed": seed, "best_epoch": 3, "epochs": 5, "dev_score": 0.5, "train_with_dev_epochs": 3,
            "plain_seconds": 10.0, "second_phase_seconds": 9.0, "plain_test": plain, "with_dev_test": with_dev,
            "plain_baseline": base, "with_dev_baseline": base_dev}


def test_the_table_shows_means_and_both_differences_to_the_baseline(tmp_path: Path) -> None:
    case = {"example": "examples/x.yaml", "assignment": {"lr": 0.1}, "corpus_overrides": {}, "metric": "accuracy",
            "splits": {"train": {"examples": 10}}, "seeds": [_row(1, 0.80, 0.90, 0.70, 0.75),
                                                             _row(2, 0.84, 0.86, 0.70, 0.75)]}
    assert bench.summary(case) == pytest.approx({"plain_test": 0.82, "with_dev_test": 0.88, "plain_baseline": 0.70,
                                                 "with_dev_baseline": 0.75})
    report = {"platform": "p", "torch": "t", "cases": {"x": case}}
    text = bench.render(report)
    assert "| x | accuracy | 2 | 82.00 | 88.00 | 70.00 | 75.00 | +12.00 | +13.00 |" in text
    assert "| 2 | 3 (5) | 0.5000 | 0.8400 | 0.8600 | 0.7000 | 0.7500 | 10 / 9 |" in text
    bench.plot(report, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", sorted(bench.CASES))
def test_every_case_is_an_example_spec_whose_winner_fits_its_space(name: str) -> None:
    case = bench.CASES[name]
    job = bench._job(case)
    assert job.spec.train.train_with_dev is False  # each phase is set by the benchmark itself
    names = {p.name for p in job.spec.search.parameters}
    assert set(case.assignment) == names
