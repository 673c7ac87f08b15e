"""Renderers for a learning-rate range test: the plot (PNG), the TSV, and Markdown/HTML summaries.

No torch here; matplotlib is imported inside :func:`lr_curve_png` and used through its object API with
the Agg canvas (no pyplot state, no display), so rendering is safe in pods and threads. The plot follows
Flair's ``Plotter.plot_learning_rate`` (log x axis, the noisy first and last points left out) and adds
what that plot lacks: the raw losses faintly behind the smoothed curve, one marker and line per heuristic
with its learning rate in the legend, and the suggested ``[base_lr, max_lr]`` range shaded.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Sequence

from kftune.core.lr_range import METHODS, RangeTestResult, Suggestion

# One colour per heuristic (matplotlib's default cycle, skipping the curve's blue).
_COLOURS = {"valley": "tab:red", "steepest": "tab:green", "minimum": "tab:purple"}
_LABELS = {"valley": "valley", "steepest": "steepest descent", "minimum": "minimum / 10"}


def format_lr(lr: float | None) -> str:
    """A learning rate as the summaries print it: ``3.16e-02``; ``None`` as ``none``."""
    return "none" if lr is None else f"{lr:.2e}"


def _tsv_number(x: float) -> str:
    return repr(float(x)) if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


def learning_rate_tsv(result: RangeTestResult) -> str:
    """One row per recorded batch, tab-separated, with a header: ``ITERATION`` (0-based, as ``stop_index``
    and the suggestions' ``index``), ``LEARNING_RATE``, ``TRAIN_LOSS`` (raw), ``SMOOTHED_LOSS`` (the
    bias-corrected average of the divergence rule), ``TREND_LOSS`` (the curve the suggestions read), and
    ``DEV_METRIC`` when a metric was recorded. Non-finite numbers are written ``nan``/``inf``."""
    head = ["ITERATION", "LEARNING_RATE", "TRAIN_LOSS", "SMOOTHED_LOSS", "TREND_LOSS"]
    if result.metric is not None:
        head.append("DEV_METRIC")
    rows = ["\t".join(head)]
    for i, lr in enumerate(result.lrs):
        cells = [str(i), _tsv_number(lr), _tsv_number(result.losses[i]), _tsv_number(result.smoothed[i]),
                 _tsv_number(result.trend[i])]
        if result.metric is not None:
            cells.append(_tsv_number(result.metric[i]))
        rows.append("\t".join(cells))
    return "\n".join(rows) + "\n"


def _finite(xs: Sequence[float]) -> list[float]:
    return [x for x in xs if math.isfinite(x)]


def _plot_window(result: RangeTestResult) -> tuple[int, int]:
    """The points the plot shows: the analysis window (first/last points skipped, as Flair's plotter),
    or everything finite when that window is too small to draw."""
    lo, hi = result.analysis_window
    finite = sum(1 for x in result.losses if math.isfinite(x))
    if hi - lo < 2:
        return 0, finite
    return lo, hi


def lr_curve_png(result: RangeTestResult, *, width: float = 7.5, height: float = 4.5, dpi: int = 110) -> bytes:
    """The range test as a PNG: loss against learning rate on a log axis, the raw losses faint, the
    smoothed and trend curves, one marker and vertical line per heuristic (its lr in the legend), the
    chosen method drawn boldly, and the suggested range shaded. With a dev metric, a second axis shows it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = _plot_window(result)
    lrs = list(result.lrs[lo:hi])
    if lrs:
        ax.plot(lrs, result.losses[lo:hi], color="tab:blue", alpha=0.25, linewidth=0.8, label="loss (raw)")
        ax.plot(lrs, result.smoothed[lo:hi], color="tab:blue", linewidth=1.0, linestyle=":",
                label="moving average (divergence rule)")
        ax.plot(lrs, result.trend[lo:hi], color="tab:blue", linewidth=2.0, label="trend (suggestions)")
    if result.range is not None:
        r = result.range
        ax.axvspan(r.base_lr, r.max_lr, color="tab:orange", alpha=0.15,
                   label=f"range {format_lr(r.base_lr)} – {format_lr(r.max_lr)}")
    for method in METHODS:
        s = result.suggestions[method]
        if s.lr is None:
            continue
        chosen = method == result.method
        colour = _COLOURS[method]
        label = f"{_LABELS[method]}: {format_lr(s.lr)}" + (" (chosen)" if chosen else "")
        ax.axvline(s.lr, color=colour, linewidth=1.8 if chosen else 1.0, linestyle="-" if chosen else "--",
                   alpha=0.9)
        y = _trend_at(result, s)
        if y is not None:
            ax.plot([s.lr], [y], marker="o", markersize=8 if chosen else 6, color=colour, linestyle="none",
                    label=label)
        else:
            ax.plot([], [], color=colour, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    _set_loss_limits(ax, result, lo, hi)
    ax.grid(True, which="major", alpha=0.3)
    if result.metric is not None:
        ax2 = ax.twinx()
        pts = [(lr, m) for lr, m in zip(result.lrs, result.metric) if math.isfinite(m)]
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:gray", marker=".", markersize=3,
                     linewidth=0.8, alpha=0.8, label="dev metric")
            ax2.set_ylabel("dev metric")
            if result.metric_range is not None:
                mr = result.metric_range
                ax2.axvspan(mr.base_lr, mr.max_lr, ymin=0, ymax=0.04, color="tab:gray", alpha=0.6,
                            label=f"metric range {format_lr(mr.base_lr)} – {format_lr(mr.max_lr)}")
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, loc="best", fontsize="small")
        elif ax.get_legend_handles_labels()[1]:
            ax.legend(loc="best", fontsize="small")
    elif ax.get_legend_handles_labels()[1]:
        ax.legend(loc="best", fontsize="small")
    s = result.suggestion
    title = (f"LR range test: {format_lr(s.lr)} ({result.method})" if s.lr is not None
             else f"LR range test: no suggestion ({result.method})")
    if result.diverged:
        title += f", diverged at batch {result.stop_index}"
    ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _trend_at(result: RangeTestResult, s: Suggestion) -> float | None:
    """The trend at the suggestion's learning rate (interpolated in log lr) for its marker."""
    pts = [(math.log(lr), y) for lr, y in zip(result.lrs, result.trend) if math.isfinite(y)]
    if not pts or s.lr is None:
        return None
    x = math.log(s.lr)
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]


def _set_loss_limits(ax: object, result: RangeTestResult, lo: int, hi: int) -> None:
    """Keep the interesting part in view: from a little below the lowest trend to a margin above the
    level the curve starts from, so an explosion at the end does not squash the valley."""
    trend = _finite(result.trend[lo:hi])
    if not trend:
        return
    bottom = min(trend + _finite(result.smoothed[lo:hi]))
    start = max(_finite(result.trend[lo:lo + max(1, (hi - lo) // 5)]) or trend)
    top = max(start, bottom)
    pad = 0.25 * (top - bottom) or 0.1 * abs(top) or 1.0
    ax.set_ylim(bottom - pad, top + 2 * pad)  # type: ignore[attr-defined]


def _rows(result: RangeTestResult) -> list[tuple[str, str, str]]:
    out = []
    for m in METHODS:
        s = result.suggestions[m]
        name = _LABELS[m] + (" (chosen)" if m == result.method else "")
        out.append((name, format_lr(s.lr), s.reason))
    return out


def _stop_line(result: RangeTestResult) -> str:
    n = len(result.lrs)
    return (f"Diverged after {n} of {result.config.iterations} batches: {result.stop_reason}" if result.diverged
            else f"Ran {n} of {result.config.iterations} batches: {result.stop_reason}")


def _settings(result: RangeTestResult) -> str:
    c = result.config
    k = "off" if c.divergence_factor is None else f"{c.divergence_factor:g}"
    return (f"startLR {c.start_lr:g}, endLR {c.end_lr:g}, iterations {c.iterations}, mode {c.mode}, "
            f"smoothing {c.smoothing:g}, divergenceFactor {k}; suggestions skip the first "
            f"{c.resolved_skip_start} and last {c.resolved_skip_end} batches")


def render_lr_markdown(result: RangeTestResult) -> str:
    """A Markdown summary for the KFP UI: the suggestion, the range, every heuristic, how the test ended."""
    s = result.suggestion
    lines = ["# Learning-rate range test", ""]
    if s.lr is not None:
        lines.append(f"**Suggested learning rate: {format_lr(s.lr)}** ({result.method}). {s.reason}")
    else:
        lines.append(f"**No suggestion** ({result.method}): {s.reason}")
    lines.append("")
    if result.range is not None:
        r = result.range
        lines.append(f"**Range for the search and cyclical schedules: [{format_lr(r.base_lr)}, "
                     f"{format_lr(r.max_lr)}]** ({r.reason}).")
    else:
        lines.append("**No range**: the curve has no valley to read one from.")
    lines += ["", "| heuristic | learning rate | how |", "| --- | --- | --- |"]
    for name, lr, reason in _rows(result):
        lines.append(f"| {name} | {lr} | {reason.replace('|', '/')} |")
    if result.metric_range is not None:
        mr = result.metric_range
        lines += ["", f"Dev metric: rises from {format_lr(mr.base_lr)} and peaks by {format_lr(mr.max_lr)}."]
    lines += ["", _stop_line(result) + ".", "", f"Settings: {_settings(result)}.", ""]
    return "\n".join(lines)


def render_lr_html(result: RangeTestResult, png_bytes: bytes | None = None) -> str:
    """A self-contained HTML summary (the plot inlined as a base64 PNG) for KFP's HTML output."""
    e = html.escape
    s = result.suggestion
    head = (f"<p><strong>Suggested learning rate: {e(format_lr(s.lr))}</strong> ({e(result.method)}). "
            f"{e(s.reason)}</p>" if s.lr is not None
            else f"<p><strong>No suggestion</strong> ({e(result.method)}): {e(s.reason)}</p>")
    if result.range is not None:
        r = result.range
        rng = (f"<p><strong>Range for the search and cyclical schedules: [{e(format_lr(r.base_lr))}, "
               f"{e(format_lr(r.max_lr))}]</strong> ({e(r.reason)}).</p>")
    else:
        rng = "<p><strong>No range</strong>: the curve has no valley to read one from.</p>"
    rows = "".join(f"<tr><td>{e(n)}</td><td>{e(lr)}</td><td>{e(why)}</td></tr>" for n, lr, why in _rows(result))
    img = ""
    if png_bytes:
        data = base64.b64encode(png_bytes).decode("ascii")
        img = f'<img alt="loss against learning rate" src="data:image/png;base64,{data}"/>'
    return (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Learning-rate range test</title>"
        "<style>body{font-family:sans-serif;max-width:60em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:0.2em 0.5em;text-align:left}</style></head><body>"
        "<h1>Learning-rate range test</h1>"
        f"{head}{rng}{img}"
        "<table><tr><th>heuristic</th><th>learning rate</th><th>how</th></tr>"
        f"{rows}</table><p>{e(_stop_line(result))}.</p><p>Settings: {e(_settings(result))}.</p>"
        "</body></html>"
    )
