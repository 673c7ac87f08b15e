"""Contract tests for the artifact stores (local directory and S3 on a real moto server), plus what is
specific to each: atomic local writes under concurrent reads, S3 settings from the environment, S3
retries on injected transient errors, and credentials that never show up in reprs, logs or errors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from kftune.core.errors import ArtifactNotFoundError, ConfigError
from kftune.io.local_store import LocalStore
from kftune.io.s3_store import S3Settings, S3Store, S3StoreError, S3UnavailableError, is_transient, parse_s3_uri
from kftune.io.store import (TEMP_MARKER, ArtifactStore, ConditionalWrites, get_json, get_text, open_store,
                             put_json, put_text)
from tests.fixtures.s3 import TEST_ACCESS_KEY, TEST_SECRET_KEY

MiB = 1024 * 1024


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    """Each contract test runs on a LocalStore in tmp_path and on an S3Store on the moto server."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return open_store(request.getfixturevalue("s3_env"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# the contract, on both stores


def test_is_an_artifact_store(store: ArtifactStore) -> None:
    assert isinstance(store, ArtifactStore)


def test_is_what_nlp_is_handed(store: ArtifactStore) -> None:
    """nlp takes stores through its own Protocol (it imports nothing from kftune.io); every store fits it."""
    from kftune.nlp.storage import BlobStore

    assert isinstance(store, BlobStore)


def test_put_get_bytes_round_trip(store: ArtifactStore) -> None:
    payloads = {
        "a.bin": bytes(range(256)) * 3,
        "empty": b"",
        "runs/r1/search/trials/t-1.json": b'{"objective": 0.5}\n',
        "unicode/\u00e9t\u00e9 v2.txt": "caf\u00e9\n".encode(),
    }
    for key, data in payloads.items():
        store.put_bytes(key, data)
    for key, data in payloads.items():
        assert store.get_bytes(key) == data


def test_overwrite_replaces_the_whole_object(store: ArtifactStore) -> None:
    store.put_bytes("k", b"a much longer first version")
    store.put_bytes("k", b"short")
    assert store.get_bytes("k") == b"short"
    assert store.list() == ["k"]


def test_get_missing_raises_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_bytes("present/x", b"1")
    for key in ["missing", "present/missing", "present"]:  # "present" is a "directory", not an object
        with pytest.raises(ArtifactNotFoundError) as info:
            store.get_bytes(key)
        assert isinstance(info.value, FileNotFoundError)
        assert info.value.uri == store.uri_for(key)
        assert key in str(info.value)
        assert info.value.__cause__ is not None  # raised ``from`` the underlying error
    dest = tmp_path / "dl" / "out.bin"
    with pytest.raises(ArtifactNotFoundError):
        store.get_file("missing", dest)
    assert not dest.exists()


def test_exists(store: ArtifactStore) -> None:
    assert not store.exists("a/b")
    store.put_bytes("a/b", b"x")
    assert store.exists("a/b")
    assert not store.exists("a")  # a prefix is not an object
    assert not store.exists("a/b/c")


def test_list_is_sorted_recursive_and_relative(store: ArtifactStore) -> None:
    assert store.list() == []
    keys = ["runs/r1/search/trials/t2.json", "runs/r1/search/trials/t10.json", "runs/r1/corpus/train.jsonl",
            "runs/r10/x", "runs/r1x", "top.txt"]
    for key in reversed(keys):
        store.put_bytes(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("") == sorted(keys)
    expected_r1 = ["runs/r1/corpus/train.jsonl", "runs/r1/search/trials/t10.json", "runs/r1/search/trials/t2.json"]
    assert store.list("runs/r1") == expected_r1  # whole segments: not runs/r10/x, not runs/r1x
    assert store.list("runs/r1/") == expected_r1
    assert store.list("runs/r1/search/trials") == ["runs/r1/search/trials/t10.json", "runs/r1/search/trials/t2.json"]
    assert store.list("runs") == sorted(k for k in keys if k.startswith("runs/"))
    assert store.list("top.txt") == ["top.txt"]
    assert store.list("nothing/here") == []
    for key in store.list():
        assert store.get_bytes(key) == key.encode()


def test_delete_and_delete_missing(store: ArtifactStore) -> None:
    store.put_bytes("d/one", b"1")
    store.put_bytes("d/two", b"2")
    store.delete("d/one")
    assert not store.exists("d/one")
    assert store.list() == ["d/two"]
    with pytest.raises(ArtifactNotFoundError):
        store.get_bytes("d/one")
    store.delete("d/one")  # again: not an error
    store.delete("never/was")
    assert store.list() == ["d/two"]


def test_put_file_get_file_multi_mb(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    src.write_bytes(os.urandom(6 * MiB + 12345))  # above one 5 MiB part: a multipart upload on S3
    store.put_file("runs/r1/final/model.pt", src)
    dest = tmp_path / "download" / "nested" / "model.pt"  # parent directories are created
    store.get_file("runs/r1/final/model.pt", dest)
    assert dest.stat().st_size == src.stat().st_size
    assert _sha256(dest) == _sha256(src)
    assert [p.name for p in dest.parent.iterdir()] == ["model.pt"]  # no temporary file left behind
    dest.write_bytes(b"old")
    store.get_file("runs/r1/final/model.pt", dest)  # replaces an existing file
    assert _sha256(dest) == _sha256(src)
    assert store.get_bytes("runs/r1/final/model.pt") == src.read_bytes()


def test_put_file_missing_source_is_the_callers_error(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        store.put_file("k", tmp_path / "no-such-file")
    assert not isinstance(info.value, ArtifactNotFoundError)
    assert not store.exists("k")


BAD_KEYS = ["", "/abs/key", "../escape", "a/../../b", "a/./b", "a//b", "a/", "win\\path", "a/\x00b",
            f"a/{TEMP_MARKER}123-b"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused(store: ArtifactStore, key: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    calls = [lambda: store.put_bytes(key, b"x"), lambda: store.get_bytes(key), lambda: store.put_file(key, src),
             lambda: store.get_file(key, tmp_path / "dst"), lambda: store.exists(key), lambda: store.delete(key),
             lambda: store.uri_for(key)]
    for call in calls:
        with pytest.raises(ValueError, match="invalid artifact key") as info:
            call()
        assert repr(key) in str(info.value)
    with pytest.raises(ValueError):
        store.list("../x")
    assert store.list() == []


def test_json_and_text_helpers(store: ArtifactStore) -> None:
    obj = {"b": [1, 2.5, None], "a": "\u00e9t\u00e9", "nested": {"z": True, "y": 0}}
    put_json(store, "r/result.json", obj)
    assert get_json(store, "r/result.json") == obj
    first = store.get_bytes("r/result.json")
    put_json(store, "r/result.json", dict(reversed(list(obj.items()))))
    assert store.get_bytes("r/result.json") == first  # key-sorted: stable bytes for the same object
    assert first.endswith(b"\n") and "\u00e9t\u00e9".encode() in first
    put_text(store, "r/card.md", "# Card\n\u00e9\n")
    assert get_text(store, "r/card.md") == "# Card\n\u00e9\n"
    with pytest.raises(ArtifactNotFoundError):
        get_json(store, "r/missing.json")


def test_conditional_writes_are_compare_and_swap(store: ArtifactStore) -> None:
    """What the run lease relies on: create-if-absent, replace-if-unchanged, delete-if-unchanged."""
    assert isinstance(store, ConditionalWrites)
    key = "runs/r1/search/lease.json"
    first = store.put_if_absent(key, b"A")
    assert first and store.get_versioned(key) == (b"A", first)
    assert store.put_if_absent(key, b"B") is None and store.get_bytes(key) == b"A"  # the second create loses
    second = store.put_if_version(key, b"C", first)
    assert second and second != first and store.get_versioned(key) == (b"C", second)
    assert store.put_if_version(key, b"D", first) is None and store.get_bytes(key) == b"C"  # stale version
    assert store.delete_if_version(key, first) is False and store.exists(key)
    assert store.delete_if_version(key, second) is True and not store.exists(key)
    assert store.put_if_version(key, b"E", second) is None and not store.exists(key)  # gone
    assert store.delete_if_version(key, second) is False
    with pytest.raises(ArtifactNotFoundError):
        store.get_versioned(key)
    assert store.list("runs") == []  # the local store's lock files are hidden


def test_local_conditional_create_has_one_winner_among_threads(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    for attempt in range(5):
        barrier = threading.Barrier(8)
        wins: list[int] = []

        def create(i: int) -> None:
            barrier.wait()
            if store.put_if_absent(f"k{attempt}", str(i).encode()):
                wins.append(i)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1 and store.get_bytes(f"k{attempt}") == str(wins[0]).encode()


def test_uris(store: ArtifactStore) -> None:
    root = store.root_uri
    assert store.uri_for("runs/r1/x.json") == f"{root}/runs/r1/x.json"
    assert TEST_SECRET_KEY not in root and TEST_ACCESS_KEY not in root


# ---------------------------------------------------------------------------------------------------------
# LocalStore specifics


def test_open_store_local(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s")
    assert isinstance(store, LocalStore)
    assert store.root_uri == str(tmp_path / "s")
    assert isinstance(open_store(f"file://{tmp_path}/s"), LocalStore)
    with pytest.raises(ValueError, match="unsupported store URI"):
        open_store("gs://bucket/x")


def test_local_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = LocalStore("artifacts")
    assert store.root_uri == str(tmp_path / "artifacts")
    store.put_bytes("x", b"1")
    assert (tmp_path / "artifacts" / "x").read_bytes() == b"1"


def test_local_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    """A reader thread, while a writer rewrites a large object, sees only whole versions."""
    store = LocalStore(tmp_path / "s")
    versions = [bytes([65 + i]) * (3 * MiB + i * 4099) for i in range(3)]  # different sizes and contents
    valid = {hashlib.sha256(v).hexdigest() for v in versions}
    store.put_bytes("big.bin", versions[0])
    src_files = []
    for i, data in enumerate(versions):
        src_files.append(tmp_path / f"v{i}")
        src_files[-1].write_bytes(data)
    done = threading.Event()
    seen: Counter[str] = Counter()
    bad: list[str] = []
    listings: set[tuple[str, ...]] = set()

    def reader() -> None:
        n = 0
        while not done.is_set() or n < 5:
            n += 1
            data = store.get_bytes("big.bin")
            digest = hashlib.sha256(data).hexdigest()
            (seen.update([digest]) if digest in valid else bad.append(f"{len(data)} bytes"))
            dest = tmp_path / "copy.bin"
            store.get_file("big.bin", dest)
            digest = _sha256(dest)
            (seen.update([digest]) if digest in valid else bad.append(f"get_file: {dest.stat().st_size} bytes"))
            listings.add(tuple(store.list()))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(24):
            if i % 2:
                store.put_bytes("big.bin", versions[i % 3])
            else:
                store.put_file("big.bin", src_files[i % 3])
    finally:
        done.set()
        thread.join()
    assert bad == []
    assert sum(seen.values()) >= 10
    assert listings == {("big.bin",)}  # temporary files never show up in list()
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["big.bin"]


def test_local_failed_write_keeps_old_object_and_leaves_no_temp(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("k", b"old")
    src = tmp_path / "src"
    src.write_bytes(b"new" * 1000)

    def broken_copy(fsrc: Any, fdst: Any, length: int = 0) -> None:
        fdst.write(fsrc.read(10))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("kftune.io.local_store.shutil.copyfileobj", broken_copy)
    with pytest.raises(OSError, match="No space left"):
        store.put_file("k", src)
    assert store.get_bytes("k") == b"old"
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["k"]


def test_local_list_skips_stray_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("a/b", b"1")
    (tmp_path / "s" / "a" / f"{TEMP_MARKER}abc-b").write_bytes(b"partial")  # as a crash would leave it
    assert store.list() == ["a/b"]


def test_local_files_are_readable_by_others(tmp_path: Path) -> None:
    """Not mkstemp's 0600: pods sharing a volume as other users must read what we wrote."""
    old = os.umask(0o022)
    try:
        store = LocalStore(tmp_path / "s")
        store.put_bytes("k", b"1")
    finally:
        os.umask(old)
    assert (tmp_path / "s" / "k").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------------------------------------
# S3 settings from the environment (no server needed)


def test_settings_defaults() -> None:
    settings = S3Settings.from_env({})
    assert (settings.endpoint, settings.secure, settings.region, settings.access_key) == (
        "s3.amazonaws.com", True, None, None)
    assert settings.endpoint_url == "https://s3.amazonaws.com"


@pytest.mark.parametrize("endpoint, secure_env, expected", [
    ("minio.kubeflow:9000", None, ("minio.kubeflow:9000", True)),
    ("minio.kubeflow:9000", "false", ("minio.kubeflow:9000", False)),
    ("http://127.0.0.1:9000", None, ("127.0.0.1:9000", False)),
    ("https://s3.example.com/", None, ("s3.example.com", True)),
    ("HTTP://minio:9000", "no", ("minio:9000", False)),
    ("http://[::1]:9000", None, ("[::1]:9000", False)),
])
def test_settings_endpoint_and_secure(endpoint: str, secure_env: str | None, expected: tuple[str, bool]) -> None:
    env = {"KFTUNE_S3_ENDPOINT": endpoint}
    if secure_env is not None:
        env["KFTUNE_S3_SECURE"] = secure_env
    settings = S3Settings.from_env(env)
    assert (settings.endpoint, settings.secure) == expected


@pytest.mark.parametrize("env, field", [
    ({"KFTUNE_S3_SECURE": "maybe"}, "KFTUNE_S3_SECURE"),
    ({"KFTUNE_S3_ENDPOINT": "https://minio:9000", "KFTUNE_S3_SECURE": "false"}, "KFTUNE_S3_SECURE"),
    ({"KFTUNE_S3_ENDPOINT": "ftp://minio"}, "KFTUNE_S3_ENDPOINT"),
    ({"KFTUNE_S3_ENDPOINT": "minio:9000/bucket"}, "KFTUNE_S3_ENDPOINT"),
    ({"KFTUNE_S3_ENDPOINT": "minio:port"}, "KFTUNE_S3_ENDPOINT"),
    ({"KFTUNE_S3_CA_BUNDLE": "/no/such/ca.pem"}, "KFTUNE_S3_CA_BUNDLE"),
    ({"KFTUNE_S3_ACCESS_KEY": "AKIAONLYACCESS"}, "KFTUNE_S3_SECRET_KEY"),
    ({"AWS_SECRET_ACCESS_KEY": "only-the-secret-value"}, "KFTUNE_S3_ACCESS_KEY"),
])
def test_settings_errors_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        S3Settings.from_env(env)
    assert [p.path for p in info.value.problems] == [field]
    for name, value in env.items():
        if "KEY" in name:
            assert value not in str(info.value)


def test_settings_credentials_fall_back_to_aws_names_and_stay_out_of_repr() -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKIAFALLBACK", "AWS_SECRET_ACCESS_KEY": "fallback-secret-value",
           "KFTUNE_S3_REGION": "eu-west-1"}
    settings = S3Settings.from_env(env)
    assert (settings.access_key, settings.secret_key, settings.region) == (
        "AKIAFALLBACK", "fallback-secret-value", "eu-west-1")
    assert S3Settings.from_env({**env, "AWS_SESSION_TOKEN": "aws-token"}).session_token == "aws-token"
    env["KFTUNE_S3_ACCESS_KEY"], env["KFTUNE_S3_SECRET_KEY"] = "AKIAKFTUNE", "kftune-secret-value"
    env["AWS_SESSION_TOKEN"] = "aws-token"  # belongs to the AWS keys: not used with the KFTUNE_S3_* ones
    settings = S3Settings.from_env(env)
    assert (settings.access_key, settings.secret_key, settings.session_token) == (
        "AKIAKFTUNE", "kftune-secret-value", None)
    for text in (repr(settings), str(settings)):
        assert "kftune-secret-value" not in text and "AKIAKFTUNE" not in text


def test_endpoint_with_user_info_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        S3Settings.from_env({"KFTUNE_S3_ENDPOINT": "http://user:hunter2secret@minio:9000"})
    assert "hunter2secret" not in str(info.value)
    assert "KFTUNE_S3_ACCESS_KEY" in str(info.value)


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    assert parse_s3_uri("s3://my-bucket.v2/a/b/") == ("my-bucket.v2", "a/b")
    for bad in ["s3://", "s3://B", "s3://Upper-Case/x", "s3://bucket/a/../b", "s3://b_/x", "gs://bucket"]:
        with pytest.raises(ConfigError):
            parse_s3_uri(bad)


def test_from_uri_repr_and_uris_hold_no_credentials() -> None:
    env = {"KFTUNE_S3_ENDPOINT": "http://127.0.0.1:1", "KFTUNE_S3_ACCESS_KEY": "AKIASECRETISH",
           "KFTUNE_S3_SECRET_KEY": "very-secret-value"}
    store = S3Store.from_uri("s3://bucket/pre/fix", env=env)
    assert store.root_uri == "s3://bucket/pre/fix"
    assert store.uri_for("a/b.json") == "s3://bucket/pre/fix/a/b.json"
    assert store.object_name("a/b.json") == "pre/fix/a/b.json"
    for text in (repr(store), str(store), store.root_uri):
        assert "very-secret-value" not in text and "AKIASECRETISH" not in text
    assert "127.0.0.1:1" in repr(store)


# ---------------------------------------------------------------------------------------------------------
# S3 retries and error mapping, on a fake minio client with scripted failures (no server needed)


def s3_error(code: str, status: int, message: str = "scripted") -> Exception:
    import urllib3
    from minio.error import S3Error

    return S3Error(urllib3.HTTPResponse(body=b"", status=status), code, message, "/bucket/key", "req-1",
                   "host-1", bucket_name="bucket", object_name="key")


def connection_refused() -> Exception:
    import urllib3.exceptions

    return urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection: Connection refused")


class FakeResponse:
    def __init__(self, data: bytes, fail_after: int | None = None):
        self._data, self._fail_after = data, fail_after

    def read(self) -> bytes:
        return self._data

    def stream(self, amt: int) -> Iterator[bytes]:
        import urllib3.exceptions

        for i in range(0, len(self._data), amt):
            if self._fail_after is not None and i >= self._fail_after:
                raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
            yield self._data[i:i + amt]

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class FakeObject:
    def __init__(self, name: str):
        self.object_name = name


class FakeMinio:
    """An in-memory stand-in for the ``minio.Minio`` methods S3Store calls; ``fail[method]`` is a list of
    exceptions raised (one per call, in order) before the method starts working."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail: dict[str, list[Exception]] = {}
        self.calls: Counter[str] = Counter()
        self.truncate_next_downloads = 0

    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        if self.fail.get(method):
            raise self.fail[method].pop(0)

    def put_object(self, bucket: str, name: str, data: Any, length: int, content_type: str = "") -> None:
        self._enter("put_object")
        self.objects[name] = data.read(length)

    def fput_object(self, bucket: str, name: str, path: str, content_type: str = "", part_size: int = 0) -> None:
        self._enter("fput_object")
        self.objects[name] = Path(path).read_bytes()

    def get_object(self, bucket: str, name: str) -> FakeResponse:
        self._enter("get_object")
        if name not in self.objects:
            raise s3_error("NoSuchKey", 404, "The specified key does not exist.")
        if self.truncate_next_downloads:
            self.truncate_next_downloads -= 1
            return FakeResponse(self.objects[name], fail_after=MiB)
        return FakeResponse(self.objects[name])

    def stat_object(self, bucket: str, name: str) -> object:
        self._enter("stat_object")
        if name not in self.objects:
            raise s3_error("NoSuchKey", 404)
        return object()

    def remove_object(self, bucket: str, name: str) -> None:
        self._enter("remove_object")
        self.objects.pop(name, None)

    def list_objects(self, bucket: str, prefix: str | None = None, recursive: bool = False) -> Iterator[FakeObject]:
        self._enter("list_objects")
        return iter([FakeObject(n) for n in sorted(self.objects) if n.startswith(prefix or "")])


SECRET = "fake-secret-key-never-shown"


@pytest.fixture
def fake() -> FakeMinio:
    return FakeMinio()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def fake_store(fake: FakeMinio, sleeps: list[float]) -> S3Store:
    return S3Store("bucket", "pre", client=fake, endpoint_url="http://fake:9000", attempts=4, base_delay=1.0,
                   max_delay=3.0, sleep=sleeps.append, secrets=("AKIAFAKEACCESS", SECRET))


@pytest.mark.parametrize("error", [
    s3_error("SlowDown", 503), s3_error("RequestTimeout", 400), s3_error("InternalError", 500),
    s3_error("ServiceUnavailable", 503), connection_refused(),
])
def test_s3_retries_transient_errors_then_succeeds(fake_store: S3Store, fake: FakeMinio, sleeps: list[float],
                                                   error: Exception) -> None:
    fake.fail["put_object"] = [error, error]
    fake_store.put_bytes("k", b"data")
    assert fake.calls["put_object"] == 3
    assert fake.objects["pre/k"] == b"data"
    assert len(sleeps) == 2
    # exponential backoff with jitter: the n-th wait lies in [cap/2, cap], cap = min(3, 1 * 2**(n-1))
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0


def test_s3_retries_every_operation(fake_store: S3Store, fake: FakeMinio, sleeps: list[float],
                                    tmp_path: Path) -> None:
    fake.objects["pre/a/b"] = b"x"
    src = tmp_path / "src"
    src.write_bytes(b"file")
    operations = {
        "get_object": lambda: fake_store.get_bytes("a/b"),
        "stat_object": lambda: fake_store.exists("a/b"),
        "list_objects": lambda: fake_store.list("a"),
        "remove_object": lambda: fake_store.delete("zzz"),
        "fput_object": lambda: fake_store.put_file("f", src),
    }
    for method, call in operations.items():
        fake.fail[method] = [s3_error("SlowDown", 503)]
        call()
        assert fake.calls[method] == 2, method
    assert len(sleeps) == len(operations)
    assert fake.objects["pre/f"] == b"file"


def test_s3_gives_up_after_the_attempts(fake_store: S3Store, fake: FakeMinio, sleeps: list[float]) -> None:
    fake.fail["put_object"] = [s3_error("SlowDown", 503)] * 10
    with pytest.raises(S3UnavailableError) as info:
        fake_store.put_bytes("runs/k.json", b"x")
    assert fake.calls["put_object"] == 4
    assert len(sleeps) == 3 and sleeps[2] <= 3.0  # capped at max_delay
    message = str(info.value)
    assert "s3://bucket/pre/runs/k.json" in message and "after 4 attempts" in message
    assert "SlowDown" in message and "KFTUNE_S3_ENDPOINT" in message
    assert isinstance(info.value, ConnectionError)
    assert info.value.__cause__ is not None


def test_s3_download_retry_is_atomic(fake_store: S3Store, fake: FakeMinio, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    fake.objects["pre/m.pt"] = data
    dest = tmp_path / "out" / "m.pt"
    fake.truncate_next_downloads = 1  # the first transfer breaks after 1 MiB
    fake_store.get_file("m.pt", dest)
    assert fake.calls["get_object"] == 2
    assert dest.read_bytes() == data
    assert [p.name for p in dest.parent.iterdir()] == ["m.pt"]
    # when every transfer breaks, the old file stays untouched and no partial file appears
    dest.write_bytes(b"previous")
    fake.truncate_next_downloads = 10
    with pytest.raises(S3UnavailableError):
        fake_store.get_file("m.pt", dest)
    assert dest.read_bytes() == b"previous"
    assert [p.name for p in dest.parent.iterdir()] == ["m.pt"]


def test_s3_missing_is_not_found_without_retry(fake_store: S3Store, fake: FakeMinio, sleeps: list[float]) -> None:
    with pytest.raises(ArtifactNotFoundError) as info:
        fake_store.get_bytes("nope")
    assert info.value.uri == "s3://bucket/pre/nope"
    assert fake.calls["get_object"] == 1 and sleeps == []
    fake.fail["get_object"] = [s3_error("NoSuchBucket", 404)]
    with pytest.raises(ArtifactNotFoundError):
        fake_store.get_bytes("nope")
    assert not fake_store.exists("nope")
    fake.fail["list_objects"] = [s3_error("NoSuchBucket", 404)]
    assert fake_store.list() == []


def test_s3_missing_bucket_on_write_says_to_create_it(fake_store: S3Store, fake: FakeMinio) -> None:
    fake.fail["put_object"] = [s3_error("NoSuchBucket", 404)]
    with pytest.raises(S3StoreError, match="does not exist.*create it"):
        fake_store.put_bytes("k", b"x")


def test_s3_access_denied_is_a_permission_error_with_a_hint_and_no_secret(
        fake_store: S3Store, fake: FakeMinio, sleeps: list[float], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # a server message that (absurdly) echoes the credentials: they are redacted anyway
    fake.fail["get_object"] = [s3_error("AccessDenied", 403, f"denied for AKIAFAKEACCESS/{SECRET}")]
    with pytest.raises(PermissionError) as info:
        fake_store.get_bytes("runs/r1/x.json")
    message = str(info.value)
    assert "s3://bucket/pre/runs/r1/x.json" in message
    assert "KFTUNE_S3_ACCESS_KEY" in message and "KFTUNE_S3_SECRET_KEY" in message
    assert SECRET not in message and "AKIAFAKEACCESS" not in message
    assert fake.calls["get_object"] == 1 and sleeps == []
    # and retry warnings are redacted too
    fake.fail["put_object"] = [s3_error("SlowDown", 503, f"slow down {SECRET}")]
    fake_store.put_bytes("k", b"x")
    assert "retry 1/3" in caplog.text
    assert SECRET not in caplog.text and "AKIAFAKEACCESS" not in caplog.text


def test_s3_other_server_errors_are_wrapped(fake_store: S3Store, fake: FakeMinio, sleeps: list[float]) -> None:
    fake.fail["put_object"] = [s3_error("InvalidArgument", 400, "bad request")]
    with pytest.raises(S3StoreError, match="InvalidArgument") as info:
        fake_store.put_bytes("k", b"x")
    assert not isinstance(info.value, S3UnavailableError) and sleeps == []


def test_is_transient_classification() -> None:
    import urllib3.exceptions as u3
    from minio.error import ServerError

    assert is_transient(s3_error("SlowDown", 503))
    assert is_transient(s3_error("InternalError", 500))
    assert is_transient(s3_error("RequestTimeout", 400))
    assert is_transient(s3_error("SomethingNew", 502))
    assert is_transient(s3_error("TooManyRequests", 429))
    assert is_transient(ServerError("server failed with HTTP status code 503", 503))
    assert is_transient(connection_refused())
    assert is_transient(u3.ReadTimeoutError(None, "/", "Read timed out."))
    assert is_transient(u3.ProtocolError("Connection aborted."))
    assert is_transient(ConnectionResetError())
    assert not is_transient(s3_error("NoSuchKey", 404))
    assert not is_transient(s3_error("AccessDenied", 403))
    assert not is_transient(u3.SSLError("certificate verify failed"))
    assert not is_transient(OSError(28, "No space left on device"))
    assert not is_transient(ValueError("bad"))


def test_s3_unreachable_endpoint_gives_up_with_a_clear_error(sleeps: list[float],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The real minio client against a closed loopback port: connection refused, retried, then given up."""
    from tests.fixtures.s3 import _free_port

    caplog.set_level(logging.DEBUG)
    env = {"KFTUNE_S3_ENDPOINT": f"http://127.0.0.1:{_free_port()}", "KFTUNE_S3_ACCESS_KEY": "AKIAUNREACH",
           "KFTUNE_S3_SECRET_KEY": SECRET, "KFTUNE_S3_REGION": "us-east-1"}
    store = S3Store.from_uri("s3://bucket/p", env=env, attempts=3, sleep=sleeps.append)
    with pytest.raises(S3UnavailableError) as info:
        store.get_bytes("k")
    assert len(sleeps) == 2
    assert "after 3 attempts" in str(info.value) and "127.0.0.1" in str(info.value)
    for text in (str(info.value), caplog.text):
        assert SECRET not in text and "AKIAUNREACH" not in text


# ---------------------------------------------------------------------------------------------------------
# S3 against the moto server


@pytest.mark.integration
def test_s3_open_store_and_ensure_bucket(s3_env: str) -> None:
    store = open_store(s3_env)
    assert isinstance(store, S3Store)
    assert store.root_uri == s3_env
    assert store.ensure_bucket() is False  # the fixture made it
    other = S3Store.from_uri(f"s3://{store.bucket}-b/x")
    assert other.ensure_bucket() is True
    assert other.ensure_bucket() is False
    other.put_bytes("k", b"1")
    assert other.list() == ["k"] and store.list() == []


@pytest.mark.integration
def test_s3_large_file_is_a_multipart_upload(s3_env: str, tmp_path: Path) -> None:
    store = S3Store.from_uri(s3_env)
    src = tmp_path / "big"
    src.write_bytes(os.urandom(6 * MiB))
    store.put_file("big", src)
    etag = store._client.stat_object(store.bucket, store.object_name("big")).etag
    assert etag.endswith("-2")  # S3's ETag of a 2-part multipart upload


@pytest.mark.integration
def test_s3_list_skips_names_that_are_not_keys(s3_env: str) -> None:
    import io

    store = S3Store.from_uri(s3_env)
    store.put_bytes("a/b", b"1")
    for name in ["prefix/folder/", "prefix/x//y", "prefixed-sibling", "other/a"]:  # made by other tools
        store._client.put_object(store.bucket, name, io.BytesIO(b""), 0)
    assert store.list() == ["a/b"]


@pytest.mark.integration
def test_s3_retry_wraps_the_real_client(s3_env: str, sleeps: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib3.exceptions

    store = S3Store.from_uri(s3_env, sleep=sleeps.append)
    real_put = store._client.put_object
    failures = [urllib3.exceptions.ProtocolError("Connection aborted."), s3_error("SlowDown", 503)]

    def flaky_put(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return real_put(*args, **kwargs)

    monkeypatch.setattr(store._client, "put_object", flaky_put)
    store.put_bytes("flaky", b"made it")
    assert len(sleeps) == 2
    assert S3Store.from_uri(s3_env).get_bytes("flaky") == b"made it"


@pytest.mark.integration
def test_s3_credentials_never_logged(s3_env: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = S3Store.from_uri(s3_env)
    texts = [repr(store), str(store), store.root_uri, store.uri_for("k")]
    store.put_bytes("k", b"1")
    store.get_bytes("k")
    store.list()
    store.exists("k")
    src = tmp_path / "f"
    src.write_bytes(b"2")
    store.put_file("f", src)
    store.get_file("f", tmp_path / "g")
    store.delete("k")
    with pytest.raises(ArtifactNotFoundError) as info:
        store.get_bytes("k")
    texts += [str(info.value), str(info.value.__cause__), caplog.text]
    assert caplog.records  # something was logged at DEBUG: the check below is not vacuous
    for text in texts:
        assert TEST_SECRET_KEY not in text and TEST_ACCESS_KEY not in text
