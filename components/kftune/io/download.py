"""The corpus-source edge: fetch a corpus file over http(s), from S3 or from a local file, verified.

One Protocol, :class:`CorpusSource` (``HttpSource``, ``S3Source``, ``FileSource``), and the
:class:`Downloader` that drives it:

- Streams into ``<cache>/corpora/partial/...`` with a progress bar (bytes), then checks the
  sha256. A match moves the file to ``<cache>/corpora/sha256/<sha256>/<name>`` (content-addressed,
  so two URLs with the same bytes share one copy); a mismatch deletes it and raises
  :class:`kftune.core.errors.ChecksumError` naming the file and both checksums.
- A cached file is reused only after its sha256 is re-computed and matches.
- Transient failures (connection errors, HTTP 408/425/429/5xx, a body cut short) are retried with
  exponential backoff (``sleep`` is injectable). An interrupted HTTP download resumes with a
  ``Range`` request when the server answers ``206``; otherwise it restarts from byte 0.
- ``KFTUNE_CORPUS_MIRROR`` (a directory, ``file://`` URL or ``http(s)://`` base URL) replaces the
  host of every http(s) source: the file is fetched from ``<mirror>/<mirror path>`` (a registry
  entry's ``mirror_path``, or the URL's path for a corpus given as a URI). Checksums are checked
  exactly the same way, so a mirror cannot change the data.
- Files without a published checksum are refused unless ``allow_unverified``; then the checksum
  seen on first use is pinned under ``<cache>/corpora/pins/`` and enforced on every later use
  ("trust on first use").
- Archives (zip, tar, tar.gz/bz2/xz) are extracted by :func:`extract_archive`, which refuses any
  member that would land outside the target (absolute paths, ``..``, links pointing outside,
  device files) before writing anything.

The cache directory is ``$KFTUNE_CACHE_DIR`` or ``~/.cache/kftune``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from kftune._progress import Progress
from kftune._version import __version__
from kftune.core.errors import ArtifactNotFoundError, ChecksumError, ConfigError, DataError, KftuneError, Problem

log = logging.getLogger(__name__)

CACHE_ENV = "KFTUNE_CACHE_DIR"
MIRROR_ENV = "KFTUNE_CORPUS_MIRROR"
CHUNK = 1 << 20
RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class TransientError(KftuneError):
    """A failure worth retrying (the connection dropped, the server is busy)."""


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$KFTUNE_CACHE_DIR`` or ``~/.cache/kftune``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kftune"


# --------------------------------------------------------------------------- sources
@runtime_checkable
class CorpusSource(Protocol):
    """Where a corpus file's bytes come from.

    ``fetch(dest)`` makes ``dest`` hold the whole object. ``dest`` may already hold a prefix from an
    interrupted attempt: a source that can resume appends the rest, one that cannot rewrites ``dest``
    from the start. Raises :class:`TransientError` (or ``OSError``) for failures worth retrying and
    :class:`ArtifactNotFoundError` when the object does not exist.
    """

    @property
    def uri(self) -> str:
        """Where the bytes come from, for logs and errors (never contains credentials)."""
        ...

    def fetch(self, dest: Path, *, desc: str) -> None: ...


class HttpSource:
    """http(s) with ``Range`` resume; ``timeout`` applies to the connection and to each read."""

    def __init__(self, url: str, timeout: float = 60.0):
        self.url, self.timeout = url, timeout

    @property
    def uri(self) -> str:
        return self.url

    def fetch(self, dest: Path, *, desc: str) -> None:
        offset = dest.stat().st_size if dest.exists() else 0
        headers = {"User-Agent": f"kftune/{__version__}", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and offset:
                dest.unlink()
                raise TransientError(f"{self.url}: the server refused to resume at byte {offset}; restarting") from exc
            if exc.code in (404, 410):
                raise ArtifactNotFoundError(self.url) from exc
            if exc.code in RETRYABLE_HTTP:
                raise TransientError(f"{self.url}: HTTP {exc.code} {exc.reason}") from exc
            raise DataError(f"{self.url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise TransientError(f"{self.url}: {getattr(exc, 'reason', exc)}") from exc
        with resp:
            start = 0
            if offset and resp.status == 206:
                match = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                if match and int(match.group(1)) == offset:
                    start = offset
            if offset and not start:
                log.info("%s: the server does not resume (status %s); downloading from the start", self.url, resp.status)
            length = resp.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            with open(dest, "ab" if start else "wb") as f, Progress(total, desc, unit="B", unit_scale=True) as bar:
                bar.update(start)
                try:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as exc:
                    raise TransientError(f"{self.url}: connection lost after {bar.n:.0f} bytes ({exc})") from exc
            got = dest.stat().st_size
            if total is not None and got < total:
                raise TransientError(f"{self.url}: connection closed after {got} of {total} bytes")


class FileSource:
    """A local file (a mirror directory, ``file://`` URL or plain path); resumes by seeking."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def uri(self) -> str:
        return str(self.path)

    def fetch(self, dest: Path, *, desc: str) -> None:
        try:
            size = self.path.stat().st_size
            src = open(self.path, "rb")
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(str(self.path)) from exc
        offset = dest.stat().st_size if dest.exists() else 0
        if offset > size:
            offset = 0
        with src, open(dest, "ab" if offset else "wb") as f, Progress(size, desc, unit="B", unit_scale=True) as bar:
            src.seek(offset)
            bar.update(offset)
            while chunk := src.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))


class S3Source:
    """``s3://bucket/key`` through the artifact store (``KFTUNE_S3_*`` settings; the store retries)."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        if not parts.netloc or not parts.path.strip("/"):
            raise ConfigError([Problem("corpus.uri", f"{url!r} is not s3://bucket/key")])
        self.url, self.bucket, self.key = url, parts.netloc, parts.path.lstrip("/")

    @property
    def uri(self) -> str:
        return self.url

    def fetch(self, dest: Path, *, desc: str) -> None:
        from kftune.io.store import open_store

        with Progress(None, desc, unit="B", unit_scale=True) as bar:
            open_store(f"s3://{self.bucket}").get_file(self.key, dest)
            bar.update(dest.stat().st_size)


def _is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _local_path(url: str) -> Path:
    if url.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    return Path(url).expanduser()


def _safe_relpath(path: str) -> bool:
    parts = path.replace("\\", "/").split("/")
    return bool(path) and not path.startswith(("/", "\\")) and not re.match(r"^[A-Za-z]:", path) and ".." not in parts


# --------------------------------------------------------------------------- downloader
@dataclass(frozen=True)
class Fetched:
    """A verified local copy of a corpus file."""

    path: Path
    sha256: str
    url: str
    source: str  # where the bytes actually came from (the mirror location, when a mirror is set)
    verified: bool  # False when no checksum was published and the first-use pin was created now
    cached: bool  # True when the cached copy was reused


class Downloader:
    """Fetch, verify and cache corpus files. See the module docstring for the behaviour."""

    def __init__(self, cache_dir: str | Path, *, mirror: str | None = None, retries: int = 4,
                 backoff: float = 1.0, max_backoff: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                 timeout: float = 60.0):
        self.cache_dir = Path(cache_dir).expanduser()
        self.root = self.cache_dir / "corpora"
        self.mirror = mirror or None
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.sleep, self.timeout = sleep, timeout

    @classmethod
    def from_env(cls, **kwargs) -> "Downloader":
        """Cache from ``$KFTUNE_CACHE_DIR`` and mirror from ``$KFTUNE_CORPUS_MIRROR``."""
        return cls(default_cache_dir(), mirror=os.environ.get(MIRROR_ENV) or None, **kwargs)

    # -- where the bytes come from
    def source_for(self, url: str, mirror_path: str | None = None) -> CorpusSource:
        """The source of ``url``, with the mirror replacing the host of http(s) URLs."""
        if url.startswith("s3://"):
            return S3Source(url)
        if not _is_http(url):
            return FileSource(_local_path(url))
        if self.mirror:
            rel = mirror_path or urllib.parse.unquote(urllib.parse.urlsplit(url).path).lstrip("/")
            if not _safe_relpath(rel):
                raise ConfigError([Problem("corpus.uri", f"cannot map {url!r} onto the mirror (path {rel!r})")])
            if _is_http(self.mirror):
                return HttpSource(self.mirror.rstrip("/") + "/" + urllib.parse.quote(rel), self.timeout)
            return FileSource(_local_path(self.mirror) / rel)
        return HttpSource(url, self.timeout)

    # -- the main entry point
    def fetch(self, url: str, sha256: str | None, *, mirror_path: str | None = None, name: str | None = None,
              allow_unverified: bool = False) -> Fetched:
        """A verified local copy of ``url`` (see the module docstring).

        Raises :class:`ChecksumError` on a mismatch (nothing is left in the cache),
        :class:`ArtifactNotFoundError` when the file does not exist at the source,
        :class:`ConfigError` when ``sha256`` is ``None`` and no pin exists and not ``allow_unverified``,
        and :class:`DataError` when the retries are exhausted.
        """
        name = _file_name(name or posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path)))
        expected = sha256.lower() if sha256 else None
        pin = self.root / "pins" / (hashlib.sha256(url.encode("utf-8")).hexdigest() + ".json")
        pinned = False
        if expected is None and pin.exists():
            expected, pinned = json.loads(pin.read_text(encoding="utf-8"))["sha256"], True
        if expected is None and not allow_unverified:
            raise ConfigError([Problem("corpus.sha256", f"no sha256 is known for {url}; pass its sha256 to verify "
                                                        "it, or allow unverified downloads (--allow-unverified) to "
                                                        "trust and pin it on first use")])
        source = self.source_for(url, mirror_path)
        if expected:
            final = self.root / "sha256" / expected / name
            if final.exists():
                actual = sha256_file(final)
                if actual == expected:
                    log.info("%s: cached, sha256 %s verified", name, expected[:12])
                    return Fetched(final, expected, url, source.uri, verified=True, cached=True)
                log.warning("%s: cached copy is corrupt (sha256 %s, expected %s); downloading again", name, actual, expected)
                final.unlink()
        key = expected or hashlib.sha256(url.encode("utf-8")).hexdigest()
        part = self.root / "partial" / key / (name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        log.info("%s: fetching from %s", name, source.uri)
        try:
            self._fetch_with_retries(source, part, name)
        except ArtifactNotFoundError:
            if self.mirror and _is_http(url):
                log.error("%s is not on the corpus mirror (%s=%s): copy %s there, or unset the mirror to download "
                          "it from %s", name, MIRROR_ENV, self.mirror, source.uri, url)
            raise
        actual = sha256_file(part)
        if expected and actual != expected:
            part.unlink()
            _rmdir_quiet(part.parent)
            what = f"{name} (from {source.uri}{'; sha256 pinned on first use' if pinned else ''})"
            raise ChecksumError(what, expected, actual)
        final = self.root / "sha256" / actual / name
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        _rmdir_quiet(part.parent)
        verified = expected is not None
        if expected is None:
            _write_atomic(pin, json.dumps({"url": url, "sha256": actual}, sort_keys=True) + "\n")
            log.warning("%s: no published checksum; trusted on first use and pinned sha256 %s "
                        "(pass it as the corpus sha256 to verify it everywhere)", name, actual)
        elif pinned:
            log.info("%s: matches the sha256 pinned on first use (%s)", name, actual[:12])
        else:
            log.info("%s: sha256 %s verified", name, actual[:12])
        return Fetched(final, actual, url, source.uri, verified=verified, cached=False)

    def _fetch_with_retries(self, source: CorpusSource, part: Path, name: str) -> None:
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                source.fetch(part, desc=f"download {name}")
                return
            except (ArtifactNotFoundError, ConfigError, DataError):
                _unlink_quiet(part)
                _rmdir_quiet(part.parent)
                raise
            except (TransientError, OSError, http.client.HTTPException) as exc:
                if attempt + 1 == attempts:
                    kept = part.exists() and part.stat().st_size > 0
                    raise DataError(f"could not download {name} from {source.uri} after {attempts} attempts: {exc}"
                                    + (" (the partial download is kept in the cache and resumed next time)"
                                       if kept else "")) from exc
                delay = min(self.backoff * 2 ** attempt, self.max_backoff)
                log.warning("%s: attempt %d/%d failed (%s); retrying in %.1fs", name, attempt + 1, attempts, exc, delay)
                self.sleep(delay)

    # -- archives
    def extracted(self, archive: Fetched) -> Path:
        """The directory the (verified) archive is extracted to, ``<cache>/corpora/extracted/<sha256>``;
        extracted once, atomically, and reused."""
        target = self.root / "extracted" / archive.sha256
        if (target / ".kftune-complete").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{archive.sha256[:12]}-", dir=target.parent))
        try:
            extract_archive(archive.path, tmp)
            (tmp / ".kftune-complete").write_text(archive.path.name + "\n", encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target


def member_path(root: Path, member: str) -> Path:
    """``root/member`` for a member of an extracted archive; refuses paths that leave ``root``."""
    if not _safe_relpath(member):
        raise ConfigError([Problem("corpus.member", f"archive member {member!r} must be a relative path without '..'")])
    path = root / member
    if not path.is_file():
        raise DataError(f"the archive has no file {member!r}")
    return path


# --------------------------------------------------------------------------- archives
def extract_archive(archive: str | Path, target: str | Path) -> None:
    """Extract a zip or tar archive (tar may be gz/bz2/xz compressed) into ``target``.

    Every member is checked before anything is written; the whole archive is refused with a
    :class:`DataError` naming the member if one is absolute, contains ``..``, is a symlink or
    hard link whose target lies outside ``target``, or is a device file or FIFO.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, target)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, target)
    else:
        raise DataError(f"{archive}: not a zip or tar archive")


def _unsafe(archive: Path, member: str, why: str) -> DataError:
    return DataError(f"{archive}: refusing to extract unsafe member {member!r}: {why}")


def _extract_zip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            if not _safe_relpath(info.filename):
                raise _unsafe(archive, info.filename, "absolute path or '..'")
            if stat.S_ISLNK(info.external_attr >> 16):
                link = zf.read(info).decode("utf-8", "replace")
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(info.filename), link))
                if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    raise _unsafe(archive, info.filename, f"symlink to {link!r} points outside the target")
        for info in infos:
            zf.extract(info, target)


def _extract_tar(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            if not _safe_relpath(m.name):
                raise _unsafe(archive, m.name, "absolute path or '..'")
            if m.issym():
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(m.name), m.linkname))
                if m.linkname.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    raise _unsafe(archive, m.name, f"symlink to {m.linkname!r} points outside the target")
            elif m.islnk():
                if not _safe_relpath(m.linkname):
                    raise _unsafe(archive, m.name, f"hard link to {m.linkname!r} points outside the target")
            elif not (m.isfile() or m.isdir()):
                raise _unsafe(archive, m.name, "device file or FIFO")
        try:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: a second, independent check
                tf.extractall(target, members=members, filter="data")
            else:  # pragma: no cover - older Pythons; the checks above still apply
                tf.extractall(target, members=members)
        except tarfile.FilterError as exc:
            raise _unsafe(archive, getattr(getattr(exc, "tarinfo", None), "name", "?"), str(exc)) from exc


# --------------------------------------------------------------------------- small helpers
def _file_name(name: str) -> str:
    """A safe single path component for the cache (``download`` when nothing usable is left)."""
    name = name.replace("/", "_").replace("\\", "_").strip()
    return "download" if name in ("", ".", "..") else name


def _unlink_quiet(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _rmdir_quiet(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(Path(tmp))
        raise
