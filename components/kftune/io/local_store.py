"""The artifact store on a local directory (a laptop, CI, or a volume shared by pods).

Key ``runs/r1/search/trials/t1.json`` is the file ``<root>/runs/r1/search/trials/t1.json``.

Writes are atomic: the bytes go to a temporary file in the target's own directory
(``.kftune-tmp-<random>-<name>``), which is flushed, ``fsync``-ed and then renamed over the target with
``os.replace`` (atomic on POSIX and Windows within one file system). A concurrent reader therefore
opens the old file or the complete new one, never a part; a crash leaves at most a stray temporary
file, which :meth:`LocalStore.list` skips. ``get_file`` writes its destination the same way.

Conditional writes (:class:`~kftune.io.store.ConditionalWrites`, for leases): a version is the sha256 of the
file's bytes; each compare-and-swap runs under an exclusive ``flock`` on a hidden sidecar file beside the
object (``.kftune-tmp-lock-<name>``; Linux maps it to a POSIX lock on NFS, so it holds across hosts sharing
a volume), and a create links the fully written temporary file to the key, which fails if any file is there
(an ``O_EXCL`` create that never shows a partial object).

One difference from S3 is inherent to a file system: a key cannot be both an object and a "directory"
(``a`` and ``a/b``); writing the second raises :class:`FileExistsError`/:class:`NotADirectoryError`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from kftune.core.errors import ArtifactNotFoundError
from kftune.io.store import TEMP_MARKER, check_key, check_prefix, is_under

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
# errno values that mean "there is no object at this key" (a missing file or directory, a directory
# where the object should be, a file where a parent directory should be).
_NOT_FOUND_ERRNOS = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR}


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(target: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``target`` atomically with what ``write(fileobj)`` writes.

    The temporary file lives beside ``target`` (same file system, so ``os.replace`` is atomic), is created
    with the usual umask-derived mode (not ``mkstemp``'s 0600, so other users of a shared volume can read
    the result) and is removed if ``write`` raises.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{TEMP_MARKER}{secrets.token_hex(6)}-{target.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(target.parent)


class LocalStore:
    """An :class:`~kftune.io.store.ArtifactStore` on the directory ``root`` (created on first write).

    ``list(prefix)`` matches whole segments: ``list("runs/r1")`` returns ``runs/r1`` itself (if it is an
    object) and every key under ``runs/r1/``, but nothing under ``runs/r10/``. A trailing ``/`` is allowed.
    """

    def __init__(self, root: str | Path):
        text = str(root)
        if not text:
            raise ValueError("LocalStore root is empty: give a directory such as ./artifacts")
        self._root = Path(text).expanduser().absolute()

    @property
    def root(self) -> Path:
        """The absolute root directory."""
        return self._root

    @property
    def root_uri(self) -> str:
        return str(self._root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self._root)!r})"

    def path_for(self, key: str) -> Path:
        """The local file that holds ``key`` (after checking the key)."""
        return self._root.joinpath(*check_key(key).split("/"))

    def uri_for(self, key: str) -> str:
        return str(self.path_for(key))

    # writes ---------------------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path_for(key)
        atomic_write(target, lambda fh: fh.write(data))
        log.debug("wrote %s (%d bytes)", target, len(data))

    def put_file(self, key: str, path: str | Path) -> None:
        target = self.path_for(key)
        with open(path, "rb") as src:  # a missing source is the caller's FileNotFoundError, not "no artifact"
            atomic_write(target, lambda fh: shutil.copyfileobj(src, fh, _CHUNK))
        log.debug("copied %s to %s", path, target)

    def delete(self, key: str) -> None:
        target = self.path_for(key)
        try:
            os.unlink(target)
        except OSError as exc:
            if exc.errno not in _NOT_FOUND_ERRNOS:
                raise
            if target.is_dir():  # a "directory" is not an object; refuse rather than silently keep it
                raise IsADirectoryError(
                    f"cannot delete {target}: it is a directory holding other keys, not an object") from exc
            return
        log.debug("deleted %s", target)

    # reads ----------------------------------------------------------------------------------------------

    def _open(self, key: str) -> BinaryIO:
        target = self.path_for(key)
        try:
            return open(target, "rb")
        except OSError as exc:
            if exc.errno in _NOT_FOUND_ERRNOS:
                raise ArtifactNotFoundError(str(target)) from exc
            raise

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as fh:
            return fh.read()

    def get_file(self, key: str, path: str | Path) -> None:
        # The open descriptor pins the version that was current when we opened it: a concurrent
        # os.replace by a writer does not change what we copy.
        with self._open(key) as src:
            atomic_write(Path(path), lambda fh: shutil.copyfileobj(src, fh, _CHUNK))

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        prefix = check_prefix(prefix)
        start = self._root.joinpath(*prefix.split("/")) if prefix else self._root
        if start.is_file():
            return [prefix]
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_MARKER)]
            rel = Path(dirpath).relative_to(self._root).as_posix()
            for name in filenames:
                if name.startswith(TEMP_MARKER):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if is_under(key, prefix):
                    keys.append(key)
        return sorted(keys)

    # conditional writes (ConditionalWrites) --------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[Path]:
        """Hold an exclusive lock for compare-and-swap on ``key`` (a no-op where the platform has no flock)."""
        target = self.path_for(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        lock_path = target.with_name(f"{TEMP_MARKER}lock-{target.name}")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except (ImportError, OSError) as exc:  # no fcntl (Windows) or a file system without locks
                log.debug("no lock for %s (%s): compare-and-swap relies on link() alone", target, exc)
            yield target
        finally:
            os.close(fd)  # closing releases the lock

    @staticmethod
    def _version(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def _current_version(self, target: Path) -> str | None:
        try:
            return self._version(target.read_bytes())
        except OSError as exc:
            if exc.errno in _NOT_FOUND_ERRNOS:
                return None
            raise

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        data = self.get_bytes(key)
        return data, self._version(data)

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        with self._locked(key) as target:
            if target.exists():
                return None
            tmp = target.with_name(f"{TEMP_MARKER}{secrets.token_hex(6)}-{target.name}")
            atomic_write(tmp, lambda fh: fh.write(data))
            try:
                os.link(tmp, target)  # fails if anything is at target: an exclusive create of the whole file
            except FileExistsError:
                return None
            except OSError as exc:  # a file system without hard links: we hold the lock, so rename
                log.debug("link %s failed (%s); renaming under the lock", target, exc)
                os.replace(tmp, target)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            _fsync_dir(target.parent)
            return self._version(data)

    def put_if_version(self, key: str, data: bytes, version: str) -> str | None:
        with self._locked(key) as target:
            if self._current_version(target) != version:
                return None
            atomic_write(target, lambda fh: fh.write(data))
            return self._version(data)

    def delete_if_version(self, key: str, version: str) -> bool:
        with self._locked(key) as target:
            if self._current_version(target) != version:
                return False
            os.unlink(target)
            return True
