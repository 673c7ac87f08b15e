"""The artifact store edge: one Protocol, a local-directory store and an S3/MinIO store.

Keys are ``/``-separated strings relative to the store's root (``runs/<run>/search/trials/t1.json``).
A store URI is a plain path (``./artifacts``, ``/data/kftune``) or ``s3://bucket/prefix``.
S3 endpoint, credentials, TLS and region come from ``KFTUNE_S3_*`` environment variables only.

Contract (both stores pass the same tests in ``tests/io/test_store.py``):
- ``put_*`` is atomic: a reader sees the old object, or the whole new one, never a part.
- ``get_*`` of a missing key raises :class:`kftune.core.errors.ArtifactNotFoundError` (raised ``from`` the cause).
- ``list(prefix)`` returns every key under ``prefix`` (recursively), sorted, relative to the root.
- Keys never escape the root (``..`` and absolute keys are refused with ``ValueError``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ArtifactStore(Protocol):
    """Where runs keep their artifacts. See the module docstring for the contract."""

    @property
    def root_uri(self) -> str:
        """The URI of the store's root (``/abs/path`` or ``s3://bucket/prefix``)."""
        ...

    def uri_for(self, key: str) -> str:
        """The full URI of ``key`` (for logs and reports; never contains credentials)."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def put_file(self, key: str, path: str | Path) -> None:
        """Upload a local file, streaming (large checkpoints never load whole into memory)."""
        ...

    def get_file(self, key: str, path: str | Path) -> None:
        """Download to a local path, atomically (a partial download never appears at ``path``)."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        ...


def put_json(store: ArtifactStore, key: str, obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON (stable bytes for the same object)."""
    store.put_bytes(key, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))


def get_json(store: ArtifactStore, key: str) -> Any:
    return json.loads(store.get_bytes(key).decode("utf-8"))


def put_text(store: ArtifactStore, key: str, text: str) -> None:
    store.put_bytes(key, text.encode("utf-8"))


def get_text(store: ArtifactStore, key: str) -> str:
    return store.get_bytes(key).decode("utf-8")


def open_store(uri: str | Path) -> ArtifactStore:
    """The store for ``uri``: ``s3://bucket[/prefix]`` -> S3 store, anything else -> local directory."""
    text = str(uri)
    if text.startswith("s3://"):
        from kftune.io.s3_store import S3Store

        return S3Store.from_uri(text)
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"unsupported store URI {text!r}: use a local path or s3://bucket/prefix")
    from kftune.io.local_store import LocalStore

    return LocalStore(text.removeprefix("file://"))


# Key checks shared by both stores (appended helpers; the Protocol above is unchanged).

#: Name prefix of in-progress temporary files; keys may not contain a segment that starts with it.
TEMP_MARKER = ".kftune-tmp-"

_KEY_EXAMPLE = "keys are '/'-separated relative paths such as 'runs/r1/search/trials/t1.json'"


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid store key, else raise ``ValueError`` naming it.

    Refused: non-strings, the empty key, absolute keys, backslashes, NUL, empty segments
    (``a//b``, a trailing ``/``), ``.`` and ``..`` segments, and segments starting with :data:`TEMP_MARKER`.
    """
    if not isinstance(key, str):
        raise ValueError(f"invalid artifact key {key!r}: not a string; {_KEY_EXAMPLE}")
    reason = None
    if not key:
        reason = "empty"
    elif key.startswith("/"):
        reason = "absolute keys are not allowed"
    elif "\\" in key:
        reason = "backslashes are not allowed"
    elif "\x00" in key:
        reason = "NUL characters are not allowed"
    else:
        for part in key.split("/"):
            if part == "":
                reason = "empty path segment (double or trailing '/')"
            elif part in {".", ".."}:
                reason = f"'{part}' segments are not allowed (keys never leave the store's root)"
            elif part.startswith(TEMP_MARKER):
                reason = f"segments starting with {TEMP_MARKER!r} are reserved for temporary files"
            if reason:
                break
    if reason:
        raise ValueError(f"invalid artifact key {key!r}: {reason}; {_KEY_EXAMPLE}")
    return key


def check_prefix(prefix: str) -> str:
    """Normalize a ``list()`` prefix: ``""`` (everything) or a valid key, one trailing ``/`` allowed."""
    if prefix == "":
        return ""
    if isinstance(prefix, str) and prefix.endswith("/") and not prefix.endswith("//"):
        prefix = prefix[:-1]
    return check_key(prefix)


def is_under(key: str, prefix: str) -> bool:
    """Whether ``key`` is listed by ``list(prefix)``: whole segments, so ``runs/r1`` does not match ``runs/r10/x``."""
    return prefix == "" or key == prefix or key.startswith(prefix + "/")


# Conditional writes (appended; optional for a store): what a lease needs to be safe against a racing writer.


@runtime_checkable
class ConditionalWrites(Protocol):
    """Compare-and-swap on one key, for the stores that offer it (both stores here do).

    A *version* is an opaque string that changes whenever the object changes (an S3 ETag; the sha256 of a
    local file's bytes). Each write is whole-object and atomic, like ``put_bytes``. ``False`` means the
    condition did not hold (another writer got there first); errors of the store itself are raised.
    :mod:`kftune.io.lease` falls back to write-then-read-back for a store without these methods.
    """

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and version; :class:`~kftune.core.errors.ArtifactNotFoundError` if missing."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        """Create ``key`` only if no object is there (S3 ``If-None-Match: *``; a local ``link``/``O_EXCL``);
        the new version, or ``None`` when an object was there."""
        ...

    def put_if_version(self, key: str, data: bytes, version: str) -> str | None:
        """Replace ``key`` only if it still has ``version`` (S3 ``If-Match``); the new version, or ``None``
        when the object changed or is gone."""
        ...

    def delete_if_version(self, key: str, version: str) -> bool:
        """Delete ``key`` only if it still has ``version``; ``False`` also when it is gone."""
        ...
