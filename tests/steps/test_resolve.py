"""``resolve``: a pipeline run's parameters applied to the spec, validated, and the search sized in rounds
(no KFP: the step is a plain function of its config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kftune.core.errors import ConfigError
from kftune.core.search_policy import SearchPolicy
from kftune.core.spec import parse_spec
from kftune.steps import resolve
from tests.steps.test_trial import write_spec


def _spec(tmp_path: Path, **kw: Any) -> str:
    return json.dumps(yaml.safe_load(write_spec(tmp_path / "spec.yaml", **kw).read_text()))


def test_parameters_override_the_spec_and_the_rounds_are_the_planners(tmp_path: Path) -> None:
    spec = _spec(tmp_path, early_stopping="successive-halving", max_epochs=4, max_trials=6, parallel=2,
                 es_settings={"eta": "2", "min_budget": "1", "max_budget": "4"})
    r = resolve.run(resolve.ResolveConfig(spec=spec, store="/tmp/store/", max_trials=5, max_epochs=3, seed=7,
                                          downsample=0.5, job_id="kfp-1"))
    assert r.run_id == "kfp-1" and r.store == "/tmp/store"  # the KFP run id when run_id is empty
    s = r.spec["spec"]
    assert (s["search"]["maxTrialCount"], s["train"]["maxEpochs"], s["train"]["seed"]) == (5, 3, 7)
    assert {x["name"]: x["value"] for x in s["search"]["earlyStopping"]["algorithmSettings"]}["max_budget"] == "3"
    assert r.corpus_config["downsample"] == 0.5 and r.corpus_config["seed"] == 7
    assert r.search_rounds == SearchPolicy.from_job(r.job).rounds_needed()  # what kftune search plans with
    assert parse_spec(json.loads(r.spec_json)) == r.job


def test_a_search_that_does_not_fit_the_compiled_rounds_names_the_rounds_it_needs(tmp_path: Path) -> None:
    spec = _spec(tmp_path, max_trials=6, parallel=1)
    needed = resolve.run(resolve.ResolveConfig(spec=spec, store="s", run_id="r")).search_rounds
    assert needed == 6
    assert resolve.run(resolve.ResolveConfig(spec=spec, store="s", run_id="r", search_rounds=8)).search_rounds == 8
    # fewer rounds still fit by widening them (max(parallel, ceil(remaining / rounds left)))
    assert resolve.run(resolve.ResolveConfig(spec=spec, store="s", run_id="r", search_rounds=2)).search_rounds == 2
    halving = _spec(tmp_path, early_stopping="successive-halving", max_epochs=4, max_trials=4, parallel=2,
                    es_settings={"eta": "2", "min_budget": "1", "max_budget": "4"})
    with pytest.raises(ConfigError, match=r"needs \d+ rounds, but the pipeline was compiled with 1"):
        resolve.run(resolve.ResolveConfig(spec=halving, store="s", run_id="r", search_rounds=1))


def test_every_bad_parameter_is_named_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve.run(resolve.ResolveConfig(spec=_spec(tmp_path), store=" ", run_id="a/b", max_trials=-1, seed=-2,
                                          downsample=2.0))
    assert {p.path for p in info.value.problems} == {"parameter store", "parameter run_id", "parameter max_trials",
                                                     "parameter seed", "parameter downsample"}
    with pytest.raises(ConfigError, match="not JSON"):
        resolve.run(resolve.ResolveConfig(spec="{nope", store="s", run_id="r"))
