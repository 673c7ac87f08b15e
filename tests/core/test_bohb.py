"""BOHB (Falkner et al., ICML 2018) as ``algorithmName: bohb``: settings, per-budget observations read from the
history, the model on the largest budget with enough points, proposals on a toy objective under Hyperband,
mixed spaces, the objective's direction, determinism; the spec, the Katib export, the compiled pipelines."""

from __future__ import annotations

import copy
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from kftune.core.errors import ConfigError
from kftune.core.samplers import SAMPLERS, get_sampler
from kftune.core.samplers.bohb import BOHBConfig, BOHBSampler, _Axis, observations
from kftune.core.search_policy import SearchPolicy
from kftune.core.space import SearchSpace
from kftune.core.spec import parse_spec
from kftune.core.trials import Trial
from tests.core.test_search_policy import job
from tests.core.test_space import SPACES, assert_typed, space

X = SearchSpace.from_katib([{"name": "x", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "1"}}])
TOY = [{"name": "x", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "1"}},
       {"name": "lr", "parameterType": "double",
        "feasibleSpace": {"min": "1e-4", "max": "1", "distribution": "logUniform"}}]


def trial(i: int, a: dict, state: str, values: list[float] | None = None, *, budget: int | None = None,
          objective: float | None = None, **extra: Any) -> Trial:
    """Trial ``t<i>`` reporting ``values`` at epochs 1, 2, ...; the objective is the last one unless given."""
    values = values or []
    if objective is None and values and state != "failed":
        objective = values[-1]
    return Trial(id=f"t{i}", assignment=a, state=state, objective=objective,
                 intermediate=tuple((e + 1, v) for e, v in enumerate(values)),
                 budget=budget if budget is not None else len(values), extra=extra)


# -- settings ----------------------------------------------------------------------------------------------

def test_registered_with_hpbandsters_defaults() -> None:
    assert SAMPLERS["bohb"] is BOHBSampler and isinstance(get_sampler("bohb"), BOHBSampler)
    cfg = BOHBSampler().config(space("flair"))
    assert cfg == BOHBConfig(min_points_in_model=5, random_state=None, top_n_percent=15, num_samples=64,
                             random_fraction=1 / 3, bandwidth_factor=3.0, min_bandwidth=1e-3)
    given = BOHBSampler().config(space("flair"), [
        {"name": "top_n_percent", "value": "20"}, {"name": "min_points_in_model", "value": "8"},
        {"name": "num_samples", "value": "16"}, {"name": "random_fraction", "value": "0"},
        {"name": "bandwidth_factor", "value": "2.5"}, {"name": "min_bandwidth", "value": "0.01"},
        {"name": "random_state", "value": "7"}])
    assert given == BOHBConfig(min_points_in_model=8, random_state=7, top_n_percent=20, num_samples=16,
                               random_fraction=0.0, bandwidth_factor=2.5, min_bandwidth=0.01)


@pytest.mark.parametrize("name, value, words", [
    ("top_n_percent", "0", ">= 1"), ("top_n_percent", "100", "<= 99"), ("top_n_percent", "15.5", "not an integer"),
    ("min_points_in_model", "4", "number of parameters + 1 (5)"), ("num_samples", "0", ">= 1"),
    ("random_fraction", "1.5", "[0, 1]"), ("random_fraction", "-0.1", "[0, 1]"),
    ("bandwidth_factor", "0", "(0,"), ("min_bandwidth", "nan", "(0,"), ("random_state", "-1", ">= 0"),
    ("gamma", "0.25", "unknown setting for bohb"),
])
def test_a_bad_setting_is_named(name: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        get_sampler("bohb").check(space("flair"), {name: value})
    [problem] = err.value.problems
    assert problem.path == f"spec.search.algorithm.algorithmSettings.{name}" and words in problem.message


def test_every_bad_setting_at_once_and_in_the_spec_with_its_path() -> None:
    with pytest.raises(ConfigError) as err:
        get_sampler("bohb").check(space("flair"), {"num_samples": "x", "min_bandwidth": "0", "top_n_percent": "0"})
    assert {p.path.rsplit(".", 1)[-1] for p in err.value.problems} == {"num_samples", "min_bandwidth", "top_n_percent"}
    with pytest.raises(ConfigError) as err:
        job(algorithm="bohb", settings={"random_fraction": "2"})
    assert "algorithmSettings" in err.value.problems[0].path and "random_fraction" in str(err.value)


# -- observations: what the history says per budget ----------------------------------------------------------

def test_observations_per_budget_follow_the_rungs_trials_stopped_at() -> None:
    a = [{"x": k / 10} for k in range(8)]
    history = [
        trial(0, a[0], "pruned", [0.1]),                                  # stopped at rung 1
        trial(1, a[1], "pruned", [0.2, 0.25, 0.3]),                       # promoted, stopped at rung 3
        trial(2, a[2], "completed", [0.3, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5, 0.6, 0.7]),  # trained to 9
        trial(3, a[3], "failed", [0.4], budget=1, budget_asked=3),        # crashed on the way to 3
        trial(4, a[4], "running", [0.9]),                                  # pending, not an observation
        trial(5, a[5], "pruned", [float("nan")]),                         # diverged at 1
        trial(6, {"x": 5.0}, "completed", [0.99]),                        # outside the space: not used
        trial(7, a[7], "completed", [], budget=0, objective=0.8),         # no budget, no intermediate values
    ]
    obs = observations(X, history, "maximize")
    as_ids = {b: [(t.id, loss) for t, loss in rows] for b, rows in obs.items()}
    assert as_ids == {
        0: [("t7", -0.8)],
        1: [("t0", -0.1), ("t1", -0.2), ("t2", -0.3), ("t3", -0.4), ("t5", math.inf)],
        3: [("t1", -0.3), ("t2", -0.4), ("t3", math.inf)],
        9: [("t2", -0.7)],
    }
    # minimizing, a loss is the value itself; failures stay the worst
    mins = {b: [loss for _, loss in rows] for b, rows in observations(X, history, "minimize").items()}
    assert mins[3] == [0.3, 0.4, math.inf] and mins[1][-1] == math.inf
    # a failed trial whose budget is unknown is the worst at every budget
    unknown = history[:3] + [trial(9, a[6], "failed", [], budget=0)]
    assert [[t.id for t, loss in rows if loss == math.inf] for rows in observations(X, unknown, "maximize").values()] \
        == [["t9"]] * 4


def _rungs(n1: int, n3: int, n9: int) -> list[Trial]:
    """``n1`` trials stopped at 1 epoch, ``n3`` at 3, ``n9`` completed at 9; better the larger x."""
    out, i = [], 0
    for count, budget in ((n1, 1), (n3, 3), (n9, 9)):
        for _ in range(count):
            x = (i * 0.37) % 1.0
            out.append(trial(i, {"x": x}, "completed" if budget == 9 else "pruned",
                             [x * e / 9 for e in range(1, budget + 1)]))
            i += 1
    return out


def test_the_model_is_fitted_on_the_largest_budget_with_enough_points() -> None:
    sampler = BOHBSampler()
    # one parameter: min_points_in_model 2; a budget needs 4 observations (2 good, 2 bad)
    assert BOHBSampler().config(X).points_for_model(1) == 4
    assert sampler.model(X, _rungs(3, 0, 0)) is None  # 3 at budget 1: random
    assert sampler.model(X, _rungs(4, 0, 0)).budget == 1  # type: ignore[union-attr]
    m = sampler.model(X, _rungs(6, 2, 1))  # budget 9: 1, budget 3: 3, budget 1: 9
    assert m is not None and (m.budget, m.n_good, m.n_bad) == (1, 2, 7)
    m = sampler.model(X, _rungs(6, 3, 1))  # budget 3: 4 (the completed trial counts at 3 too)
    assert m is not None and (m.budget, m.n_good, m.n_bad) == (3, 2, 2)
    m = sampler.model(X, _rungs(6, 3, 4))  # budget 9: 4
    assert m is not None and m.budget == 9
    # more than the minimum: n_good = max(min_points, 15 %), the bad ones the rest (hpbandster's rule)
    m = sampler.model(X, _rungs(0, 0, 40))
    assert m is not None and (m.budget, m.n_good, m.n_bad) == (9, 6, 34)
    # the good density holds the best trials at that budget, the bad one the rest
    history = _rungs(0, 0, 40)
    xs = sorted((t.assignment["x"] for t in history), reverse=True)
    assert sorted(m.good.data[:, 0], reverse=True) == pytest.approx(xs[:6])
    assert sorted(m.bad.data[:, 0], reverse=True) == pytest.approx(xs[6:])
    # running trials are not observations; a larger min_points_in_model waits for more
    running = [Trial(id=f"r{i}", assignment={"x": 0.5}, state="running") for i in range(5)]
    assert sampler.model(X, _rungs(3, 0, 0) + running) is None
    assert sampler.model(X, _rungs(5, 0, 0), settings={"min_points_in_model": "4"}) is None  # 4 good, 1 bad
    assert sampler.model(X, _rungs(6, 0, 0), settings={"min_points_in_model": "4"}) is not None


def test_minimizing_the_negated_values_is_the_same_search() -> None:
    history = _rungs(9, 3, 2)
    flipped = [Trial(id=t.id, assignment=t.assignment, state=t.state, objective=-t.objective,  # type: ignore[operator]
                     intermediate=tuple((e, -v) for e, v in t.intermediate), budget=t.budget) for t in history]
    up = BOHBSampler().suggest(X, history, 6, seed=3, objective="maximize")
    down = BOHBSampler().suggest(X, flipped, 6, seed=3, objective="minimize")
    assert up == down
    # and minimizing the same values models the other end
    best_up = BOHBSampler().model(X, history, objective="maximize")
    best_down = BOHBSampler().model(X, history, objective="minimize")
    assert best_up is not None and best_down is not None
    assert best_up.good.data[:, 0].min() > best_down.good.data[:, 0].max()


# -- proposals on a toy objective under Hyperband --------------------------------------------------------------

def toy(a: dict) -> float:
    """A quadratic bowl over x and log10(lr), best (0) at x 0.7, lr 1e-3."""
    return -((a["x"] - 0.7) ** 2 / 0.1 + (math.log10(a["lr"]) + 3) ** 2 / 4.0)


def toy_value(a: dict, epoch: int) -> float:
    """The bowl plus a deterministic wiggle that fades with the epochs (small budgets rank less reliably)."""
    return toy(a) + 0.3 * math.sin(1e3 * a["x"] + 7e2 * math.log10(a["lr"])) / epoch


def toy_policy(algorithm: str, seed: int, *, objective: str = "maximize", max_trials: int = 40,
               settings: dict[str, str] | None = None) -> SearchPolicy:
    """A search of the toy space under Hyperband (eta 3, 1..9 epochs)."""
    metric = {"maximize": "dev_score", "minimize": "dev_loss"}[objective]
    return SearchPolicy.from_job(job(
        algorithm=algorithm, settings=settings or {}, parameters=TOY,
        objective={"type": objective, "objectiveMetricName": metric},
        es=("hyperband", {"eta": "3", "min_budget": "1", "max_budget": "9"}), maxTrialCount=max_trials,
        parallelTrialCount=2, train={"maxEpochs": 9, "seed": seed}, finalists=0))


def hyperband_search(algorithm: str, seed: int, *, objective: str = "maximize", max_trials: int = 40,
                     settings: dict[str, str] | None = None, plans: list | None = None
                     ) -> tuple[list[Trial], list[Any]]:
    """The whole toy search, every round run at once: the history and the requests for new trials, in
    order (``plans`` collects each round's history and requests)."""
    policy = toy_policy(algorithm, seed, objective=objective, max_trials=max_trials, settings=settings)
    s = 1.0 if objective == "maximize" else -1.0
    history: list[Trial] = []
    new = []
    for r in range(500):
        requests = policy.plan(history, r, 50)
        if plans is not None:
            plans.append((list(history), requests))
        if not requests:
            break
        by_id = {t.id: t for t in history}
        for q in requests:
            new += [] if q.promotion else [q]
            values = tuple((e, s * toy_value(q.assignment, e)) for e in range(1, q.budget + 1))
            by_id[q.trial_id] = Trial(id=q.trial_id, assignment=q.assignment,
                                      state="completed" if q.budget >= 9 else "pruned", objective=values[-1][1],
                                      intermediate=values, budget=q.budget,
                                      extra={"index": q.index, "budget_asked": q.budget})
        history = sorted(by_id.values(), key=lambda t: t.extra["index"])
    return history, new


def test_proposals_concentrate_near_the_good_region_better_than_random() -> None:
    """After Hyperband's first pass (17 trials), BOHB's new configurations score far better on average than
    random search's, seed after seed (random's late proposals average about -1.9 here, BOHB's about -0.7)."""
    def late(algorithm: str, seed: int) -> float:
        _, new = hyperband_search(algorithm, seed)
        return statistics.mean(toy(q.assignment) for q in new if q.index >= 17)

    seeds = range(6)
    random_late = [late("random", s) for s in seeds]
    bohb_late = [late("bohb", s) for s in seeds]
    assert statistics.median(bohb_late) > statistics.median(random_late) + 0.5
    assert sum(b > statistics.median(random_late) for b in bohb_late) >= 5


def test_under_hyperband_minimizing_the_loss_makes_the_same_choices() -> None:
    history_up, new_up = hyperband_search("bohb", 2, max_trials=30)
    history_down, new_down = hyperband_search("bohb", 2, objective="minimize", max_trials=30)
    assert [q.assignment for q in new_up] == [q.assignment for q in new_down]
    assert [(t.id, t.budget) for t in history_up] == [(t.id, t.budget) for t in history_down]


def test_a_restarted_search_plans_the_same_rounds_from_any_cut_of_its_history() -> None:
    """Stateless: the history alone decides, so a fresh policy (a restarted driver) given the history of any
    round plans exactly what the first one did; and no configuration is proposed twice."""
    plans: list = []
    _, new = hyperband_search("bohb", 4, max_trials=30, plans=plans)
    assert len(plans) > 10
    for r, (history, requests) in enumerate(plans):
        again = toy_policy("bohb", 4, max_trials=30).plan(history, r, 50)
        assert [q.to_dict() for q in again] == [q.to_dict() for q in requests]
    assert len({tuple(q.assignment.values()) for q in new}) == len(new) == 30


# -- mixed spaces ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_every_parameter_type_round_trips_through_the_unit_cube(space_name: str) -> None:
    s = space(space_name)
    for p in s:
        axis = _Axis.of(p)
        if p.step is not None or not p.is_numeric_range:
            values = list(p.choices) if not p.is_numeric_range else [p.grid_value(k) for k in range((p.n_steps or 0) + 1)]
            for v in values:
                u = axis.encode(v)
                assert 0 <= u <= (axis.levels - 1 if axis.levels else 1)
                assert axis.decode(u) == v and type(axis.decode(u)) is type(v), (p.name, v)
        else:
            for v in (p.low, p.high, (p.low + p.high) / 2):
                assert axis.decode(axis.encode(v)) == pytest.approx(v, rel=1e-12)
        # any point of the cube decodes into the space
        for u in np.linspace(0, 1, 11):
            assert p.contains(axis.decode(float(u) * (max(axis.levels - 1, 1) if axis.levels else 1)))


def test_discrete_lists_are_ordinal_by_value_and_categoricals_are_unordered() -> None:
    s = SearchSpace.from_katib([
        {"name": "bs", "parameterType": "discrete", "feasibleSpace": {"list": ["64", "16", "32"]}},
        {"name": "opt", "parameterType": "categorical", "feasibleSpace": {"list": ["sgd", "adam", "adamw"]}}])
    bs, opt = (_Axis.of(p) for p in s)
    assert [bs.encode(v) for v in (16, 32, 64)] == pytest.approx([1 / 6, 3 / 6, 5 / 6])
    assert opt.levels == 3 and [opt.encode(v) for v in ("sgd", "adam", "adamw")] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_model_based_proposals_are_feasible_and_typed_in_every_space(space_name: str) -> None:
    s = space(space_name)
    settings = {"random_fraction": "0", "num_samples": "32"}
    history: list[Trial] = []
    for seed in range(4):  # 4 x 6 random points, then the model
        for a in s.sample(6, 100 + seed):
            v = sum((hash(str(x)) % 997) / 997 for x in a.values())
            history.append(trial(len(history), a, "completed", [v]))
    assert BOHBSampler().model(s, history) is not None
    out = BOHBSampler().suggest(s, history, 5, seed=1, settings=settings)
    assert len(out) == 5
    for a in out:
        assert_typed(s, a)
        assert s.contains(a)
    assert len({tuple(a.values()) for a in out}) == 5


def test_a_categorical_that_only_good_points_share_is_proposed_and_ratios_stay_finite() -> None:
    """Every good point has optimizer adam (statsmodels would count one level and divide by zero)."""
    s = SearchSpace.from_katib([
        {"name": "x", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "1"}},
        {"name": "opt", "parameterType": "categorical", "feasibleSpace": {"list": ["sgd", "adam", "adamw"]}}])
    history = []
    for i in range(30):
        a = {"x": (i * 0.61) % 1.0, "opt": ["sgd", "adam", "adamw"][i % 3]}
        history.append(trial(i, a, "completed", [(1.0 if a["opt"] == "adam" else 0.0) + 0.1 * a["x"]]))
    m = BOHBSampler().model(s, history)
    assert m is not None and set(m.good.data[:, 1]) == {1.0}
    assert 0 < m.good.bw[1] <= 2 / 3 and np.isfinite(m.bad.logpdf(m.good.data)).all()
    out = BOHBSampler().suggest(s, history, 8, seed=0, settings={"random_fraction": "0"})
    assert sum(a["opt"] == "adam" for a in out) >= 6


# -- determinism and batches -------------------------------------------------------------------------------------

def test_deterministic_and_seeded() -> None:
    s = space("flair")
    history = [trial(i, a, "completed", [((i * 7) % 10) / 10]) for i, a in enumerate(s.sample(12, 5))]
    first = BOHBSampler().suggest(s, history, 4, seed=11)
    assert first == get_sampler("bohb").suggest(s, list(history), 4, seed=11)
    assert first != BOHBSampler().suggest(s, history, 4, seed=12)
    fixed = {"random_state": "3"}
    assert BOHBSampler().suggest(s, history, 4, seed=1, settings=fixed) == \
        BOHBSampler().suggest(s, history, 4, seed=2, settings=fixed)
    # proposal i of a batch does not depend on the batch size
    assert BOHBSampler().suggest(s, history, 2, seed=11) == first[:2]


def test_a_batch_avoids_the_history_and_itself_in_a_small_discrete_space() -> None:
    s = space("lists")  # 3 x 3 x 7 = 63 points
    small = SearchSpace.from_katib([SPACES["lists"][0], SPACES["lists"][1]])  # 9 points
    history = [trial(i, a, "completed", [float(i)]) for i, a in enumerate(
        [{"optimizer": o, "scale": v} for o in ("sgd", "adam") for v in (0.5, 1, 2.5)])]
    history.append(Trial(id="run", assignment={"optimizer": "adamw", "scale": 0.5}, state="running"))
    out = BOHBSampler().suggest(small, history, 2, seed=0)
    assert sorted(a["scale"] for a in out) == [1, 2.5] and all(a["optimizer"] == "adamw" for a in out)
    # when nothing is left, a batch still has n points
    assert len(BOHBSampler().suggest(small, history, 5, seed=0)) == 5
    assert len({tuple(a.values()) for a in BOHBSampler().suggest(s, [], 20, seed=0)}) == 20


# -- the spec, the Katib export, the pipelines ------------------------------------------------------------------

def test_the_spec_accepts_bohb_with_and_without_hyperband() -> None:
    for es in (None, ("hyperband", {"max_budget": "9"}), ("asha", {}), ("successive-halving", {}), ("medianstop", {})):
        policy = SearchPolicy.from_job(job(algorithm="bohb", settings={"top_n_percent": "20"}, es=es,
                                           train={"maxEpochs": 9, "seed": 1}))
        assert isinstance(policy.sampler, BOHBSampler)
        assert policy.rounds_needed() >= 3


def _trec6_bohb(early_stopping: dict | None, settings: list[dict[str, str]] | None = None) -> dict:
    from tests.core.test_katib_export import raw

    data = copy.deepcopy(raw("trec6"))
    data["spec"]["search"]["algorithm"] = {"algorithmName": "bohb", "algorithmSettings": settings or []}
    data["spec"]["search"]["maxTrialCount"] = 20
    data["spec"]["train"]["maxEpochs"] = 9
    data["spec"]["search"].pop("earlyStopping", None)
    if early_stopping is not None:
        data["spec"]["search"]["earlyStopping"] = early_stopping
    return data


def test_katib_export_maps_bohb_to_hyperband_or_tpe_and_says_so() -> None:
    from kftune.core.katib_export import export_experiment
    from tests.core.test_katib_export import CPU_POD

    hb = export_experiment(parse_spec(_trec6_bohb(
        {"algorithmName": "hyperband", "algorithmSettings": [{"name": "max_budget", "value": "9"}]},
        [{"name": "top_n_percent", "value": "20"}])), CPU_POD)
    assert hb.body["spec"]["algorithm"]["algorithmName"] == "hyperband"
    [note] = [n for n in hb.notes if n.startswith("bohb: ")]
    assert "Katib has no BOHB" in note and "drawn at random" in note and "['top_n_percent'] are left out" in note
    assert any("runs only the first, most exploratory bracket" in n for n in hb.notes)

    alone = export_experiment(parse_spec(_trec6_bohb(None, [{"name": "random_state", "value": "4"},
                                                            {"name": "num_samples", "value": "32"}])), CPU_POD)
    settings = {s["name"]: s["value"] for s in alone.body["spec"]["algorithm"]["algorithmSettings"]}
    # trec6 searches 4 parameters: min_points_in_model 5, and 10 trials before the first model
    assert alone.body["spec"]["algorithm"]["algorithmName"] == "tpe"
    assert settings == {"n_EI_candidates": "32", "n_startup_jobs": "10", "random_state": "4"}
    [note] = [n for n in alone.notes if n.startswith("bohb: ")]
    assert "Katib has no BOHB" in note and "runs Katib's tpe" in note and "TPE is not BOHB" in note

    median = export_experiment(parse_spec(_trec6_bohb({"algorithmName": "medianstop"})), CPU_POD)
    assert median.body["spec"]["algorithm"]["algorithmName"] == "tpe"
    assert median.body["spec"]["earlyStopping"]["algorithmName"] == "medianstop"

    one = export_experiment(parse_spec(_trec6_bohb({"algorithmName": "hyperband", "algorithmSettings": [
        {"name": "min_budget", "value": "9"}, {"name": "max_budget", "value": "9"}]})), CPU_POD)
    assert one.body["spec"]["algorithm"]["algorithmName"] == "tpe" and "earlyStopping" not in one.body["spec"]
    assert [n for n in one.notes if n.startswith("bohb: ")] and any("gives no Katib hyperband bracket" in n
                                                                    for n in one.notes)


def test_kftune_katib_prints_the_bohb_note(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from kubeflow_katib_api.models import V1beta1Experiment

    from kftune.commands.katib import main

    monkeypatch.delenv("KFTUNE_IMAGE_REGISTRY", raising=False)
    spec = tmp_path / "bohb.yaml"
    spec.write_text(yaml.safe_dump(_trec6_bohb({"algorithmName": "hyperband"})), encoding="utf-8")
    assert main([str(spec)]) == 0
    out, err = capsys.readouterr()
    body = yaml.safe_load(out)
    assert V1beta1Experiment.from_dict(body).to_dict() == body
    assert body["spec"]["algorithm"]["algorithmName"] == "hyperband"
    assert "note: bohb: Katib has no BOHB. The Experiment runs Katib's hyperband" in err
    assert "# NOTE: bohb: Katib has no BOHB" in out


BOHB_SEARCH = {"algorithm": {"algorithmName": "bohb"},
               "earlyStopping": {"algorithmName": "hyperband", "algorithmSettings": [
                   {"name": "eta", "value": "2"}, {"name": "min_budget", "value": "1"},
                   {"name": "max_budget", "value": "4"}]},
               "maxTrialCount": 10, "parallelTrialCount": 2, "finalists": 1}


def test_kftune_compile_compiles_a_bohb_search_into_both_pipelines(tmp_path: Path) -> None:
    """The pipelines are compiled for a number of search rounds; a BOHB spec fits the committed ones and
    compiles, for the rounds it needs, into the CPU and the GPU pipeline."""
    from kftune.commands import compile as compile_command
    from kftune.pipelines.pipeline import DEFAULT_SEARCH_ROUNDS, DEFAULT_SPEC, resolve, rounds_for

    spec = copy.deepcopy(DEFAULT_SPEC)
    spec["spec"]["search"].update(copy.deepcopy(BOHB_SEARCH))
    arguments = {"spec": json.dumps(spec), "corpus": "", "downsample": 0.0, "max_trials": 0, "parallel_trials": 0,
                 "max_epochs": 0, "seed": -1, "store": "/tmp/unused", "run_id": "r1"}
    rounds = rounds_for(arguments)
    assert 1 < rounds <= DEFAULT_SEARCH_ROUNDS
    resolve(arguments, DEFAULT_SEARCH_ROUNDS, str(tmp_path / "job_spec.json"))  # raises if it did not fit
    assert json.loads((tmp_path / "job_spec.json").read_text())["spec"]["search"]["algorithm"]["algorithmName"] == "bohb"
    out = tmp_path / "pipelines"
    assert compile_command.main(["--out", str(out), "--no-manifests", "--rounds", str(rounds)]) == 0
    for variant in ("kftune-cpu.yaml", "kftune-gpu.yaml"):
        text = (out / variant).read_text()
        assert f"suggest-{rounds + 1}" in text and f"suggest-{rounds + 2}" not in text  # rounds + finalists
