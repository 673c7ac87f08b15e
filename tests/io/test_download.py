"""The corpus downloader: mirrors (directory and loopback HTTP), checksums, cache, resume, retry, archives."""

from __future__ import annotations

import hashlib
import http.server
import io
import stat
import tarfile
import threading
import zipfile
from functools import partial
from pathlib import Path
from typing import Iterator

import pytest

from kftune.core.errors import ArtifactNotFoundError, ChecksumError, ConfigError, DataError
from kftune.io.download import (Downloader, FileSource, HttpSource, S3Source, extract_archive, member_path,
                                sha256_file)

TREC_TEST_SHA = "033f22c028c2bbba9ca682f68ffe204dc1aa6e1cf35dd6207f2d4ca67f0d0e8e"
TREC_TEST_URL = "https://cogcomp.seas.upenn.edu/Data/QA/QC/TREC_10.label"
WNUT_DEV_SHA = "e053b752b8155113ca66e7db08af5f2f5f43ab993694e4774f1ec5bad42312d8"
WNUT_DEV_URL = "https://raw.githubusercontent.com/leondz/emerging_entities_17/master/emerging.dev.conll"


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


# --------------------------------------------------------------------------- loopback servers
class _Server:
    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_mirror(shared_corpora: Path) -> Iterator[str]:
    """../shared/corpora served by a plain static-file server on 127.0.0.1."""
    server = _Server(partial(_Quiet, directory=str(shared_corpora)))
    yield server.url
    server.stop()


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Serves ``server.payload`` at any path, following ``server.plan``: one action per request
    ('cut': send half the body then close; 'status:503'; 'ok'). Honours Range if ``server.ranges``."""

    def do_GET(self) -> None:
        srv = self.server
        srv.seen.append(self.headers.get("Range"))
        action = srv.plan.pop(0) if srv.plan else "ok"
        if action.startswith("status:"):
            self.send_error(int(action.split(":")[1]))
            return
        data, start = srv.payload, 0
        rng = self.headers.get("Range")
        if rng and srv.ranges:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if action == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[_Server]:
    server = _Server(_Flaky)
    server.httpd.payload = bytes(range(256)) * 4000  # 1 MB
    server.httpd.plan, server.httpd.seen, server.httpd.ranges = [], [], True
    yield server
    server.stop()


def payload_sha(server: _Server) -> str:
    return hashlib.sha256(server.httpd.payload).hexdigest()


# --------------------------------------------------------------------------- mirrors and cache
def test_directory_mirror_verifies_and_caches_by_checksum(shared_corpora, tmp_path):
    dl = Downloader(tmp_path / "cache", mirror=str(shared_corpora))
    got = dl.fetch(TREC_TEST_URL, TREC_TEST_SHA, mirror_path="trec/TREC_10.label")
    assert got.path == tmp_path / "cache" / "corpora" / "sha256" / TREC_TEST_SHA / "TREC_10.label"
    assert sha256_file(got.path) == TREC_TEST_SHA and got.verified and not got.cached
    assert got.source == str(shared_corpora / "trec" / "TREC_10.label")
    again = dl.fetch(TREC_TEST_URL, TREC_TEST_SHA, mirror_path="trec/TREC_10.label")
    assert again.cached and again.path == got.path
    assert cache_files(tmp_path / "cache") == [got.path]  # nothing partial left


def test_http_mirror_replaces_the_host(http_mirror, tmp_path):
    dl = Downloader(tmp_path / "cache", mirror=http_mirror)
    got = dl.fetch(WNUT_DEV_URL, WNUT_DEV_SHA, mirror_path="wnut17/emerging.dev.conll")
    assert got.source == f"{http_mirror}/wnut17/emerging.dev.conll"
    assert sha256_file(got.path) == WNUT_DEV_SHA


def test_cached_copy_is_reverified_and_replaced_when_corrupt(shared_corpora, tmp_path):
    dl = Downloader(tmp_path / "cache", mirror=str(shared_corpora))
    got = dl.fetch(TREC_TEST_URL, TREC_TEST_SHA, mirror_path="trec/TREC_10.label")
    got.path.write_bytes(b"corrupted")
    again = dl.fetch(TREC_TEST_URL, TREC_TEST_SHA, mirror_path="trec/TREC_10.label")
    assert not again.cached and sha256_file(again.path) == TREC_TEST_SHA


def test_checksum_mismatch_names_file_and_both_checksums_and_leaves_nothing(shared_corpora, tmp_path):
    dl = Downloader(tmp_path / "cache", mirror=str(shared_corpora))
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        dl.fetch(TREC_TEST_URL, wrong, mirror_path="trec/TREC_10.label")
    message = str(err.value)
    assert "TREC_10.label" in message and wrong in message and TREC_TEST_SHA in message
    assert cache_files(tmp_path / "cache") == []


def test_mirror_maps_a_uri_path(tmp_path):
    dl = Downloader(tmp_path / "cache", mirror=str(tmp_path / "m"))
    src = dl.source_for("https://example.org/data/x%20y.csv")
    assert isinstance(src, FileSource) and src.path == tmp_path / "m" / "data" / "x y.csv"
    assert isinstance(Downloader(tmp_path, mirror="http://mirror.local/base/").source_for(
        "https://example.org/a.csv", "corp/a.csv"), HttpSource)
    assert isinstance(Downloader(tmp_path, mirror=str(tmp_path)).source_for("s3://b/k.csv"), S3Source)


def test_missing_file_is_not_found_and_not_retried(shared_corpora, tmp_path):
    sleeps: list[float] = []
    dl = Downloader(tmp_path / "cache", mirror=str(shared_corpora), sleep=sleeps.append)
    with pytest.raises(ArtifactNotFoundError, match="nope.txt"):
        dl.fetch("https://x.org/nope.txt", "0" * 64, mirror_path="trec/nope.txt")
    assert sleeps == [] and cache_files(tmp_path / "cache") == []


def test_local_file_and_file_url_sources(tmp_path):
    data = tmp_path / "my corpus.txt"
    data.write_text("__label__a hi\n", encoding="utf-8")
    sha = sha256_file(data)
    dl = Downloader(tmp_path / "cache")
    assert dl.fetch(str(data), sha).sha256 == sha
    assert dl.fetch(data.as_uri(), sha).cached


# --------------------------------------------------------------------------- resume and retry
def test_interrupted_download_resumes_with_a_range_request(flaky, tmp_path):
    flaky.httpd.plan = ["cut"]
    sleeps: list[float] = []
    dl = Downloader(tmp_path / "cache", sleep=sleeps.append, backoff=0.5)
    got = dl.fetch(flaky.url + "/big.bin", payload_sha(flaky))
    half = len(flaky.httpd.payload) // 2
    assert flaky.httpd.seen == [None, f"bytes={half}-"]
    assert sleeps == [0.5]
    assert got.path.read_bytes() == flaky.httpd.payload


def test_server_without_range_support_restarts_from_zero(flaky, tmp_path):
    flaky.httpd.plan, flaky.httpd.ranges = ["cut"], False
    dl = Downloader(tmp_path / "cache", sleep=lambda s: None)
    got = dl.fetch(flaky.url + "/big.bin", payload_sha(flaky))
    assert got.path.read_bytes() == flaky.httpd.payload
    assert len(flaky.httpd.seen) == 2


def test_transient_errors_are_retried_with_exponential_backoff(flaky, tmp_path):
    flaky.httpd.plan = ["status:503", "status:429", "status:502"]
    sleeps: list[float] = []
    dl = Downloader(tmp_path / "cache", sleep=sleeps.append, backoff=1.0)
    assert dl.fetch(flaky.url + "/big.bin", payload_sha(flaky)).sha256 == payload_sha(flaky)
    assert sleeps == [1.0, 2.0, 4.0]


def test_retries_exhausted_is_a_data_error(flaky, tmp_path):
    flaky.httpd.plan = ["status:503"] * 10
    dl = Downloader(tmp_path / "cache", sleep=lambda s: None, retries=2)
    with pytest.raises(DataError, match="after 3 attempts"):
        dl.fetch(flaky.url + "/big.bin", payload_sha(flaky))
    assert len(flaky.httpd.seen) == 3


def test_http_404_is_not_found(flaky, tmp_path):
    flaky.httpd.plan = ["status:404"]
    with pytest.raises(ArtifactNotFoundError):
        Downloader(tmp_path / "cache", sleep=lambda s: None).fetch(flaky.url + "/gone", "0" * 64)
    assert len(flaky.httpd.seen) == 1


# --------------------------------------------------------------------------- unverified files
def test_unknown_checksum_is_refused_unless_allowed_then_pinned(flaky, tmp_path):
    dl = Downloader(tmp_path / "cache", sleep=lambda s: None)
    url = flaky.url + "/data.bin"
    with pytest.raises(ConfigError, match="--allow-unverified"):
        dl.fetch(url, None)
    first = dl.fetch(url, None, allow_unverified=True)
    assert first.sha256 == payload_sha(flaky) and not first.verified
    # later uses are checked against the pin, even without allow_unverified
    assert dl.fetch(url, None).cached
    flaky.httpd.payload = b"changed upstream"
    first.path.unlink()
    with pytest.raises(ChecksumError, match=first.sha256):
        dl.fetch(url, None)


# --------------------------------------------------------------------------- archives
def _tar(path: Path, members: list[tarfile.TarInfo], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info in members:
            data = b"evil" if info.isfile() else None
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("members, why", [
    ([_info("ok.txt"), _info("../evil.txt")], "'..'"),
    ([_info("/tmp/kftune-evil-abs.txt")], "absolute"),
    ([_info("link", tarfile.SYMTYPE, "../../outside")], "symlink"),
    ([_info("sub/link", tarfile.SYMTYPE, "/etc/passwd")], "symlink"),
    ([_info("hard", tarfile.LNKTYPE, "../outside")], "hard link"),
    ([_info("dev", tarfile.CHRTYPE)], "device"),
])
def test_unsafe_tar_members_are_refused_before_extraction(tmp_path, members, why):
    archive = _tar(tmp_path / "bad.tar.gz", members)
    target = tmp_path / "a" / "b" / "target"
    with pytest.raises(DataError, match=f"unsafe member .*{why}"):
        extract_archive(archive, target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "a" / "b" / "evil.txt").exists() and not Path("/tmp/kftune-evil-abs.txt").exists()


def test_unsafe_zip_members_are_refused(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr(zipfile.ZipInfo("../evil.txt"), "evil")
    with pytest.raises(DataError, match=r"unsafe member '../evil.txt'"):
        extract_archive(archive, tmp_path / "t")
    assert list((tmp_path / "t").iterdir()) == [] and not (tmp_path / "evil.txt").exists()

    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../etc/passwd")
    with pytest.raises(DataError, match="symlink"):
        extract_archive(link, tmp_path / "t2")


def test_safe_archive_is_extracted_once_into_the_cache(tmp_path):
    src = tmp_path / "SST-2.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("SST-2/train.tsv", "sentence\tlabel\nfine film\t1\n")
        zf.writestr("SST-2/dev.tsv", "sentence\tlabel\nbad\t0\n")
    dl = Downloader(tmp_path / "cache")
    got = dl.fetch(str(src), sha256_file(src))
    root = dl.extracted(got)
    assert member_path(root, "SST-2/train.tsv").read_text().startswith("sentence\tlabel")
    assert dl.extracted(got) == root
    with pytest.raises(ConfigError):
        member_path(root, "../x")
    with pytest.raises(DataError, match="no file"):
        member_path(root, "SST-2/missing.tsv")


def test_unsafe_archive_in_the_cache_leaves_no_extracted_directory(tmp_path):
    archive = _tar(tmp_path / "bad.tgz", [_info("ok.txt"), _info("../evil.txt")])
    dl = Downloader(tmp_path / "cache")
    got = dl.fetch(str(archive), sha256_file(archive))
    with pytest.raises(DataError, match="unsafe"):
        dl.extracted(got)
    assert list((tmp_path / "cache" / "corpora" / "extracted").iterdir()) == []


# --------------------------------------------------------------------------- S3
@pytest.mark.integration
def test_s3_source_goes_through_the_store(s3_env, tmp_path):
    from kftune.io.store import open_store

    store = open_store(s3_env)
    store.put_bytes("corpora/train.txt", b"__label__a hello\n")
    sha = hashlib.sha256(b"__label__a hello\n").hexdigest()
    got = Downloader(tmp_path / "cache").fetch(f"{s3_env}/corpora/train.txt", sha)
    assert got.path.read_bytes() == b"__label__a hello\n"
    with pytest.raises(ArtifactNotFoundError):
        Downloader(tmp_path / "cache2").fetch(f"{s3_env}/corpora/missing.txt", sha)
