"""The search space: Katib parameters in and out, types, validation, hyperopt mapping, narrowing."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from kftune.core.errors import ConfigError
from kftune.core.space import SearchSpace, narrow, with_range
from kftune.core.spec import FeasibleSpace, ParameterSpec

# Katib `parameters:` blocks used across the core tests: every type, every distribution, with and
# without step, grids anchored off multiples of the step.
SPACES: dict[str, list[dict]] = {
    "flair": [
        {"name": "learning_rate", "parameterType": "double",
         "feasibleSpace": {"min": "1e-4", "max": "0.3", "distribution": "logUniform"}},
        {"name": "hidden_size", "parameterType": "categorical", "feasibleSpace": {"list": ["64", "128", "256"]}},
        {"name": "dropout", "parameterType": "double", "feasibleSpace": {"min": "0.0", "max": "0.5"}},
        {"name": "batch_size", "parameterType": "discrete", "feasibleSpace": {"list": ["16", "32", "64"]}},
    ],
    "stepped": [
        {"name": "layers", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "10", "step": "3"}},
        {"name": "dropout", "parameterType": "double", "feasibleSpace": {"min": "0.05", "max": "0.5", "step": "0.15"}},
        {"name": "lr", "parameterType": "double",
         "feasibleSpace": {"min": "0.001", "max": "0.1", "step": "0.001", "distribution": "logUniform"}},
        {"name": "epochs", "parameterType": "int", "feasibleSpace": {"min": "2", "max": "40", "distribution": "logUniform"}},
    ],
    "normal": [
        {"name": "momentum", "parameterType": "double",
         "feasibleSpace": {"min": "0.5", "max": "0.99", "distribution": "normal"}},
        {"name": "units", "parameterType": "int", "feasibleSpace": {"min": "32", "max": "256", "distribution": "normal"}},
        {"name": "wd", "parameterType": "double",
         "feasibleSpace": {"min": "1e-6", "max": "1e-2", "distribution": "logNormal"}},
        {"name": "emb", "parameterType": "int",
         "feasibleSpace": {"min": "10", "max": "400", "step": "10", "distribution": "logNormal"}},
        {"name": "clip", "parameterType": "double",
         "feasibleSpace": {"min": "0.5", "max": "5", "step": "0.5", "distribution": "normal"}},
    ],
    "lists": [
        {"name": "optimizer", "parameterType": "categorical", "feasibleSpace": {"list": ["sgd", "adam", "adamw"]}},
        {"name": "scale", "parameterType": "discrete", "feasibleSpace": {"list": ["0.5", "1", "2.5"]}},
        {"name": "width", "parameterType": "int", "feasibleSpace": {"min": "-3", "max": "3", "distribution": "uniform"}},
    ],
}


def space(name: str) -> SearchSpace:
    return SearchSpace.from_katib(SPACES[name])


def assert_typed(s: SearchSpace, a: dict) -> None:
    """The value types the contract promises, checked independently of ``contains``."""
    assert list(a) == list(s.names)
    for p in s:
        v = a[p.name]
        if p.type == "int":
            assert type(v) is int, (p.name, v)
        elif p.type == "double":
            assert type(v) is float, (p.name, v)
        elif p.type == "categorical":
            assert type(v) is str and v in p.spec.feasible_space.list, (p.name, v)
        else:
            assert type(v) in (int, float) and p.format(v) in p.spec.feasible_space.list, (p.name, v)
        if p.is_numeric_range:
            assert p.low <= v <= p.high, (p.name, v)


# -- Katib in and out --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SPACES))
def test_katib_block_round_trips_unchanged(name):
    s = space(name)
    assert s.to_katib() == SPACES[name]
    assert SearchSpace.from_parameters(s.to_parameters()) == s


def test_from_parameters_uses_the_spec_classes():
    specs = (ParameterSpec("lr", "double", FeasibleSpace(min="0.01", max="0.1", distribution="logUniform")),
             ParameterSpec("opt", "categorical", FeasibleSpace(list=("sgd", "adam"))))
    s = SearchSpace.from_parameters(specs)
    assert s.to_parameters() == specs
    assert s.names == ("lr", "opt")
    assert s["lr"].distribution == "logUniform" and s["opt"].choices == ("sgd", "adam")


@pytest.mark.parametrize("block, path, words", [
    ([{"name": "x", "parameterType": "float", "feasibleSpace": {"min": "0", "max": "1"}}],
     "parameters[0].parameterType", "not one of"),
    ([{"name": "x", "parameterType": "double", "feasibleSpace": {"min": "1", "max": "1"}}],
     "parameters[0].feasibleSpace", "less than max"),
    ([{"name": "x", "parameterType": "double", "feasibleSpace": {"max": "1"}}],
     "parameters[0].feasibleSpace.min", "needs feasibleSpace.min"),
    ([{"name": "x", "parameterType": "double", "feasibleSpace": {"min": "a", "max": "1"}}],
     "parameters[0].feasibleSpace.min", "not a finite number"),
    ([{"name": "x", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "1", "distribution": "logUniform"}}],
     "parameters[0].feasibleSpace.min", "min > 0"),
    ([{"name": "x", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "1", "distribution": "beta"}}],
     "parameters[0].feasibleSpace.distribution", "not one of"),
    ([{"name": "x", "parameterType": "int", "feasibleSpace": {"min": "0.5", "max": "4"}}],
     "parameters[0].feasibleSpace.min", "not an integer"),
    ([{"name": "x", "parameterType": "int", "feasibleSpace": {"min": "0", "max": "4", "step": "1.5"}}],
     "parameters[0].feasibleSpace.step", "not an integer"),
    ([{"name": "x", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "1", "step": "-0.1"}}],
     "parameters[0].feasibleSpace.step", "positive"),
    ([{"name": "x", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "1", "step": "2"}}],
     "parameters[0].feasibleSpace.step", "larger than max - min"),
    ([{"name": "x", "parameterType": "categorical", "feasibleSpace": {"list": []}}],
     "parameters[0].feasibleSpace.list", "non-empty"),
    ([{"name": "x", "parameterType": "categorical", "feasibleSpace": {"list": ["a", "a"]}}],
     "parameters[0].feasibleSpace.list", "duplicate"),
    ([{"name": "x", "parameterType": "discrete", "feasibleSpace": {"list": ["1", "two"]}}],
     "parameters[0].feasibleSpace.list", "must be numbers"),
    ([{"name": "x", "parameterType": "categorical", "feasibleSpace": {"list": ["a"], "min": "0"}}],
     "parameters[0].feasibleSpace.min", "only feasibleSpace.list"),
    ([{"name": "x", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "1", "list": ["1"]}}],
     "parameters[0].feasibleSpace.list", "not a list"),
    ([{"name": "x", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "1", "mean": "0"}}],
     "parameters[0].feasibleSpace", "unknown keys"),
    ([{"name": "x", "parameterType": "categorical", "feasibleSpace": {"list": ["a"]}},
      {"name": "x", "parameterType": "categorical", "feasibleSpace": {"list": ["b"]}}],
     "parameters[1].name", "duplicate parameter name"),
    ([], "spec.search.parameters", "at least one parameter"),
])
def test_bad_parameters_name_the_field_and_the_fix(block, path, words):
    with pytest.raises(ConfigError) as err:
        SearchSpace.from_katib(block)
    assert any(p.path.endswith(path) and words in p.message for p in err.value.problems), err.value.problems


def test_every_problem_is_reported_at_once():
    block = [{"name": "a", "parameterType": "double", "feasibleSpace": {"min": "2", "max": "1"}},
             {"name": "b", "parameterType": "categorical", "feasibleSpace": {"list": []}}]
    with pytest.raises(ConfigError) as err:
        SearchSpace.from_katib(block)
    assert {p.path for p in err.value.problems} == {"spec.search.parameters[0].feasibleSpace",
                                                    "spec.search.parameters[1].feasibleSpace.list"}


# -- values ---------------------------------------------------------------------------------------------

def test_contains_checks_names_types_bounds_and_grid():
    s = space("stepped")
    good = {"layers": 4, "dropout": 0.35, "lr": 0.042, "epochs": 17}
    assert s.contains(good)
    assert not s.contains({**good, "layers": 4.0})            # int parameter wants an int
    assert not s.contains({**good, "layers": 5})              # off the grid 1, 4, 7, 10
    assert not s.contains({**good, "layers": 13})             # past max
    assert not s.contains({**good, "dropout": 0.3})           # off the grid 0.05, 0.2, 0.35, 0.5
    assert not s.contains({**good, "epochs": True})           # bool is not an int here
    assert not s.contains({k: v for k, v in good.items() if k != "lr"})
    assert not s.contains({**good, "extra": 1})
    lists = space("lists")
    assert lists.contains({"optimizer": "adam", "scale": 2.5, "width": -3})
    assert lists.contains({"optimizer": "adam", "scale": 1, "width": 0})
    assert not lists.contains({"optimizer": "rmsprop", "scale": 1, "width": 0})
    assert not lists.contains({"optimizer": "adam", "scale": "1", "width": 0})
    problems = s.problems({**good, "layers": 5})
    assert len(problems) == 1 and problems[0].path == "assignment.layers" and "grid" in problems[0].message


def test_discrete_values_are_typed_as_their_list_reads():
    assert space("flair")["batch_size"].choices == (16, 32, 64)
    assert space("lists")["scale"].choices == (0.5, 1.0, 2.5)


def test_katib_assignment_strings_round_trip():
    s = space("flair")
    a = {"learning_rate": 0.0123, "hidden_size": "128", "dropout": 0.25, "batch_size": 32}
    katib = s.assignment_to_katib(a)
    assert katib == [{"name": "learning_rate", "value": "0.0123"}, {"name": "hidden_size", "value": "128"},
                     {"name": "dropout", "value": "0.25"}, {"name": "batch_size", "value": "32"}]
    back = s.assignment_from_katib(katib)
    assert back == a and type(back["batch_size"]) is int and type(back["hidden_size"]) is str
    with pytest.raises(ConfigError) as err:
        s.assignment_from_katib({**{k["name"]: k["value"] for k in katib}, "learning_rate": "fast"})
    assert err.value.problems[0].path == "parameterAssignments.learning_rate"
    with pytest.raises(ConfigError):
        s.assignment_from_katib({**{k["name"]: k["value"] for k in katib}, "learning_rate": "0.5"})  # > max


# -- hyperopt mapping ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SPACES))
def test_sampled_points_are_typed_feasible_and_encode_back(name):
    s = space(name)
    points = s.sample(200, seed=3)
    for a in points:
        assert_typed(s, a)
        assert s.contains(a)
        assert s.decode(s.encode(a)) == a
    assert points == s.sample(200, seed=3)
    assert points != s.sample(200, seed=4)


def test_stepped_uniform_samples_exactly_katibs_grid():
    s = space("stepped")
    points = s.sample(400, seed=0)
    # Katib's hp.quniform(1, 10, 3) would also give 0; the grid is min + k*step.
    assert Counter(a["layers"] for a in points).keys() == {1, 4, 7, 10}
    assert set(a["dropout"] for a in points) == {0.05, 0.2, 0.35, 0.5}
    lr_grid = {round(0.001 * k, 3) for k in range(1, 101)}
    assert all(a["lr"] in lr_grid for a in points)


def test_distributions_have_their_shape():
    flair = space("flair").sample(600, seed=1)
    logs = np.log10([a["learning_rate"] for a in flair])
    centre = (math.log10(1e-4) + math.log10(0.3)) / 2
    assert abs(np.median(logs) - centre) < 0.25          # logUniform: uniform in log space
    assert abs(np.median([a["dropout"] for a in flair]) - 0.25) < 0.05
    normal = space("normal").sample(600, seed=1)
    m = np.array([a["momentum"] for a in normal])
    assert abs(m.mean() - 0.745) < 0.02 and 0.06 < m.std() < 0.1      # sigma = (max - min) / 6
    wd = np.log([a["wd"] for a in normal])
    assert abs(np.median(wd) - (math.log(1e-6) + math.log(1e-2)) / 2) < 0.3
    assert all(a["emb"] % 10 == 0 and 10 <= a["emb"] <= 400 for a in normal)


def test_categorical_choices_decode_with_space_eval():
    s = space("flair")
    a = s.decode({"learning_rate": [0.01], "hidden_size": [2], "dropout": [0.1], "batch_size": [0]})
    assert a == {"learning_rate": 0.01, "hidden_size": "256", "dropout": 0.1, "batch_size": 16}
    assert s.encode(a) == {"learning_rate": [0.01], "hidden_size": [2], "dropout": [0.1], "batch_size": [0]}


def test_normal_values_outside_the_range_are_clipped_onto_it():
    s = space("normal")
    a = s.decode({"momentum": [1.7], "units": [-40.0], "wd": [0.5], "emb": [1000.0], "clip": [0.1]})
    assert a == {"momentum": 0.99, "units": 32, "wd": 0.01, "emb": 400, "clip": 0.5}
    assert s.contains(a)


# -- narrowing and replacing ranges ---------------------------------------------------------------------

def test_narrow_is_log_aware_and_centred_on_the_values():
    s = space("flair")
    n = narrow(s, {"learning_rate": [1e-3, 2e-3], "hidden_size": ["128", "64"]}, 0.5)
    lr = n["learning_rate"]
    full = math.log(0.3 / 1e-4)
    assert math.log(lr.high / lr.low) == pytest.approx(full / 2)
    assert math.sqrt(lr.low * lr.high) == pytest.approx(math.sqrt(1e-3 * 2e-3))
    assert n["hidden_size"].choices == ("64", "128")                   # original order kept
    assert n["dropout"] == s["dropout"] and n["batch_size"] == s["batch_size"]
    linear = narrow(s, {"learning_rate": [1e-3, 2e-3]}, 0.5, log_aware=False)["learning_rate"]
    assert linear.high - linear.low == pytest.approx((0.3 - 1e-4) / 2)
    assert len(n.notes) == 1 and "learning_rate" in n.notes[0] and "hidden_size" in n.notes[0]


def test_narrow_never_leaves_the_bounds_and_keeps_grids():
    s = space("stepped")
    for _ in range(6):  # repeatedly at the edges
        s2 = narrow(s, {"layers": [10], "dropout": [0.05], "lr": [0.1], "epochs": [2]}, 0.3)
        for p, q in zip(s, s2):
            assert p.low <= q.low < q.high <= p.high
        assert s2["layers"].high == 10 and s2["layers"].n_steps >= 1
        assert s2["dropout"].low == 0.05
        s = s2
    original = space("stepped")
    for a in s.sample(100, seed=0):
        assert original.contains(a)


def test_narrow_lists_and_validation():
    s = space("flair")
    n = narrow(s, {"batch_size": [16, 64], "hidden_size": ["256"]}, 0.5)
    assert n["batch_size"].choices == (16, 32, 64)                     # discrete: the range used
    assert n["hidden_size"].choices == ("256",)
    assert n.to_katib()[1]["feasibleSpace"] == {"list": ["256"]}
    with pytest.raises(ConfigError):
        narrow(s, {"learning_rate": [0.01]}, 0)
    with pytest.raises(ConfigError):
        narrow(s, {"nope": [1]}, 0.5)


def test_with_range_replaces_one_range_and_records_why():
    s = space("flair")
    t = with_range(s, "learning_rate", 3e-3, 3e-2, reason="LR range test: steepest descent at 1e-2")
    assert t.to_katib()[0] == {"name": "learning_rate", "parameterType": "double",
                               "feasibleSpace": {"min": "0.003", "max": "0.03", "distribution": "logUniform"}}
    assert t.to_katib()[1:] == s.to_katib()[1:]
    assert "was [1e-4, 0.3]" in t.notes[0] and "steepest descent" in t.notes[0]
    with pytest.raises(ConfigError):
        with_range(s, "hidden_size", 1, 2)
    with pytest.raises(ConfigError):
        with_range(s, "learning_rate", 0.0, 0.1)                       # logUniform needs min > 0
    with pytest.raises(ConfigError):
        with_range(s, "nope", 0.1, 0.2)


def test_a_space_pickles_without_its_hyperopt_objects():
    import pickle

    s = space("normal")
    before = s.sample(3, seed=2)                       # builds and caches the hyperopt domain
    copy = pickle.loads(pickle.dumps(s))
    assert copy == s and "hyperopt_domain" not in copy.__dict__
    assert copy.sample(3, seed=2) == before
