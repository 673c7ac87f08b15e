"""What kftune's Kubernetes edges share: a ``CustomObjectsApi`` from in-cluster config or a kubeconfig,
the pod's namespace, and reading the API server's errors.

Used by the Katib launcher (:mod:`kftune.io.katib`) and the KServe deployer (:mod:`kftune.io.kserve`);
each turns these into errors of its own that say what to fix.
"""

from __future__ import annotations

import json
import os
from typing import Any

#: Where a pod finds its own namespace.
SERVICEACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
#: API statuses worth another try (0: the client got no HTTP answer).
TRANSIENT_STATUS = frozenset({0, 429, 500, 502, 503, 504})


class NoCredentialsError(Exception):
    """Neither in-cluster config nor a kubeconfig could be loaded (the message says what was tried)."""


def load_custom_objects_api(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A ``kubernetes.client.CustomObjectsApi``: in-cluster config inside a pod (when
    ``KUBERNETES_SERVICE_HOST`` is set and no ``kubeconfig`` is given), else the kubeconfig file
    (``kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``) and its ``context``. Raises
    :class:`NoCredentialsError` naming both attempts."""
    from kubernetes import client, config

    errors: list[str] = []
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.CustomObjectsApi(client.ApiClient(configuration))
        except config.ConfigException as exc:
            errors.append(f"in-cluster config: {exc}")
    try:
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        return client.CustomObjectsApi(client.ApiClient(configuration))
    except (config.ConfigException, OSError) as exc:
        errors.append(f"kubeconfig: {exc}")
    raise NoCredentialsError("no Kubernetes credentials: " + "; ".join(errors) +
                             ". Run inside a pod with a ServiceAccount, or point KUBECONFIG at a kubeconfig file.")


def current_namespace(default: str = "default", kubeconfig: str | None = None, context: str | None = None) -> str:
    """The pod's own namespace when running in a cluster (and no ``kubeconfig`` is given), else the
    namespace of the kubeconfig's ``context`` (default: its current context), else ``default``."""
    if kubeconfig is None:
        try:
            with open(SERVICEACCOUNT_NAMESPACE_FILE, encoding="utf-8") as handle:
                text = handle.read().strip()
            if text:
                return text
        except OSError:
            pass
    try:
        from kubernetes import config

        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        if context:
            active = next((c for c in contexts or [] if c.get("name") == context), None)
        namespace = (active or {}).get("context", {}).get("namespace")
        if namespace:
            return str(namespace)
    except Exception:  # no kubeconfig: not an error here
        pass
    return default


def api_host(api: Any) -> str | None:
    """The API server a client object talks to, when it says."""
    return getattr(getattr(getattr(api, "api_client", None), "configuration", None), "host", None)


def status_body(exc: Any) -> dict[str, Any]:
    """The Kubernetes ``Status`` object in an ApiException's body, or ``{}`` (e.g. a plain-text 404)."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def server_message(exc: Any) -> str:
    """The API server's message for an ApiException (its ``Status.message``, else the body's text)."""
    status = status_body(exc)
    if status.get("message"):
        return str(status["message"])
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = (body or "").strip() or str(getattr(exc, "reason", "") or "")
    return text[:500]


def is_api_or_transport_error(exc: BaseException) -> bool:
    """An error of the API call itself: an HTTP answer (ApiException) or no answer at all."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError as Urllib3Error

    return isinstance(exc, (ApiException, Urllib3Error, ConnectionError, TimeoutError))


def is_transient(exc: BaseException) -> bool:
    """A 429, a 5xx or a dropped connection: worth trying again."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, ApiException):
        return exc.status in TRANSIENT_STATUS
    return isinstance(exc, (Urllib3Error, ConnectionError, TimeoutError))
