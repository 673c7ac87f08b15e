"""The sampler contract, over every sampler x several seeds x several spaces, and what each promises."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from kftune.core.errors import ConfigError
from kftune.core.samplers import SAMPLERS, get_sampler
from kftune.core.samplers.coarse_to_fine import CoarseToFineSampler
from kftune.core.samplers.grid import GridSampler
from kftune.core.samplers.tpe import history_to_hyperopt
from kftune.core.space import SearchSpace
from kftune.core.trials import Trial
from tests.core.test_space import SPACES, assert_typed, space

# Settings that make every sampler work on every test space (grid needs points for unstepped doubles;
# TPE models from the 4th trial on, so short histories exercise it).
SETTINGS = {
    "random": {},
    "tpe": {"n_startup_jobs": "4"},
    "grid": {"default_points": "3"},
    "coarse-to-fine": {"round_size": "4", "rounds": "3"},
    "bohb": {},
}
SEEDS = (0, 1, 7)


def fake_objective(a: dict) -> float:
    """A deterministic number per assignment, so histories can be grown without training."""
    return sum((hash(str(v)) % 1000) / 1000 for v in a.values()) / len(a)


def grow(name: str, s: SearchSpace, seed: int, trials: int, batch: int, objective: str = "maximize",
         fn=fake_objective, settings=None, states=None) -> list[Trial]:
    """Run a synchronous search loop: ask for ``batch``, complete them, repeat."""
    sampler = get_sampler(name)
    settings = SETTINGS[name] if settings is None else settings
    history: list[Trial] = []
    while len(history) < trials:
        new = sampler.suggest(s, history, min(batch, trials - len(history)), seed=seed, settings=settings,
                              objective=objective, max_trials=trials)
        if not new:
            break
        for a in new:
            i = len(history)
            state = states[i % len(states)] if states else "completed"
            obj = None if state == "failed" else fn(a)
            history.append(Trial(id=f"t{i}", assignment=a, state=state, objective=obj,
                                 intermediate=((1, obj),) if obj is not None else (), budget=1))
    return history


# -- the contract, for every sampler ------------------------------------------------------------------

@pytest.mark.parametrize("space_name", sorted(SPACES))
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_suggestions_are_feasible_typed_and_reproducible(name, seed, space_name):
    s = space(space_name)
    history = grow(name, s, seed, trials=10, batch=3)
    assert len(history) == 10
    for t in history:
        assert_typed(s, t.assignment)
        assert s.contains(t.assignment)
    # the same inputs give the same answer, in a fresh call
    assert grow(name, s, seed, trials=10, batch=3) == history
    nxt = get_sampler(name).suggest(s, history, 2, seed=seed, settings=SETTINGS[name], max_trials=20)
    assert nxt == get_sampler(name).suggest(s, list(history), 2, seed=seed, settings=SETTINGS[name], max_trials=20)


@pytest.mark.parametrize("space_name", sorted(SPACES))
@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"grid"}))
def test_different_seeds_give_different_suggestions(name, space_name):
    s = space(space_name)
    runs = [[t.assignment for t in grow(name, s, seed, trials=8, batch=2)] for seed in SEEDS]
    for a, b in itertools.combinations(runs, 2):
        assert a != b


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_history_with_failed_pruned_running_and_foreign_trials_is_fine(name):
    s = space("flair")
    history = grow(name, s, 3, trials=9, batch=3, states=["completed", "failed", "pruned"])
    foreign = {"learning_rate": 5.0, "hidden_size": "1024", "dropout": 0.1, "batch_size": 8}  # not in the space
    history += [Trial(id="foreign", assignment=foreign, state="completed", objective=0.99),
                Trial(id="run", assignment=history[0].assignment, state="running"),
                Trial(id="nan", assignment=history[1].assignment, state="completed", objective=float("nan"))]
    out = get_sampler(name).suggest(s, history, 3, seed=3, settings=SETTINGS[name], max_trials=30)
    assert out and all(s.contains(a) for a in out)
    all_failed = [Trial(id=f"f{i}", assignment=t.assignment, state="failed", reason="CUDA out of memory")
                  for i, t in enumerate(history[:9])]
    out = get_sampler(name).suggest(s, all_failed, 2, seed=3, settings=SETTINGS[name], max_trials=30)
    assert len(out) == 2 and all(s.contains(a) for a in out)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_inputs_are_checked(name):
    s, sampler = space("flair"), get_sampler(name)
    assert sampler.suggest(s, [], 0, seed=1, settings=SETTINGS[name], max_trials=4) == []
    with pytest.raises(ConfigError):
        sampler.suggest(s, [], -1, seed=1, settings=SETTINGS[name])
    with pytest.raises(ConfigError, match="objective type"):
        sampler.suggest(s, [], 1, seed=1, settings=SETTINGS[name], objective="max", max_trials=4)
    with pytest.raises(ConfigError, match="unknown setting"):
        sampler.suggest(s, [], 1, seed=1, settings={**SETTINGS[name], "bogus": "1"}, max_trials=4)
    twice = [Trial(id="a", assignment={}, state="failed")] * 2
    with pytest.raises(ConfigError, match="duplicate trial id"):
        sampler.suggest(s, twice, 1, seed=1, settings=SETTINGS[name], max_trials=4)


def test_registry_names_katib_algorithms_and_rejects_others():
    assert sorted(SAMPLERS) == ["bohb", "coarse-to-fine", "grid", "random", "tpe"]
    with pytest.raises(ConfigError) as err:
        get_sampler("bayesianoptimization")
    assert "coarse-to-fine" in str(err.value) and err.value.problems[0].path.endswith("algorithmName")


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_each_module_offers_suggest_as_a_plain_function(name):
    import importlib

    module = importlib.import_module(f"kftune.core.samplers.{name.replace('-', '_')}")
    s = space("lists")
    args = dict(seed=1, settings=SETTINGS[name], objective="minimize", max_trials=8)
    assert module.suggest(s, [], 2, **args) == get_sampler(name).suggest(s, [], 2, **args)


# -- maximize and minimize: the learning samplers beat random on a bowl -------------------------------

BOWL = SearchSpace.from_katib([
    {"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "1e-5", "max": "1", "distribution": "logUniform"}},
    {"name": "hidden", "parameterType": "int", "feasibleSpace": {"min": "16", "max": "512"}},
    {"name": "dropout", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "0.8"}},
    {"name": "optimizer", "parameterType": "categorical", "feasibleSpace": {"list": ["sgd", "adam", "adamw"]}},
])
BOWL_SEEDS = range(7)
BOWL_SETTINGS = {"random": {}, "tpe": {"n_startup_jobs": "10"}, "coarse-to-fine": {"rounds": "3"}, "bohb": {}}


def score(a: dict) -> float:
    """A quadratic bowl (in log10 lr), best (0) at lr 10^-2.5, hidden 300, dropout 0.3, adam."""
    return -((math.log10(a["lr"]) + 2.5) ** 2 + ((a["hidden"] - 300) / 200) ** 2
             + ((a["dropout"] - 0.3) / 0.3) ** 2 + (0.0 if a["optimizer"] == "adam" else 0.5))


def loss(a: dict) -> float:
    return -score(a)


@pytest.fixture(scope="module")
def bowl_runs() -> dict:
    """Each sampler's 30-trial searches (batches of 2) per seed, maximizing the score and minimizing the loss."""
    out = {}
    for name in BOWL_SETTINGS:
        for objective, fn in (("maximize", score), ("minimize", loss)):
            out[name, objective] = [grow(name, BOWL, seed, 30, 2, objective, fn, BOWL_SETTINGS[name])
                                    for seed in BOWL_SEEDS]
    return out


@pytest.mark.parametrize("name", ["tpe", "coarse-to-fine", "bohb"])
def test_learning_samplers_beat_random_maximizing_and_minimizing(bowl_runs, name):
    def median_best(runs, objective):
        best = [max(t.objective for t in h) if objective == "maximize" else min(t.objective for t in h)
                for h in runs]
        return statistics.median(best)

    # maximize the score: a higher median best than random's; minimize the loss: a lower one
    assert median_best(bowl_runs[name, "maximize"], "maximize") > median_best(bowl_runs["random", "maximize"], "maximize")
    assert median_best(bowl_runs[name, "minimize"], "minimize") < median_best(bowl_runs["random", "minimize"], "minimize")
    # minimizing -f is maximizing f: the sampler must make exactly the same choices
    for up, down in zip(bowl_runs[name, "maximize"], bowl_runs[name, "minimize"]):
        assert [t.assignment for t in up] == [t.assignment for t in down]


@pytest.mark.parametrize("name", ["tpe", "coarse-to-fine", "bohb"])
def test_the_objective_direction_is_honoured(name):
    # told to minimize the score, the late trials must score worse than when told to maximize it
    def late_mean(objective):
        runs = [grow(name, BOWL, seed, 24, 2, objective, score, BOWL_SETTINGS[name]) for seed in (0, 1, 2)]
        return statistics.mean(score(t.assignment) for h in runs for t in h[16:])

    assert late_mean("maximize") > late_mean("minimize") + 1.0


# -- TPE ------------------------------------------------------------------------------------------------

def test_tpe_settings_are_katibs_and_checked():
    sampler, s = get_sampler("tpe"), space("flair")
    sampler.check(s, {"random_state": "3", "gamma": "0.3", "n_EI_candidates": "12", "prior_weight": "0.5",
                      "n_startup_jobs": "5"})
    with pytest.raises(ConfigError) as err:
        sampler.check(s, {"gamma": "1.5", "n_EI_candidates": "0", "prior_weight": "x"})
    assert {p.path.rsplit(".", 1)[-1] for p in err.value.problems} == {"gamma", "n_EI_candidates", "prior_weight"}
    # the Katib list form works too
    sampler.check(s, [{"name": "gamma", "value": "0.2"}])


def test_random_state_setting_overrides_the_seed():
    s = space("flair")
    for name in ("random", "tpe", "coarse-to-fine", "bohb"):
        settings = {**SETTINGS[name], "random_state": "42"}
        a = get_sampler(name).suggest(s, [], 3, seed=1, settings=settings, max_trials=12)
        b = get_sampler(name).suggest(s, [], 3, seed=2, settings=settings, max_trials=12)
        assert a == b


def test_tpe_batch_points_differ_and_running_points_are_avoided():
    s = space("flair")
    history = grow("tpe", s, 5, trials=12, batch=4)
    batch = get_sampler("tpe").suggest(s, history, 4, seed=5, settings=SETTINGS["tpe"])
    assert len({tuple(sorted(a.items())) for a in batch}) == 4


def test_tpe_sees_the_history_as_hyperopt_trials():
    import hyperopt

    s = space("flair")
    a, b, c, d, e = s.sample(5, seed=0)
    outside = {**a, "learning_rate": 9.0}
    history = [Trial(id="ok", assignment=a, state="completed", objective=0.8),
               Trial(id="pr", assignment=b, state="pruned", objective=0.6, intermediate=((1, 0.6),)),
               Trial(id="fa", assignment=c, state="failed", reason="NaN loss"),
               Trial(id="ru", assignment=d, state="running"),
               Trial(id="out", assignment=outside, state="completed", objective=0.99),
               Trial(id="no", assignment=e, state="completed", objective=None)]
    trials = history_to_hyperopt(s, history, "maximize")
    docs = trials.trials
    assert [doc["tid"] for doc in docs] == [0, 1, 2, 3, 4]              # the foreign trial is left out
    assert docs[0]["result"] == {"status": hyperopt.STATUS_OK, "loss": -0.8}   # negated when maximizing
    assert docs[1]["result"] == {"status": hyperopt.STATUS_OK, "loss": -0.6}
    assert docs[2]["result"] == {"status": hyperopt.STATUS_FAIL}
    assert docs[3]["state"] == hyperopt.JOB_STATE_RUNNING and "loss" not in docs[3]["result"]
    assert docs[4]["result"] == {"status": hyperopt.STATUS_FAIL}        # no objective: counts as failed
    assert s.decode(docs[0]["misc"]["vals"]) == a
    assert history_to_hyperopt(s, history[:1], "minimize").trials[0]["result"]["loss"] == 0.8


# -- grid -------------------------------------------------------------------------------------------------

def test_grid_is_exhaustive_in_katib_order_and_then_exhausted():
    s = space("lists")
    sampler = GridSampler()
    assert sampler.size(s) == 3 * 3 * 7
    history = grow("grid", s, 0, trials=63, batch=10)
    points = [t.assignment for t in history]
    expected = [dict(zip(s.names, combo)) for combo in itertools.product(
        ["sgd", "adam", "adamw"], [0.5, 1.0, 2.5], range(-3, 4))]
    assert points == expected                                   # all of them, last parameter fastest
    assert sampler.remaining(s, history) == 0
    assert sampler.suggest(s, history, 5, seed=0) == []


def test_grid_continues_where_the_history_left_off():
    s = space("lists")
    sampler = GridSampler()
    first = sampler.suggest(s, [], 10, seed=0)
    history = [Trial(id=f"t{i}", assignment=a, state=st, objective=None if st in ("failed", "running") else 0.5)
               for i, (a, st) in enumerate(zip(first[:6], itertools.cycle(["completed", "failed", "running"])))]
    history.reverse()                                           # order of the history does not matter
    assert sampler.suggest(s, history, 4, seed=99) == first[6:10]
    assert sampler.remaining(s, history) == sampler.size(s) - 6
    # the last points: fewer than asked, then nothing
    rest = sampler.suggest(s, history, 10**6, seed=0)
    assert len(rest) == sampler.size(s) - 6
    done = history + [Trial(id=f"r{i}", assignment=a, state="completed", objective=0.1) for i, a in enumerate(rest)]
    assert sampler.suggest(s, done, 3, seed=0) == []


def test_grid_steps_and_default_points():
    s = space("flair")
    sampler = GridSampler()
    with pytest.raises(ConfigError) as err:
        sampler.check(s)
    assert "default_points" in str(err.value) and "learning_rate" in str(err.value)
    points = sampler.suggest(s, [], 1000, seed=0, settings={"default_points": "3"})
    assert len(points) == 3 * 3 * 3 * 3
    assert sorted({a["learning_rate"] for a in points}) == pytest.approx([1e-4, math.sqrt(1e-4 * 0.3), 0.3])
    assert sorted({a["dropout"] for a in points}) == [0.0, 0.25, 0.5]
    with pytest.raises(ConfigError, match="maxTrialCount"):
        sampler.check(s, {"default_points": "3"}, max_trials=82)
    sampler.check(s, {"default_points": "3"}, max_trials=81)


# -- coarse-to-fine --------------------------------------------------------------------------------------

def test_coarse_to_fine_rounds_are_derived_from_the_history():
    s, sampler = space("flair"), CoarseToFineSampler()
    cfg = sampler.config(s, {"rounds": "3"}, max_trials=24)
    assert cfg.round_size == 8 and [cfg.round_of(i) for i in (0, 7, 8, 16, 30)] == [0, 0, 1, 2, 2]
    assert sampler.config(s, {"rounds": "3", "round_size": "5"}, max_trials=24).round_size == 5
    with pytest.raises(ConfigError, match="round_size"):
        sampler.check(s, {"rounds": "3"})
    with pytest.raises(ConfigError):
        sampler.check(s, {"shrink": "1.5", "top_k": "0"}, max_trials=10)


def test_coarse_to_fine_waits_at_the_round_barrier():
    s, sampler = space("flair"), CoarseToFineSampler()
    settings = {"round_size": "4"}
    first = sampler.suggest(s, [], 10, seed=1, settings=settings)
    assert len(first) == 4                                      # only the rest of round 0
    history = [Trial(id=f"t{i}", assignment=a, state="completed", objective=float(i)) for i, a in enumerate(first)]
    running = history[:3] + [Trial(id="t3", assignment=first[3], state="running")]
    assert sampler.suggest(s, running, 2, seed=1, settings=settings) == []
    assert len(sampler.suggest(s, history, 2, seed=1, settings=settings)) == 2


def test_coarse_to_fine_narrows_around_the_top_k_and_stays_inside():
    s, sampler = space("flair"), CoarseToFineSampler()
    settings = {"round_size": "10", "rounds": "3", "top_k": "3", "shrink": "0.5"}
    history = grow("coarse-to-fine", s, 2, trials=30, batch=5, settings=settings,
                   fn=lambda a: -abs(math.log10(a["learning_rate"]) + 3) - (a["hidden_size"] != "128"))
    cfg = sampler.config(s, settings)
    spaces = sampler.round_spaces(s, history, cfg, "maximize", upto=2)
    for r, (outer, inner) in enumerate(zip(spaces, spaces[1:]), start=1):
        lo, hi = inner["learning_rate"].low, inner["learning_rate"].high
        assert outer["learning_rate"].low <= lo < hi <= outer["learning_rate"].high
        width = math.log(outer["learning_rate"].high / outer["learning_rate"].low)
        assert math.log(hi / lo) <= max(0.5 * width, 1e-12) + 1e-9 or inner["learning_rate"] == outer["learning_rate"]
        top = sorted(history[: 10 * r], key=lambda t: -t.objective)[:3]
        assert set(inner["hidden_size"].choices) == {t.assignment["hidden_size"] for t in top}
        for t in top:  # the box holds the trials it was centred on
            assert lo <= t.assignment["learning_rate"] <= hi
    for t in history[20:]:                                      # round 2 trials come from round 2's box
        assert spaces[2].contains(t.assignment)
    assert all(s.contains(t.assignment) for t in history)
    assert len(spaces[2].notes) == 2 and "round 2" in spaces[2].notes[1]


def test_coarse_to_fine_never_leaves_the_original_bounds_at_the_edges():
    s = space("stepped")
    edge = lambda a: a["layers"] + a["dropout"] * 10 + a["lr"] * 100 + a["epochs"]  # best at every max
    history = grow("coarse-to-fine", s, 4, trials=40, batch=4,
                   settings={"round_size": "8", "rounds": "5", "shrink": "0.3"}, fn=edge)
    assert all(s.contains(t.assignment) for t in history)
    late = history[-8:]
    assert min(t.assignment["layers"] for t in late) >= 4 and max(t.assignment["epochs"] for t in late) <= 40


def test_coarse_to_fine_without_results_does_not_narrow():
    s, sampler = space("flair"), CoarseToFineSampler()
    failed = [Trial(id=f"t{i}", assignment=a, state="failed", reason="diverged")
              for i, a in enumerate(s.sample(4, seed=0))]
    cfg = sampler.config(s, {"round_size": "4"})
    assert sampler.round_spaces(s, failed, cfg, "maximize")[-1] == s
