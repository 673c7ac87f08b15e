"""The run journal: the one owner of the ``runs/<run>/...`` keys, over a local store."""

from __future__ import annotations

from pathlib import Path

import pytest

from kftune.core.errors import ConfigError, DataError
from kftune.core.search_policy import TrialRequest
from kftune.core.space import SearchSpace
from kftune.io.journal import (RunJournal, checkpoint_key, finalist_key, lease_key, round_key, run_prefix,
                               search_prefix, trial_key)
from kftune.io.store import open_store

SPACE = SearchSpace.from_katib([{"name": "learning_rate", "parameterType": "double",
                                 "feasibleSpace": {"min": "0.001", "max": "0.1", "distribution": "logUniform"}}])


def test_keys() -> None:
    assert run_prefix("r1") == "runs/r1" and search_prefix("r1") == "runs/r1/search"
    assert trial_key("r1", "trial-0001") == "runs/r1/search/trials/trial-0001.json"
    assert checkpoint_key("r1", "t", 3) == "runs/r1/search/checkpoints/t/seed-3.pt"
    assert finalist_key("r1", "t", [4]) == "runs/r1/search/finalists/t/seed-4.json"
    assert round_key("r1", 2) == "runs/r1/search/rounds/round-0002.json"
    assert lease_key("r1") == "runs/r1/search/lease.json"
    for bad in ("a/b", "", "..", ".hidden"):
        with pytest.raises(ConfigError):
            trial_key("r1", bad)
        with pytest.raises(ConfigError):
            RunJournal(open_store("."), bad)


def test_records_rounds_space_and_best_round_trip(tmp_path: Path) -> None:
    journal = RunJournal(open_store(tmp_path), "r1")
    assert journal.trials() == [] and journal.rounds() == [] and journal.read_space() is None and journal.best() is None
    # records come back in creation order (index), whatever their keys' order
    for i, tid in ((1, "b"), (0, "z")):
        journal.write(journal.trial_key(tid), {"id": tid, "index": i, "state": "completed", "objective": 0.5,
                                               "assignment": {"learning_rate": 0.01}})
    journal.write(journal.finalist_key("z", [2]), {"id": "z", "kind": "finalist", "state": "running"})
    assert [t.id for t in journal.trials()] == ["z", "b"]
    assert journal.finalist_records() == [] and len(journal.finalist_records(finished=False)) == 1
    request = TrialRequest("z", 0, {"learning_rate": 0.01}, 3, round=0)
    assert journal.request_key(request) == "runs/r1/search/trials/z.json"
    assert not journal.done(request)  # asked for 3 epochs, the record does not say so
    journal.write(journal.trial_key("z"), {"id": "z", "index": 0, "state": "pruned", "budget_asked": 3})
    assert journal.done(request)
    # one round plan schema; an older kftune search's kind "trial" reads as "search"
    journal.write_round(1, "search", [request], history=2, judged=["b"])
    journal.write(journal.round_key(0), {"round": 0, "kind": "trial", "requests": []})
    plans = journal.rounds()
    assert [(p["round"], p["kind"]) for p in plans] == [(0, "search"), (1, "search")]
    assert plans[1] == {"round": 1, "kind": "search", "requests": [request.to_dict()], "judged": ["b"], "history": 2,
                        "note": None}
    with pytest.raises(ValueError):
        journal.write_round(2, "trial", [], history=0)
    # the space keeps its notes and the LR range test's note
    noted = SearchSpace(SPACE.parameters, ("narrowed",))
    document = journal.write_space(noted, {"reason": "lr"})
    assert document["lr_range"] == {"reason": "lr"}
    space, note = journal.read_space()
    assert space.to_katib() == SPACE.to_katib() and space.notes == ("narrowed",) and note == {"reason": "lr"}
    journal.write_best({"trial_id": "z"})
    assert journal.best() == {"trial_id": "z"}
    assert journal.run_uri("final") == str(tmp_path / "runs" / "r1" / "final")
    (tmp_path / "runs/r1/search/trials/b.json").write_text("{broken")
    with pytest.raises(DataError, match="b.json: not valid JSON"):
        journal.trials()


def test_earlier_trials_are_other_runs_records(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    RunJournal(store, "old").write(trial_key("old", "t1"), {"id": "t1"})
    RunJournal(store, "new").write(trial_key("new", "t1"), {"id": "t1"})
    (tmp_path / "runs/old/search/trials/t2.json").write_text("[1]")
    found = {uri.rpartition("/")[2]: (run, record, type(error).__name__)
             for run, uri, record, error in RunJournal(store, "new").earlier_trials()}
    assert found == {"t1.json": ("old", {"id": "t1"}, "NoneType"), "t2.json": ("old", None, "DataError")}
