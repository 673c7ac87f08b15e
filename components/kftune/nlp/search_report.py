"""Renderers for a search's outputs: the trials table (TSV), the plots (PNG), Markdown and HTML summaries.

No torch and no I/O besides writing the PNG a caller names; matplotlib is imported inside the plot
functions and used through its object API with the Agg canvas (no pyplot state, no display).

Inputs are the trial records of :mod:`kftune.steps.trial` (creation order) and the ``best.json``
object (:func:`kftune.core.search_policy.best_record`) that ``kftune search`` and the pipeline write.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

STATE_STYLE = {"completed": ("tab:blue", "o"), "pruned": ("tab:orange", "v"), "failed": ("tab:red", "x"),
               "running": ("tab:gray", ".")}


def _num(value: Any, digits: int = 6) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def _cell(value: Any) -> str:
    return _num(value).replace("\t", " ").replace("\n", " ")


TSV_COLUMNS = ("trial", "state", "objective", "spread", "variance", "epochs", "seconds")


def trials_tsv(records: Sequence[Mapping[str, Any]], parameter_names: Sequence[str]) -> str:
    """One row per trial, tab-separated with a header: ``trial state objective spread variance epochs
    seconds <parameter>... reason`` (Flair's ``param_selection.txt`` as a table: objective = mean of
    the last 3 dev values averaged over the training runs, ``spread`` their standard deviation over
    runs, ``variance`` Flair's mean variance of the last 3 values)."""
    head = list(TSV_COLUMNS) + list(parameter_names) + ["reason"]
    lines = ["\t".join(head)]
    for r in records:
        a = r.get("assignment") or {}
        row = [r.get("id"), r.get("state"), r.get("objective"), r.get("objective_spread"),
               r.get("objective_variance"), r.get("budget"), r.get("seconds")]
        row += [a.get(n) for n in parameter_names] + [r.get("reason")]
        lines.append("\t".join(_cell(v) for v in row))
    return "\n".join(lines) + "\n"


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def objective_png(records: Sequence[Mapping[str, Any]], space: Any, objective_type: str, metric: str,
                  path: str | Path, title: str = "search") -> Path:
    """The objective of every trial in creation order (marker per state, failed trials as red crosses on
    the lower edge) with the best-so-far line; written to ``path`` as PNG."""
    fig = _figure(8, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    values = [float(r["objective"]) for r in records if _finite(r.get("objective"))]
    low = min(values) if values else 0.0
    for state, (colour, marker) in STATE_STYLE.items():
        xs, ys = [], []
        for i, r in enumerate(records, 1):
            if r.get("state") != state:
                continue
            if _finite(r.get("objective")):
                xs.append(i)
                ys.append(float(r["objective"]))
            elif state == "failed":
                xs.append(i)
                ys.append(low)
        if xs:
            ax.scatter(xs, ys, c=colour, marker=marker, label=f"{state} ({len(xs)})", zorder=3)
    best_x, best_y, best = [], [], None
    better = (lambda a, b: a > b) if objective_type == "maximize" else (lambda a, b: a < b)
    for i, r in enumerate(records, 1):
        v = r.get("objective")
        if r.get("state") in ("completed", "pruned") and _finite(v) and (best is None or better(float(v), best)):
            best = float(v)
        if best is not None:
            best_x.append(i)
            best_y.append(best)
    if best_x:
        ax.step(best_x, best_y, where="post", color="tab:green", label="best so far", zorder=2)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (creation order)")
    ax.set_ylabel(f"{metric} ({objective_type}; mean of the last 3 evaluations)")
    ax.set_title(f"{title}: objective per trial")
    ax.grid(alpha=0.3)
    if records:
        ax.legend(fontsize=8)
    return _save(fig, path)


def parameters_png(records: Sequence[Mapping[str, Any]], space: Any, objective_type: str, metric: str,
                   path: str | Path, title: str = "search") -> Path:
    """One panel per search parameter: its value against the objective (log axis for log-distributed
    parameters, one position per value for discrete and categorical ones), coloured by state."""
    params = list(space.parameters)
    cols = min(3, max(1, len(params)))
    rows = max(1, math.ceil(len(params) / cols))
    fig = _figure(4.2 * cols, 3.4 * rows)
    for n, p in enumerate(params, 1):
        ax = fig.add_subplot(rows, cols, n)
        categorical = not p.is_numeric_range
        choices = list(p.choices) if categorical else []
        for state, (colour, marker) in STATE_STYLE.items():
            xs, ys = [], []
            for r in records:
                v = (r.get("assignment") or {}).get(p.name)
                if r.get("state") != state or not _finite(r.get("objective")) or v is None:
                    continue
                if categorical:
                    if v not in choices:
                        continue
                    xs.append(choices.index(v))
                else:
                    xs.append(float(v))
                ys.append(float(r["objective"]))
            if xs:
                ax.scatter(xs, ys, c=colour, marker=marker, label=state, alpha=0.8)
        if categorical:
            ax.set_xticks(range(len(choices)))
            ax.set_xticklabels([str(c) for c in choices], rotation=30 if len(choices) > 4 else 0)
            ax.set_xlim(-0.5, len(choices) - 0.5)
        elif p.is_log:
            ax.set_xscale("log")
        ax.set_xlabel(p.name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if n == 1 and records:
            ax.legend(fontsize=7)
    fig.suptitle(f"{title}: parameters against the objective ({objective_type})")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------

STOP_TEXT = {
    "max_trials": "all maxTrialCount trials ran",
    "goal": "a trial reached the objective's goal",
    "failures": "maxFailedTrialCount trials failed: the search failed",
    "exhausted": "the algorithm had nothing more to suggest",
}


def _winner(best: Mapping[str, Any]) -> Mapping[str, Any]:
    """The winner's part of ``best.json`` (:func:`kftune.core.search_policy.best_record`: its fields are at the
    top level; an older ``kftune search`` nested them under ``best``); empty when no trial has a result."""
    if "best" in best and "trial_id" not in best:
        return best.get("best") or {}
    return best if best.get("trial_id") else {}


def _best_lines(best: Mapping[str, Any]) -> list[str]:
    win = _winner(best)
    if not win:
        return ["No trial produced a result."]
    values = ", ".join(_num(v, 4) for v in win.get("values") or [])
    seeds = ", ".join(str(s) for s in win.get("seeds") or [])
    how = {"finalists": f"chosen on the mean over {len(win.get('values') or [])} seeds among the finalists",
           "search": "the best completed trial (no finalist re-runs)",
           "pruned": "no trial completed: the best paused one"}.get(win.get("chosen_on"), "")
    return [f"**Best: {win['trial_id']}**, {best.get('objective_metric')} = {_num(win['objective'], 4)} "
            f"± {_num(win['spread'], 3)} (mean ± sd over seeds {seeds}: {values}; {how}; "
            f"{win.get('budget')} epochs)"]


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        out.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |")
    return out


def _trial_rows(records: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[list[Any]]:
    return [[r.get("id"), r.get("state"), r.get("objective"), r.get("objective_spread"), r.get("budget")]
            + [(r.get("assignment") or {}).get(n) for n in names] + [r.get("reason") or ""] for r in records]


def summary_markdown(best: Mapping[str, Any], records: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    """The search summary as Markdown: the winner, why the search stopped, the finalists, the LR range
    hand-off and space notes, and every trial."""
    counts = best.get("trials") or {}
    lines = [f"# Search {best.get('run_id')}", ""]
    lines += _best_lines(best)
    win = _winner(best)
    if win.get("assignment"):
        lines += [""] + _table(["parameter", "value"], [[k, v] for k, v in win["assignment"].items()])
    lines += ["", f"- status: {best.get('status')} ({STOP_TEXT.get(best.get('stop_reason'), best.get('stop_reason'))})",
              f"- objective: {best.get('objective_type')} {best.get('objective_metric')} (per training run the mean "
              "of its last 3 dev evaluations, averaged over the runs)",
              f"- trials: {len(records)} of at most {best.get('max_trial_count')} ("
              + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")",
              f"- training epochs: {best.get('search_epochs')} in the search, {best.get('finalist_epochs')} in "
              "finalist re-runs",
              f"- rounds: {best.get('rounds')}, time: {_num(best.get('seconds'), 4)} s"]
    finalists = _winner(best).get("candidates") or []
    if finalists:
        lines += ["", "## Finalists (re-trained with extra seeds; winner on the mean)", ""]
        lines += _table(["trial", "mean", "sd", "values", "search objective", "search rank"],
                        [[c.get("trial_id"), c.get("objective"), c.get("spread"),
                          ", ".join(_num(v, 4) for v in c.get("values") or []), c.get("search_objective"),
                          c.get("search_rank")] for c in finalists])
    notes = list(best.get("space_notes") or [])
    lr = best.get("lr_range")
    if lr and lr.get("reason") and lr.get("reason") not in notes:
        notes.insert(0, lr["reason"])
    if notes:
        lines += ["", "## Search space notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Trials", ""]
    lines += _table(["trial", "state", "objective", "spread", "epochs", *names, "reason"], _trial_rows(records, names))
    return "\n".join(lines) + "\n"


def summary_html(best: Mapping[str, Any], records: Sequence[Mapping[str, Any]], names: Sequence[str],
                 images: Mapping[str, bytes] | None = None) -> str:
    """The same summary as one self-contained HTML page (the PNGs in ``images`` embedded), for the KFP UI."""
    esc = html.escape
    counts = best.get("trials") or {}
    win = _winner(best)
    parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
             f"<title>Search {esc(str(best.get('run_id')))}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}th{background:#f2f2f2}"
             ".failed{color:#b00}.pruned{color:#a60}</style></head><body>",
             f"<h1>Search {esc(str(best.get('run_id')))}</h1>"]
    parts += [f"<p>{esc(line.replace('**', ''))}</p>" for line in _best_lines(best)]
    if win.get("assignment"):
        parts.append("<table><tr><th>parameter</th><th>value</th></tr>" + "".join(
            f"<tr><td>{esc(str(k))}</td><td>{esc(_num(v))}</td></tr>" for k, v in win["assignment"].items())
            + "</table>")
    parts.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in (
        f"status: {best.get('status')} ({STOP_TEXT.get(best.get('stop_reason'), best.get('stop_reason'))})",
        f"trials: {len(records)} of at most {best.get('max_trial_count')} ("
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")",
        f"training epochs: {best.get('search_epochs')} in the search, {best.get('finalist_epochs')} in finalist "
        "re-runs")) + "</ul>")
    for name, data in (images or {}).items():
        parts.append(f"<p><img alt=\"{esc(name)}\" src=\"data:image/png;base64,"
                     f"{base64.b64encode(data).decode('ascii')}\"></p>")
    finalists = _winner(best).get("candidates") or []
    if finalists:
        parts.append("<h2>Finalists</h2><table><tr><th>trial</th><th>mean</th><th>sd</th><th>values</th>"
                     "<th>search objective</th></tr>" + "".join(
                         f"<tr><td>{esc(str(c.get('trial_id')))}</td><td>{esc(_num(c.get('objective'), 4))}</td>"
                         f"<td>{esc(_num(c.get('spread'), 3))}</td><td>"
                         f"{esc(', '.join(_num(v, 4) for v in c.get('values') or []))}</td>"
                         f"<td>{esc(_num(c.get('search_objective'), 4))}</td></tr>" for c in finalists) + "</table>")
    notes = list(best.get("space_notes") or [])
    if notes:
        parts.append("<h2>Search space notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    head = ["trial", "state", "objective", "spread", "epochs", *names, "reason"]
    parts.append("<h2>Trials</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>" + "".join(
        f"<tr class=\"{esc(str(row[1]))}\">" + "".join(f"<td>{esc(_cell(v))}</td>" for v in row) + "</tr>"
        for row in _trial_rows(records, names)) + "</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
