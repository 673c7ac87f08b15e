"""The search's tables, plots and summaries, from hand-written trial records."""

from __future__ import annotations

from pathlib import Path

from kftune.core.space import SearchSpace
from kftune.nlp import search_report

SPACE = SearchSpace.from_katib([
    {"name": "learning_rate", "parameterType": "double",
     "feasibleSpace": {"min": "0.001", "max": "0.1", "distribution": "logUniform"}},
    {"name": "embedding_dim", "parameterType": "categorical", "feasibleSpace": {"list": ["16", "32"]}},
])
RECORDS = [
    {"id": "trial-0001", "state": "completed", "objective": 0.8, "objective_spread": 0.01, "objective_variance": 0.002,
     "budget": 3, "seconds": 1.5, "assignment": {"learning_rate": 0.01, "embedding_dim": "16"}, "reason": None},
    {"id": "trial-0002", "state": "failed", "objective": None, "budget": 1, "seconds": 0.2,
     "assignment": {"learning_rate": 0.09, "embedding_dim": "32"}, "reason": "the training loss became nan\tin epoch 1"},
    {"id": "trial-0003", "state": "pruned", "objective": 0.6, "objective_spread": 0.0, "budget": 1, "seconds": 0.4,
     "assignment": {"learning_rate": 0.002, "embedding_dim": "32"}, "reason": "paused <rung>"},
]
BEST = {"run_id": "r1", "status": "succeeded", "stop_reason": "max_trials", "objective_metric": "dev_score",
        "objective_type": "maximize", "trials": {"completed": 1, "failed": 1, "pruned": 1}, "max_trial_count": 3,
        "search_epochs": 5, "finalist_epochs": 3, "rounds": 2, "seconds": 4.0,
        "space_notes": ["learning_rate: feasibleSpace replaced by the LR range test's range [0.001, 0.1]"],
        "best": {"trial_id": "trial-0001", "assignment": {"learning_rate": 0.01, "embedding_dim": "16"},
                 "objective": 0.79, "spread": 0.014, "values": [0.8, 0.78], "seeds": [1, 2], "budget": 3,
                 "chosen_on": "finalists",
                 "candidates": [{"trial_id": "trial-0001", "objective": 0.79, "spread": 0.014, "values": [0.8, 0.78],
                                 "search_objective": 0.8, "search_rank": 1}]}}


def test_trials_tsv_is_one_row_per_trial_with_the_parameters() -> None:
    lines = search_report.trials_tsv(RECORDS, SPACE.names).splitlines()
    assert lines[0].split("\t") == ["trial", "state", "objective", "spread", "variance", "epochs", "seconds",
                                    "learning_rate", "embedding_dim", "reason"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == ["trial-0001", "trial-0002", "trial-0003"]
    assert rows[0][2] == "0.8" and rows[0][7] == "0.01" and rows[0][8] == "16"
    assert rows[1][2] == "" and rows[1][-1] == "the training loss became nan in epoch 1"  # no tab inside a cell
    assert all(len(r) == 10 for r in rows)


def test_plots_are_pngs_even_with_failed_and_empty_histories(tmp_path: Path) -> None:
    for draw in (search_report.objective_png, search_report.parameters_png):
        for records, name in ((RECORDS, "full"), ([], "empty")):
            path = draw(records, SPACE, "maximize", "dev_score", tmp_path / f"{draw.__name__}-{name}.png", title="t")
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summaries_name_the_winner_the_finalists_and_every_trial() -> None:
    md = search_report.summary_markdown(BEST, RECORDS, SPACE.names)
    assert "**Best: trial-0001**" in md and "0.79 ± 0.014" in md and "seeds 1, 2" in md
    assert "## Finalists" in md and "LR range test" in md
    assert md.count("| trial-000") == 4  # the finalist row and three trial rows
    page = search_report.summary_html(BEST, RECORDS, SPACE.names, {"objective.png": b"\x89PNG"})
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert "paused &lt;rung&gt;" in page and "<rung>" not in page
    assert search_report.summary_markdown({**BEST, "best": None}, [], SPACE.names).count("No trial") == 1
