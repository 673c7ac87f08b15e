"""The search's decisions on hand-built histories: rounds, promotions, cohorts, stopping, the winner."""

from __future__ import annotations

from typing import Any

import pytest

from kftune.core.errors import DataError
from kftune.core.search_policy import (SearchPolicy, TrialRequest, history_from_records, run_objective, select_best,
                                       suggest_round, trial_id_for)
from kftune.core.spec import parse_spec
from kftune.core.trials import Trial

PARAMS = [{"name": "learning_rate", "parameterType": "double",
           "feasibleSpace": {"min": "0.001", "max": "0.1", "distribution": "logUniform"}},
          {"name": "embedding_dim", "parameterType": "categorical", "feasibleSpace": {"list": ["16", "32"]}}]


def job(**search: Any) -> Any:
    train = search.pop("train", {"maxEpochs": 9, "seed": 1})
    es = search.pop("es", None)
    algorithm = search.pop("algorithm", "random")
    settings = search.pop("settings", {})
    block = {"objective": search.pop("objective", {"type": "maximize", "objectiveMetricName": "dev_score"}),
             "algorithm": {"algorithmName": algorithm,
                           "algorithmSettings": [{"name": k, "value": v} for k, v in settings.items()]},
             "parallelTrialCount": 2, "maxTrialCount": 6, "parameters": PARAMS, **search}
    if es is not None:
        name, es_settings = es
        block["earlyStopping"] = {"algorithmName": name,
                                  "algorithmSettings": [{"name": k, "value": v} for k, v in es_settings.items()]}
    return parse_spec({"apiVersion": "kftune.dev/v1alpha1", "kind": "TuningJob", "metadata": {"name": "t"},
                       "spec": {"corpus": {"name": "TREC_6"}, "task": {"type": "text_classification"},
                                "lrRangeTest": {"enabled": False}, "search": block, "train": train}})


def done(policy: SearchPolicy, requests: list[TrialRequest], history: list[Trial], values: dict[str, float],
         finished_budget: int | None = None) -> list[Trial]:
    """The history after ``requests`` ran: each trial reports ``values[id]`` at every epoch up to its budget."""
    by_id = {t.id: t for t in history}
    for r in requests:
        v = values[r.trial_id]
        budget = r.budget
        state = "completed" if budget >= (finished_budget or policy.max_budget) else "pruned"
        t = Trial(id=r.trial_id, assignment=r.assignment, state=state, objective=v,
                  intermediate=tuple((e, v) for e in range(1, budget + 1)), budget=budget,
                  extra={"index": r.index, "budget_asked": budget, "objective_runs": [v], "seeds": [1]})
        by_id[r.trial_id] = t
    return sorted(by_id.values(), key=lambda t: t.extra["index"])


def test_ids_and_requests_round_trip() -> None:
    """(The store keys are kftune.io.journal's: tests/io/test_journal.py.)"""
    assert trial_id_for(0) == "trial-0001"
    r = TrialRequest("t", 0, {"x": 1.5}, 3, round=1, promotion=True, kind="finalist", seeds=(2,))
    assert TrialRequest.from_dict(r.to_dict()) == r
    with pytest.raises(DataError):
        TrialRequest.from_dict({"trial_id": "t"})


def test_flair_objective_is_the_mean_of_the_last_three_values() -> None:
    assert run_objective([0.1, 0.5, 0.6, 0.7]) == (pytest.approx(0.6), pytest.approx(0.02 / 3))
    assert run_objective([0.4]) == (0.4, 0.0)
    with pytest.raises(ValueError):
        run_objective([])


def test_rounds_without_early_stopping_fill_the_parallel_slots_up_to_max_trials() -> None:
    policy = SearchPolicy.from_job(job())
    history: list[Trial] = []
    ids = []
    for round_index in range(10):
        requests = policy.plan(history, round_index)
        if not requests:
            break
        assert len(requests) <= 2 and all(r.budget == 9 and not r.promotion for r in requests)
        assert all(policy.space.contains(r.assignment) for r in requests)
        ids += [r.trial_id for r in requests]
        history = done(policy, requests, history, {r.trial_id: 0.5 for r in requests})
    assert ids == [trial_id_for(i) for i in range(6)] and round_index == 3
    assert policy.end_reason(history) == "max_trials"
    # deterministic for a seed, and the JSON form is what the pipeline gets
    assert suggest_round(job(), [], 0) == suggest_round(job(), [], 0)
    assert suggest_round(job(), [], 0, seed=2) != suggest_round(job(), [], 0)
    item = suggest_round(job(), [t.to_dict() for t in history[:2]], 1)[0]
    assert item["trial_id"] == "trial-0003" and item["round"] == 1 and set(item["assignment"]) == {
        "learning_rate", "embedding_dim"}


def test_failures_and_the_goal_stop_the_search() -> None:
    policy = SearchPolicy.from_job(job(maxFailedTrialCount=2, objective={"type": "maximize",
                                       "objectiveMetricName": "dev_score", "goal": 0.9}))
    a = {"learning_rate": 0.01, "embedding_dim": "16"}
    failed = [Trial(id=f"f{i}", assignment=a, state="failed", reason="nan") for i in range(2)]
    assert policy.stop_reason(failed[:1]) is None and policy.plan(failed[:1], 0)
    assert policy.stop_reason(failed) == "failures" and policy.plan(failed, 0) == []
    good = [Trial(id="g", assignment=a, state="completed", objective=0.95)]
    assert policy.stop_reason(good) == "goal" and policy.plan(good, 0) == []
    assert policy.end_reason(good) == "goal"


def test_asha_promotes_first_and_fills_the_rest_with_new_trials() -> None:
    policy = SearchPolicy.from_job(job(es=("asha", {"eta": "3", "min_budget": "1"})))
    assert policy.max_budget == 9 and policy.first_budget == 1
    history: list[Trial] = []
    r0 = policy.plan(history, 0)
    history = done(policy, r0, history, {"trial-0001": 0.3, "trial-0002": 0.6})
    r1 = policy.plan(history, 1)
    history = done(policy, r1, history, {"trial-0003": 0.9, "trial-0004": 0.2})
    r2 = policy.plan(history, 2)  # 4 trials at rung 1: floor(4/3) = 1 promotion (the best), then a new trial
    assert [(r.trial_id, r.budget, r.promotion) for r in r2] == [("trial-0003", 3, True), ("trial-0005", 1, False)]
    assert r2[0].assignment == next(t.assignment for t in history if t.id == "trial-0003")


def test_synchronous_halving_completes_a_cohort_before_deciding_it() -> None:
    policy = SearchPolicy.from_job(job(es=("successive-halving", {"eta": "3", "min_budget": "1"})))
    history: list[Trial] = []
    for round_index in range(3):  # the whole search is one cohort: 6 new trials first, 2 per round
        requests = policy.plan(history, round_index)
        assert [r.promotion for r in requests] == [False, False]
        history = done(policy, requests, history, {r.trial_id: 0.1 * (len(history) + i + 1)
                                                   for i, r in enumerate(requests)})
    r3 = policy.plan(history, 3)  # rung 1 decided: the best 6 // 3 = 2 go on to 3 epochs
    assert [(r.trial_id, r.budget) for r in r3] == [("trial-0006", 3), ("trial-0005", 3)]
    history = done(policy, r3, history, {"trial-0006": 0.7, "trial-0005": 0.8})
    r4 = policy.plan(history, 4)
    assert [(r.trial_id, r.budget) for r in r4] == [("trial-0005", 9)]  # max(1, 2 // 3) = 1
    history = done(policy, r4, history, {"trial-0005": 0.85})
    assert policy.plan(history, 5) == [] and policy.end_reason(history) == "max_trials"


def test_coarse_to_fine_cohorts_are_its_rounds() -> None:
    policy = SearchPolicy.from_job(job(algorithm="coarse-to-fine", settings={"rounds": "2"},
                                       es=("successive-halving", {"eta": "3", "min_budget": "1"})))
    assert policy.cohort_bounds(0) == (0, 3) and policy.cohort_bounds(4) == (3, 6)
    history: list[Trial] = []
    r0 = policy.plan(history, 0)
    r1 = policy.plan(done(policy, r0, history, {"trial-0001": 0.2, "trial-0002": 0.5}), 1)
    assert [r.trial_id for r in r1] == ["trial-0003"]  # the rest of the first round only
    history = done(policy, r0 + r1, history, {"trial-0001": 0.2, "trial-0002": 0.5, "trial-0003": 0.4})
    r2 = policy.plan(history, 2)
    assert [(r.trial_id, r.budget, r.promotion) for r in r2] == [("trial-0002", 3, True)]
    history = done(policy, r2, history, {"trial-0002": 0.6})
    r3 = policy.plan(history, 3)
    assert [(r.trial_id, r.budget) for r in r3] == [("trial-0002", 9)]
    history = done(policy, r3, history, {"trial-0002": 0.7})
    r4 = policy.plan(history, 4)  # the second round, in a box narrowed around the survivor
    assert [r.trial_id for r in r4] == ["trial-0004", "trial-0005"] and all(r.budget == 1 for r in r4)


def test_the_winner_is_chosen_on_the_mean_over_seeds() -> None:
    policy = SearchPolicy.from_job(job(finalists=2, finalistRuns=3, train={"maxEpochs": 9, "seed": 1,
                                                                             "trainingRuns": 1}))
    assert policy.training_seeds == (1,) and policy.finalist_seeds == (2, 3)
    a, b, c = ({"learning_rate": lr, "embedding_dim": "16"} for lr in (0.01, 0.02, 0.03))
    history = [Trial(id="t1", assignment=a, state="completed", objective=0.90, budget=9,
                     extra={"index": 0, "objective_runs": [0.90], "seeds": [1], "budget_asked": 9}),
               Trial(id="t2", assignment=b, state="completed", objective=0.85, budget=9,
                     extra={"index": 1, "objective_runs": [0.85], "seeds": [1], "budget_asked": 9}),
               Trial(id="t3", assignment=c, state="completed", objective=0.80, budget=9, extra={"index": 2})]
    requests = policy.finalist_requests(history, 7)
    assert [(r.trial_id, r.seeds, r.budget, r.kind) for r in requests] == [
        ("t1", (2,), 9, "finalist"), ("t1", (3,), 9, "finalist"), ("t2", (2,), 9, "finalist"),
        ("t2", (3,), 9, "finalist")]
    extra = [{"id": "t1", "seeds": [2], "state": "completed", "objective": 0.80},
             {"id": "t1", "seeds": [3], "state": "completed", "objective": 0.82},
             {"id": "t2", "seeds": [2], "state": "completed", "objective": 0.86},
             {"id": "t2", "seeds": [3], "state": "completed", "objective": 0.87}]
    winner = policy.select_best(history, extra)
    assert winner.trial_id == "t2" and winner.chosen_on == "finalists"  # the search's best was a lucky seed
    assert winner.values == pytest.approx((0.85, 0.86, 0.87)) and winner.seeds == (1, 2, 3)
    assert winner.objective == pytest.approx(0.86) and winner.spread == pytest.approx(0.01)
    assert [c["trial_id"] for c in winner.candidates] == ["t2", "t1"]
    # a finalist whose extra run failed ranks after those without a failure
    extra[2] = {"id": "t2", "seeds": [2], "state": "failed", "objective": None}
    assert policy.select_best(history, extra).trial_id == "t1"
    assert select_best(job(finalists=2, finalistRuns=3), [t.to_dict() for t in history], extra)["trial_id"] == "t1"
    # finalists off: the search's best
    off = SearchPolicy.from_job(job(finalists=0))
    assert off.finalist_requests(history, 0) == [] and off.select_best(history).chosen_on == "search"


def test_the_winner_without_completed_trials_and_minimizing() -> None:
    policy = SearchPolicy.from_job(job(finalists=0, objective={"type": "minimize", "objectiveMetricName": "dev_loss"}))
    a = {"learning_rate": 0.01, "embedding_dim": "16"}
    paused = [Trial(id="p1", assignment=a, state="pruned", objective=0.2, budget=1),
              Trial(id="p2", assignment=a, state="pruned", objective=0.5, budget=3),
              Trial(id="p3", assignment=a, state="pruned", objective=0.4, budget=3)]
    winner = policy.select_best(paused)
    assert winner.trial_id == "p3" and winner.chosen_on == "pruned"  # the larger budget first, then lower loss
    assert policy.select_best([Trial(id="f", assignment=a, state="failed")]) is None


def test_history_from_records_is_in_creation_order() -> None:
    a = {"learning_rate": 0.01, "embedding_dim": "16"}
    records = [{"id": "b", "index": 1, "assignment": a, "state": "completed", "objective": 0.5},
               {"id": "z", "assignment": a, "state": "running"},
               {"id": "a", "index": 0, "assignment": a, "state": "failed"}]
    assert [t.id for t in history_from_records(records)] == ["a", "b", "z"]


# --------------------------------------------------------------------------------------------------
# The one planner rule: round widths and the rounds a search needs
# --------------------------------------------------------------------------------------------------

def test_round_width_ends_the_search_within_its_rounds() -> None:
    policy = SearchPolicy.from_job(job())  # parallel 2, max 6
    assert policy.round_width(0, 0, 3) == 2  # 6 trials in 3 rounds: parallel suffices
    assert policy.round_width(0, 0, 2) == 3  # 6 in 2 rounds: wider than parallel
    assert policy.round_width(5, 1, 2) == 2  # never narrower than parallel
    assert policy.round_width(6, 5, 2) == 2  # past the last round: rounds left counts as 1
    assert policy.plan_round([], 2, 2) == []  # nothing from round R on
    assert [len(policy.plan_round([], 0, r)) for r in (1, 2, 3)] == [6, 3, 2]


@pytest.mark.parametrize("es, extra", [
    (None, 0), (("successive-halving", {"eta": "2", "min_budget": "1", "max_budget": "4"}), 0),
    (("asha", {"eta": "2", "min_budget": "1", "max_budget": "4"}), 2),
])
def test_rounds_needed_is_the_fewest_rounds_that_fit(es: Any, extra: int) -> None:
    policy = SearchPolicy.from_job(job(es=es))
    needed = policy.rounds_needed()
    assert needed >= 3  # ceil(6 / 2)
    fitting = policy.rounds_to_fit(3)
    assert needed == fitting + extra  # asha: room for one more chain of promotions through its 3 rungs
    assert policy.fits(fitting) and (fitting == 3 or not policy.fits(fitting - 1))


def test_plan_round_drives_a_whole_search_in_rounds_needed() -> None:
    """Driven with plan_round and made-up results, the search creates every trial and leaves nothing to plan
    after its rounds; the simulation fits() uses is what a driver sees when results never reach the goal."""
    policy = SearchPolicy.from_job(job(es=("successive-halving", {"eta": "2", "min_budget": "1", "max_budget": "4"})))
    rounds = policy.rounds_needed()
    history: list[Trial] = []
    for r in range(rounds):
        requests = policy.plan_round(history, r, rounds)
        assert len(requests) <= policy.round_width(len(history), r, rounds)
        history = done(policy, requests, history, {q.trial_id: 0.1 * q.index for q in requests})
    assert len(history) == 6 and policy.plan(history, rounds) == []
    assert any(t.state == "completed" for t in history)
