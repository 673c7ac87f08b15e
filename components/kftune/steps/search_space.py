"""The pipeline's search space step: the LR range test, its hand-off to the space, a warm start, space.json.

1. With ``spec.lrRangeTest.enabled`` (the default), the LR range test runs (:func:`kftune.steps.lr_find.run`
   on the parsed spec, outputs in ``lr_out``) and the ``feasibleSpace`` of ``lrRangeTest.applyTo`` becomes
   the range it suggests (:func:`kftune.core.lr_handoff.apply_lr_range`); otherwise the spec's space is kept.
2. With ``warm_start``, the space is narrowed (:func:`kftune.core.space.narrow`, the algorithm's ``top_k``
   and ``shrink`` settings, default 3 and 0.5) around the best trials that *earlier* runs under the same
   store root recorded with the same objective metric; without any, the search starts cold (a note says so).
3. The space goes to the run's journal (``runs/<run>/search/space.json``: parameters, notes, the LR
   hand-off note), where every trial of the run validates its assignment against it.

``kftune search`` builds its space the same way from ``--lr-find`` (:func:`kftune.steps.search.prepare_space`).
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from kftune.core.space import SearchSpace
from kftune.core.spec import TuningJob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchSpaceConfig:
    """``corpus``: the corpus step's output; ``store``/``run_id``: the run's journal; ``lr_out``: where the LR
    range test's outputs go (a directory or store URI); ``warm_start``: narrow around earlier runs."""

    corpus: str
    store: str
    run_id: str
    lr_out: str
    warm_start: bool = False


@dataclass(frozen=True)
class SearchSpaceResult:
    """The space and ``space.json`` (``document``); the LR range test's hand-off note (``lr_range``) and
    result (``lr_find``, ``None`` when the test is off); ``markdown`` and ``html``: the step's summary and
    the LR curve page (for KFP's Markdown and HTML outputs); ``metrics``: the test's metrics."""

    space: SearchSpace
    document: dict[str, Any]
    markdown: str
    html: str
    lr_range: dict[str, Any] | None = None
    lr_find: Any = None
    metrics: dict[str, float] = field(default_factory=dict)


def warm_start(space: SearchSpace, job: TuningJob, journal: Any) -> SearchSpace:
    """``space`` narrowed around the best trials of earlier runs in ``journal``'s store (see the module
    docstring); unchanged, with a note, when there are none."""
    from kftune.core.space import narrow
    from kftune.core.trials import Trial, ranked

    search = job.spec.search
    metric = search.objective.objective_metric_name
    earlier = []
    for run, uri, record, error in journal.earlier_trials():
        try:
            if error is not None:
                raise error
            t = Trial.from_dict(record)
        except Exception as exc:  # noqa: BLE001 - an unreadable record of another run is skipped
            log.warning("warm start: skipping %s: %s", uri, exc)
            continue
        if record.get("objective_metric", metric) == metric:
            earlier.append((run, t))
    settings = search.algorithm.settings()
    top_k = int(settings.get("top_k", 3))
    shrink = float(settings.get("shrink", 0.5))
    best = ranked([t for _, t in earlier], search.objective.type, ("completed", "pruned"))[:top_k]
    centers = {}
    for p in space:
        values = [t.assignment[p.name] for t in best if p.name in t.assignment and p.contains(t.assignment[p.name])]
        if values:
            centers[p.name] = values
    if not centers:
        return SearchSpace(space.parameters, space.notes + (
            "warm start: no earlier trial with a result under this store root; the search starts cold",))
    runs = sorted({r for r, _ in earlier})
    return narrow(space, centers, shrink, reason=f"warm start: the best {len(best)} of {len(earlier)} trials of "
                                                 f"earlier runs {', '.join(runs)}")


def run(config: SearchSpaceConfig, *, job: TuningJob) -> SearchSpaceResult:
    """Set the run's search space (see the module docstring) and write it to the journal."""
    from kftune.io.journal import RunJournal
    from kftune.io.store import get_text, open_store

    journal = RunJournal.open(config.store, config.run_id)
    space = SearchSpace.from_parameters(job.spec.search.parameters)
    cfg = job.spec.lr_range_test
    lr_result, note, metrics = None, None, {}
    if cfg.enabled:
        from kftune.core.lr_handoff import apply_lr_range
        from kftune.steps import lr_find

        lr_result = lr_find.run(lr_find.LrFindConfig(corpus=config.corpus, out=config.lr_out), job=job)
        params, note = apply_lr_range(space.to_parameters(), lr_result.record, cfg.apply_to)
        note = {**note, "source": lr_result.out}
        space = SearchSpace(SearchSpace.from_parameters(params).parameters, space.notes + (note["reason"],))
        out = open_store(config.lr_out)
        page = get_text(out, lr_find.HTML_FILE)
        lines = [get_text(out, lr_find.MARKDOWN_FILE).rstrip(), ""]
        metrics = dict(lr_result.metrics)
    else:
        text = "The LR range test is off (spec.lrRangeTest.enabled: false): the search uses the spec's space."
        lines = ["# Learning-rate range test", "", text, ""]
        page = f"<html><body><p>{html.escape(text)}</p></body></html>\n"
    if config.warm_start:
        space = warm_start(space, job, journal)
    document = journal.write_space(space, note)
    lines += ["## Search space", "", "| parameter | type | feasible space |", "| --- | --- | --- |"]
    for p in document["parameters"]:
        lines.append(f"| {p['name']} | {p['parameterType']} | `{json.dumps(p['feasibleSpace'], sort_keys=True)}` |")
    lines += [""] + [f"- {n}" for n in document["notes"]]
    return SearchSpaceResult(space=space, document=document, markdown="\n".join(lines) + "\n", html=page,
                             lr_range=note, lr_find=lr_result, metrics=metrics)
