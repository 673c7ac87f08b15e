"""The quality benchmark's parsing, targets and rendering on synthetic run directories (no training)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"
_spec = importlib.util.spec_from_file_location("quality_under_test", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)  # type: ignore[union-attr]


def fake_run(run_dir: Path, *, metric: str, tuned: float, baseline: float, method: str = "tf-idf + logistic "
             "regression (C=8)", splits=(100, 10, 50), tokenizer: str = "regex", rate: float | None = 1234.5) -> Path:
    """A run directory laid out as `kftune run --out` leaves it (the files the benchmark reads)."""
    task = run_dir / "kfp" / "kftune-cpu-2024" / "evaluate" / "evaluation"
    task.mkdir(parents=True)
    (task / "result.json").write_text(json.dumps({"main_score": tuned, "main_score_name": metric}))
    (task / "predictions.jsonl").write_text("")
    (task / "baseline.json").write_text(json.dumps({
        "test_score": baseline, "model_score": tuned, "delta_vs_baseline": tuned - baseline, "method": method,
        "name": method.split(" (")[0], "metric": metric}))
    corpus = run_dir / "kfp" / "kftune-cpu-2024" / "prepare-corpus" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "corpus.json").write_text(json.dumps({
        "splits": {s: {"examples": n} for s, n in zip(("train", "dev", "test"), splits)},
        "tokenizer": {"type": tokenizer}, "downsample": 0.1}))
    log = "12:00:00 INFO kftune.steps.corpus: wrote corpus\n"
    if rate is not None:
        log += (f"12:00:01 INFO kftune.steps.corpus: tokenized 160 sentences with {tokenizer} in 0.1 s: "
                f"{rate:.0f} sentences/s\n")
    (run_dir / "run.log").write_text(log)
    (run_dir / "summary.json").write_text(json.dumps({
        "test": {"score": tuned, "metric": metric, "baseline": {"score": baseline, "method": method}},
        "best": {"assignment": {"learning_rate": 0.001}}, "trials": {"total": 8, "completed": 8},
        "final_training": {"epochs": 6}}))
    return run_dir


def record(tmp_path: Path, job: str, rc: int = 0, prepare_bytes: int = 600_000_000, **run) -> dict:
    run_dir = fake_run(tmp_path / job / "run", **run)
    return {"job": job, "corpus": bench.JOBS[job].corpus, "example": "examples/x.yaml", "rc": rc,
            "wall_seconds": 754.2, "started": "2025-01-01T00:00:00", "run_dir": str(run_dir),
            "spec_overrides": dict(bench.JOBS[job].overrides), "run_options": [],
            "memory": {"tree_peak_bytes": 1_500_000_000, "largest_process_bytes": 900_000_000, "poll_seconds": 0.25,
                       "samples": 10, "tasks_bytes": {"prepare_corpus": prepare_bytes, "trial": 400_000_000}},
            "run": bench.read_run(run_dir) if rc == 0 else None}


def test_read_run_takes_scores_baseline_splits_and_tokenization(tmp_path):
    run = bench.read_run(fake_run(tmp_path / "r", metric="accuracy", tuned=0.9, baseline=0.85, rate=2000))
    assert run["metric"] == "accuracy" and run["tuned"] == 0.9
    assert run["baseline"] == {"score": 0.85, "name": "tf-idf + logistic regression",
                               "method": "tf-idf + logistic regression (C=8)"}
    assert run["difference"] == pytest.approx(0.05)
    assert run["splits"] == {"train": 100, "dev": 10, "test": 50}
    assert run["tokenization"] == {"sentences": 160, "tokenizer": "regex", "seconds": 0.1,
                                   "sentences_per_second": 2000.0}


def test_read_run_falls_back_to_the_summary(tmp_path):
    run_dir = fake_run(tmp_path / "r", metric="accuracy", tuned=0.9, baseline=0.85, rate=None)
    for name in ("baseline.json", "result.json"):
        next(run_dir.rglob(name)).unlink()
    run = bench.read_run(run_dir)
    assert (run["tuned"], run["baseline"]["score"], run["metric"]) == (0.9, 0.85, "accuracy")
    assert run["tokenization"] is None


def test_targets_are_computed_from_the_numbers(tmp_path):
    jobs = {
        # 0.5 points above the baseline: the 1-point target is not met, "at or above" is
        "nsmc-0.1": record(tmp_path, "nsmc-0.1", metric="accuracy", tuned=0.845, baseline=0.840, tokenizer="morpheme"),
        "nsmc-full": record(tmp_path, "nsmc-full", metric="accuracy", tuned=0.872, baseline=0.860,
                            tokenizer="morpheme", rate=850.0, prepare_bytes=1_200_000_000),
        "trec6": record(tmp_path, "trec6", metric="accuracy", tuned=0.90, baseline=0.894),
        "wnut17": record(tmp_path, "wnut17", metric="span_f1_micro", tuned=0.26, baseline=0.27),
    }
    by_id = {t["id"]: t for t in bench.targets(jobs)}
    assert by_id["nsmc-0.1-beats-baseline"]["status"] == "not met"
    assert by_id["nsmc-0.1-beats-baseline"]["value"] == pytest.approx(0.005)
    assert by_id["nsmc-0.1-at-or-above-baseline"]["status"] == "met"
    assert by_id["nsmc-full-accuracy"]["status"] == "met"
    assert by_id["trec6-accuracy"]["status"] == "not met"  # 0.90 < 0.92
    assert by_id["wnut17-span-f1"]["status"] == "met"
    assert by_id["wnut17-at-or-above-baseline"]["status"] == "not met"  # the baseline is better
    assert by_id["nsmc-full-corpus-memory"]["status"] == "not met"  # 1.2 GB >= 1 GB
    assert by_id["nsmc-full-tokenization-throughput"]["status"] == "met"
    assert "ud-at-or-above-baseline" not in by_id  # no record: no per-corpus target
    jobs["nsmc-full"]["memory"]["tasks_bytes"]["prepare_corpus"] = 640_000_000
    assert {t["id"]: t for t in bench.targets(jobs)}["nsmc-full-corpus-memory"]["status"] == "met"


def test_missing_and_failed_jobs_are_not_run_or_not_measured(tmp_path):
    jobs = {"trec6": record(tmp_path, "trec6", rc=1, metric="accuracy", tuned=0.9, baseline=0.8)}
    by_id = {t["id"]: t for t in bench.targets(jobs)}
    assert by_id["trec6-accuracy"]["status"] == "not measured"
    assert by_id["nsmc-full-accuracy"]["status"] == "not run"
    assert by_id["nsmc-full-corpus-memory"]["status"] == "not run"


def test_render_writes_the_table_targets_and_plot_and_rerender_recomputes(tmp_path):
    jobs = {"trec6": record(tmp_path, "trec6", metric="accuracy", tuned=0.93, baseline=0.894),
            "nsmc-0.1": record(tmp_path, "nsmc-0.1", metric="accuracy", tuned=0.845, baseline=0.840,
                               tokenizer="morpheme", rate=900.0)}
    report = bench.build_report(jobs, name="quality_test", overrides={}, env={"python": "3.11", "torch": "2",
                                                                              "cpus": 2, "platform": "linux"})
    path = bench.write_report(report, tmp_path / "results")
    md = path.with_suffix(".md").read_text(encoding="utf-8")
    assert "| TREC_6 (trec6) | 100 / 10 / 50 | accuracy | 93.00 | 89.40 (tf-idf + logistic regression (C=8)) | +3.60 |" in md
    assert "91.20 CNN-rand" in md and "(unverified)" in md  # NSMC's figure is marked
    assert "| UD_ENGLISH (ud) | not run |" in md
    assert "| TREC_6: test accuracy >= 0.92 | trec6 | 93.00 (needs 92.00) | met |" in md
    assert "+0.50 points (needs +1.00) | **not met** |" in md
    assert "900 (morpheme)" in md and "1.50 GB (900 MB)" in md and "12.6 min" in md
    assert path.with_suffix(".png").stat().st_size > 1000
    # a saved report re-rendered: the targets come from its numbers again
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved["jobs"]["trec6"]["run"]["tuned"] = 0.91
    saved["targets"] = []
    path.write_text(json.dumps(saved), encoding="utf-8")
    bench.rerender(path)
    again = {t["id"]: t for t in json.loads(path.read_text(encoding="utf-8"))["targets"]}
    assert again["trec6-accuracy"]["status"] == "not met"
    assert "| TREC_6: test accuracy >= 0.92 | trec6 | 91.00 (needs 92.00) | **not met** |" in \
        path.with_suffix(".md").read_text(encoding="utf-8")


def test_job_spec_applies_overrides_and_the_nsmc_stand_in(tmp_path):
    import yaml

    examples = Path(__file__).resolve().parents[2] / "examples"
    spec, source = bench.job_spec(bench.JOBS["trec6"], {"spec.train.maxEpochs": 2})
    assert spec["spec"]["corpus"]["downsample"] == 1.0 and spec["spec"]["train"]["maxEpochs"] == 2
    assert source == "examples/trec6.yaml"
    (tmp_path / "trec6.yaml").write_text((examples / "trec6.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    spec, source = bench.job_spec(bench.JOBS["nsmc-0.1"], examples=tmp_path)  # no nsmc.yaml: trec6 stands in
    assert source.endswith("trec6.yaml")
    assert spec["spec"]["corpus"] == {"name": "NSMC", "devFraction": 0.1, "seed": 1, "downsample": 0.1}
    assert spec["metadata"]["name"] == "nsmc" and spec["spec"]["task"]["labelType"] == "sentiment"
    from kftune.core.spec import parse_spec

    assert parse_spec(yaml.safe_load(yaml.safe_dump(spec))).spec.corpus.name == "NSMC"


def test_overrides_get_their_own_job_directories():
    assert bench.overrides_key({"max_epochs": None}, {}) == ""
    key = bench.overrides_key({"max_epochs": 2}, {})
    assert len(key) == 8 and key != bench.overrides_key({"max_epochs": 3}, {})
    assert bench.job_dir(Path("/w"), "trec6", key) == Path(f"/w/jobs/trec6@{key}")
    assert bench.parse_set("spec.train.maxEpochs=2") == ("spec.train.maxEpochs", 2)


def test_the_monitor_measures_a_process_tree(tmp_path):
    """A parent that starts a child holding ~60 MB: the tree's peak and the largest process see it."""
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; b = bytearray(60_000_000); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(1.0)'])")
    out = bench.run_measured([sys.executable, "-c", code], dict(os.environ), tmp_path / "log", interval=0.05)
    assert out["rc"] == 0 and out["wall_seconds"] >= 1.0
    mem = out["memory"]
    assert mem["largest_process_bytes"] > 60_000_000
    assert mem["tree_peak_bytes"] > 60_000_000 and mem["samples"] > 3
    assert max(mem["tasks_bytes"].values()) > 60_000_000


def test_task_labels_come_from_the_kfp_command_line():
    assert bench.task_label(["python3", "-m", "kfp.dsl.executor_main", "--executor_input", "{}",
                             "--function_to_execute", "prepare_corpus"]) == "prepare_corpus"
    assert bench.task_label([sys.executable, "-m", "kftune.cli", "run", "spec.yaml"]) == "kftune run"
    assert bench.task_label(["sh", "-c", "x"]) is None


def test_cli_render_of_a_missing_report_exits_2(tmp_path):
    r = subprocess.run([sys.executable, str(_PATH), "--render", str(tmp_path / "none.json")], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "not a saved report" in r.stderr
