"""``kftune search`` with company: a second driver on the same run, a driver killed or fenced off, and an
object store that fails in the middle of a search.

- One driver per run (the lease, kftune.io.lease): a second search on a live run exits 3 naming the holder;
  after the first is killed with SIGKILL, a resume takes the expired lease over (``--take-over``, or ``--wait``)
  and ends with the same best as an uninterrupted search, without redoing a finished trial. A driver whose
  lease was taken over stops (exit 3). Records a dead driver left ``running`` are resumed, never reported
  finished.
- Store faults (tests/fixtures/faulty_proxy.py in front of the moto server): a persistent fault mid-search ends
  the search with one clear error (exit 1); every record in the journal is whole; a rerun after the fault
  completes with no finished trial redone.

Subprocesses use ``KFTUNE_LEASE_TTL=2`` (renewal every 0.5 s) so that expiry comes quickly; no assert
depends on wall-clock time (waits are bounded only to keep a broken test from hanging).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kftune.io.journal import lease_key, search_prefix
from kftune.io.lease import LeaseRecord
from kftune.io.s3_store import S3Store
from kftune.io.store import get_json, open_store, put_json
from kftune.steps import search
from tests.fixtures.faulty_proxy import FaultyProxy, wait_for
from tests.steps.test_trial import write_corpus, write_spec

KEY = lease_key("r1")
TRIALS = f"{search_prefix('r1')}/trials"
STATES = {"running", "completed", "pruned", "failed"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The killed-search test's spec: TPE, 6 trials 2 at a time, 3 epochs, 2 finalists (seconds per trial)."""
    return write_spec(tmp_path_factory.mktemp("spec") / "spec.yaml", algorithm="tpe", settings={"n_startup_jobs": "2"},
                      max_trials=6, parallel=2, max_epochs=3, finalists=2, finalist_runs=2)


@pytest.fixture(scope="module")
def baseline(spec: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same search, uninterrupted, alone (in this process): its records and its result."""
    out = tmp_path_factory.mktemp("baseline") / "store"
    result = search.run(search.SearchConfig(spec=str(spec), corpus=str(corpus), store=str(out), run_id="r1",
                                            executor="inline", show_progress=False))
    return {"records": json.loads((out / "runs/r1/search/trials.json").read_text()), "best": result.best}


def _cmd(spec: Path, corpus: Path, store: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kftune.steps.search", "--spec", str(spec), "--corpus", str(corpus),
            "--store", store, "--run-id", "r1", *extra]


def _finished(store: Any) -> dict[str, bytes]:
    """The trial records that are final (not running), as bytes."""
    out = {}
    for key in store.list(TRIALS):
        try:
            data = store.get_bytes(key)
            if json.loads(data)["state"] != "running":
                out[key] = data
        except (OSError, ValueError, KeyError):
            continue
    return out


def _essence(r: dict[str, Any]) -> tuple:
    return r["id"], r["assignment"], r["state"], r["objective"], r["budget"], r["intermediate"]


def _same_as_baseline(store: Any, baseline: dict[str, Any]) -> None:
    records = get_json(store, f"{search_prefix('r1')}/trials.json")
    assert [_essence(r) for r in records] == [_essence(r) for r in baseline["records"]]
    result = get_json(store, f"{search_prefix('r1')}/result.json")
    keys = ("trial_id", "assignment", "objective", "spread", "values", "seeds")
    assert result["status"] == "succeeded"
    assert {k: result["best"][k] for k in keys} == {k: baseline["best"][k] for k in keys}


@pytest.fixture(autouse=True)
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2 s lease (renewed every 0.5 s) in this process and in the searches it starts."""
    monkeypatch.setenv("KFTUNE_LEASE_TTL", "2")
    monkeypatch.setenv("KFTUNE_PROGRESS", "log")


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _replace_lease(store: Any, changes: dict[str, Any]) -> None:
    """Change the lease object with compare-and-swap, so that a renewal in flight cannot undo the change."""
    for _ in range(100):
        data, version = store.get_versioned(KEY)
        if store.put_if_version(KEY, json.dumps({**json.loads(data), **changes}).encode(), version):
            return
    raise AssertionError("the lease kept changing")


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the search, its forkserver and its trial processes (one process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# ---------------------------------------------------------------------------------------------------------
# one driver per run


@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=pytest.mark.integration)])
def test_a_second_search_refuses_and_a_resume_takes_over_the_killed_drivers_expired_lease(
        kind: str, spec: Path, corpus: Path, baseline: dict[str, Any], tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    uri = str(tmp_path / "store") if kind == "local" else request.getfixturevalue("s3_env")
    store = open_store(uri)
    first = _start(_cmd(spec, corpus, uri), tmp_path / "first.log")
    try:
        assert wait_for(lambda: first.poll() is not None or (store.exists(KEY) and len(_finished(store)) >= 1),
                        timeout=180)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.killpg(first.pid, signal.SIGSTOP)  # keep it in the middle of its search while the second one starts
        holder = LeaseRecord.from_bytes(store.get_bytes(KEY))
        second = _run(_cmd(spec, corpus, uri))
    finally:
        _kill(first)  # kill -9 while it is paused mid-search: trials left running, lease left behind
    assert second.returncode == 3, second.stderr[-3000:]
    assert holder.pid == first.pid
    for part in ("run 'r1' is driven by another process", f"host {holder.host}", f"pid {first.pid}", "since",
                 "expires", "--wait", "--take-over"):
        assert part in second.stderr, (part, second.stderr[-3000:])
    assert "Traceback" not in second.stderr

    # the killed driver as seen from another machine: its pid cannot be looked up, only its lease's expiry
    _replace_lease(store, {"machine": "another-machine|boot"})
    before = _finished(store)
    assert 1 <= len(before) < 6 and not store.exists(f"{search_prefix('r1')}/result.json")
    plain = _run(_cmd(spec, corpus, uri))
    assert plain.returncode == 3 and f"pid {first.pid}" in plain.stderr  # no flag: never taken silently

    if kind == "local":  # --take-over once the lease has expired
        expires = LeaseRecord.from_bytes(store.get_bytes(KEY)).expires
        assert wait_for(lambda: time.time() > expires + 0.1, timeout=60)
        resume = _run(_cmd(spec, corpus, uri, "--take-over"))
    else:  # --wait: waits for the expiry itself
        resume = _run(_cmd(spec, corpus, uri, "--wait"))
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert f"took over run r1 from kftune search on host {holder.host}, pid {first.pid}" in resume.stderr
    after = _finished(store)
    for key, data in before.items():  # no finished trial was trained or written again
        assert after[key] == data, key
    _same_as_baseline(store, baseline)
    assert not store.exists(KEY)  # released at the end


def test_a_driver_whose_lease_is_taken_over_stops(spec: Path, corpus: Path, tmp_path: Path) -> None:
    store = open_store(tmp_path / "store")
    first = _start(_cmd(spec, corpus, str(tmp_path / "store")), tmp_path / "first.log")
    try:
        assert wait_for(lambda: first.poll() is not None or (store.exists(KEY) and len(_finished(store)) >= 1),
                        timeout=180)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        _replace_lease(store, {"owner": "another-driver", "host": "node-9", "pid": 99, "machine": "node-9|boot",
                               "expires": time.time() + 3600})  # as a --take-over from another machine does
        first.wait(timeout=120)
    finally:
        _kill(first)
    out = (tmp_path / "first.log").read_text()
    assert first.returncode == 3, out[-3000:]
    assert "lost the lease on run 'r1'" in out and "host node-9, pid 99" in out
    assert not store.exists(f"{search_prefix('r1')}/result.json")
    assert json.loads(store.get_bytes(KEY))["owner"] == "another-driver"  # left to its new holder


def test_running_records_of_a_dead_driver_are_resumed_and_never_reported_finished(corpus: Path,
                                                                                   tmp_path: Path) -> None:
    small = write_spec(tmp_path / "spec.yaml", max_trials=3, max_epochs=1)
    root = tmp_path / "store"
    config = search.SearchConfig(spec=str(small), corpus=str(corpus), store=str(root), run_id="r1",
                                 executor="inline", show_progress=False)
    first = search.run(config)
    store = open_store(root)
    done = {k: store.get_bytes(k) for k in store.list(TRIALS)}
    # as a driver killed in the middle of trial-0002 leaves the journal (its checkpoints are gone too)
    key = f"{TRIALS}/trial-0002.json"
    put_json(store, key, {**json.loads(done[key]), "state": "running", "objective": None, "finished_at": None})
    store.delete(f"{search_prefix('r1')}/result.json")
    again = search.run(config)
    assert again.status == "succeeded" and again.trials == first.trials and again.best == first.best
    assert get_json(store, key)["state"] == first_state(done[key])
    for other in (k for k in done if k != key):
        assert store.get_bytes(other) == done[other]  # untouched
    # a running record that no round planned (another program writes the run): an error, not a finished search
    put_json(store, f"{TRIALS}/trial-0099.json", {"id": "trial-0099", "index": 98, "state": "running",
                                                   "assignment": {}, "intermediate": []})
    result_before = store.get_bytes(f"{search_prefix('r1')}/result.json")
    code = search.main(["--spec", str(small), "--corpus", str(corpus), "--store", str(root), "--run-id", "r1",
                        "--inline"])
    assert code == 1
    assert store.get_bytes(f"{search_prefix('r1')}/result.json") == result_before  # nothing reported


def first_state(data: bytes) -> str:
    return json.loads(data)["state"]


# ---------------------------------------------------------------------------------------------------------
# object-store faults in the middle of a search


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["503", "hang"])
def test_a_store_failing_mid_search_keeps_the_journal_whole_and_a_rerun_redoes_no_finished_trial(
        fault: str, spec: Path, corpus: Path, baseline: dict[str, Any], faulty_s3: tuple[FaultyProxy, str],
        s3_server: str, tmp_path: Path) -> None:
    proxy, uri = faulty_s3  # KFTUNE_S3_ENDPOINT is the proxy; 2 retries, 1 s timeout
    direct = S3Store.from_uri(uri, env={**os.environ, "KFTUNE_S3_ENDPOINT": s3_server})  # around the proxy
    first = _start(_cmd(spec, corpus, uri), tmp_path / "first.log")
    try:  # fail the store while the second round's trials train (or right after)
        assert wait_for(lambda: first.poll() is not None or (
            len(_finished(direct)) >= 2 and direct.exists(f"{search_prefix('r1')}/rounds/round-0001.json")),
            timeout=180)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        if fault == "503":
            proxy.fail(None, 503, "SlowDown")  # every request from now on
        else:
            proxy.hang(None)  # every request from now on is read and never answered
        first.wait(timeout=300)
    finally:
        _kill(first)
    out = (tmp_path / "first.log").read_text()
    assert first.returncode == 1, out[-3000:]
    errors = [line for line in out.splitlines() if " ERROR " in line]
    # one clear error at the end: the store operation that gave up, or the lease it could not renew
    assert errors and ("failed after 3 attempts" in errors[-1] or "before it could be renewed" in errors[-1]), \
        out[-3000:]
    assert any("failed after 3 attempts" in e and proxy.url in e and "KFTUNE_S3_ENDPOINT" in e for e in errors)
    assert ("SlowDown" if fault == "503" else "timed out") in out
    assert "Traceback" not in out
    # the journal: every object is whole (writes are whole objects), every trial record has a state
    for key in direct.list("runs/r1"):
        if key.endswith(".json"):
            doc = json.loads(direct.get_bytes(key))
            if key.startswith(TRIALS + "/"):
                assert doc["state"] in STATES and doc["id"] == key.rsplit("/", 1)[1][:-5]
    before = _finished(direct)
    assert 2 <= len(before) < 6
    proxy.restore()
    rerun = _run(_cmd(spec, corpus, uri))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = _finished(direct)
    for key, data in before.items():
        assert after[key] == data, key
    _same_as_baseline(direct, baseline)
