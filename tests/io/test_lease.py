"""The run lease (kftune.io.lease): the pure rules first, then the lease on a local directory and on the
moto S3 server, with a fake clock (no wall-clock asserts), and the heartbeat with a real thread.

Driver processes are faked with :class:`Process` values: a holder on "another machine" can only be judged
by its lease's expiry; one on this machine whose pid is gone is taken over at once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from kftune.core.errors import ConfigError
from kftune.io.journal import lease_key
from kftune.io.lease import (DEFAULT_TTL_S, EXIT_BUSY, LeaseHeldError, LeaseLostError, LeaseRecord, Process, RunLease,
                             judge, may_take, process_alive, this_process, ttl_from_env)
from kftune.io.local_store import LocalStore
from kftune.io.store import open_store
from tests.fixtures.faulty_proxy import wait_for

KEY = lease_key("r1")
ELSEWHERE = Process(host="node-7", machine="node-7|another-boot", pid=4242, started="1")


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def record(owner: str = "other", *, expires: float = 100.0, machine: str = "m", pid: int = 1) -> LeaseRecord:
    return LeaseRecord(owner=owner, run_id="r1", purpose="kftune search", host="h", machine=machine, pid=pid,
                       process_start=None, since=0.0, renewed=0.0, expires=expires, ttl_s=60.0)


# ---------------------------------------------------------------------------------------------------------
# the rules, without I/O


@pytest.mark.parametrize("current, alive, now, verdict", [
    (None, None, 50.0, "free"),
    (record("me"), None, 500.0, "mine"),  # even expired: nobody else took it
    (record(), False, 50.0, "holder-gone"),  # its process on this machine is gone: no need to wait
    (record(), None, 99.9, "held"),
    (record(), True, 99.9, "held"),
    (record(), None, 100.0, "expired"),
    (record(), True, 150.0, "expired"),  # alive but not renewing: it stops itself at its next check
])
def test_judge(current: LeaseRecord | None, alive: bool | None, now: float, verdict: str) -> None:
    assert judge(current, "me", now, alive) == verdict


def test_may_take() -> None:
    for verdict in ("free", "mine", "holder-gone"):
        assert may_take(verdict)  # type: ignore[arg-type]
    assert not may_take("expired") and may_take("expired", take_over=True) and may_take("expired", wait=True)
    assert not any(may_take("held", take_over=t, wait=w) for t in (False, True) for w in (False, True))


def test_ttl_from_env() -> None:
    assert ttl_from_env({}) == DEFAULT_TTL_S and ttl_from_env({"KFTUNE_LEASE_TTL": "2.5"}) == 2.5
    for bad in ("soon", "0", "-1", "nan", "1e9"):
        with pytest.raises(ConfigError, match="KFTUNE_LEASE_TTL"):
            ttl_from_env({"KFTUNE_LEASE_TTL": bad})


def test_the_pipeline_lease_ttl_has_its_own_variable_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from kftune.io.lease import DEFAULT_PIPELINE_TTL_S, PIPELINE_TTL_ENV, pipeline_lease
    from kftune.io.store import open_store

    store = open_store(tmp_path)
    monkeypatch.delenv(PIPELINE_TTL_ENV, raising=False)
    monkeypatch.setenv("KFTUNE_LEASE_TTL", "2")  # the search's variable does not apply to pipeline runs
    assert pipeline_lease(store, "r1", "kfp-1").ttl_s == DEFAULT_PIPELINE_TTL_S
    monkeypatch.setenv(PIPELINE_TTL_ENV, "3600")
    assert pipeline_lease(store, "r1", "kfp-1").ttl_s == 3600
    monkeypatch.setenv(PIPELINE_TTL_ENV, "soon")
    with pytest.raises(ConfigError, match=PIPELINE_TTL_ENV):  # the message names the variable that is wrong
        pipeline_lease(store, "r1", "kfp-1")


def test_record_round_trip_and_an_unreadable_one_counts_as_expired() -> None:
    r = record("o", expires=123.5)
    assert LeaseRecord.from_bytes(r.to_bytes()) == r
    junk = LeaseRecord.from_bytes(b"not json")
    assert judge(junk, "me", 1.0, None) == "expired"  # replaced only with --take-over or --wait


def test_process_alive_on_this_machine() -> None:
    here = this_process()
    me = record(machine=here.machine, pid=here.pid)
    assert process_alive(me, here) is True
    assert process_alive(record(machine="elsewhere", pid=here.pid), here) is None  # cannot tell
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert process_alive(record(machine=here.machine, pid=dead.pid), here) is False
    if here.started is not None:  # Linux: a reused pid is recognised by its start time
        reused = LeaseRecord(**{**me.__dict__, "process_start": "1"})
        assert process_alive(reused, here) is False


# ---------------------------------------------------------------------------------------------------------
# the lease on a store


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return open_store(request.getfixturevalue("s3_env"))


def lease(store: Any, clock: Clock, process: Process = ELSEWHERE, ttl: float = 60.0) -> RunLease:
    return RunLease(store, KEY, run_id="r1", ttl_s=ttl, clock=clock, sleep=clock.sleep, process=process,
                    settle_s=0.0)


def test_a_second_driver_is_refused_with_the_holder_and_what_to_do(store: Any) -> None:
    clock = Clock()
    first = lease(store, clock)
    held = first.acquire()
    assert store.exists(KEY) and held.expires == clock.now + 60
    assert first._ops.conditional  # compare-and-swap (moto honours If-None-Match / If-Match), not read-back
    second = lease(store, clock, Process(host="laptop", machine="laptop|boot", pid=7))
    with pytest.raises(LeaseHeldError) as info:
        second.acquire()
    err = info.value
    assert err.exit_code == EXIT_BUSY == 3 and err.verdict == "held" and err.holder.owner == first.owner
    text = str(err)
    for part in ("run 'r1'", "host node-7", "pid 4242", "since", "expires", "--wait", "--take-over", KEY):
        assert part in text, (part, text)
    with pytest.raises(LeaseHeldError):
        second.acquire(take_over=True)  # a live lease is never taken
    first.release()
    assert not store.exists(KEY)
    assert second.acquire().owner == second.owner  # free again


def test_an_expired_lease_is_taken_over_only_when_asked_and_its_old_holder_stops(store: Any) -> None:
    clock = Clock()
    first = lease(store, clock, ttl=60)
    first.acquire()
    first.renew()
    clock.now += 61
    second = lease(store, clock, Process(host="laptop", machine="laptop|boot", pid=7))
    with pytest.raises(LeaseHeldError) as info:
        second.acquire()
    assert info.value.verdict == "expired" and "expired" in str(info.value) and "--take-over" in str(info.value)
    taken = second.acquire(take_over=True)
    assert taken.owner == second.owner and taken.since == clock.now and taken.renewals == 0
    with pytest.raises(LeaseLostError, match="host laptop, pid 7"):
        first.renew()  # the old driver finds out at its next renewal ...
    assert first.lost
    with pytest.raises(LeaseLostError):
        first.check()  # ... and stops
    first.release()  # and does not delete the new holder's lease
    assert LeaseRecord.from_bytes(store.get_bytes(KEY)).owner == second.owner


def test_wait_polls_until_the_lease_is_free_or_expired(store: Any) -> None:
    clock = Clock()
    first = lease(store, clock, ttl=60)
    first.acquire()
    second = lease(store, clock, Process(host="laptop", machine="laptop|boot", pid=7))
    start = clock.now
    got = second.acquire(wait=True, poll_s=5.0)
    assert got.owner == second.owner and 60 <= clock.now - start <= 65  # it waited (fake clock) until expiry
    third = lease(store, clock, Process(host="laptop", machine="laptop|boot", pid=8))
    released: list[float] = []

    def sleep_and_release(seconds: float) -> None:
        clock.sleep(seconds)
        if not released:
            released.append(clock.now)
            second.release()

    third._sleep = sleep_and_release
    assert third.acquire(wait=True, poll_s=1.0).owner == third.owner and clock.now == released[0]


def test_a_lease_whose_holder_died_on_this_machine_is_taken_over_at_once(store: Any) -> None:
    clock = Clock()
    here = this_process()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease(store, clock, Process(host=here.host, machine=here.machine, pid=dead.pid, started=None)).acquire()
    second = lease(store, clock, here)
    assert second.acquire().owner == second.owner  # no --take-over, no waiting: kill -9 and rerun


def test_renewal_extends_and_survives_a_retried_write_whose_answer_was_lost(tmp_path: Path) -> None:
    clock = Clock()
    store = LocalStore(tmp_path / "s")
    mine = lease(store, clock, ttl=40)
    mine.acquire()
    clock.now += 10
    assert mine.renew().expires == clock.now + 40
    real = store.put_if_version

    def lands_but_answer_lost(key: str, data: bytes, version: str) -> str | None:
        real(key, data, version)
        return None  # as if the request timed out after the server applied it

    store.put_if_version = lands_but_answer_lost  # type: ignore[method-assign]
    clock.now += 10
    renewed = mine.renew()
    assert renewed.renewals == 2 and LeaseRecord.from_bytes(store.get_bytes(KEY)) == renewed


class PlainStore:
    """A store with only the ArtifactStore methods: no conditional writes."""

    def __init__(self, inner: LocalStore):
        self.inner = inner
        for name in ("root_uri", "uri_for", "put_bytes", "get_bytes", "exists", "list", "delete"):
            setattr(self, name, getattr(inner, name))


class IgnoresConditions(LocalStore):
    """Like an S3 server that ignores If-None-Match: a create always writes."""

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        self.put_bytes(key, data)
        return self.get_versioned(key)[1]


@pytest.mark.parametrize("kind", ["plain", "ignores-conditions"])
def test_without_conditional_writes_the_lease_writes_and_reads_back(tmp_path: Path, kind: str) -> None:
    clock = Clock()
    store: Any = PlainStore(LocalStore(tmp_path / "s")) if kind == "plain" else IgnoresConditions(tmp_path / "s")
    first = lease(store, clock)
    first.acquire()
    assert not first._ops.conditional  # detected (ignores-conditions) or absent (plain)
    with pytest.raises(LeaseHeldError):
        lease(store, clock, Process(host="b", machine="b", pid=2)).acquire()
    first.renew()
    first.release()
    assert not store.exists(KEY)


def test_the_heartbeat_renews_and_notices_a_take_over(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    mine = RunLease(store, KEY, run_id="r1", ttl_s=0.6, process=ELSEWHERE)
    mine.acquire()
    mine.start_heartbeat()
    try:
        assert wait_for(lambda: LeaseRecord.from_bytes(store.get_bytes(KEY)).renewals >= 2, timeout=30)
        assert not mine.lost
        mine.check()
        while True:  # compare-and-swap, so that a renewal in flight cannot undo the take-over
            data, version = store.get_versioned(KEY)
            thief = LeaseRecord(**{**LeaseRecord.from_bytes(data).__dict__, "owner": "thief", "host": "node-9"})
            if store.put_if_version(KEY, thief.to_bytes(), version):
                break
        assert wait_for(lambda: mine.lost, timeout=30)
        with pytest.raises(LeaseLostError, match="node-9"):
            mine.check()
    finally:
        mine.release()
    assert LeaseRecord.from_bytes(store.get_bytes(KEY)).owner == "thief"  # not released: not ours any more


def test_threads_with_separate_owners_get_the_lease_one_at_a_time(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    barrier = threading.Barrier(6)
    outcome: dict[int, str] = {}

    def drive(i: int) -> None:
        one = RunLease(store, KEY, run_id="r1", ttl_s=60, process=Process(f"h{i}", f"h{i}", 100 + i))
        barrier.wait()
        try:
            one.acquire()
            outcome[i] = "held"
        except LeaseHeldError:
            outcome[i] = "refused"

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome.values()) == ["held"] + ["refused"] * 5


def test_a_driver_of_several_processes_shares_one_owner_token(tmp_path: Path) -> None:
    """A pipeline run's tasks are separate processes: one token (the run's id) and no pid make them one driver."""
    clock = Clock()
    store = LocalStore(tmp_path / "s")
    task = Process(host="node-1", machine="node-1|boot", pid=0)

    def task_lease(owner: str) -> RunLease:
        return RunLease(store, KEY, run_id="r1", ttl_s=60, clock=clock, sleep=clock.sleep, process=task, owner=owner)

    first = task_lease("pipeline-run-1").acquire()
    clock.now += 30
    again = task_lease("pipeline-run-1").acquire()  # the next task of the same run (or a retry)
    assert again.since == first.since and again.renewals == 1 and again.expires == clock.now + 60
    with pytest.raises(LeaseHeldError):
        task_lease("pipeline-run-2").acquire()  # another run with the same run id
