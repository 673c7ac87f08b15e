"""The tabular benchmark's recorder: the grids, resuming, and the table format (tiny TREC-6, 3 epochs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "_tabular_record.py"
_spec = importlib.util.spec_from_file_location("tabular_record_under_test", _PATH)
rec = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = rec  # dataclasses look their module up
_spec.loader.exec_module(rec)  # type: ignore[union-attr]

from kftune.core.space import SearchSpace  # noqa: E402
from kftune.io.specfile import parse_spec_text  # noqa: E402

#: 2 x 2 x 3 x 3 = 36 points (each double gets 2 values), about 100 training questions, a small n-gram bag;
#: 3 epochs, the fewest the example's successive halving (min_budget 2) accepts.
TINY = rec.Table("tiny", "trec6", {"spec.corpus.downsample": 0.02, "spec.model.ngram_buckets": 1024,
                                   "spec.model.cnn_filters": 8}, max_epochs=3, seeds=(1, 2), min_grid=2,
                 notes=("a test table",))
FORMAT_KEYS = {"name", "spec", "overrides", "corpus", "objective", "metric", "test_metric", "max_epochs", "seeds",
               "space", "configs", "recorded"}


def spec_with_space(table: dict, algorithm: str = "grid") -> str:
    """The table's example spec with its search space replaced by the table's grid (as a user would paste it;
    the LR range test, which sets a double range, off)."""
    data = yaml.safe_load((rec.REPO / table["spec"]).read_text(encoding="utf-8"))
    data["spec"]["lrRangeTest"] = {"enabled": False}
    data["spec"]["search"]["parameters"] = table["space"]
    data["spec"]["search"]["algorithm"] = {"algorithmName": algorithm}
    return yaml.safe_dump(data, allow_unicode=True)


@pytest.mark.parametrize("name", list(rec.TABLES))
def test_each_table_grid_comes_from_the_example_space_and_has_at_least_256_points(name):
    table = rec.TABLES[name]
    data, example, overrides = table.spec()
    job = parse_spec_text(yaml.safe_dump(data, allow_unicode=True), example)
    space = rec.grid_space(job.spec.search.parameters, table.min_grid)
    assert [p["name"] for p in space] == [p.name for p in job.spec.search.parameters]
    points = rec.grid_points(space, table.order_seed)
    assert 256 <= len(points) <= 400
    assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points)
    typed = SearchSpace.from_katib(space)
    for original, gridded in zip(job.spec.search.parameters, space):
        assert gridded["parameterType"] in ("discrete", "categorical")
        values = [typed[gridded["name"]].parse(v) for v in gridded["feasibleSpace"]["list"]]
        fs = original.feasible_space
        if original.parameter_type in ("double", "int"):  # inside the example's range, both ends on the grid
            assert values[0] == float(fs.min) and values[-1] == float(fs.max)
            assert values == sorted(values)
        else:
            assert gridded["feasibleSpace"]["list"] == list(fs.list)
    assert overrides["spec.train.maxEpochs"] == table.max_epochs >= 6
    # the order is a seeded permutation: the same seed, the same order
    assert rec.grid_points(space, table.order_seed) == points
    assert rec.grid_points(space, table.order_seed + 1) != points


def test_doubles_grow_until_the_grid_is_large_enough():
    job = parse_spec_text(yaml.safe_dump(rec.TABLES["trec6"].spec()[0], allow_unicode=True), "trec6")
    space = {p["name"]: p["feasibleSpace"]["list"] for p in rec.grid_space(job.spec.search.parameters, 270)}
    assert len(space["learning_rate"]) == 6 and len(space["dropout"]) == 5  # 6 x 5 x 3 x 3 = 270
    assert space["learning_rate"] == ["1e-4", "0.0002512", "0.000631", "0.001585", "0.003981", "1e-2"]  # log-spaced
    assert space["dropout"] == ["0.1", "0.225", "0.35", "0.475", "0.6"]


@pytest.mark.slow
def test_records_resumes_and_writes_the_table(tmp_path, corpus_mirror):
    work, results = tmp_path / "work", tmp_path / "results"
    first = rec.record(TINY, work=work, results=results, max_configs=2, command="python record-it")
    runs_file = work / "tiny" / "runs.jsonl"
    assert len(runs_file.read_text().splitlines()) == 4  # 2 configurations x 2 seeds

    # a kill while a line was written: the cut line is skipped and that run trained again
    lines = runs_file.read_text().splitlines()
    runs_file.write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    again = rec.record(TINY, work=work, results=results, max_configs=2, command="python record-it")
    rows = [json.loads(line) for line in runs_file.read_text().splitlines() if line.startswith("{")
            and line.endswith("}")]
    assert sorted((r["config"], r["seed"]) for r in rows) == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]
    assert [(r["config"], r["seed"]) for r in rows[:4]] == [(0, 1), (0, 2), (1, 1), (1, 2)]  # none trained twice
    assert [c["id"] for c in first["configs"]] == [0, 1] and [c["id"] for c in again["configs"]] == [0, 1, 2]

    def scores(table):
        return [[(r["dev"], r["test"]) for r in c["runs"]] for c in table["configs"]]

    assert scores(again)[:2] == scores(first)  # deterministic on the CPU: the run trained again is the same

    path = results / "tiny.json"
    table = json.loads(path.read_text(encoding="utf-8"))
    assert table == json.loads(json.dumps(again))
    assert FORMAT_KEYS <= set(table)
    assert table["name"] == "tiny" and table["spec"] == "examples/trec6.yaml"
    assert table["overrides"]["spec.corpus.downsample"] == 0.02 and table["overrides"]["spec.train.maxEpochs"] == 3
    assert table["corpus"]["name"] == "TREC_6" and table["corpus"]["test"] == 500
    assert table["corpus"]["train"] > 0 and table["corpus"]["dev"] > 0
    assert (table["objective"], table["metric"], table["test_metric"]) == ("maximize", "dev_score", "accuracy")
    assert table["max_epochs"] == 3 and table["seeds"] == [1, 2] and table["grid_size"] == 36
    assert table["recorded"]["command"] == "python record-it" and table["recorded"]["threads"] == 1
    assert table["recorded"]["complete"] is False and table["recorded"]["configs"] == 3
    assert any("LR range test" in n for n in table["notes"]) and "a test table" in table["notes"]
    points = rec.grid_points(table["space"], TINY.order_seed)
    for config in table["configs"]:
        assert config["assignment"] == points[config["id"]]
        assert [r["seed"] for r in config["runs"]] == [1, 2]
        for run in config["runs"]:
            assert set(run) == {"seed", "dev", "test", "seconds", "failed"}
            assert run["failed"] is False and len(run["dev"]) == 3
            assert all(0 <= x <= 1 and round(x, 5) == x for x in run["dev"] + [run["test"]])
            assert run["seconds"] > 0
    # one configuration per line, and the space is a search space kftune's spec accepts as it is
    text = path.read_text(encoding="utf-8")
    assert sum(line.startswith('  {"id": ') for line in text.splitlines()) == 3
    job = parse_spec_text(spec_with_space(table), "table space")
    assert len(job.spec.search.parameters) == 4

    # the work directory pins the grid: other settings refuse to append to it
    with pytest.raises(SystemExit, match="pins other settings"):
        rec.record(rec.Table("tiny", "trec6", dict(TINY.overrides), max_epochs=4, min_grid=2), work=work,
                   results=results, max_configs=0)


def test_workers_record_the_same_runs_as_one_process(tmp_path, corpus_mirror):
    one = rec.record(TINY, work=tmp_path / "one", results=tmp_path / "r1", max_configs=3, command="c")
    two = rec.record(TINY, work=tmp_path / "two", results=tmp_path / "r2", max_configs=3, command="c", workers=2)

    def scores(table):
        return {c["id"]: [(r["seed"], r["dev"], r["test"]) for r in c["runs"]] for c in table["configs"]}

    assert sorted(scores(two)) == [0, 1, 2]
    assert scores(two) == scores(one)  # one thread per worker: the same trainings, in whatever order they end
    rows = (tmp_path / "two" / "tiny" / "runs.jsonl").read_text().splitlines()
    assert len(rows) == 6 and not rec._WORKER  # every seed once; the worker state is cleared


def test_a_failed_run_is_recorded_with_the_dev_scores_it_reached(tmp_path, corpus_mirror, monkeypatch):
    prep = rec.prepare(TINY, tmp_path / "work")
    corpus = rec.Corpus(prep.corpus)
    from kftune.nlp import trainer as trainer_module

    real = trainer_module.Trainer.evaluate
    calls = {"n": 0}

    def second_dev_is_nan(self, dataset):
        loss, score, predicted = real(self, dataset)
        calls["n"] += 1
        return (loss, float("nan"), predicted) if calls["n"] == 2 else (loss, score, predicted)

    monkeypatch.setattr(trainer_module.Trainer, "evaluate", second_dev_is_nan)
    out = rec.train_run(prep, corpus, prep.points[0], seed=1)
    assert out["failed"] is True and "dev score" in out["reason"]
    assert len(out["dev"]) == 2 and out["dev"][1] != out["dev"][1] and out["test"] is None
    row = {"config": 0, "seed": 1, "assignment": prep.points[0], **out, "started_at": "t", "finished_at": "t"}
    table = rec.build_table(prep, {(0, 1): row, (0, 2): {**row, "seed": 2}}, command="c")
    assert table["configs"][0]["runs"][0]["failed"] is True
    assert table["configs"][0]["runs"][0]["dev"][1] is None  # JSON has no NaN: a non-finite score is null
