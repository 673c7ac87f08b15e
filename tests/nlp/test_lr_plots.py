"""The range test's plot, TSV and summaries, rendered from synthetic results."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pytest

from kftune.core.lr_range import DEFAULT_METHOD
from kftune.core.lr_range import RangeTestConfig, RangeTestResult, RangeTestState, analyze, schedule
from kftune.nlp.lr_plots import format_lr, learning_rate_tsv, lr_curve_png, render_lr_html, render_lr_markdown

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LRS = schedule(1e-7, 10.0, 100)
X = np.log10(LRS)
U = 0.5 + 1.5 / (1 + np.exp(3 * (X + 2.75))) + np.exp(4 * (X + 0.5))


@pytest.fixture(scope="module")
def u_result() -> RangeTestResult:
    noisy = U * (1 + 0.05 * np.random.default_rng(0).standard_normal(len(U)))
    return analyze(LRS, noisy)


@pytest.fixture(scope="module")
def flat_result() -> RangeTestResult:
    return analyze(LRS, np.full(100, 1.79))


def test_png_has_the_signature_and_a_real_size(u_result: RangeTestResult, flat_result: RangeTestResult) -> None:
    png = lr_curve_png(u_result)
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (round(7.5 * 110), round(4.5 * 110))
    assert lr_curve_png(flat_result).startswith(PNG_SIGNATURE)  # nothing to mark, still a plot


def test_png_draws_a_metric_axis_and_a_diverged_at_once_curve() -> None:
    state = RangeTestState(RangeTestConfig(divergence_factor=None))
    for loss, acc in zip(U, np.linspace(0.2, 0.8, 100)):
        state.update(loss, metric=acc)
    assert lr_curve_png(state.result()).startswith(PNG_SIGNATURE)
    assert lr_curve_png(RangeTestState().result()).startswith(PNG_SIGNATURE)  # nothing recorded
    exploded = analyze(LRS, 2.0 * 1.3 ** np.arange(100))
    assert exploded.lr is None and lr_curve_png(exploded).startswith(PNG_SIGNATURE)


def test_tsv_has_one_row_per_batch_with_the_documented_columns(u_result: RangeTestResult) -> None:
    lines = learning_rate_tsv(u_result).splitlines()
    assert lines[0].split("\t") == ["ITERATION", "LEARNING_RATE", "TRAIN_LOSS", "SMOOTHED_LOSS", "TREND_LOSS"]
    assert len(lines) == 1 + len(u_result.lrs)
    first = lines[1].split("\t")
    assert first[0] == "0" and float(first[1]) == 1e-7
    assert float(first[2]) == u_result.losses[0] == float(first[3])  # bias correction: smoothed == raw
    for i, line in enumerate(lines[1:]):
        cells = line.split("\t")
        assert int(cells[0]) == i and float(cells[1]) == u_result.lrs[i]
        assert float(cells[2]) == u_result.losses[i] and float(cells[3]) == u_result.smoothed[i]


def test_tsv_writes_non_finite_values_and_the_metric_column() -> None:
    state = RangeTestState(RangeTestConfig())
    state.update(2.0, metric=0.1)
    state.update(float("inf"))
    tsv = learning_rate_tsv(state.result())
    header, *rows = tsv.splitlines()
    assert header.endswith("\tDEV_METRIC")
    assert rows[1].split("\t")[2:4] == ["inf", "nan"] and rows[1].split("\t")[5] == "nan"
    assert math.isclose(float(rows[0].split("\t")[5]), 0.1)


def test_markdown_names_the_suggestion_the_range_and_every_heuristic(u_result: RangeTestResult) -> None:
    md = render_lr_markdown(u_result)
    assert u_result.lr is not None and u_result.range is not None
    assert f"Suggested learning rate: {format_lr(u_result.lr)}" in md
    assert f"[{format_lr(u_result.range.base_lr)}, {format_lr(u_result.range.max_lr)}]" in md
    for s in u_result.suggestions.values():
        assert format_lr(s.lr) in md
    assert "minimum / 10 (chosen)" in md and "Diverged after" in md and "startLR 1e-07" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 3 and all(line.count("|") == 4 for line in table)  # header, rule, 3 rows


def test_markdown_says_why_there_is_no_suggestion(flat_result: RangeTestResult) -> None:
    md = render_lr_markdown(flat_result)
    assert f"**No suggestion** ({DEFAULT_METHOD}): " in md and "flat" in md and "No range" in md
    assert "Suggested learning rate" not in md


def test_html_inlines_the_plot_and_escapes_text(u_result: RangeTestResult) -> None:
    png = lr_curve_png(u_result)
    page = render_lr_html(u_result, png)
    m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert m is not None and base64.b64decode(m.group(1)) == png
    assert f"Suggested learning rate: {format_lr(u_result.lr)}" in page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<img" not in render_lr_html(u_result)  # no PNG given: no image
