"""``kftune report``: the final report from the outputs the other steps write (made up here)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from kftune.core.errors import ConfigError, DataError
from kftune.steps import report
from kftune.steps.report import ReportConfig, markdown_to_html

# a 1x1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAA"
                       "AABJRU5ErkJggg==")


def _write(path: Path, name: str, data: str | bytes | dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    target = path / name
    if isinstance(data, dict):
        target.write_text(json.dumps(data), encoding="utf-8")
    elif isinstance(data, bytes):
        target.write_bytes(data)
    else:
        target.write_text(data, encoding="utf-8")


@pytest.fixture
def run_outputs(tmp_path: Path) -> dict[str, Path]:
    corpus, lr, trials, train, evaluation = (tmp_path / n for n in ("corpus", "lr", "trials", "train", "eval"))
    _write(corpus, "corpus.json", {"name": "TREC_6", "task": "text_classification", "labels": ["ABBR", "DESC"],
                                   "splits": {"train": {"examples": 90}, "dev": {"examples": 10},
                                              "test": {"examples": 20}}})
    _write(corpus, "card.md", "# Corpus card: TREC_6\n\n| | |\n| --- | --- |\n| task | text_classification |\n\n"
                              "## Splits\n\n- train: 90\n")
    _write(lr, "result.json", {"suggested_lr": 0.0123, "range": [0.001, 0.05], "method": "valley", "diverged": False})
    _write(lr, "summary.md", "# Learning-rate range test\n\nSuggested **0.0123** (valley).\n")
    _write(lr, "lr_curve.png", PNG)
    for i, (state, objective, lr_value, reason) in enumerate([
            ("completed", 0.71, 0.01, None), ("pruned", 0.55, 0.2, "paused after 2 of 6 epochs"),
            ("failed", None, 0.9, "diverged"), ("completed", 0.83, 0.003, None)], start=1):
        _write(trials, f"trial-{i:04d}.json", {
            "id": f"trial-{i:04d}", "index": i - 1, "state": state, "objective": objective, "budget": 6 if state ==
            "completed" else 2, "reason": reason, "intermediate": [[1, objective or 0.0]] if objective else [],
            "assignment": {"learning_rate": lr_value, "embedding_dim": "64" if i % 2 else "128"}})
    _write(train, "result.json", {"status": "max_epochs", "dev_score": 0.84, "dev_scores": [0.84], "best_run": 1,
                                  "best_epoch": 5, "epochs": 6, "seconds": 12.5, "model_uri": str(train / "model.pt"),
                                  "hyperparameters": {"learning_rate": 0.003, "cnn_kernel_sizes": [3, 4]}})
    _write(train, "training_curve.png", PNG)
    _write(evaluation, "result.json", {"main_score_name": "accuracy", "main_score": 0.8, "accuracy": 0.8,
                                       "micro": {"f1": 0.8}, "macro": {"f1": 0.75}, "n_examples": 20, "split": "test"})
    _write(evaluation, "report.md", "# Evaluation of model.pt on TREC_6 (test)\n\n| metric | value |\n"
                                    "| --- | ---: |\n| **main score: accuracy** | **0.8000** |\n")
    _write(evaluation, "confusion_matrix.png", PNG)
    return {"corpus": corpus, "lr_find": lr, "trials": trials, "train": train, "evaluation": evaluation,
            "out": tmp_path / "report"}


def test_the_report_combines_every_part(run_outputs: dict[str, Path]) -> None:
    config = ReportConfig(**{k: str(v) for k, v in run_outputs.items()})
    result = report.run(config)
    out = run_outputs["out"]
    assert sorted(p.name for p in out.iterdir()) == ["confusion_matrix.png", "lr_curve.png", "report.html",
                                                     "report.md", "summary.json", "training_curve.png", "trials.png"]
    md = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("## Summary", "## Corpus", "### Splits", "## Learning-rate range test", "## Search",
                    "## Final training", "## Evaluation"):
        assert f"\n{heading}\n" in md, heading
    assert "# Corpus card" not in md  # the part's own title is replaced by the report's section
    assert "| best trial | trial-0004 (dev_score 0.83, maximize) |" in md
    assert "| best parameters | learning_rate=0.003, embedding_dim=128 |" in md
    assert "| **test score** | **0.8** (accuracy) |" in md
    assert "| **trial-0004** | completed | 6 | 0.83 | 0.003 | 128 |  |" in md
    assert "| trial-0003 | failed | 2 | - | 0.9 | 64 | diverged |" in md
    assert "![trials](trials.png)" in md and "![learning-rate range test](lr_curve.png)" in md
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 4  # every image embedded: one self-contained page
    assert not re.search(r'src="(?!data:)', page)
    assert (out / "trials.png").read_bytes().startswith(b"\x89PNG")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary == result.summary
    assert summary["best"] == {"trial": "trial-0004", "assignment": {"learning_rate": 0.003, "embedding_dim": "128"},
                               "objective": 0.83, "source": "journal"}
    assert summary["trials"] == {"total": 4, "completed": 2, "pruned": 1, "failed": 1, "running": 0}
    assert summary["test"]["score"] == 0.8 and summary["test"]["metric"] == "accuracy"
    assert summary["lr_range_test"]["suggested_lr"] == 0.0123
    assert summary["report"]["html"].endswith("report.html")


def test_a_selection_record_names_the_winner_with_its_finalists(run_outputs: dict[str, Path], tmp_path: Path) -> None:
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"trial_id": "trial-0001", "assignment": {"learning_rate": 0.01}, "objective": 0.8,
                                "candidates": [{"trial_id": "trial-0001", "objective": 0.8, "spread": 0.01,
                                                "values": [0.79, 0.81], "seeds": [1, 2]},
                                               {"trial_id": "trial-0004", "objective": 0.78, "spread": 0.06,
                                                "values": [0.83, 0.73], "seeds": [1, 2]}]}))
    result = report.run(ReportConfig(out=str(tmp_path / "r"), trials=str(run_outputs["trials"]), best=str(best)))
    assert result.summary["best"]["trial"] == "trial-0001" and result.summary["best"]["source"] == "selection"
    assert "| trial-0004 | 0.78 | 0.06 | 0.83, 0.73 | 1, 2 |" in result.markdown
    assert "## Corpus\n\nNot part of this report." in result.markdown


def test_an_unreadable_trial_record_is_listed_not_fatal(run_outputs: dict[str, Path]) -> None:
    (run_outputs["trials"] / "trial-0009.json").write_text("{broken", encoding="utf-8")
    result = report.run(ReportConfig(out=str(run_outputs["out"]), trials=str(run_outputs["trials"])))
    assert result.summary["trials"]["total"] == 4
    assert "Unreadable trial records (skipped): `" in result.markdown and "trial-0009.json" in result.markdown


def test_inputs_that_exist_but_cannot_be_read_are_data_errors(run_outputs: dict[str, Path]) -> None:
    (run_outputs["evaluation"] / "result.json").write_text("not json", encoding="utf-8")
    with pytest.raises(DataError, match="result.json: not valid JSON"):
        report.run(ReportConfig(out=str(run_outputs["out"]), evaluation=str(run_outputs["evaluation"])))
    with pytest.raises(DataError, match="corpus.json: not found"):
        report.run(ReportConfig(out=str(run_outputs["out"]), corpus=str(run_outputs["lr_find"])))


def test_nothing_to_report_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        ReportConfig(out="").validate()
    assert {p.path for p in info.value.problems} == {"report.out", "report"}


def test_markdown_to_html_escapes_text_and_keeps_tables() -> None:
    page = markdown_to_html("# T <x>\n\n| a | b \\| c |\n| --- | --- |\n| `<script>` | **1** |\n\n- one\n- two\n",
                            {}, "t")
    assert "<h1>T &lt;x&gt;</h1>" in page
    assert "<th>a</th><th>b | c</th>" in page
    assert "<td><code>&lt;script&gt;</code></td><td><strong>1</strong></td>" in page
    assert "<ul><li>one</li><li>two</li></ul>" in page
    assert "<script>" not in page


def test_the_command_line(run_outputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--out", str(run_outputs["out"]), "--corpus", str(run_outputs["corpus"]), "--trials",
            str(run_outputs["trials"]), "--evaluation", str(run_outputs["evaluation"])]
    assert report.main(args) == 0
    assert f"report: {run_outputs['out'] / 'report.md'}" in capsys.readouterr().out
    assert report.main(["--out", str(run_outputs["out"])]) == 2  # nothing to report
    assert report.main(["--out", str(run_outputs["out"]), "--corpus", str(run_outputs["train"])]) == 1


def _baseline(score: float) -> dict:
    return {"name": "tf-idf + logistic regression", "method": "tf-idf + logistic regression (word 1-2 + char 2-4 "
            "grams, C=2)", "task_type": "text_classification", "metric": "accuracy", "dev_score": 0.7,
            "test_score": score, "params": {"C": 2.0}, "seconds": 1.2, "n_train": 90, "n_dev": 10, "n_test": 20}


@pytest.mark.parametrize("baseline_score, points, verdict", [
    (0.75, "+5.0 points", "tuning beat the baseline"), (0.85, "-5.0 points", "the baseline is better")])
def test_the_report_shows_the_model_the_baseline_and_the_difference(run_outputs: dict[str, Path], baseline_score: float,
                                                                    points: str, verdict: str) -> None:
    result_json = json.loads((run_outputs["evaluation"] / "result.json").read_text(encoding="utf-8"))
    result_json["baseline"] = _baseline(baseline_score)
    _write(run_outputs["evaluation"], "result.json", result_json)
    report.run(ReportConfig(**{k: str(v) for k, v in run_outputs.items()}))
    out = run_outputs["out"]
    md = (out / "report.md").read_text(encoding="utf-8")
    # in the summary, right after the test score
    test_row = "| **test score** | **0.8** (accuracy) |\n"
    assert (test_row + f"| test score of the baseline | {baseline_score:g} (tf-idf + logistic regression (word 1-2 + "
            f"char 2-4 grams, C=2)) |\n| tuned model minus baseline | **{points}**: {points}") in md
    assert verdict in md
    # and as a table in the evaluation section (the evaluation's report.md here has none of its own)
    section = md[md.index("## Evaluation"):]
    assert "### Baseline" in section
    assert f"| score | **0.8000** | {baseline_score:.4f} | **{points}** |" in section
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<h3>Baseline</h3>" in page and f"<strong>{points}</strong>" in page and f"{baseline_score:.4f}" in page
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    b = summary["test"]["baseline"]
    assert b["score"] == baseline_score and b["delta"] == pytest.approx(0.8 - baseline_score) and b["C"] == 2.0
    assert b["beats_baseline"] is (baseline_score < 0.8) and b["name"] == "tf-idf + logistic regression"


def test_without_a_baseline_the_report_has_none(run_outputs: dict[str, Path]) -> None:
    result = report.run(ReportConfig(**{k: str(v) for k, v in run_outputs.items()}))
    assert "baseline" not in result.summary["test"] and "Baseline" not in result.markdown


def test_the_evaluations_own_baseline_section_is_shown_once(run_outputs: dict[str, Path]) -> None:
    from kftune.nlp.baseline import comparison_markdown

    evaluation = run_outputs["evaluation"]
    result_json = json.loads((evaluation / "result.json").read_text(encoding="utf-8"))
    result_json["baseline"] = _baseline(0.75)
    _write(evaluation, "result.json", result_json)
    own = (evaluation / "report.md").read_text(encoding="utf-8") + "\n" + "\n".join(
        comparison_markdown(0.8, result_json["baseline"], "test")) + "\n"
    _write(evaluation, "report.md", own)
    md = report.run(ReportConfig(**{k: str(v) for k, v in run_outputs.items()})).markdown
    assert md.count("### Baseline") == 1 and md.count("| score | **0.8000** | 0.7500 | **+5.0 points** |") == 1


def test_a_pipeline_run_s_report_takes_the_parsed_spec_and_record_and_releases_the_lease(
        run_outputs: dict[str, Path], tmp_path: Path) -> None:
    """The report task's step (:func:`kftune.steps.report.run_pipeline`): the spec and the winner arrive parsed
    (no files written for them), the trials come from the run's journal, an LR range test that was off is left
    out, the report goes to runs/<run>/report/ and the run's lease, held by the pipeline's tasks, is released."""
    import copy

    from kftune.core.spec import parse_spec
    from kftune.io.journal import lease_key, trial_key
    from kftune.io.lease import hold_for_pipeline
    from kftune.io.store import open_store, put_json
    from kftune.pipelines.pipeline import DEFAULT_SPEC

    root = str(tmp_path / "store")
    store = open_store(root)
    for path in sorted(run_outputs["trials"].glob("*.json")):
        put_json(store, trial_key("r1", path.stem), json.loads(path.read_text(encoding="utf-8")))
    hold_for_pipeline(store, "r1", "kfp-job-1")
    spec = copy.deepcopy(DEFAULT_SPEC)
    spec["metadata"]["name"] = "toy-run"
    best = {"trial_id": "trial-0004", "assignment": {"learning_rate": 0.003}, "objective": 0.83, "run_id": "r1",
            "candidates": []}
    lr_off = tmp_path / "lr-off"
    lr_off.mkdir()
    result = report.run_pipeline(report.RunReportConfig(store=root, run_id="r1", corpus=str(run_outputs["corpus"]),
                                                        lr_find=str(lr_off), train=str(run_outputs["train"]),
                                                        evaluation=str(run_outputs["evaluation"]), job_id="job-1"),
                                 job=parse_spec(spec), best=best)
    s = result.summary
    assert (s["run_id"], s["store"], s["name"]) == ("r1", root, "toy-run")
    assert s["best"] == {"trial": "trial-0004", "assignment": {"learning_rate": 0.003}, "objective": 0.83,
                         "source": "selection"}
    assert s["trials"]["total"] == 4 and "lr_range_test" not in s
    assert s["sources"]["best"] == "best.json of run r1" and s["sources"]["trials"].endswith("runs/r1/search/trials")
    assert result.html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in result.html
    assert store.exists("runs/r1/report/report.md") and store.exists("runs/r1/report/summary.json")
    assert "| **trial-0004** |" in result.markdown
    assert not store.exists(lease_key("r1"))


def test_a_parsed_record_and_a_file_for_the_same_part_are_refused(run_outputs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="report.best"):
        ReportConfig(out=str(run_outputs["out"]), trials=str(run_outputs["trials"]), best="best.json",
                     best_record={"trial_id": "t"}).validate()
