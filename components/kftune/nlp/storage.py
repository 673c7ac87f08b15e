"""What ``nlp`` needs of an artifact store: the store is handed in, never opened here.

``nlp`` imports nothing from :mod:`kftune.io` (DESIGN.md: "``nlp`` is handed stores; it does not open them").
Where it writes or reads a store object it takes a :class:`BlobStore`: the part of
:class:`kftune.io.store.ArtifactStore` it calls (every store of :mod:`kftune.io` satisfies it, checked in
``tests/io/test_store.py``). Where it meets a URI that may name a store object (a model file at
``s3://bucket/key``, pretrained vectors or transformer weights under an ``s3://`` prefix in the
hyperparameters), it takes a :data:`StoreOpener`, the function that opens the store of a root URI: the steps
and the server pass :func:`kftune.io.store.open_store`. Without one, only local paths (and ``file://``) are
read; a store URI is a :class:`~kftune.core.errors.ConfigError` that names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from kftune.core.errors import ConfigError, Problem


@runtime_checkable
class BlobStore(Protocol):
    """Keys relative to the store's root; a missing key raises
    :class:`~kftune.core.errors.ArtifactNotFoundError`; puts are atomic (the
    :class:`kftune.io.store.ArtifactStore` contract)."""

    def uri_for(self, key: str) -> str: ...

    def get_bytes(self, key: str) -> bytes: ...

    def put_file(self, key: str, path: str | Path) -> None: ...

    def get_file(self, key: str, path: str | Path) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def delete(self, key: str) -> None: ...


#: Opens the store whose root is a URI (``s3://bucket/prefix`` or a local directory).
StoreOpener = Callable[[str], BlobStore]


def is_store_uri(uri: str) -> bool:
    """Whether ``uri`` names a store object (``s3://...``) rather than a local path (or ``file://``)."""
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> Path:
    """The local path of a plain path or a ``file://`` URI."""
    return Path(uri.removeprefix("file://"))


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b.pt`` -> ``("s3://bucket/a", "b.pt")``: the store root and the key of the last segment."""
    root, _, key = uri.rstrip("/").rpartition("/")
    return root, key


def opener_for(uri: str, open_store: StoreOpener | None, field: str) -> StoreOpener:
    """``open_store``, or a :class:`ConfigError` for ``field`` when a store URI comes without one."""
    if open_store is None:
        raise ConfigError([Problem(field, f"{uri!r} is a store URI, and no store was handed in to read it; "
                                          "pass open_store (kftune.io.store.open_store), or give a local path")])
    return open_store
