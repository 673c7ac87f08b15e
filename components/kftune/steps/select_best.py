"""The pipeline's selection step: name the winner from the run's journal and write ``best.json``.

The winner is :meth:`kftune.core.search_policy.SearchPolicy.select_best`'s: the finalist with the best
mean objective over seeds, else the best completed trial, else the best paused one. ``best.json``
(``runs/<run>/search/best.json``) is :func:`kftune.core.search_policy.best_record`, the same schema
``kftune search`` writes. The step also renders the trials table (Markdown, with the finalists) and a
page with the trials plot, for KFP's Markdown and HTML outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kftune.core.search_policy import Winner
from kftune.core.spec import TuningJob
from kftune.core.trials import Trial


@dataclass(frozen=True)
class SelectBestConfig:
    """The run whose journal holds the trials: ``store`` (root URI) and ``run_id``."""

    store: str
    run_id: str


@dataclass(frozen=True)
class SelectBestResult:
    """``best``: what went to ``best.json``; ``winner``; ``trials`` (the history); ``markdown`` (the trials
    table) and ``html`` (the same with the trials plot); ``metrics`` (best objective and spread, trials by
    state)."""

    best: dict[str, Any]
    winner: Winner
    trials: list[Trial]
    markdown: str
    html: str
    metrics: dict[str, float] = field(default_factory=dict)


def _markdown(best: dict[str, Any], trials: list[Trial]) -> str:
    from kftune.steps.report import trials_markdown

    lines = ["# Trials", "", f"Winner: **{best['trial_id']}**, {best['objective_metric']} "
             f"{best['objective']:.4f} ± {best['spread']:.4f} over {len(best['values'])} run(s) "
             f"(chosen on {best['chosen_on']}): " + ", ".join(f"{k}={v}" for k, v in best["assignment"].items()), ""]
    lines += trials_markdown(trials, best["trial_id"])
    if best["candidates"]:
        lines += ["", "## Finalists", "", "| trial | mean | spread | values | seeds |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {c['trial_id']} | {c['objective']:.4f} | {c['spread']:.4f} | "
                  f"{', '.join(f'{v:.4f}' for v in c['values'])} | {', '.join(map(str, c['seeds']))} |"
                  for c in best["candidates"]]
    return "\n".join(lines) + "\n"


def run(config: SelectBestConfig, *, job: TuningJob) -> SelectBestResult:
    """Choose the winner, write ``best.json``, render the table and plot. Raises :class:`DataError` naming
    every trial's state when no trial has a result (there is nothing to train)."""
    from kftune.core.errors import DataError
    from kftune.core.search_policy import SearchPolicy, best_record
    from kftune.core.space import SearchSpace
    from kftune.io.journal import RunJournal
    from kftune.steps.report import markdown_to_html, trials_png

    journal = RunJournal.open(config.store, config.run_id)
    pinned = journal.read_space()
    space, lr_range = pinned if pinned is not None else (SearchSpace.from_parameters(job.spec.search.parameters), None)
    policy = SearchPolicy.from_job(job, space=space)
    trials = journal.trials()
    finalists = journal.finalist_records()
    winner = policy.select_best(trials, finalists)
    if winner is None:
        states = ", ".join(f"{t.id} {t.state}" + (f" ({t.reason})" if t.reason else "") for t in trials) or "none"
        raise DataError(f"no trial of run {journal.run_id} has a result, so there is nothing to train: {states}")
    rounds = sum(1 for p in journal.rounds() if p.get("kind") == "search" and p.get("requests"))
    best = best_record(policy, trials, finalists, winner, run_id=journal.run_id, rounds=rounds, lr_range=lr_range)
    journal.write_best(best)
    text = _markdown(best, trials)
    images = {"trials.png": trials_png(trials, policy.objective_type, policy.metric)} if trials else {}
    page = markdown_to_html(text + ("\n![trials](trials.png)\n" if images else ""), images, "kftune trials")
    metrics = {"best_objective": float(winner.objective), "best_spread": float(winner.spread)}
    for state in ("completed", "pruned", "failed"):
        metrics[f"trials_{state}"] = sum(t.state == state for t in trials)
    return SelectBestResult(best=best, winner=winner, trials=trials, markdown=text, html=page, metrics=metrics)
