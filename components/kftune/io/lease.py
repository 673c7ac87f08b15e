"""One driver per run: a lease object in the artifact store.

A search driver (``kftune search``) holds ``runs/<run>/search/lease.json`` while it runs, so that a second
driver on the same store and run id (a user re-submitting, a retried pod) refuses at once instead of racing
on the trial journal. The object says who holds it and until when::

    {"owner": "<random token of the holding process>", "purpose": "kftune search", "run_id": "r1",
     "host": "node-1", "pid": 4242, "machine": "...", "process_start": "...",
     "since": 1730000000.0, "renewed": ..., "expires": ..., "ttl_s": 120, "renewals": 7, ...}

Rules (:func:`judge` and :func:`may_take`, pure functions of the record, the clock and what is known of the
holder's process; tested without I/O):

- no lease object: **free**, the driver creates it;
- the holder is this very lease object (same owner token): **mine**, renewed;
- the holder ran on this machine (same host name, boot and pid namespace) and its process is gone (or its pid
  now belongs to a process that started later): **holder-gone**, taken over at once (a ``kill -9`` and a rerun);
- the lease's ``expires`` has passed: **expired**, taken over only when asked (``--take-over``) or when
  waiting (``--wait``): the holder renews every ``ttl / 4`` and stops itself once it could not renew before
  the expiry, so an expired lease means its driver is dead or stopping;
- otherwise **held**: :class:`LeaseHeldError` names the holder (host, pid, since, expires) and what to do,
  and ``main()`` exits with :data:`EXIT_BUSY` (3); with ``--wait`` the driver polls until the lease is released,
  its holder is gone, or it expired.

Writes are compare-and-swap where the store offers it (:class:`~kftune.io.store.ConditionalWrites`: S3
``If-None-Match: *`` / ``If-Match``, a local ``link`` under an exclusive ``flock``): of two drivers that find
the run free, exactly one creates the lease. For a store without them, or an S3 server that ignores the
conditional headers (detected at the first acquisition by repeating the create, which must be refused),
every write is checked by reading the object back after a short settle time.

The holder renews the lease in a heartbeat thread (:meth:`RunLease.start_heartbeat`); if another driver took
it over (:class:`LeaseLostError`, exit code 3), or it could not be renewed before it expired
(:class:`LeaseExpiredError`: the store was unreachable; exit code 1), :attr:`RunLease.lost` turns true and
:meth:`RunLease.check` raises, so the driver stops rather than race. The lease is deleted at the end
(:meth:`RunLease.release`), unless it was lost.

``KFTUNE_LEASE_TTL`` sets the time to live in seconds (default 120; tests use a second or two).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterator, Literal, Mapping

from kftune.core.errors import ArtifactNotFoundError, ConfigError, KftuneError, Problem

log = logging.getLogger(__name__)

#: Exit code of a driver that found its run driven by another process (or lost its lease to one).
EXIT_BUSY = 3
TTL_ENV = "KFTUNE_LEASE_TTL"
DEFAULT_TTL_S = 120.0
MIN_TTL_S, MAX_TTL_S = 0.5, 86400.0
#: Seconds between a write and its read-back on a store without conditional writes.
SETTLE_S = 0.5

Verdict = Literal["free", "mine", "holder-gone", "expired", "held"]


class LeaseError(KftuneError):
    """The run's lease could not be taken or kept. ``main()`` exits with :data:`EXIT_BUSY`."""

    exit_code = EXIT_BUSY


class LeaseHeldError(LeaseError):
    """Another process holds the run's lease; the message names it and says what to do."""

    def __init__(self, message: str, holder: "LeaseRecord | None" = None, verdict: Verdict = "held"):
        super().__init__(message)
        self.holder, self.verdict = holder, verdict


class LeaseLostError(LeaseError):
    """This driver's lease was taken over by another driver (exit code 3)."""


class LeaseExpiredError(LeaseLostError):
    """This driver could not renew its lease before it expired (the store was unreachable): exit code 1, the
    store is the problem, not another driver."""

    exit_code = 1


# ---------------------------------------------------------------------------------------------------------
# who we are


@dataclass(frozen=True)
class Process:
    """A process as a lease names it. ``machine`` is equal for two processes only when one can look the
    other's pid up: same host name, same boot, same pid namespace."""

    host: str
    machine: str
    pid: int
    started: str | None = None  # the process's start time (Linux), so a reused pid is not mistaken for it


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of ``pid`` from ``/proc/<pid>/stat``; ``None`` where there is no /proc."""
    text = _read_text(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def this_process() -> Process:
    host = socket.gethostname()
    parts = [host]
    boot = _read_text("/proc/sys/kernel/random/boot_id")
    if boot:
        parts.append(boot)
    try:
        parts.append(f"pidns:{os.stat('/proc/self/ns/pid').st_ino}")
    except OSError:
        pass
    stat = _proc_stat(os.getpid())
    return Process(host=host, machine="|".join(parts), pid=os.getpid(), started=stat[1] if stat else None)


def process_alive(holder: "LeaseRecord", here: Process) -> bool | None:
    """Whether the holder's process still runs: ``None`` when it ran on another machine (we cannot tell)."""
    if not holder.machine or holder.machine != here.machine or holder.pid <= 0:
        return None
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except OSError:
        return None
    stat = _proc_stat(holder.pid)
    if stat is not None:
        state, started = stat
        if state == "Z":
            return False  # killed, not yet reaped by its parent
        if holder.process_start and started != holder.process_start:
            return False  # the pid was reused by a later process
    return True


# ---------------------------------------------------------------------------------------------------------
# the record and the rules (pure)


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True)
class LeaseRecord:
    """The lease object's content. Times are seconds since the epoch (the writer's clock)."""

    owner: str
    run_id: str
    purpose: str
    host: str
    machine: str
    pid: int
    process_start: str | None
    since: float
    renewed: float
    expires: float
    ttl_s: float
    renewals: int = 0

    def to_bytes(self) -> bytes:
        doc = {**asdict(self), "since_utc": _utc(self.since), "expires_utc": _utc(self.expires)}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "LeaseRecord":
        """Parse a lease object; one that cannot be read is an expired lease of an unknown holder (so it is
        replaced only with ``--take-over`` or ``--wait``)."""
        try:
            doc = json.loads(data.decode("utf-8"))
            return cls(owner=str(doc["owner"]), run_id=str(doc.get("run_id", "")), purpose=str(doc.get("purpose", "")),
                       host=str(doc.get("host", "?")), machine=str(doc.get("machine", "")), pid=int(doc.get("pid", 0)),
                       process_start=doc.get("process_start"), since=float(doc.get("since", 0.0)),
                       renewed=float(doc.get("renewed", 0.0)), expires=float(doc["expires"]),
                       ttl_s=float(doc.get("ttl_s", 0.0)), renewals=int(doc.get("renewals", 0)))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
            return cls(owner="", run_id="", purpose="an unreadable lease object", host="?", machine="", pid=0,
                       process_start=None, since=0.0, renewed=0.0, expires=0.0, ttl_s=0.0)

    def describe(self, now: float) -> str:
        """``kftune search on host h, pid 42, since ..., lease renewed 3 s ago, expires ... (in 117 s)``."""
        left = self.expires - now
        when = f"in {left:.0f} s" if left >= 0 else f"{-left:.0f} s ago"
        return (f"{self.purpose or 'a driver'} on host {self.host}, pid {self.pid}, since {_utc(self.since)}, "
                f"lease renewed {max(0.0, now - self.renewed):.0f} s ago, expires {_utc(self.expires)} ({when})")


def judge(current: LeaseRecord | None, owner: str, now: float, holder_alive: bool | None) -> Verdict:
    """The state of the lease for the driver ``owner`` at time ``now`` (see the module docstring).
    ``holder_alive``: whether the holder's process runs (``None``: unknown, another machine)."""
    if current is None:
        return "free"
    if current.owner and current.owner == owner:
        return "mine"
    if holder_alive is False:
        return "holder-gone"
    if now >= current.expires:
        return "expired"
    return "held"


def may_take(verdict: Verdict, *, take_over: bool = False, wait: bool = False) -> bool:
    """Whether a driver may take the lease in state ``verdict``: a free, own or orphaned lease always; an
    expired one only with ``take_over`` or ``wait``; a held one never."""
    if verdict in ("free", "mine", "holder-gone"):
        return True
    return verdict == "expired" and (take_over or wait)


def ttl_from_env(env: Mapping[str, str] | None = None, name: str = TTL_ENV, default: float = DEFAULT_TTL_S) -> float:
    """The variable ``name`` (``KFTUNE_LEASE_TTL``) in seconds, ``default`` when unset; :class:`ConfigError`
    naming the variable if malformed."""
    env = os.environ if env is None else env
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not MIN_TTL_S <= value <= MAX_TTL_S:
        raise ConfigError([Problem(name, f"{raw!r} must be a number of seconds from {MIN_TTL_S:g} to "
                                         f"{MAX_TTL_S:g} (default {default:g})")])
    return value


# ---------------------------------------------------------------------------------------------------------
# store operations: compare-and-swap, or write-then-read-back


class _Ops:
    """Versioned reads and conditional writes on one store."""

    def __init__(self, store: Any, *, settle_s: float, sleep: Callable[[float], None]):
        self.store, self.settle_s, self.sleep = store, settle_s, sleep
        self.conditional = (all(callable(getattr(store, m, None)) for m in
                                ("get_versioned", "put_if_absent", "put_if_version", "delete_if_version"))
                            and getattr(store, "conditional_writes", True))

    @staticmethod
    def _version(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def read(self, key: str) -> tuple[bytes, str] | None:
        try:
            if self.conditional:
                return self.store.get_versioned(key)
            data = self.store.get_bytes(key)
        except ArtifactNotFoundError:
            return None
        return data, self._version(data)

    def _settled(self, key: str, data: bytes) -> str | None:
        """After an unconditional write: the version if ``data`` is still what is there."""
        self.sleep(self.settle_s)
        found = self.read(key)
        return found[1] if found is not None and found[0] == data else None

    def create(self, key: str, data: bytes) -> str | None:
        if self.conditional:
            return self.store.put_if_absent(key, data)
        if self.read(key) is not None:
            return None
        self.store.put_bytes(key, data)
        return self._settled(key, data)

    def replace(self, key: str, data: bytes, version: str) -> str | None:
        if self.conditional:
            return self.store.put_if_version(key, data, version)
        found = self.read(key)
        if found is None or found[1] != version:
            return None
        self.store.put_bytes(key, data)
        return self._settled(key, data)

    def delete(self, key: str, version: str) -> bool:
        if self.conditional:
            return self.store.delete_if_version(key, version)
        found = self.read(key)
        if found is None or found[1] != version:
            return False
        self.store.delete(key)
        return True


# ---------------------------------------------------------------------------------------------------------
# the lease


class RunLease:
    """The lease on one run's key ``key`` in ``store``, for one driver.

    ``owner``: the driver's token (default: random, one per object). A driver made of several processes (a
    pipeline run's tasks) passes one token, e.g. its run id, so that each of its tasks finds the lease
    "mine"; it then passes a ``process`` with ``pid=0`` too, since no single process's death ends it.
    ``clock`` (wall-clock seconds: leases are compared across machines), ``sleep`` and ``process`` are
    injectable for tests. Thread-safe: the heartbeat thread renews while the driver checks.
    """

    def __init__(self, store: Any, key: str, *, run_id: str, purpose: str = "kftune search",
                 ttl_s: float | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, process: Process | None = None,
                 settle_s: float = SETTLE_S, flags: tuple[str, str] = ("--wait", "--take-over"),
                 owner: str | None = None):
        self.store, self.key, self.run_id, self.purpose = store, key, run_id, purpose
        self.ttl_s = ttl_from_env() if ttl_s is None else float(ttl_s)
        if not MIN_TTL_S <= self.ttl_s <= MAX_TTL_S:
            raise ConfigError([Problem("lease.ttl_s", f"{ttl_s!r} must be from {MIN_TTL_S:g} to {MAX_TTL_S:g} s")])
        self.clock, self._sleep = clock, sleep
        self.process = process or this_process()
        self.owner = owner or uuid.uuid4().hex
        self.flags = flags
        self._ops = _Ops(store, settle_s=settle_s, sleep=sleep)
        self._record: LeaseRecord | None = None
        self._version: str | None = None
        self._lost: LeaseLostError | None = None
        self._renew_error: str | None = None  # why the last renewal failed, for the error that follows
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval_s(self) -> float:
        """Seconds between renewals (a quarter of the time to live)."""
        return self.ttl_s / 4

    @property
    def record(self) -> LeaseRecord | None:
        """What this driver last wrote (``None`` when it does not hold the lease)."""
        return self._record

    @property
    def lost(self) -> bool:
        return self._lost is not None

    @property
    def uri(self) -> str:
        return self.store.uri_for(self.key)

    def read(self) -> tuple[LeaseRecord, str] | None:
        """The current lease object and its version, or ``None`` when there is none."""
        found = self._ops.read(self.key)
        return (LeaseRecord.from_bytes(found[0]), found[1]) if found is not None else None

    def _fresh(self, now: float, previous: LeaseRecord | None) -> LeaseRecord:
        p = self.process
        return LeaseRecord(owner=self.owner, run_id=self.run_id, purpose=self.purpose, host=p.host, machine=p.machine,
                           pid=p.pid, process_start=p.started, since=previous.since if previous else now,
                           renewed=now, expires=now + self.ttl_s, ttl_s=self.ttl_s,
                           renewals=previous.renewals + 1 if previous else 0)

    def _refusal(self, current: LeaseRecord, verdict: Verdict, now: float) -> str:
        wait, take_over = self.flags
        head = f"run {self.run_id!r} is driven by another process: {current.describe(now)}"
        if verdict == "expired":
            return (f"{head}. Its lease expired, so that driver stopped renewing it and is presumably dead: rerun "
                    f"with {take_over} to continue the run here (after making sure it is not still running), or "
                    f"with {wait} (lease: {self.uri})")
        return (f"{head}. Wait for it to finish (or rerun with {wait}, which waits until it ends or its lease "
                f"expires, then continues the run); if that process is dead, rerun with {take_over} after "
                f"{_utc(current.expires)}, when its lease expires (lease: {self.uri})")

    def acquire(self, *, take_over: bool = False, wait: bool = False, poll_s: float | None = None) -> LeaseRecord:
        """Take the lease (see the module docstring's rules) or raise :class:`LeaseHeldError`; with ``wait``,
        poll every ``poll_s`` (default ``min(5 s, ttl / 4)``) until it can be taken."""
        poll = min(5.0, self.interval_s) if poll_s is None else poll_s
        announced, races = False, 0
        while True:
            found = self.read()
            current, version = found if found is not None else (None, None)
            now = self.clock()
            alive = process_alive(current, self.process) if current is not None else None
            verdict = judge(current, self.owner, now, alive)
            if may_take(verdict, take_over=take_over, wait=wait):
                record = self._fresh(now, current if verdict == "mine" else None)
                data = record.to_bytes()
                if version is None:
                    new_version = self._ops.create(self.key, data)
                else:
                    new_version = self._ops.replace(self.key, data, version)
                if new_version is None:
                    new_version = self._landed(record)
                if new_version is None:  # another driver changed the lease meanwhile: judge it again
                    races += 1
                    if races > 100:
                        raise LeaseError(f"could not take the lease {self.uri}: it kept changing")
                    continue
                with self._lock:
                    self._record, self._version, self._lost = record, new_version, None
                if version is None:
                    self._check_conditions(data)
                if current is not None and verdict in ("holder-gone", "expired"):
                    log.warning("took over run %s from %s (%s)", self.run_id, current.describe(now),
                                "its process is gone" if verdict == "holder-gone" else "its lease expired")
                log.info("lease on run %s held by pid %d until %s, renewed every %.3g s (%s)", self.run_id,
                         self.process.pid, _utc(record.expires), self.interval_s, self.uri)
                return record
            if current is None:
                continue  # unreachable: a free lease may always be taken
            if not wait:
                raise LeaseHeldError(self._refusal(current, verdict, now), current, verdict)
            if not announced:
                log.info("waiting for run %s: %s", self.run_id, current.describe(now))
                announced = True
            self._sleep(poll)

    def _landed(self, record: LeaseRecord) -> str | None:
        """After a refused conditional write: the version if what is there is ``record`` after all (a retried
        request whose first try landed), else ``None``."""
        found = self.read()
        if found is not None and found[0].owner == self.owner and found[0].renewals == record.renewals:
            return found[1]
        return None

    def _check_conditions(self, data: bytes) -> None:
        """Repeat the create that just succeeded: a store that honours ``put_if_absent`` refuses it. One that
        does not (an S3 server ignoring ``If-None-Match``) is then used with write-then-read-back."""
        if not self._ops.conditional:
            return
        if self._ops.create(self.key, data) is not None:
            log.warning("%s ignores conditional writes (If-None-Match): the lease falls back to writing and "
                        "reading back after %.1f s", self.store.root_uri, self._ops.settle_s)
            self._ops.conditional = False
            with self._lock:
                self._version = self._ops._version(data)

    def renew(self) -> LeaseRecord:
        """Extend the lease by its time to live; :class:`LeaseLostError` if another driver holds it now."""
        with self._lock:
            if self._lost is not None:
                raise self._lost
            if self._record is None or self._version is None:
                raise LeaseError(f"the lease {self.uri} is not held by this driver")
            now = self.clock()
            record = replace(self._record, renewed=now, expires=now + self.ttl_s, renewals=self._record.renewals + 1)
            version: str | None = self._version
            for _ in range(3):
                new_version = self._ops.replace(self.key, record.to_bytes(), version)  # type: ignore[arg-type]
                if new_version is not None:
                    self._record, self._version = record, new_version
                    return record
                found = self.read()
                if found is None or found[0].owner != self.owner:
                    holder = (f"it is now held by {found[0].describe(now)}" if found is not None
                              else "its object was deleted")
                    self._lost = LeaseLostError(
                        f"lost the lease on run {self.run_id!r}: {holder}; this driver stops so that two drivers do "
                        f"not write the run at once (lease: {self.uri})")
                    raise self._lost
                if found[0].renewals == record.renewals:  # our own write landed, its answer was lost
                    self._record, self._version = record, found[1]
                    return record
                version = found[1]  # an earlier renewal of ours landed after its request seemed to fail
            raise LeaseError(f"could not renew the lease {self.uri}: it kept changing")

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the lease was lost or has expired unrenewed."""
        with self._lock:
            if self._lost is None and self._record is not None and self.clock() >= self._record.expires:
                why = f"the last try: {self._renew_error}" if self._renew_error else "is the store reachable?"
                self._lost = LeaseExpiredError(
                    f"the lease on run {self.run_id!r} expired at {_utc(self._record.expires)} before it could be "
                    f"renewed ({why}); this driver stops, since another may take the run over (lease: {self.uri})")
            if self._lost is not None:
                raise self._lost

    # heartbeat ------------------------------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Renew every :attr:`interval_s` in a daemon thread until :meth:`release`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"kftune-lease-{self.run_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.renew()
            except LeaseLostError as exc:
                log.error("%s", exc)
                return
            except Exception as exc:  # noqa: BLE001 - the store may be down for a while: keep trying until expiry
                self._renew_error = str(exc)
                record = self._record
                if record is not None and self.clock() >= record.expires - self.interval_s:
                    with self._lock:
                        self._lost = LeaseExpiredError(
                            f"could not renew the lease on run {self.run_id!r} before it expires at "
                            f"{_utc(record.expires)} ({exc}); this driver stops, since another may take the run "
                            f"over (lease: {self.uri})")
                    log.error("%s", self._lost)
                    return
                log.warning("could not renew the lease on run %s (%s); trying again in %.0f s", self.run_id, exc,
                            self.interval_s)

    def stop_heartbeat(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=max(5.0, self.ttl_s))

    def release(self) -> None:
        """Stop renewing and delete the lease if this driver still holds it (errors are logged, not raised:
        an unreleased lease expires, and a rerun on this machine takes it over at once)."""
        self.stop_heartbeat()
        with self._lock:
            if self._record is None:
                return
            record, self._record = self._record, None
            if self._lost is not None:
                return
            try:
                found = self.read()
                if found is not None and found[0].owner == self.owner:
                    if not self._ops.delete(self.key, found[1]):
                        log.warning("the lease %s changed while it was released; left as it is", self.uri)
                        return
                    log.debug("released the lease %s", self.uri)
                else:
                    log.warning("the lease on run %s is no longer this driver's; not releasing it", self.run_id)
            except Exception as exc:  # noqa: BLE001 - best effort, see the docstring
                log.warning("could not release the lease %s (%s); it expires at %s", self.uri, exc,
                            _utc(record.expires))

    @contextlib.contextmanager
    def held(self, *, take_over: bool = False, wait: bool = False) -> Iterator["RunLease"]:
        """Acquire, renew in the background, and release at the end."""
        self.acquire(take_over=take_over, wait=wait)
        self.start_heartbeat()
        try:
            yield self
        finally:
            self.release()


# ---------------------------------------------------------------------------------------------------------
# pipeline runs: a driver made of tasks

PIPELINE_TTL_ENV = "KFTUNE_PIPELINE_LEASE_TTL"
DEFAULT_PIPELINE_TTL_S = 6 * 3600.0


def pipeline_owner(lease_owner: str, job_id: str) -> str:
    """The lease owner of a pipeline run's tasks: ``lease_owner`` when the process that started the run holds
    the lease itself (``kftune run``, which renews it while the run lasts), else the KFP run (``kfp-<job id>``:
    each task of one run, and a KFP retry of it, finds the lease its own)."""
    return (lease_owner or "").strip() or f"kfp-{(job_id or '').strip() or 'unknown'}"


def pipeline_lease(store: Any, run_id: str, owner: str) -> RunLease:
    """The lease on ``run_id`` as a pipeline task holds it: no process of its own (tasks come and go, so no
    holder-gone take-over), a time to live of ``KFTUNE_PIPELINE_LEASE_TTL`` seconds (default 6 h) renewed by
    every search round. A pipeline never takes a lease that another driver holds, nor an expired one:
    another run's lease is refused with who holds it, and :data:`EXIT_BUSY` semantics are the caller's."""
    from kftune.io.journal import lease_key

    ttl = ttl_from_env(name=PIPELINE_TTL_ENV, default=DEFAULT_PIPELINE_TTL_S)
    return RunLease(store, lease_key(run_id), run_id=run_id, purpose="kftune pipeline run", ttl_s=ttl, owner=owner,
                    process=Process(host=socket.gethostname(), machine="", pid=0))


def hold_for_pipeline(store: Any, run_id: str, owner: str) -> RunLease:
    """Take or renew the run's lease for a pipeline task (see :func:`pipeline_lease`), or raise
    :class:`LeaseHeldError` saying who drives the run and what to do."""
    lease = pipeline_lease(store, run_id, owner)
    found = lease.read()
    if found is not None and found[0].owner == owner and found[0].purpose != "kftune pipeline run":
        return lease  # the process that started this run (kftune run) holds the lease and renews it
    try:
        lease.acquire()
    except LeaseHeldError as exc:
        holder = exc.holder.describe(time.time()) if exc.holder is not None else "another driver"
        raise LeaseHeldError(
            f"run {run_id!r} is driven by another process: {holder}. Give this pipeline run its own run_id (empty: "
            f"the KFP run id), or wait until that driver ends; if it is dead, delete {lease.uri} and retry",
            exc.holder, exc.verdict) from None
    return lease


def release_for_pipeline(store: Any, run_id: str, owner: str) -> None:
    """Release the run's lease at the end of a pipeline run when its tasks hold it (a lease that the process
    which started the run holds, ``kftune run``, is that process's to release; another's is left alone)."""
    lease = pipeline_lease(store, run_id, owner)
    found = lease.read()
    if found is None:
        return
    if found[0].owner != owner:
        log.warning("the lease on run %s is held by %s, not by this pipeline run; left as it is", run_id,
                    found[0].describe(time.time()))
        return
    if found[0].purpose != "kftune pipeline run":
        return
    lease.acquire()
    lease.release()
