"""The one place that names kftune's container images for Python code.

Tags derive from the package version (``kftune._version.__version__``), one image per kind, and a
serving image per kind (the same image plus the ``serve`` extra, entrypoint ``kftune serve``)::

    image("cpu")                  -> "ghcr.io/kftune/kftune:0.1.0-cpu"
    image("cuda")                 -> "ghcr.io/kftune/kftune:0.1.0-cuda"
    image("cpu", serving=True)    -> "ghcr.io/kftune/kftune-serving:0.1.0-cpu"
    image("cuda", serving=True)   -> "ghcr.io/kftune/kftune-serving:0.1.0-cuda"

The serving images are a repository of their own (``kftune-serving``), so that a kustomize ``images:``
entry, a registry's retention rule or a pull policy can tell them from the training images.

The registry (everything before ``/kftune:`` or ``/kftune-serving:``) is, in order: the ``registry``
argument, the ``KFTUNE_IMAGE_REGISTRY`` environment variable, ``ghcr.io/kftune``. ``images/build.sh`` computes the
same names from the same two inputs (the version file and ``KFTUNE_IMAGE_REGISTRY``), and
``tests/test_images.py`` checks that both agree. There is no ``latest`` tag: an image reference in a
pipeline or a manifest always names the release that built it.

Pipeline components (``base_image``), the Katib trial template and the InferenceService of the
``deploy`` step take their image from here.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from kftune._version import __version__
from kftune.core.errors import ConfigError, Problem

#: The image repository's name under the registry.
IMAGE_NAME = "kftune"
#: The serving images' repository (``images/<kind>.Dockerfile``'s ``serving`` target).
SERVING_IMAGE_NAME = "kftune-serving"
#: Where images are pushed unless told otherwise.
DEFAULT_REGISTRY = "ghcr.io/kftune"
#: Environment variable that overrides :data:`DEFAULT_REGISTRY` (e.g. a private mirror).
ENV_REGISTRY = "KFTUNE_IMAGE_REGISTRY"
#: The image kinds: ``cpu`` (torch from the CPU wheel index) and ``cuda`` (PyTorch CUDA runtime base).
KINDS: tuple[str, ...] = ("cpu", "cuda")

ImageKind = Literal["cpu", "cuda"]

# A registry host[:port] with an optional path: "ghcr.io/kftune", "localhost:5000", "registry.local/ml/team".
_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
# Characters a Docker tag may not contain (a tag is [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}).
_NOT_IN_TAG = re.compile(r"[^A-Za-z0-9_.-]")


def version_tag(version: str = __version__) -> str:
    """The version as a Docker tag component: characters a tag cannot hold become ``-``
    (``0.2.0.dev3+g1a2b`` -> ``0.2.0.dev3-g1a2b``); ``images/build.sh`` does the same."""
    return _NOT_IN_TAG.sub("-", version)


def image_tag(kind: ImageKind | str = "cpu", version: str = __version__) -> str:
    """The tag of the ``kind`` image for ``version``: ``"<version>-<kind>"``."""
    if kind not in KINDS:
        raise ConfigError([Problem("image.kind", f"unknown image kind {kind!r}; use one of {list(KINDS)}")])
    return f"{version_tag(version)}-{kind}"


def image_registry(override: str | None = None) -> str:
    """The registry to use: ``override``, else ``$KFTUNE_IMAGE_REGISTRY``, else :data:`DEFAULT_REGISTRY`.

    A trailing ``/`` is dropped. Raises :class:`~kftune.core.errors.ConfigError` for a value that is
    not a registry host (with an optional port and path), such as one with a scheme or a tag.
    """
    source = "registry"
    value = override
    if value is None:
        value, source = os.environ.get(ENV_REGISTRY, "").strip() or None, ENV_REGISTRY
    if value is None:
        return DEFAULT_REGISTRY
    clean = value.strip().rstrip("/")
    if not _REGISTRY.match(clean):
        raise ConfigError([Problem(source, f"{value!r} is not a registry such as 'ghcr.io/kftune' or "
                                           f"'localhost:5000' (lowercase host[:port][/path], no scheme, no tag)")])
    return clean


def image_name(serving: bool = False) -> str:
    """The repository name under the registry: ``kftune``, or ``kftune-serving`` for ``serving``."""
    return SERVING_IMAGE_NAME if serving else IMAGE_NAME


def image(kind: ImageKind | str = "cpu", registry: str | None = None, *, serving: bool = False) -> str:
    """The full image reference for ``kind`` at this package's version, e.g.
    ``"ghcr.io/kftune/kftune:0.1.0-cpu"``, or with ``serving`` the model server's image,
    ``"ghcr.io/kftune/kftune-serving:0.1.0-cpu"`` (see the module docstring for the registry's source)."""
    return f"{image_registry(registry)}/{image_name(serving)}:{image_tag(kind)}"
