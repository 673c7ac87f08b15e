"""``select_best``: the winner from the journal, ``best.json`` in the one schema, the trials table and plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from kftune.core.errors import DataError
from kftune.core.search_policy import WINNER_FIELDS
from kftune.io.journal import RunJournal
from kftune.io.specfile import load_spec
from kftune.io.store import open_store
from kftune.steps import select_best
from tests.steps.test_trial import write_spec


def _record(tid: str, index: int, lr: float, state: str, objective: float | None, budget: int = 2) -> dict:
    return {"id": tid, "index": index, "kind": "trial", "state": state, "objective": objective, "budget": budget,
            "budget_asked": budget, "assignment": {"learning_rate": lr}, "objective_runs": [objective] if objective
            is not None else [], "seeds": [1], "reason": "out of memory" if state == "failed" else None}


def test_the_winner_goes_to_best_json_with_the_finalists(tmp_path: Path) -> None:
    job = load_spec(write_spec(tmp_path / "spec.yaml", max_trials=3, finalists=2, finalist_runs=2))
    journal = RunJournal(open_store(tmp_path / "store"), "r1")
    for rec in (_record("trial-0001", 0, 0.01, "completed", 0.7), _record("trial-0002", 1, 0.02, "completed", 0.8),
                _record("trial-0003", 2, 0.03, "failed", None)):
        journal.write(journal.trial_key(rec["id"]), rec)
    journal.write(journal.finalist_key("trial-0001", [2]), {"id": "trial-0001", "state": "completed", "objective": 0.9,
                                                            "seeds": [2], "budget": 2})
    journal.write(journal.finalist_key("trial-0002", [2]), {"id": "trial-0002", "state": "completed", "objective": 0.7,
                                                            "seeds": [2], "budget": 2})
    journal.write_round(0, "search", [], history=0)
    result = select_best.run(select_best.SelectBestConfig(store=str(tmp_path / "store"), run_id="r1"), job=job)
    best = journal.best()
    assert best == result.best and best["trial_id"] == "trial-0001"  # mean 0.8 beats 0.75
    assert best["chosen_on"] == "finalists" and best["values"] == [0.7, 0.9] and best["objective"] == pytest.approx(0.8)
    assert set(WINNER_FIELDS) <= set(best) and best["trials"] == {"completed": 2, "failed": 1}
    assert (best["stop_reason"], best["status"], best["finalist_epochs"]) == ("max_trials", "succeeded", 4)
    assert "**trial-0001**" in result.markdown and "## Finalists" in result.markdown
    assert "data:image/png;base64," in result.html
    assert result.metrics["trials_failed"] == 1 and result.metrics["best_objective"] == pytest.approx(0.8)


def test_no_result_is_an_error_naming_every_trials_state(tmp_path: Path) -> None:
    job = load_spec(write_spec(tmp_path / "spec.yaml"))
    journal = RunJournal(open_store(tmp_path / "store"), "r1")
    journal.write(journal.trial_key("trial-0001"), _record("trial-0001", 0, 0.01, "failed", None))
    with pytest.raises(DataError, match=r"trial-0001 failed \(out of memory\)"):
        select_best.run(select_best.SelectBestConfig(store=str(tmp_path / "store"), run_id="r1"), job=job)
    assert journal.best() is None
