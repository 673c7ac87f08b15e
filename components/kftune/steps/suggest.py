"""The pipeline's per-round planning step: one round of the search from the run's journal.

Round ``round_index`` of a search of ``search_rounds`` rounds is planned with the one planner rule
(:meth:`kftune.core.search_policy.SearchPolicy.plan_round`: new trials and promotions, at most
``max(parallelTrialCount, ceil(remaining / rounds left))``), the same call ``kftune search`` makes; the
finalists' round (``finalists``) plans the finalists' extra seeds. The plan is written to the journal
(``runs/<run>/search/rounds/round-NNNN.json``) before any of its trials starts. The trial records in the
journal are the history; a record that still says ``running`` after the previous round's barrier means
another driver writes the run (or a trial pod died without a result), and planning on it would end the
search around it, so that is an error.

A pipeline run's tasks hold the run's lease (:func:`kftune.io.lease.hold_for_pipeline`): this step takes
or renews it (``hold_lease``), so a second driver of the same run id is refused here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from kftune.core.search_policy import SearchPolicy, TrialRequest
from kftune.core.spec import TuningJob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuggestConfig:
    """Round ``round_index`` (0-based) of run ``run_id`` in ``store``, a search of ``search_rounds`` rounds
    (``finalists``: the finalists' round, after them). ``lease_owner``/``job_id``: who holds the run's lease
    (:func:`kftune.io.lease.pipeline_owner`); ``hold_lease`` False plans without it."""

    store: str
    run_id: str
    round_index: int
    search_rounds: int
    finalists: bool = False
    lease_owner: str = ""
    job_id: str = ""
    hold_lease: bool = True


@dataclass(frozen=True)
class SuggestResult:
    """The round's ``requests`` (empty: nothing to do, ``note`` says why), its ``plan`` as written to the
    journal, and the number of trials it was planned from (``history``)."""

    round: int
    kind: str
    requests: tuple[TrialRequest, ...]
    plan: dict[str, Any]
    history: int
    note: str | None

    def batches(self, width: int, run_id: str, store: str) -> list[list[str]]:
        """The requests as a pipeline's loop items (JSON: ``run_id``, ``store``, ``request``), in batches of
        ``width``; a round with nothing to do is one ``skip`` item (a ParallelFor must not run over an empty
        list)."""
        items = [json.dumps({"run_id": run_id, "store": store, "request": r.to_dict()}, sort_keys=True)
                 for r in self.requests]
        if not items:
            items = [json.dumps({"skip": True, "round": self.round, "reason": self.note}, sort_keys=True)]
        width = max(1, int(width))
        return [items[i:i + width] for i in range(0, len(items), width)]


def run(config: SuggestConfig, *, job: TuningJob) -> SuggestResult:
    """Plan the round (see the module docstring), write its plan, and return it. Raises
    :class:`~kftune.io.lease.LeaseHeldError` when another driver holds the run, :class:`DataError` when a
    trial record says ``running``."""
    from kftune.core.errors import DataError
    from kftune.core.space import SearchSpace
    from kftune.io.journal import RunJournal

    journal = RunJournal.open(config.store, config.run_id)
    if config.hold_lease:
        from kftune.io.lease import hold_for_pipeline, pipeline_owner

        hold_for_pipeline(journal.store, journal.run_id, pipeline_owner(config.lease_owner, config.job_id))
    trials = journal.trials()
    running = [t.id for t in trials if t.state == "running"]
    if running:  # every trial task of the previous round has ended (the barrier): someone else writes this run
        raise DataError(
            f"trial record(s) {', '.join(running)} of run {journal.run_id!r} say running, but every trial task of "
            f"this pipeline's earlier rounds has ended: another driver (a second pipeline run or `kftune search` "
            f"with the same run id) is writing this run, or a trial pod died without a result. Give this run its "
            f"own run_id, or delete those records to have them re-run ({journal.run_uri('search/trials')})")
    pinned = journal.read_space()
    space = pinned[0] if pinned is not None else SearchSpace.from_parameters(job.spec.search.parameters)
    policy = SearchPolicy.from_job(job, space=space)
    if config.finalists:
        requests = policy.finalist_requests(trials, config.round_index)
        note = "no finalist re-runs (search.finalists is 0, finalistRuns adds no seed, or nothing completed)"
        judged: list[str] = []
    else:
        requests = policy.plan_round(trials, config.round_index, config.search_rounds)
        note = f"the search is over ({policy.end_reason(trials)})"
        judged = policy.judged(trials)
    note_or_none = None if requests else note
    plan = journal.write_round(config.round_index, "finalists" if config.finalists else "search", requests,
                               history=len(trials), judged=judged, note=note_or_none)
    promotions = sum(r.promotion for r in requests)
    log.info("round %d: %d request(s) (%d promotion(s)) from %d trial(s)%s", config.round_index, len(requests),
             promotions, len(trials), f"; {note}" if not requests else "")
    return SuggestResult(round=config.round_index, kind=plan["kind"], requests=tuple(requests), plan=plan,
                         history=len(trials), note=note_or_none)
