"""``suggest``: one round planned from the journal with the planner rule, its plan written first, batches for
a pipeline's loop, the finalists' round, and refusals (a record still running, another driver's lease)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kftune.core.errors import DataError
from kftune.core.search_policy import SearchPolicy
from kftune.io.journal import RunJournal
from kftune.io.lease import LeaseHeldError
from kftune.io.specfile import load_spec
from kftune.io.store import open_store
from kftune.steps import suggest
from tests.steps.test_trial import write_spec


def _config(tmp_path: Path, round_index: int, rounds: int, **kw: Any) -> suggest.SuggestConfig:
    return suggest.SuggestConfig(store=str(tmp_path / "store"), run_id="r1", round_index=round_index,
                                 search_rounds=rounds, **{"hold_lease": False, **kw})


def _finish(journal: RunJournal, result: suggest.SuggestResult, policy: SearchPolicy) -> None:
    for q in result.requests:
        value = 0.5 + 0.01 * q.index
        state = "completed" if q.budget >= policy.max_budget else "pruned"
        journal.write(journal.request_key(q), {
            "id": q.trial_id, "index": q.index, "kind": q.kind, "assignment": dict(q.assignment), "state": state,
            "objective": value, "intermediate": [[e, value] for e in range(1, q.budget + 1)], "budget": q.budget,
            "budget_asked": q.budget, "seeds": list(q.seeds or [1])})


def test_rounds_follow_the_planner_rule_and_their_plans_are_written_first(tmp_path: Path) -> None:
    job = load_spec(write_spec(tmp_path / "spec.yaml", early_stopping="successive-halving", max_epochs=3,
                               max_trials=4, parallel=2, es_settings={"eta": "2", "min_budget": "1", "max_budget": "3"},
                               finalists=1, finalist_runs=2))
    policy = SearchPolicy.from_job(job)
    rounds = policy.rounds_needed()
    journal = RunJournal(open_store(tmp_path / "store"), "r1")
    history = []
    for r in range(rounds):
        result = suggest.run(_config(tmp_path, r, rounds), job=job)
        assert [q.to_dict() for q in result.requests] == [q.to_dict() for q in policy.plan_round(history, r, rounds)]
        assert journal.read(journal.round_key(r)) == result.plan and result.plan["kind"] == "search"
        _finish(journal, result, policy)
        history = journal.trials()
    assert len(history) == 4 and sorted(t.budget_used for t in history) == [1, 1, 2, 3]
    final = suggest.run(_config(tmp_path, rounds, rounds, finalists=True), job=job)
    assert [(q.kind, q.seeds) for q in final.requests] == [("finalist", (2,))]
    batches = final.batches(2, "r1", "s3://b/p")
    assert json.loads(batches[0][0]) == {"run_id": "r1", "store": "s3://b/p", "request": final.requests[0].to_dict()}
    over = suggest.run(_config(tmp_path, rounds + 1, rounds), job=job)  # a spare round: one skip item
    assert over.requests == () and "the search is over" in over.note
    [[item]] = over.batches(2, "r1", "s")
    assert json.loads(item) == {"skip": True, "round": rounds + 1, "reason": over.note}


def test_batches_are_parallel_wide() -> None:
    from kftune.core.search_policy import TrialRequest

    requests = tuple(TrialRequest(f"t{i}", i, {}, 1, round=0) for i in range(5))
    result = suggest.SuggestResult(round=0, kind="search", requests=requests, plan={}, history=0, note=None)
    assert [len(b) for b in result.batches(2, "r", "s")] == [2, 2, 1]


def test_medianstop_rounds_name_the_trials_they_are_judged_against(tmp_path: Path) -> None:
    job = load_spec(write_spec(tmp_path / "spec.yaml", early_stopping="medianstop", max_trials=4, parallel=2))
    journal = RunJournal(open_store(tmp_path / "store"), "r1")
    _finish(journal, suggest.run(_config(tmp_path, 0, 2), job=job), SearchPolicy.from_job(job))
    second = suggest.run(_config(tmp_path, 1, 2), job=job)
    assert second.plan["judged"] == ["trial-0001", "trial-0002"]


def test_a_record_still_running_or_another_drivers_lease_is_refused(tmp_path: Path) -> None:
    job = load_spec(write_spec(tmp_path / "spec.yaml"))
    suggest.run(_config(tmp_path, 0, 4, hold_lease=True, job_id="job-1"), job=job)
    with pytest.raises(LeaseHeldError, match="Give this pipeline run its own run_id"):
        suggest.run(_config(tmp_path, 1, 4, hold_lease=True, job_id="job-2"), job=job)
    journal = RunJournal(open_store(tmp_path / "store"), "r1")
    journal.write(journal.trial_key("trial-0001"), {"id": "trial-0001", "index": 0, "state": "running",
                                                    "assignment": {}, "budget": 0})
    with pytest.raises(DataError, match="trial-0001 of run 'r1' say running"):
        suggest.run(_config(tmp_path, 1, 4, hold_lease=True, job_id="job-1"), job=job)
