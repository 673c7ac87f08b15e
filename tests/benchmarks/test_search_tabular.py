"""The tabular search benchmark (benchmarks/search_tabular.py) on a small synthetic table: look-ups, the
simulated trainings, kftune's planner and a peer end to end, and the regret arithmetic. No training."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "search_tabular.py"
_spec = importlib.util.spec_from_file_location("search_tabular_under_test", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)  # type: ignore[union-attr]

SPACE = [
    {"name": "learning_rate", "parameterType": "discrete",
     "feasibleSpace": {"list": ["0.0003", "0.001", "0.003", "0.01"]}},
    {"name": "dropout", "parameterType": "discrete", "feasibleSpace": {"list": ["0.1", "0.3", "0.5"]}},
    {"name": "embedding_dim", "parameterType": "categorical", "feasibleSpace": {"list": ["64", "128", "256"]}},
]


def synthetic_table(*, epochs: int = 6, seeds: tuple[int, ...] = (1, 2), keep: float = 1.0, seed: int = 0,
                    noise: float = 0.01, name: str = "synthetic") -> dict:
    """A table in the recorder's format over :data:`SPACE`: each configuration has a quality ``q`` (best at
    learning rate 0.003, dropout 0.3, embedding 128), dev curves rising towards it (faster for larger learning
    rates, so that early epochs mislead a little), seed noise on dev and test. ``keep`` < 1: a uniform random
    sample of the grid (a partial table)."""
    rng = np.random.default_rng(seed)
    space = copy.deepcopy(SPACE)
    lists = [p["feasibleSpace"]["list"] for p in space]
    points = list(itertools.product(*[range(len(v)) for v in lists]))
    order = rng.permutation(len(points))
    n_keep = max(2, int(round(keep * len(points))))
    configs = []
    for cid, k in enumerate(sorted(order[:n_keep])):
        lr, dr, emb = points[k]
        q = 0.9 - 0.04 * abs(lr - 2) - 0.03 * abs(dr - 1) - (0.0 if emb == 1 else 0.02)
        speed = 0.4 + 0.4 * lr
        runs = []
        for s in seeds:
            dev = [q * (1 - math.exp(-speed * e)) + rng.normal(0, noise) for e in range(1, epochs + 1)]
            runs.append({"seed": s, "dev": [round(v, 5) for v in dev], "test": round(q + rng.normal(0, noise), 5),
                         "seconds": 1.0, "failed": False})
        configs.append({"id": cid, "assignment": {space[0]["name"]: float(lists[0][lr]),
                                                  space[1]["name"]: float(lists[1][dr]),
                                                  space[2]["name"]: lists[2][emb]},
                        "runs": runs})
    return {"name": name, "spec": "examples/trec6.yaml", "overrides": {"spec.corpus.downsample": 1.0,
                                                                       "spec.train.maxEpochs": epochs},
            "corpus": {"name": "TREC_6"}, "objective": "maximize", "metric": "dev_score", "test_metric": "accuracy",
            "max_epochs": epochs, "seeds": list(seeds), "space": space, "grid_size": len(points), "configs": configs,
            "recorded": {"configs": len(configs), "complete": n_keep == len(points)}}


@pytest.fixture
def table() -> "bench.Table":
    return bench.Table(synthetic_table(), source="synthetic.json")


@pytest.fixture
def table_file(tmp_path: Path) -> Path:
    path = tmp_path / "synthetic.json"
    path.write_text(json.dumps(synthetic_table()), encoding="utf-8")
    return path


def test_lookup_is_exact_on_a_complete_table_and_nearest_on_a_partial_one(table):
    assert table.grid_size == 36 and len(table.configs) == 36 and table.complete
    point = table.point_of({"learning_rate": 0.003, "dropout": "0.3", "embedding_dim": "128"})
    assert point == (2, 1, 1)
    i, exact = table.lookup(point)
    assert exact and table.configs[i].point == point
    assert table.best_index == i  # the synthetic optimum
    assert table.regret(i) == 0.0 and table.regret(None) == math.inf

    partial = bench.Table(synthetic_table(keep=0.3, seed=3), source="partial.json")
    missing = next(p for p in itertools.product(range(4), range(3), range(3)) if p not in partial.by_point)
    j, exact = partial.lookup(missing)
    assert not exact
    # the nearest by the normalized distance: nothing recorded is closer
    def dist(a, b):
        return abs(a[0] - b[0]) / 3 + abs(a[1] - b[1]) / 2 + (a[2] != b[2])
    best = min(dist(missing, c.point) for c in partial.configs)
    assert dist(missing, partial.configs[j].point) == pytest.approx(best)


def test_simulator_charges_new_epochs_only_and_cuts_at_the_budget(table):
    sim = bench.Simulator(table, budget=10, rng=np.random.default_rng(1))
    t = sim.trial("a", (0, 0, 0))
    assert sim.trial("a", (3, 2, 2)) is t  # one trial, one draw of its seed
    dev = sim.train(t, 2)
    assert len(dev) == 2 and sim.spent == 2
    dev = sim.train(t, 6)  # a promotion resumes: 4 new epochs
    assert len(dev) == 6 and sim.spent == 6 and list(dev) == list(sim.run_of(t, 0).dev)
    sim.train(t, 6)  # nothing new
    assert sim.spent == 6
    u = sim.trial("b", (1, 1, 1))
    dev = sim.train(u, 6)  # only 4 epochs are left
    assert len(dev) == 4 and sim.spent == 10 and sim.exhausted
    with pytest.raises(bench.BudgetExhausted):
        sim.train(sim.trial("c", (2, 2, 2)), 1)
    # the incumbent: the best value at the largest budget reached so far
    sim.observe(t.config, 6, 0.5)
    sim.observe(u.config, 4, 0.9)  # a smaller budget does not displace it
    assert sim.incumbent == t.config
    assert sim.curve[-1] == (10, table.regret(t.config))


def test_objective_is_flairs_mean_of_the_last_three_dev_scores():
    assert bench.objective_at([0.1, 0.2, 0.3, 0.4, 0.5], 4) == pytest.approx(0.3)
    assert bench.objective_at([0.1, 0.2], 2) == pytest.approx(0.15)


def test_parse_method_round_trips_and_refuses_bad_text():
    m = bench.parse_method("coarse-to-fine[top_k=3,shrink=0.3]+successive-halving[eta=3]{finalists=0}")
    assert m.algorithm == "coarse-to-fine" and dict(m.algorithm_settings) == {"top_k": "3", "shrink": "0.3"}
    assert m.early_stopping == "successive-halving" and dict(m.early_stopping_settings) == {"eta": "3"}
    assert dict(m.spec) == {"finalists": 0}
    assert bench.parse_method(m.name) == m
    assert bench.parse_method("random").early_stopping == "none"
    with pytest.raises(ValueError, match="spec field"):
        bench.parse_method("random+asha{goal=1}")
    with pytest.raises(ValueError):
        bench.parse_method("random+asha[eta]")
    assert bench._split_top("a[x=1,y=2]+b,c{f=1,g=2}") == ["a[x=1,y=2]+b", "c{f=1,g=2}"]


def test_the_spec_method_is_the_example_specs_search_without_its_random_state(table):
    m = bench.method_for(table, "spec")
    # examples/trec6.yaml: coarse-to-fine (rounds 2, top_k 2, shrink 0.5, random_state 1) + successive halving
    assert m.algorithm == "coarse-to-fine" and "random_state" not in dict(m.algorithm_settings)
    assert dict(m.algorithm_settings)["top_k"] == "2"
    assert m.early_stopping == "successive-halving"
    assert int(dict(m.early_stopping_settings)["max_budget"]) <= table.max_epochs


def test_prepare_fits_the_budget_with_the_finalists(table):
    budget = 24 * table.max_epochs
    prep = bench.prepare(table, bench.parse_method("random+none"), budget)
    # the example spec re-trains 2 finalists with 1 extra seed each: 12 epochs; 22 full trials fit the rest
    assert prep.finalist_epochs == 2 * table.max_epochs
    assert prep.max_trials == 22 and prep.nominal_epochs == 22 * table.max_epochs
    hb = bench.prepare(table, bench.parse_method("random+hyperband"), budget)
    assert hb.nominal_epochs + hb.finalist_epochs <= budget and hb.max_trials > 22


@pytest.mark.parametrize("method", ["random+none", "random+hyperband", "tpe+asha", "random+medianstop",
                                    "coarse-to-fine+successive-halving", "grid+none"])
def test_kftune_replay_stays_within_the_budget_and_proposes_on_the_grid(table, method):
    budget = 12 * table.max_epochs
    prep = bench.prepare(table, bench.parse_method(method), budget)
    rec = bench.replay_kftune(table, prep, seed=3)
    assert 0 < rec["epochs"] <= budget
    assert rec["exact"] == rec["lookups"] > 0  # every proposal is a grid point, found in a complete table
    cum = [c for c, _ in rec["curve"]]
    assert cum == sorted(cum) and cum[-1] == rec["epochs"]
    assert rec["final_regret"] == rec["curve"][-1][1] >= 0
    assert rec["chosen"] is not None


def test_an_oracle_that_always_picks_the_best_has_zero_regret(table):
    best = table.configs[table.best_index].point
    sim = bench.Simulator(table, budget=30, rng=np.random.default_rng(0))
    for k in range(5):
        sim.evaluate(("oracle", k), best, table.max_epochs)
    sim.finish(sim.incumbent)
    assert all(r == 0.0 for _, r in sim.curve)
    stats = bench.summarize([{"curve": sim.curve, "final_regret": 0.0, "epochs": sim.spent, "trials": 5,
                              "lookups": 5, "exact": 5, "seconds": 0.1}] * 4, 30)
    for f in ("0.25", "0.5", "1.0"):
        assert stats["at"][f]["median"] == 0.0 and stats["at"][f]["ci95"] == [0.0, 0.0]
    assert stats["final"]["found_best"] == 1.0


def test_a_kftune_method_that_can_only_pick_the_best_has_zero_regret(tmp_path):
    data = synthetic_table()
    best = max(data["configs"], key=lambda c: np.mean([r["test"] for r in c["runs"]]))
    for p in data["space"]:  # a grid of one point: the best configuration
        p["feasibleSpace"]["list"] = [str(best["assignment"][p["name"]])]
    data["configs"] = [dict(best, id=0)]
    data["grid_size"] = 1
    table = bench.Table(data, source="one.json")
    prep = bench.prepare(table, bench.parse_method("random+hyperband"), 12 * table.max_epochs)
    rec = bench.replay_kftune(table, prep, seed=1)
    assert rec["final_regret"] == 0.0 and all(r == 0.0 for _, r in rec["curve"])


def test_regret_curve_arithmetic():
    curve = [[2, 0.3], [6, 0.1], [12, 0.05]]
    assert bench.regret_at(curve, 1) == math.inf  # nothing chosen yet
    assert bench.regret_at(curve, 2) == 0.3
    assert bench.regret_at(curve, 11.9) == 0.1
    assert bench.regret_at(curve, 100) == 0.05
    recs = [{"curve": [[2, r], [10, r / 2]], "final_regret": r / 2, "epochs": 10, "trials": 2, "lookups": 2,
             "exact": 1, "seconds": 0.01} for r in (0.1, 0.2, 0.3, 0.4)]
    s = bench.summarize(recs, 12)
    assert s["at"]["0.25"]["median"] == pytest.approx(0.25)  # at 3 epochs: 0.1, 0.2, 0.3, 0.4
    assert s["at"]["1.0"]["median"] == pytest.approx(0.125)
    assert s["at"]["1.0"]["q25"] == pytest.approx(np.quantile([0.05, 0.1, 0.15, 0.2], 0.25))
    lo, hi = s["at"]["1.0"]["ci95"]
    assert 0.05 <= lo <= 0.125 <= hi <= 0.2
    assert s["exact_hits"] == 0.5
    # a replay with no choice yet counts as the worst: the median is undefined while half have none
    late = [{"curve": [[8, 0.0]], "final_regret": 0.0, "epochs": 8, "trials": 1, "lookups": 1, "exact": 1,
             "seconds": 0.01}] * 3
    s = bench.summarize(late + recs[:1], 12)
    assert s["at"]["0.25"]["median"] is None and s["at"]["0.25"]["no_choice"] == 3


def test_one_kftune_method_and_one_peer_end_to_end(table_file, tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "report"
    code = bench.main(["replay", "--table", str(table_file), "--methods", "random+successive-halving",
                       "optuna-tpe-hyperband", "--repeats", "2", "--workers", "1", "--budget-trainings", "8",
                       "--out", str(out)])
    assert code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    res = report["results"]["synthetic"]
    assert set(res) == {"random+successive-halving", "optuna-tpe-hyperband"}
    for name, s in res.items():
        assert s["repeats"] == 2 and s["errors"] == 0, s
        assert s["epochs_used"]["max"] <= 48
        assert s["at"]["1.0"]["median"] is not None and s["at"]["1.0"]["median"] >= 0
    md = out.with_suffix(".md").read_text()
    assert "optuna-tpe-hyperband" in md and "## synthetic" in md and "--budget-trainings 8" in md
    assert out.with_suffix(".png").stat().st_size > 0
    # --render rewrites the Markdown from the JSON alone
    out.with_suffix(".md").unlink()
    assert bench.main(["--render", str(out.with_suffix(".json"))]) == 0
    assert out.with_suffix(".md").read_text() == md


def _peers():
    return bench._peers()


@pytest.mark.parametrize("name", [n for n in ("optuna-tpe-hyperband", "hyperopt-tpe", "smac-mf", "syne-asha",
                                              "syne-hyperband", "syne-bohb", "syne-median", "hpbandster-bohb",
                                              "dehb")])
def test_every_default_peer_replays_on_a_partial_table_within_the_budget(name):
    peers = _peers()
    for module in peers.PEERS[name].modules:
        pytest.importorskip(module)
    assert name in peers.DEFAULT
    table = bench.Table(synthetic_table(keep=0.5, seed=4), source="half.json")
    budget = 8 * table.max_epochs
    rec = bench.replay(table, name, seed=5, budget=budget)
    assert 0 < rec["epochs"] <= budget
    assert rec["trials"] == rec["lookups"] > 0 and 0 < rec["exact"] <= rec["lookups"]
    assert rec["chosen"] is not None and 0 <= rec["final_regret"] < math.inf
    cum = [c for c, _ in rec["curve"]]
    assert cum == sorted(cum)


def _at(median: float, lo: float, hi: float) -> dict:
    return {"median": median, "ci95": [lo, hi]}


def test_bohb_criteria_judge_medians_and_the_best_peers_interval():
    methods = {"bohb+hyperband": {"kind": "kftune"}, "random+none": {"kind": "kftune"},
               "random+hyperband": {"kind": "kftune"}, "peer-a": {"kind": "peer"}, "peer-b": {"kind": "peer"}}

    def results(bohb_b: tuple[float, float, float]) -> dict:
        return {"bohb+hyperband": {"at": {"0.25": _at(0.02, 0.018, 0.024), "1.0": _at(*bohb_b)}},
                "random+none": {"at": {"0.25": _at(0.03, 0.02, 0.04), "1.0": _at(0.025, 0.02, 0.03)}},
                "random+hyperband": {"at": {"0.25": _at(0.025, 0.02, 0.03), "1.0": _at(0.022, 0.02, 0.024)}},
                "peer-a": {"at": {"0.25": _at(0.021, 0.019, 0.023), "1.0": _at(0.015, 0.014, 0.016)}},
                "peer-b": {"at": {"0.25": _at(0.019, 0.017, 0.02), "1.0": _at(0.03, 0.02, 0.04)}}}

    ok = bench.bohb_criteria(results((0.018, 0.016, 0.02)), methods)
    assert ok["met"]
    assert ok["at"]["0.25"]["best_peer"]["method"] == "peer-b"  # the best peer is chosen per share
    assert ok["at"]["1.0"]["best_peer"]["method"] == "peer-a"
    assert ok["at"]["1.0"]["best_peer"]["met"]  # 0.018 > 0.015, but BOHB's 0.016 meets the peer's 0.016
    worse = bench.bohb_criteria(results((0.021, 0.019, 0.024)), methods)
    assert not worse["met"] and not worse["at"]["1.0"]["best_peer"]["met"]  # 0.019 > the peer's 0.016
    assert worse["at"]["1.0"]["below"]["Hyperband"]["met"]  # 0.021 < 0.022 still holds
    above_random = bench.bohb_criteria(results((0.026, 0.014, 0.03)), methods)
    assert not above_random["at"]["1.0"]["below"]["random search"]["met"] and not above_random["met"]
    tie = bench.bohb_criteria(results((0.022, 0.02, 0.024)), methods)
    assert tie["at"]["1.0"]["below"]["Hyperband"]["tie"] and not tie["at"]["1.0"]["below"]["Hyperband"]["met"]
    assert "a tie" in "\n".join(bench.render_criteria(tie)) and not tie["met"]
    assert bench.bohb_criteria({"random+none": {"at": {}}}, methods) is None
    assert "not met" in "\n".join(bench.render_criteria(worse))
