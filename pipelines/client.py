"""The Kubeflow Pipelines API client for ``kftune submit`` and ``kftune schedule``.

``kftune.commands.submit`` reaches ``kfp.Client`` only through :func:`make_client` (no ``kfp`` import under
``components/``); the command does its own preflight (a plain HTTP call) first, so the client's own health
check then succeeds at once.
"""

from __future__ import annotations

from typing import Any


def make_client(host: str, *, token: str | None = None, cookies: str | None = None, namespace: str | None = None,
                ca_cert: str | None = None) -> Any:
    """A ``kfp.Client`` for ``host`` (what it prints and logs is the caller's to hide)."""
    import kfp

    kwargs: dict[str, Any] = {"host": host, "existing_token": token, "cookies": cookies, "ssl_ca_cert": ca_cert}
    if namespace:
        kwargs["namespace"] = namespace
    return kfp.Client(**kwargs)
