"""``kftune search``: promotions resume from checkpoints, failures, the goal, outputs and metrics, the LR
hand-off, and a real kill (SIGKILL of the whole process group) followed by a rerun.

The toy corpus and spec come from tests/steps/test_trial.py; trials take a fraction of a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import pytest

from kftune.core.search_policy import SearchPolicy
from kftune.io.journal import search_prefix, trial_key
from kftune.io.specfile import load_spec
from kftune.io.store import get_json, open_store
from kftune.steps import search
from tests.steps.test_trial import DEFAULT_PARAMETERS, write_corpus, write_spec


class Recorder:
    """A metrics sink that remembers what it was given."""

    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, float], int | None]] = []
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def log(self, values: Mapping[str, float], *, step: int | None = None) -> None:
        self.logged.append((dict(values), step))

    def increment(self, name: str, amount: float = 1.0, *, labels: Mapping[str, str] | None = None) -> None:
        self.counters[(name, tuple(sorted((labels or {}).items())))] += amount

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _config(spec: Path, corpus: Path, store: Path, **kw: Any) -> search.SearchConfig:
    return search.SearchConfig(spec=str(spec), corpus=str(corpus), store=str(store), run_id="r1",
                               executor=kw.pop("executor", "inline"), show_progress=False, **kw)


def _records(store: Path) -> list[dict[str, Any]]:
    return json.loads((store / "runs/r1/search/trials.json").read_text())


def test_successive_halving_resumes_promoted_trials_and_finalists_decide(corpus: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", early_stopping="successive-halving", max_epochs=3, max_trials=4,
                      parallel=2, es_settings={"eta": "2", "min_budget": "1", "max_budget": "3"},
                      finalists=1, finalist_runs=2)
    sink = Recorder()
    result = search.run(_config(spec, corpus, tmp_path / "store", keep_checkpoints=True), sinks=sink)
    assert result.status == "succeeded" and result.stop_reason == "max_trials"
    records = {r["id"]: r for r in _records(tmp_path / "store")}
    assert sorted(records) == ["trial-0001", "trial-0002", "trial-0003", "trial-0004"]
    # rungs 1, 2, 3 epochs; 4 trials -> 2 reach rung 2 -> 1 reaches 3 epochs
    budgets = sorted(r["budget"] for r in records.values())
    assert budgets == [1, 1, 2, 3]
    top = next(r for r in records.values() if r["budget"] == 3)
    assert top["state"] == "completed" and top["promotion"] is True
    assert top["resumed_from"] == [2] and top["epochs_trained"] == 1  # 3 epochs used, not 1 + 2 + 3
    assert [s for s, _ in top["intermediate"]] == [1, 2, 3]
    assert all(r["state"] == "pruned" for r in records.values() if r["budget"] < 3)
    assert result.search_epochs == 1 + 1 + 2 + 3
    # the winner: the only completed trial, re-trained with seed 2, chosen on the mean of seeds 1 and 2
    best = result.best
    assert best["trial_id"] == top["id"] and best["chosen_on"] == "finalists" and best["seeds"] == [1, 2]
    finalist = get_json(open_store(tmp_path / "store"), f"{search_prefix('r1')}/finalists/{top['id']}/seed-2.json")
    assert finalist["budget"] == 3 and finalist["seeds"] == [2]
    assert best["values"] == pytest.approx([top["objective"], finalist["objective"]])
    assert best["objective"] == pytest.approx((top["objective"] + finalist["objective"]) / 2)
    assert result.finalist_epochs == 3
    # outputs
    out = tmp_path / "store/runs/r1/search"
    for name in search.OUTPUT_FILES:
        assert (out / name).is_file(), name
    tsv = (out / "trials.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:3] == ["trial", "state", "objective"] and len(tsv) == 5
    assert (out / "objective.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert top["id"] in (out / "summary.md").read_text() and "<img" in (out / "summary.html").read_text()
    assert json.loads((out / "best.json").read_text())["trial_id"] == top["id"]  # best.json: one schema (best_record)
    # metrics: each trial counted once in its final state; the best objective logged
    assert sink.counters == Counter({("trials", (("state", "completed"),)): 1, ("trials", (("state", "pruned"),)): 3})
    assert any("best_objective" in values for values, _ in sink.logged)
    assert (tmp_path / "store" / "runs/r1/search/checkpoints/trial-0001/seed-1.pt").is_file()  # kept on request


def test_hyperband_runs_its_brackets_in_order(corpus: Path, tmp_path: Path) -> None:
    """R = 3, eta 3: bracket s=1 (3 trials at 1 epoch, the best resumed to 3), then bracket s=0 (2 at 3)."""
    spec = write_spec(tmp_path / "spec.yaml", early_stopping="hyperband", max_epochs=3, max_trials=5, parallel=2,
                      es_settings={"eta": "3", "min_budget": "1", "max_budget": "3"}, finalists=0)
    result = search.run(_config(spec, corpus, tmp_path / "store"))
    assert result.status == "succeeded" and result.stop_reason == "max_trials"
    records = {r["id"]: r for r in _records(tmp_path / "store")}
    assert sorted(records) == [f"trial-000{i}" for i in range(1, 6)]
    first = [records[f"trial-000{i}"] for i in (1, 2, 3)]
    assert sorted(r["budget"] for r in first) == [1, 1, 3]
    top = next(r for r in first if r["budget"] == 3)
    assert top["state"] == "completed" and top["promotion"] is True and top["resumed_from"] == [1]
    assert all(records[t]["budget"] == 3 and records[t]["state"] == "completed" and not records[t]["promotion"]
               for t in ("trial-0004", "trial-0005"))
    rounds = sorted((tmp_path / "store/runs/r1/search/rounds").glob("round-*.json"))
    requests = [q for path in rounds for q in json.loads(path.read_text()).get("requests", [])
                if q.get("kind") == "trial"]
    assert [(q["trial_id"], q["bracket"]) for q in requests if not q["promotion"]] == [
        ("trial-0001", 1), ("trial-0002", 1), ("trial-0003", 1), ("trial-0004", 0), ("trial-0005", 0)]
    # bracket 0 starts only after bracket 1's promotion ran
    promoted_round = next(i for i, path in enumerate(rounds) if any(
        q.get("promotion") for q in json.loads(path.read_text()).get("requests", [])))
    assert all(q["bracket"] == 1 for path in rounds[:promoted_round + 1]
               for q in json.loads(path.read_text()).get("requests", []))


def test_failed_trials_are_recorded_and_the_search_stops_at_max_failed(corpus: Path, tmp_path: Path) -> None:
    params = [{"name": "learning_rate", "parameterType": "discrete",
               "feasibleSpace": {"list": ["0.05", "10", "8", "0.02"]}}]
    # plain SGD without clipping diverges at learning rates 8-10 (the highest the spec allows) on the toy corpus
    spec = write_spec(tmp_path / "spec.yaml", algorithm="grid", parameters=params, max_trials=4, max_failed=2,
                      max_epochs=1, finalists=2,
                      model={"optimizer": "sgd", "clip_grad_norm": "none", "mini_batch_size": 2})
    code = search.main(["--spec", str(spec), "--corpus", str(corpus), "--store", str(tmp_path / "store"),
                        "--run-id", "r1", "--inline"])
    assert code == 1  # the search failed, as Katib marks an Experiment at maxFailedTrialCount
    records = _records(tmp_path / "store")
    assert [(r["id"], r["state"]) for r in records] == [("trial-0001", "completed"), ("trial-0002", "failed"),
                                                         ("trial-0003", "failed")]  # went on after a failure
    assert all("loss became" in r["reason"] for r in records[1:])
    result = json.loads((tmp_path / "store/runs/r1/search/result.json").read_text())
    assert result["status"] == "failed" and result["stop_reason"] == "failures"
    assert result["best"]["trial_id"] == "trial-0001" and result["best"]["chosen_on"] == "search"
    assert "loss became" in (tmp_path / "store/runs/r1/search/trials.tsv").read_text()


def test_goal_stops_early_and_the_lr_range_narrows_the_space(corpus: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", goal=0.01, max_trials=4, max_epochs=1)
    lr_find = tmp_path / "lr" / "result.json"
    lr_find.parent.mkdir()
    lr_find.write_text(json.dumps({"method": "valley", "lr": 0.03, "range": [0.02, 0.06], "diverged": False}))
    result = search.run(_config(spec, corpus, tmp_path / "store", lr_find=str(lr_find.parent)))
    assert result.stop_reason == "goal" and result.status == "succeeded"
    records = _records(tmp_path / "store")
    assert len(records) == 1  # goal 0.01 is reached by the first trial: 3 of maxTrialCount 4 never ran
    assert 0.003 <= records[0]["assignment"]["learning_rate"] <= 0.03  # the decade below the suggested 0.03
    assert result.lr_range["applied"] is True
    space = json.loads((tmp_path / "store/runs/r1/search/space.json").read_text())
    assert space["parameters"][0]["feasibleSpace"] == {"min": "0.003", "max": "0.03", "distribution": "logUniform"}
    assert "LR range test" in (tmp_path / "store/runs/r1/search/summary.md").read_text()
    # a rerun with another spec is refused (exit 2), so a resumed search never mixes two specs
    other = write_spec(tmp_path / "other.yaml", goal=0.5, max_trials=4, max_epochs=1)
    assert search.main(["--spec", str(other), "--corpus", str(corpus), "--store", str(tmp_path / "store"),
                        "--run-id", "r1", "--inline"]) == 2


def _finished(trials_dir: Path) -> dict[Path, tuple[bytes, int]]:
    out = {}
    for path in sorted(trials_dir.glob("*.json")):
        if path.name.startswith("."):  # a record being written (renamed into place when complete)
            continue
        try:
            data = path.read_bytes()
            state = json.loads(data)["state"]
            mtime = path.stat().st_mtime_ns
        except (OSError, ValueError):
            continue
        if state != "running":
            out[path] = (data, mtime)
    return out


@pytest.mark.parametrize("search_kind", [
    {"algorithm": "tpe", "settings": {"n_startup_jobs": "2"}},
    # brackets s=1 (2 trials at 1 epoch, the better one on to 3) and s=0 (2 at 3), then s=1 again
    {"algorithm": "random", "early_stopping": "hyperband",
     "es_settings": {"eta": "2", "min_budget": "1", "max_budget": "3"}},
    # BOHB over the same brackets: one parameter, so the 4 trials of the first pass at 1 epoch make its model
    # for trials 5 and 6 (random_fraction 0: both from the model)
    {"algorithm": "bohb", "settings": {"random_fraction": "0"}, "early_stopping": "hyperband",
     "es_settings": {"eta": "2", "min_budget": "1", "max_budget": "3"}, "parameters": DEFAULT_PARAMETERS[:1]},
], ids=["tpe", "hyperband", "bohb+hyperband"])
def test_a_killed_search_reruns_no_completed_trial_and_ends_identically(corpus: Path, tmp_path: Path,
                                                                        search_kind: dict[str, Any]) -> None:
    spec = write_spec(tmp_path / "spec.yaml", max_trials=6, parallel=2, max_epochs=3, finalists=2, finalist_runs=2,
                      **search_kind)
    store = tmp_path / "killed"
    cmd = [sys.executable, "-m", "kftune.steps.search", "--spec", str(spec), "--corpus", str(corpus),
           "--store", str(store), "--run-id", "r1"]
    env = {**os.environ, "KFTUNE_PROGRESS": "log"}
    trials_dir = store / "runs/r1/search/trials"
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while proc.poll() is None and len(_finished(trials_dir)) < 2:
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the search, its forkserver and its trial processes
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, ("the search ended before it was killed:\n"
                                                + (tmp_path / "first.log").read_text()[-3000:])
    assert not (store / "runs/r1/search/result.json").exists()
    before = _finished(trials_dir)
    assert 2 <= len(before) < 6
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for path, (data, mtime) in before.items():  # no finished trial was trained or written again
        now = path.read_bytes()
        if now != data and "early_stopping" in search_kind:
            # promoted to the next rung after the kill: resumed from its checkpoint, its epochs kept
            old_record, new_record = json.loads(data), json.loads(now)
            assert new_record["budget"] > old_record["budget"], path.name
            assert new_record["intermediate"][:len(old_record["intermediate"])] == old_record["intermediate"]
            continue
        assert now == data and path.stat().st_mtime_ns == mtime, path.name
    # the same search without a kill (in this process, same threads per trial)
    baseline = search.run(_config(spec, corpus, tmp_path / "baseline", parallel=None))

    def essence(r: dict[str, Any]) -> tuple:
        return r["id"], r["assignment"], r["state"], r["objective"], r["budget"], r["intermediate"]

    assert [essence(r) for r in _records(store)] == [essence(r) for r in _records(tmp_path / "baseline")]
    resumed = json.loads((store / "runs/r1/search/result.json").read_text())
    keys = ("trial_id", "assignment", "objective", "spread", "values", "seeds")
    assert {k: resumed["best"][k] for k in keys} == {k: baseline.best[k] for k in keys}
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["best_trial"] == baseline.best["trial_id"]
    assert not list((store / "runs/r1/search/checkpoints").rglob("*.pt"))  # cleaned up at the end
    assert get_json(open_store(store), trial_key("r1", "trial-0006"))["index"] == 5


def die_or_echo(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A pool task: dies like a process the kernel killed for memory, or answers after a while."""
    if payload.get("die"):
        os._exit(137)
    time.sleep(payload.get("sleep", 0.0))
    return {"id": payload["id"], "pid": os.getpid()}


def test_a_dead_trial_process_is_retried_alone_then_reported(tmp_path: Path) -> None:
    runner = search.Runner("process", 2, task=die_or_echo, preload=(__name__,))
    try:
        out = runner.run([{"id": "a", "sleep": 0.5}, {"id": "x", "die": True}, {"id": "b"}])
    finally:
        runner.close()
    assert out[1] is None  # died again when run alone
    assert out[0]["id"] == "a" and out[2]["id"] == "b"  # in flight when x died: run again, alone, and done

    class DeadRunner:
        def run(self, payloads: list[Any]) -> list[None]:
            return [None for _ in payloads]

    spec = write_spec(tmp_path / "spec.yaml")
    job = load_spec(spec)
    policy = SearchPolicy.from_job(job)
    state = search._Search(_config(spec, tmp_path, tmp_path / "store"), job, open_store(tmp_path / "store"), "r1",
                           policy, DeadRunner(), 1, Recorder())  # type: ignore[arg-type]
    request = policy.plan([], 0)[0]
    state.execute([request])
    record = get_json(open_store(tmp_path / "store"), trial_key("r1", request.trial_id))
    assert record["state"] == "failed" and record["reason"] == search.DIED
    assert record["assignment"] == request.assignment and record["budget_asked"] == request.budget
    assert state.done(request)  # a failed trial is not run again when the search resumes
