"""Hyperband (Li et al., JMLR 2018) as ``earlyStopping.algorithmName: hyperband``: the paper's brackets, a
simulated search that runs every bracket in order, resume from any cut of the history, the settings' errors."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kftune.core.early_stopping import EARLY_STOPPING, BudgetRule, Hyperband, get_early_stopping
from kftune.core.errors import ConfigError
from kftune.core.search_policy import SearchPolicy, TrialRequest
from kftune.core.spec import parse_spec
from kftune.core.trials import Trial

from tests.core.test_search_policy import done, job

PAPER = {  # Li et al. 2018, Table 1: R = 81, eta = 3
    4: ([81, 27, 9, 3, 1], [1, 3, 9, 27, 81]),
    3: ([34, 11, 3, 1], [3, 9, 27, 81]),
    2: ([15, 5, 1], [9, 27, 81]),
    1: ([8, 2], [27, 81]),
    0: ([5], [81]),
}


def test_the_brackets_for_r81_eta3_are_the_papers_table() -> None:
    rule = get_early_stopping("hyperband", {"eta": "3", "min_budget": "1", "max_budget": "81"})
    assert isinstance(rule, Hyperband) and isinstance(rule, BudgetRule) and rule.synchronous
    assert EARLY_STOPPING["hyperband"] is Hyperband
    assert rule.s_max == 4
    got = {b.s: (list(b.sizes), list(b.rungs)) for b in rule.brackets()}
    assert got == PAPER
    assert [b.s for b in rule.brackets()] == [4, 3, 2, 1, 0]
    assert [b.n for b in rule.brackets()] == [81, 34, 15, 8, 5] and rule.pass_size == 143
    # bracket by trial index, first budget, and the brackets repeat after a pass
    assert [rule.bracket_of(i) for i in (0, 80, 81, 114, 115, 129, 130, 137, 138, 142, 143)] == [4, 4, 3, 3, 2, 2, 1,
                                                                                                  1, 0, 0, 4]
    assert rule.cohort(100) == (81, 115) and rule.first_budget_of(100) == 3 and rule.first_budget_of(140) == 81
    assert rule.cohort(143) == (143, 224)
    # budgets in epochs are r_i * min_budget
    scaled = get_early_stopping("hyperband", {"min_budget": "2", "max_budget": "162"})
    assert [list(b.rungs) for b in scaled.brackets()] == [[2 * r for r in PAPER[s][1]] for s in (4, 3, 2, 1, 0)]


def test_max_budget_defaults_to_max_epochs_and_equal_budgets_make_one_bracket() -> None:
    rule = get_early_stopping("hyperband", {}, max_epochs=9)
    assert (rule.eta, rule.min_budget, rule.max_budget) == (3, 1, 9)
    assert [(b.s, b.n, b.rungs) for b in rule.brackets()] == [(2, 9, (1, 3, 9)), (1, 5, (3, 9)), (0, 3, (9,))]
    one = get_early_stopping("hyperband", {"min_budget": "4", "max_budget": "4"})
    assert [(b.s, b.n, b.rungs) for b in one.brackets()] == [(0, 1, (4,))]


@pytest.mark.parametrize("settings, field", [
    ({"eta": "1"}, "eta"), ({"eta": "x"}, "eta"), ({"eta": "2.5"}, "eta"),
    ({"min_budget": "10", "max_budget": "9"}, "min_budget"), ({"min_budget": "0"}, "min_budget"),
    ({"max_budget": "0"}, "max_budget"), ({"bracket": "1"}, "bracket"),
])
def test_bad_settings_name_the_field(settings: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        get_early_stopping("hyperband", settings, max_epochs=9)
    assert any(p.path == f"spec.search.earlyStopping.algorithmSettings.{field}" for p in err.value.problems), \
        err.value.problems


@pytest.mark.parametrize("settings, path, message", [
    ({"eta": "1"}, "algorithmSettings[0].value", "eta: '1': must be >= 2"),
    ({"min_budget": "5", "max_budget": "3"}, "algorithmSettings[0].value", "min_budget: 5 is more than max_budget (3)"),
    ({"eta": "3", "min_budget": "0"}, "algorithmSettings[1].value", "min_budget: '0': must be >= 1"),
    ({"max_budget": "27"}, "algorithmSettings[0].value", "max_budget 27 is more than train.maxEpochs 9"),
])
def test_spec_validation_names_the_field(settings: dict[str, str], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        job(es=("hyperband", settings))
    assert [(p.path, message in p.message) for p in err.value.problems] == [
        (f"spec.search.earlyStopping.{path}", True)], err.value.problems


def test_a_valid_spec_parses() -> None:
    assert job(es=("hyperband", {"eta": "3"})).spec.search.early_stopping.algorithm_name == "hyperband"


def _values(seed: int = 0) -> dict[str, float]:
    rng = random.Random(seed)
    return {f"trial-{i + 1:04d}": rng.uniform(0.1, 0.9) for i in range(200)}


def _run(policy: SearchPolicy, history: list[Trial], values: dict[str, float], start_round: int = 0,
         stop_after: int | None = None) -> tuple[list[Trial], list[list[TrialRequest]]]:
    """Plan and run rounds (a barrier each) until the plan is empty, or for ``stop_after`` rounds."""
    rounds: list[list[TrialRequest]] = []
    r = start_round
    while stop_after is None or len(rounds) < stop_after:
        requests = policy.plan(history, r, 50)
        if not requests:
            break
        rounds.append(requests)
        history = done(policy, requests, history, values)
        r += 1
        assert r < 500
    return history, rounds


def hb_policy(max_trials: int = 13, **settings: str) -> SearchPolicy:
    spec = job(es=("hyperband", {"eta": "3", "min_budget": "1", "max_budget": "9", **settings}),
               maxTrialCount=max_trials, parallelTrialCount=2, train={"maxEpochs": 9, "seed": 1}, finalists=0)
    return SearchPolicy.from_job(spec)


def test_a_simulated_search_runs_every_bracket_in_order_and_promotes_the_best_third() -> None:
    policy = hb_policy()  # R = 9, eta 3: brackets s=2 (9 at 1, 3 at 3, 1 at 9), s=1 (5 at 3, 1 at 9), s=0 (3 at 9)
    rule = policy.halving
    assert isinstance(rule, Hyperband) and rule.pass_size == 17
    values = _values()
    history, rounds = _run(policy, [], values)
    requests = [q for rnd in rounds for q in rnd]
    # 13 trials: bracket 2 (indices 0..8), bracket 1 (9..13 cut at 13 -> 9..12), bracket 0 not reached
    assert [t.id for t in history] == [f"trial-{i:04d}" for i in range(1, 14)]
    new = [q for q in requests if not q.promotion]
    assert [(q.index, q.bracket, q.budget) for q in new] == (
        [(i, 2, 1) for i in range(9)] + [(i, 1, 3) for i in range(9, 13)])
    # brackets never overlap in a round, and bracket 2 is fully decided before bracket 1 starts
    first_of_bracket1 = next(i for i, rnd in enumerate(rounds) if any(q.bracket == 1 for q in rnd))
    assert all(q.bracket == 2 for rnd in rounds[:first_of_bracket1] for q in rnd)
    assert all(q.bracket == 1 for rnd in rounds[first_of_bracket1:] for q in rnd)
    # bracket 2: the best 3 of 9 at 1 epoch go to 3, the best of those 3 to 9
    b2 = history[:9]
    top3 = sorted(b2, key=lambda t: -values[t.id])[:3]
    promoted = [q for q in requests if q.promotion and q.bracket == 2]
    assert {q.trial_id for q in promoted if q.budget == 3} == {t.id for t in top3}
    assert [q.trial_id for q in promoted if q.budget == 9] == [max(top3, key=lambda t: values[t.id]).id]
    # bracket 1 (cut at 4 of 5 trials): the best 1 of 4 at 3 epochs goes to 9
    b1 = history[9:13]
    assert [q.trial_id for q in requests if q.promotion and q.bracket == 1] == [max(b1, key=lambda t: values[t.id]).id]
    assert policy.end_reason(history) == "max_trials"
    completed = [t for t in history if t.state == "completed"]
    assert len(completed) == 2 and all(t.budget_used == 9 for t in completed)


def test_max_trial_count_above_one_pass_repeats_the_brackets() -> None:
    policy = hb_policy(max_trials=20)
    history, rounds = _run(policy, [], _values(1))
    new = [q for rnd in rounds for q in rnd if not q.promotion]
    assert [q.bracket for q in new] == [2] * 9 + [1] * 5 + [0] * 3 + [2] * 3
    assert [q.budget for q in new if q.bracket == 0] == [9, 9, 9]
    assert len(history) == 20


@pytest.mark.parametrize("max_trials", [13, 17])
def test_replanning_from_any_cut_of_the_history_gives_the_same_remaining_plan(max_trials: int) -> None:
    policy = hb_policy(max_trials=max_trials)
    values = _values(2)
    full_history, rounds = _run(policy, [], values)
    for cut in range(len(rounds)):
        history: list[Trial] = []
        for rnd in rounds[:cut]:
            history = done(policy, rnd, history, values)
        # a fresh policy (a restarted driver) re-derives the rest from the history alone
        again = hb_policy(max_trials=max_trials)
        resumed_history, resumed = _run(again, history, values, start_round=cut)
        assert [[q.to_dict() for q in rnd] for rnd in resumed] == [[q.to_dict() for q in rnd] for rnd in rounds[cut:]]
        assert resumed_history == full_history


def test_a_kill_inside_a_round_redoes_only_the_unfinished_requests() -> None:
    """A round half-run (its first request recorded): replanning asks for the rest of it, nothing done again."""
    policy = hb_policy()
    values = _values(3)
    history, _ = _run(policy, [], values, stop_after=1)  # 9 new trials of bracket 2 at 1 epoch
    plan = policy.plan(history, 1, 50)
    assert len(plan) == 3 and all(q.promotion and q.budget == 3 and q.bracket == 2 for q in plan)
    rest = policy.plan(done(policy, plan[:1], history, values), 1, 50)
    assert [q.to_dict() for q in rest] == [q.to_dict() for q in plan[1:]]


def test_requests_record_the_bracket_and_round_trip() -> None:
    q = TrialRequest("trial-0010", 9, {"x": 1}, 3, round=4, bracket=1)
    assert q.to_dict()["bracket"] == 1 and TrialRequest.from_dict(q.to_dict()) == q
    assert "bracket" not in TrialRequest("t", 0, {}, 1, round=0).to_dict()


def test_the_search_fits_its_rounds() -> None:
    policy = hb_policy()
    rounds = policy.rounds_needed()
    assert policy.fits(rounds) and not policy.fits(rounds - 1)


# -- Katib export ----------------------------------------------------------------------------------------

def _exported(settings: list[dict[str, str]], algorithm: str = "random") -> Any:
    from tests.core.test_katib_export import CPU_POD, raw

    from kftune.core.katib_export import export_experiment
    data = raw("trec6")
    data["spec"]["search"]["algorithm"] = {"algorithmName": algorithm}
    data["spec"]["search"]["maxTrialCount"] = 20
    data["spec"]["search"]["earlyStopping"] = {"algorithmName": "hyperband", "algorithmSettings": settings}
    data["spec"]["train"]["maxEpochs"] = 9
    return export_experiment(parse_spec(data), CPU_POD)


def test_katib_runs_the_first_bracket_and_the_notes_say_the_others_are_not_exported() -> None:
    exp = _exported([{"name": "eta", "value": "3"}, {"name": "max_budget", "value": "9"}])
    spec = exp.body["spec"]
    assert spec["algorithm"]["algorithmName"] == "hyperband"
    assert {s["name"]: s["value"] for s in spec["algorithm"]["algorithmSettings"]} == {
        "resource_name": "budget", "r_l": "9", "eta": "3", "s_max": "2"}
    assert spec["maxTrialCount"] == 9 + 3 + 1  # bracket s=2: 9 configurations at 1, 3 at 3, 1 at 9 epochs
    text = "\n".join(exp.notes)
    assert "s=2: 9 at 1 epoch(s); s=1: 5 at 3 epoch(s); s=0: 3 at 9 epoch(s)" in text
    assert "runs only the first, most exploratory bracket (s=2)" in text and "not exported" in text


def test_katib_export_of_hyperband_with_tpe_or_one_bracket_says_so() -> None:
    tpe = _exported([{"name": "max_budget", "value": "9"}], algorithm="tpe")
    assert tpe.body["spec"]["algorithm"]["algorithmName"] == "tpe"
    assert any("hyperband cannot be combined with algorithm tpe" in n for n in tpe.notes)
    one = _exported([{"name": "min_budget", "value": "9"}, {"name": "max_budget", "value": "9"}])
    assert one.body["spec"]["algorithm"]["algorithmName"] == "random"
    assert any("has one bracket" in n for n in one.notes)
