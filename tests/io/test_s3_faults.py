"""The S3 store against a faulty network: a TCP proxy on 127.0.0.1 in front of the moto server
(tests/fixtures/faulty_proxy.py) refuses connections, resets them, hangs, or answers 5xx.

A transient fault (fewer failures than the retry budget) is retried with backoff and the operation succeeds;
a persistent one ends in one :class:`S3UnavailableError` that names the operation, the object, the endpoint
and what to check, after exactly ``KFTUNE_S3_RETRIES + 1`` attempts. The ``faulty_s3`` fixture sets
``KFTUNE_S3_RETRIES=2`` (3 attempts), ``KFTUNE_S3_TIMEOUT=1`` and ``KFTUNE_S3_BACKOFF=0.01``.
"""

from __future__ import annotations

import os
from typing import Callable

import pytest

from kftune.core.errors import ConfigError
from kftune.io.s3_store import READ_TIMEOUT_S, S3Settings, S3Store, S3UnavailableError
from tests.fixtures.faulty_proxy import FaultyProxy

pytestmark = pytest.mark.integration

#: fault name -> how to arm it on the proxy for ``n`` requests (None: until restored)
FAULTS: dict[str, Callable[[FaultyProxy, int | None], None]] = {
    "reset": lambda proxy, n: proxy.reset(n),
    "hang": lambda proxy, n: proxy.hang(n),
    "503-slowdown": lambda proxy, n: proxy.fail(n, 503, "SlowDown"),
    "500-internal": lambda proxy, n: proxy.fail(n, 500, "InternalError"),
}


def _direct(uri: str, s3_server: str) -> S3Store:
    """The same bucket, straight to the server (not through the proxy)."""
    return S3Store.from_uri(uri, env={**os.environ, "KFTUNE_S3_ENDPOINT": s3_server})


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_transient_fault_is_retried_and_the_operation_succeeds(faulty_s3: tuple[FaultyProxy, str], s3_server: str,
                                                                  fault: str) -> None:
    proxy, uri = faulty_s3
    sleeps: list[float] = []
    store = S3Store.from_uri(uri, sleep=sleeps.append)
    assert store.attempts == 3  # KFTUNE_S3_RETRIES=2

    FAULTS[fault](proxy, 2)
    store.put_bytes("runs/r1/search/trials/t1.json", b'{"state": "completed"}\n')
    assert proxy.faulted == 2 and len(sleeps) == 2
    assert _direct(uri, s3_server).get_bytes("runs/r1/search/trials/t1.json") == b'{"state": "completed"}\n'

    FAULTS[fault](proxy, 2)
    assert store.get_bytes("runs/r1/search/trials/t1.json") == b'{"state": "completed"}\n'
    assert proxy.faulted == 4 and len(sleeps) == 4
    FAULTS[fault](proxy, 1)
    assert store.list("runs/r1") == ["runs/r1/search/trials/t1.json"]
    assert proxy.faulted == 5


def test_refused_connections_are_retried_until_the_server_is_back(faulty_s3: tuple[FaultyProxy, str],
                                                                 s3_server: str) -> None:
    proxy, uri = faulty_s3
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the server comes back during the second wait
        sleeps.append(seconds)
        if len(sleeps) == 2:
            proxy.restore()

    store = S3Store.from_uri(uri, sleep=sleep)
    proxy.refuse()
    store.put_bytes("k", b"1")
    assert len(sleeps) == 2
    assert _direct(uri, s3_server).get_bytes("k") == b"1"


@pytest.mark.parametrize("fault", sorted(FAULTS) + ["refused"])
def test_a_persistent_fault_ends_in_one_clear_error_after_bounded_attempts(faulty_s3: tuple[FaultyProxy, str],
                                                                         s3_server: str, fault: str) -> None:
    proxy, uri = faulty_s3
    sleeps: list[float] = []
    store = S3Store.from_uri(uri, sleep=sleeps.append)
    if fault == "refused":
        proxy.refuse()
    else:
        FAULTS[fault](proxy, None)
    with pytest.raises(S3UnavailableError) as info:
        store.put_bytes("runs/r1/search/trials/t1.json", b"{}")
    err = info.value
    assert len(sleeps) == 2  # 3 attempts, 2 waits
    if fault != "refused":
        assert proxy.faulted == 3
    assert (err.action, err.uri, err.endpoint, err.attempts) == (
        "upload", f"{uri}/runs/r1/search/trials/t1.json", proxy.url, 3)
    text = str(err)
    for part in ("upload", f"{uri}/runs/r1/search/trials/t1.json", proxy.url, "after 3 attempts", "KFTUNE_S3_ENDPOINT",
                 "KFTUNE_S3_RETRIES", "KFTUNE_S3_TIMEOUT"):
        assert part in text, (part, text)
    proxy.restore()
    assert not _direct(uri, s3_server).exists("runs/r1/search/trials/t1.json")  # nothing half-written
    store.put_bytes("runs/r1/search/trials/t1.json", b"{}")  # and the store works again once the fault is gone


def test_retry_and_timeout_settings_come_from_the_environment() -> None:
    base = {"KFTUNE_S3_ENDPOINT": "http://127.0.0.1:9"}
    defaults = S3Settings.from_env(base)
    assert (defaults.retries, defaults.timeout_s, defaults.backoff_s) == (4, READ_TIMEOUT_S, 0.5)
    settings = S3Settings.from_env({**base, "KFTUNE_S3_RETRIES": "1", "KFTUNE_S3_TIMEOUT": "2.5",
                                    "KFTUNE_S3_BACKOFF": "0"})
    assert (settings.retries, settings.timeout_s, settings.backoff_s) == (1, 2.5, 0.0)
    timeout = settings.make_client({})._http.connection_pool_kw["timeout"]
    assert (timeout.connect_timeout, timeout.read_timeout) == (2.5, 2.5)  # a hung connection ends
    store = S3Store.from_uri("s3://bucket/p", env={**base, "KFTUNE_S3_RETRIES": "1", "KFTUNE_S3_BACKOFF": "0.2"})
    assert (store.attempts, store.base_delay) == (2, 0.2)
    for name, value in [("KFTUNE_S3_RETRIES", "many"), ("KFTUNE_S3_RETRIES", "-1"), ("KFTUNE_S3_RETRIES", "1.5"),
                        ("KFTUNE_S3_TIMEOUT", "0"), ("KFTUNE_S3_TIMEOUT", "nan"), ("KFTUNE_S3_BACKOFF", "-1")]:
        with pytest.raises(ConfigError) as info:
            S3Settings.from_env({**base, name: value})
        assert name in str(info.value) and repr(value) in str(info.value)
