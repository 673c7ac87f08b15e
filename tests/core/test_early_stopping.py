"""Early stopping on hand-built histories: the rules' common contract, medianstop, successive halving, ASHA;
the goal; trial records."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from typing import Any, ClassVar

import pytest

from kftune.core.algorithm_settings import SettingsReader
from kftune.core.early_stopping import (ASHA, EARLY_STOPPING, BudgetRule, EarlyStoppingRule, MedianStop, Promotion,
                                        StoppingRule, SuccessiveHalving, get_early_stopping)
from kftune.core.early_stopping.base import SETTINGS_PATH
from kftune.core.early_stopping.successive_halving import _Bracket
from kftune.core.errors import ConfigError, DataError
from kftune.core.goal import goal_reached
from kftune.core.trials import Trial, best_trial, ranked


def trial(tid: str, values: list[float], state: str = "completed", **kw) -> Trial:
    """A trial that reported ``values`` at epochs 1, 2, ...; its objective is the last value."""
    inter = tuple((i + 1, v) for i, v in enumerate(values))
    objective = kw.pop("objective", values[-1] if values and state != "failed" else None)
    return Trial(id=tid, assignment={"x": tid}, state=state, objective=objective, intermediate=inter, **kw)


# -- the contract every rule keeps ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EARLY_STOPPING))
def test_every_rule_keeps_the_base_contract(name: str) -> None:
    cls = EARLY_STOPPING[name]
    assert issubclass(cls, EarlyStoppingRule) and cls.name == name and cls.known_settings
    assert issubclass(cls, StoppingRule) != issubclass(cls, BudgetRule)  # exactly one of the two shapes
    rule = cls.from_settings(None, max_epochs=9)
    assert rule == cls.from_settings([], max_epochs=9) == get_early_stopping(name, {}, max_epochs=9)
    with pytest.raises(FrozenInstanceError):
        rule.name_of_a_setting = 1  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as err:  # every problem at once, each at its setting's path
        cls.from_settings([{"name": "no_such_setting", "value": "1"}, {"name": "other", "value": "2"}], max_epochs=9)
    assert [p.path for p in err.value.problems] == [f"{SETTINGS_PATH}.no_such_setting", f"{SETTINGS_PATH}.other"]
    assert SETTINGS_PATH == "spec.search.earlyStopping.algorithmSettings"
    if isinstance(rule, BudgetRule):
        rungs = rule.rungs()
        assert rule.first_budget == rungs[0] and rungs[-1] == rule.max_budget == 9
        assert [rule.next_budget(b) for b in rungs] == [*rungs[1:], None]
        assert rule.promotions([], "maximize") == []
    else:
        lone = trial("r", [0.1, 0.2, 0.3, 0.4, 0.5], state="running")
        assert rule.should_stop(lone, [lone], "maximize") is rule.decide(lone, [lone], "maximize").stop is False


@dataclass(frozen=True)
class _Doubling(BudgetRule):
    """A made-up budget rule (one rung per doubling, everyone promoted): what a new rule, e.g. Hyperband,
    writes on top of the base class."""

    name: ClassVar[str] = "doubling"
    synchronous: ClassVar[bool] = False
    known_settings: ClassVar[dict[str, str]] = {"start": "int >= 1; epochs of the first rung (default 1)"}

    start: int = 1
    max_budget: int = 8

    @classmethod
    def _read_settings(cls, reader: SettingsReader, *, max_epochs: int | None) -> dict[str, Any]:
        return {"start": reader.int("start", 1, minimum=1), "max_budget": max_epochs or 8}

    def rungs(self) -> tuple[int, ...]:
        out = [self.start]
        while out[-1] * 2 < self.max_budget:
            out.append(out[-1] * 2)
        return (*out, self.max_budget)

    def promotions(self, history, objective):
        return [Promotion(t.id, nxt) for t in history
                if t.state == "pruned" and (nxt := self.next_budget(t.budget_used)) is not None]

    def is_pruned(self, trial, history, objective):
        return False


def test_a_new_rule_gets_settings_and_budgets_from_the_base_class() -> None:
    rule = _Doubling.from_settings({"start": "2"}, max_epochs=12)
    assert rule == _Doubling(start=2, max_budget=12) and rule.rungs() == (2, 4, 8, 12)
    assert rule.first_budget == 2 and rule.next_budget(4) == 8 and rule.next_budget(12) is None
    assert rule.promotions([trial("a", [0.5, 0.6], state="pruned", budget=2)], "maximize") == [Promotion("a", 4)]
    with pytest.raises(ConfigError) as err:
        _Doubling.from_settings({"start": "0", "eta": "3"})
    assert [(p.path, p.message) for p in err.value.problems] == [
        (f"{SETTINGS_PATH}.eta", "unknown setting for doubling; known settings: ['start']"),
        (f"{SETTINGS_PATH}.start", "'0': must be >= 1"),
    ]
    with pytest.raises(TypeError, match="abstract"):
        StoppingRule()  # type: ignore[abstract]


# -- medianstop -----------------------------------------------------------------------------------------

DONE = [trial("a", [0.50, 0.60, 0.70, 0.80, 0.85]),
        trial("b", [0.40, 0.50, 0.60, 0.70, 0.72]),
        trial("c", [0.30, 0.40, 0.50, 0.55, 0.60])]
# running averages up to step 4: a 0.65, b 0.55, c 0.4375 -> median 0.55


def test_medianstop_defaults_and_settings_are_katibs():
    rule = MedianStop.from_settings()
    assert (rule.min_trials_required, rule.start_step) == (3, 4)
    rule = get_early_stopping("medianstop", [{"name": "min_trials_required", "value": "2"},
                                             {"name": "start_step", "value": "1"}])
    assert rule == MedianStop(min_trials_required=2, start_step=1)
    with pytest.raises(ConfigError) as err:
        MedianStop.from_settings({"min_trials_required": "0", "start_step": "0", "patience": "3"})
    assert {p.path.rsplit(".", 1)[-1] for p in err.value.problems} == {"min_trials_required", "start_step", "patience"}


def test_medianstop_stops_a_trial_whose_best_is_below_the_median():
    rule = MedianStop()
    assert rule.median_at(DONE, 4) == (pytest.approx(0.55), 3)
    bad = trial("r", [0.30, 0.45, 0.50, 0.54], state="running")
    decision = rule.decide(bad, DONE + [bad], "maximize")
    assert decision.stop and "median 0.55" in decision.reason
    ok = trial("r", [0.30, 0.56, 0.50, 0.50], state="running")       # best so far 0.56 > 0.55
    assert not rule.should_stop(ok, DONE + [ok], "maximize")


def test_medianstop_waits_for_start_step_and_min_trials():
    rule = MedianStop()
    early = trial("r", [0.0, 0.0, 0.0], state="running")              # 3 reports < start_step 4
    assert not rule.should_stop(early, DONE, "maximize")
    bad = trial("r", [0.0, 0.0, 0.0, 0.0], state="running")
    assert rule.should_stop(bad, DONE, "maximize")
    # pruned, failed and running trials are not "completed": with two completed, no decision
    others = [DONE[0], DONE[1], trial("p", [0.9] * 4, state="pruned"), trial("f", [0.9] * 4, state="failed"),
              trial("q", [0.9] * 5, state="running")]
    assert rule.median_at(others, 4) is None
    assert not rule.should_stop(bad, others, "maximize")
    assert MedianStop(min_trials_required=2).should_stop(bad, others, "maximize")


def test_medianstop_uses_the_running_average_up_to_the_current_step():
    rule = MedianStop(start_step=2)
    # at step 2 the averages are a 0.55, b 0.45, c 0.35 -> median 0.45
    assert rule.median_at(DONE, 2) == (pytest.approx(0.45), 3)
    assert rule.should_stop(trial("r", [0.30, 0.44], state="running"), DONE, "maximize")
    assert not rule.should_stop(trial("r", [0.30, 0.46], state="running"), DONE, "maximize")


def test_medianstop_is_a_median_not_a_mean():
    done = [trial("a", [0.9] * 4), trial("b", [0.5] * 4), trial("c", [0.4] * 4)]  # mean 0.6, median 0.5
    r = trial("r", [0.55] * 4, state="running")
    assert not MedianStop().should_stop(r, done, "maximize")


def test_medianstop_minimizing():
    losses = [trial("a", [1.0, 0.8, 0.6, 0.5]), trial("b", [1.2, 1.0, 0.9, 0.8]), trial("c", [2.0, 1.5, 1.2, 1.1])]
    # running averages at step 4: a 0.725, b 0.975, c 1.45 -> median 0.975
    assert MedianStop().should_stop(trial("r", [1.5, 1.3, 1.1, 1.0], state="running"), losses, "minimize")
    assert not MedianStop().should_stop(trial("r", [1.5, 1.3, 0.9, 1.0], state="running"), losses, "minimize")


# -- rung math ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("eta, lo, hi, rungs", [
    (3, 1, 9, (1, 3, 9)),
    (3, 1, 10, (1, 3, 9, 10)),
    (3, 1, 8, (1, 3, 8)),
    (2, 1, 8, (1, 2, 4, 8)),
    (3, 2, 18, (2, 6, 18)),
    (4, 1, 3, (1, 3)),
])
def test_rungs_are_min_budget_times_powers_of_eta_up_to_max(eta, lo, hi, rungs):
    assert SuccessiveHalving(eta=eta, min_budget=lo, max_budget=hi).rungs() == rungs
    assert ASHA(eta=eta, min_budget=lo, max_budget=hi).rungs() == rungs


def test_bracket_quota_next_rung_and_top():
    b = _Bracket(1, 9, 3)
    assert [b.next_rung(x) for x in (0, 1, 2, 3, 8, 9, 12)] == [1, 3, 3, 9, 9, None, None]
    assert [b.quota(n, synchronous=False) for n in (0, 1, 2, 3, 8, 9, 10)] == [0, 0, 0, 1, 2, 3, 3]
    assert [b.quota(n, synchronous=True) for n in (0, 1, 2, 3, 8, 9)] == [0, 1, 1, 1, 2, 3]
    scored = [(0, 0.5), (1, 0.9), (2, 0.7), (3, 0.9), (4, 0.1), (5, 0.3)]
    assert b.top(scored, "maximize", synchronous=False) == [1, 3]          # ties: older first
    assert b.top(scored, "minimize", synchronous=False) == [4, 5]


def test_halving_settings():
    sh = get_early_stopping("successive-halving", {"eta": "3"}, max_epochs=9)
    assert isinstance(sh, SuccessiveHalving) and not isinstance(sh, ASHA) and sh.rungs() == (2, 6, 9)  # min_budget 2
    default = SuccessiveHalving.from_settings({}, max_epochs=8)
    assert (default.eta, default.min_budget, default.rungs()) == (2, 2, (2, 4, 8))  # halving proper
    assert SuccessiveHalving.from_settings({"min_budget": "1", "eta": "3"}, max_epochs=9).rungs() == (1, 3, 9)
    assert SuccessiveHalving.from_settings({}, max_epochs=2).rungs() == (1, 2)  # no room for a 2-epoch rung
    assert ASHA.from_settings({}, max_epochs=9).eta == 3 and ASHA().eta == 3 and SuccessiveHalving().eta == 2
    assert "default 3" in ASHA.known_settings["eta"] and "default 2" in SuccessiveHalving.known_settings["eta"]
    asha = get_early_stopping("asha", {"min_budget": "2", "max_budget": "18"}, max_epochs=5)
    assert isinstance(asha, ASHA) and asha.rungs() == (2, 6, 18) and asha.first_budget == 2
    assert asha.next_budget(2) == 6 and asha.next_budget(18) is None
    for bad in ({"eta": "1"}, {"min_budget": "0"}, {"min_budget": "9"}, {"eta": "2.5"}, {"grace": "1"}):
        with pytest.raises(ConfigError):
            SuccessiveHalving.from_settings(bad, max_epochs=9)
    with pytest.raises(ConfigError, match="max_budget"):
        ASHA.from_settings({})
    with pytest.raises(ConfigError, match="known"):
        get_early_stopping("bohb")
    assert sorted(EARLY_STOPPING) == ["asha", "hyperband", "medianstop", "successive-halving"]


# -- ASHA ------------------------------------------------------------------------------------------------

def paused(tid: str, values: list[float]) -> Trial:
    return trial(tid, values, state="pruned", budget=len(values))


def test_asha_promotes_the_top_third_of_a_rung_as_results_arrive():
    asha = ASHA(eta=3, min_budget=1, max_budget=9)
    two = [paused("t0", [0.5]), paused("t1", [0.9])]
    assert asha.promotions(two, "maximize") == []                        # floor(2/3) = 0
    three = two + [paused("t2", [0.7])]
    assert asha.promotions(three, "maximize") == [Promotion("t1", 3)]
    assert asha.is_pruned(three[0], three, "maximize") and not asha.is_pruned(three[1], three, "maximize")
    # once resumed (running), it is not promoted again; the next place opens at six trials
    resumed = [three[0], trial("t1", [0.9, 0.92], state="running"), three[2]]
    assert asha.promotions(resumed, "maximize") == []
    six = resumed + [paused("t3", [0.95]), paused("t4", [0.2]), paused("t5", [0.6])]
    assert asha.promotions(six, "maximize") == [Promotion("t3", 3)]
    # a promoted trial that falls out of the top keeps its place; better newcomers are promoted too
    nine = six + [paused("t6", [0.97]), paused("t7", [0.96]), paused("t8", [0.1])]
    assert asha.promotions(nine, "maximize") == [Promotion("t6", 3), Promotion("t7", 3), Promotion("t3", 3)]


def test_asha_serves_higher_rungs_first_and_minimizes():
    asha = ASHA(eta=3, min_budget=1, max_budget=9)
    history = [trial(f"a{i}", [1.0 - i / 10, 0.9 - i / 10, 0.8 - i / 10], state="pruned", budget=3) for i in range(3)]
    history += [paused(f"b{i}", [0.5 + i / 10]) for i in range(3)]
    # losses: at rung 3 the smallest is a2 (0.6); at rung 1, of a0..a2 (1.0, 0.9, 0.8) and b0..b2 (0.5..0.7)
    promos = asha.promotions(history, "minimize")
    assert promos[0] == Promotion("a2", 9)                               # the higher rung first
    assert promos[1:] == [Promotion("b0", 3), Promotion("b1", 3)]       # 6 at rung 1 -> top 2
    maxi = asha.promotions(history, "maximize")
    assert maxi == [Promotion("a0", 9)]                                 # top 2 at rung 1 are a0, a1: already at 3


def test_failed_and_completed_trials_hold_places_but_are_not_resumed():
    asha = ASHA(eta=3, min_budget=1, max_budget=9)
    history = [trial("f", [0.99], state="failed", budget=1), trial("c", [0.98], state="completed", budget=1),
               paused("p", [0.5])]
    assert asha.promotions(history, "maximize") == []                   # the one place goes to the failed trial
    assert asha.is_pruned(history[2], history, "maximize")


# -- synchronous successive halving -------------------------------------------------------------------

def test_synchronous_halving_decides_a_rung_only_when_it_is_complete():
    sh = SuccessiveHalving(eta=3, min_budget=1, max_budget=9)
    cohort = [paused(f"t{i}", [v]) for i, v in enumerate([0.1, 0.8, 0.3, 0.9, 0.5, 0.2, 0.7, 0.4, 0.6])]
    waiting = cohort[:8] + [trial("t8", [], state="running")]
    assert sh.promotions(waiting, "maximize") == []                      # t8 may still reach rung 1
    assert not sh.is_pruned(cohort[0], waiting, "maximize")
    assert sh.promotions(cohort, "maximize") == [Promotion("t3", 3), Promotion("t1", 3), Promotion("t6", 3)]
    assert sh.is_pruned(cohort[0], cohort, "maximize")
    # rung 3 waits for the three promoted trials; then the best one goes to 9
    at3 = [t if t.id not in ("t3", "t1", "t6") else paused(t.id, [t.objective, t.objective, v])
           for t, v in zip(cohort, [0, 0.85, 0, 0.80, 0, 0, 0.95, 0, 0])]
    partial = [t if t.id != "t6" else trial("t6", [0.7], state="running", budget=1) for t in at3]
    assert sh.promotions(partial, "maximize") == []
    assert sh.promotions(at3, "maximize") == [Promotion("t6", 9)]


def test_synchronous_halving_always_keeps_one():
    sh = SuccessiveHalving(eta=3, min_budget=1, max_budget=9)
    cohort = [paused("a", [0.4]), paused("b", [0.6])]
    assert sh.promotions(cohort, "maximize") == [Promotion("b", 3)]
    assert sh.promotions(cohort, "minimize") == [Promotion("a", 3)]


# -- goal and trial records -----------------------------------------------------------------------------

def test_goal_reached_both_ways():
    history = [trial("a", [0.7]), trial("b", [0.9], state="pruned"), trial("c", [0.99], state="failed"),
               trial("d", [0.95], state="running")]
    assert goal_reached(history, "maximize", 0.9)
    assert not goal_reached(history, "maximize", 0.91)                 # failed/running do not count
    assert not goal_reached(history, "maximize", None)
    assert goal_reached(history, "minimize", 0.7) and not goal_reached(history, "minimize", 0.69)
    assert not goal_reached([], "maximize", 0.0)
    with pytest.raises(ConfigError):
        goal_reached(history, "maximize", float("nan"))


def test_ranking_and_best_trial():
    history = [trial("a", [0.7]), trial("b", [0.9]), trial("c", [0.9]), trial("d", [0.95], state="pruned")]
    assert [t.id for t in ranked(history, "maximize")] == ["b", "c", "a"]
    assert best_trial(history, "minimize").id == "a"
    assert best_trial(history, "maximize", states=("completed", "pruned")).id == "d"
    assert best_trial([trial("x", [1.0], state="failed")], "maximize") is None


def test_trial_records_round_trip_and_reject_garbage():
    t = Trial(id="t1", assignment={"lr": 0.01, "opt": "adam"}, state="pruned", objective=0.8,
              intermediate=((1, 0.5), (3, 0.8)), budget=3, reason="rung 3", extra={"seconds": 12.5})
    d = t.to_dict()
    assert d["seconds"] == 12.5 and d["intermediate"] == [[1, 0.5], [3, 0.8]]
    back = Trial.from_dict(d)
    assert back == t and back.extra == {"seconds": 12.5}
    assert back.value_at(3) == 0.8 and back.values_upto(2) == [0.5] and back.budget_used == 3
    for bad in ({**d, "state": "done"}, {**d, "id": ""}, {**d, "objective": "high"},
                {**d, "intermediate": [[3, 0.1], [1, 0.2]]}, {**d, "assignment": [1]}, [1]):
        with pytest.raises(DataError):
            Trial.from_dict(bad)
