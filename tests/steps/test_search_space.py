"""``search_space``: the LR range test on the parsed spec (no spec file in between), its hand-off to the
space, a warm start from earlier runs, and space.json in the run's journal."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from kftune.io.journal import RunJournal
from kftune.io.specfile import load_spec
from kftune.io.store import open_store
from kftune.steps import search_space
from tests.steps.test_trial import write_corpus, write_spec


def _job(tmp_path: Path, **spec: Any) -> Any:
    path = write_spec(tmp_path / "spec.yaml")
    doc = yaml.safe_load(path.read_text())
    doc["spec"].update(spec)
    path.write_text(yaml.safe_dump(doc))
    return load_spec(path)


def test_the_lr_range_test_narrows_the_learning_rate_and_the_space_goes_to_the_journal(tmp_path: Path) -> None:
    job = _job(tmp_path, lrRangeTest={"enabled": True, "startLR": 1.0e-4, "endLR": 1.0, "iterations": 8})
    corpus = write_corpus(tmp_path / "corpus")
    result = search_space.run(search_space.SearchSpaceConfig(corpus=str(corpus), store=str(tmp_path / "store"),
                                                             run_id="r1", lr_out=str(tmp_path / "lr")), job=job)
    assert result.lr_find is not None and (tmp_path / "lr" / "result.json").is_file()
    assert result.lr_find.record["spec"] is None  # the parsed spec was used, no file
    space, note = RunJournal(open_store(tmp_path / "store"), "r1").read_space()
    assert space.to_katib() == result.document["parameters"] and note == result.lr_range
    if result.lr_find.suggested_lr is not None:
        assert note["applied"] is True
        assert any("LR range test" in n or "learning_rate" in n for n in space.notes)
    assert "## Search space" in result.markdown and "<html" in result.html.lower()
    assert "iterations" in result.metrics


def test_warm_start_narrows_around_earlier_runs_and_starts_cold_without_them(tmp_path: Path) -> None:
    job = _job(tmp_path)
    config = search_space.SearchSpaceConfig(corpus=str(tmp_path / "none"), store=str(tmp_path / "store"),
                                            run_id="new", lr_out=str(tmp_path / "lr"), warm_start=True)
    cold = search_space.run(config, job=job)
    assert cold.lr_find is None and "The LR range test is off" in cold.markdown
    assert any("starts cold" in n for n in cold.document["notes"])
    old = RunJournal(open_store(tmp_path / "store"), "old")
    for i, (lr, score) in enumerate([(0.011, 0.6), (0.03, 0.9), (0.04, 0.88), (0.09, 0.5)]):
        old.write(old.trial_key(f"trial-{i + 1:04d}"), {
            "id": f"trial-{i + 1:04d}", "index": i, "state": "completed", "objective": score, "budget": 2,
            "objective_metric": "dev_score", "assignment": {"learning_rate": lr, "dropout": 0.2}})
    (tmp_path / "store/runs/old/search/trials/trial-0009.json").write_text("{broken")  # skipped, not fatal
    warm = search_space.run(config, job=job)
    lr = next(p for p in warm.document["parameters"] if p["name"] == "learning_rate")["feasibleSpace"]
    low, high = float(lr["min"]), float(lr["max"])
    assert low <= 0.011 * 1.001 and 0.04 * 0.999 <= high  # around the best three (top_k 3)
    assert math.log10(high / low) < 1.0  # narrower than the spec's decade
    assert any("warm start" in n and "old" in n for n in warm.document["notes"])
    assert RunJournal(open_store(tmp_path / "store"), "new").read_space()[0].to_katib() == warm.document["parameters"]


def test_without_warm_start_the_space_is_the_specs(tmp_path: Path) -> None:
    job = _job(tmp_path)
    result = search_space.run(search_space.SearchSpaceConfig(corpus="unused", store=str(tmp_path / "s"), run_id="r",
                                                             lr_out=str(tmp_path / "lr")), job=job)
    from kftune.core.space import SearchSpace

    spec_space = SearchSpace.from_parameters(job.spec.search.parameters).to_katib()
    assert result.document == {"parameters": spec_space, "notes": [], "lr_range": None}
