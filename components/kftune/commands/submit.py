"""``kftune submit SPEC.yaml --host URL [--wait]``: run the pipeline on a Kubeflow Pipelines host.

What happens, in order; the first failure prints one line and exits non-zero with nothing created:

1. The spec is validated and mapped to the pipeline's parameters (exit 2 when it cannot map: an
   invalid spec, a search that cannot run, resources the variant cannot request, a local store).
2. The pipeline is compiled for the spec (``--variant``: ``gpu`` when the spec asks for GPUs, else
   ``cpu``), with as many search rounds as the spec's search takes, into a temporary package.
3. Preflight: one ``GET <host>/apis/v2beta1/healthz`` with the same credentials, a timeout and no
   redirects. An unreachable host, a rejected login (401/403) or a redirect to a login page fails here
   (exit 1). ``kfp.Client`` alone would retry a failing healthz for 25 s, follow a login redirect
   silently, or wait forever on a black-holed host.
4. ``kfp.Client`` creates the experiment if needed, then the run (``POST /apis/v2beta1/runs``).
5. ``--wait`` follows the run until it ends (exit 0 only when it succeeded).

Authentication (what ``kfp.Client`` supports): ``--token`` (or ``$KF_PIPELINES_TOKEN``; sent as
``Authorization: Bearer``), ``--token-file`` (e.g. a projected service-account token),
``--cookies`` (e.g. ``authservice_session=...`` copied from a browser session behind Dex/oauth2-proxy),
``--namespace`` (the profile namespace of a multi-user installation), ``--ca-cert`` for a private CA.
The host defaults to ``$KF_PIPELINES_ENDPOINT``. Store credentials are never parameters: the
pipeline's pods read them from the ``kftune-s3`` Secret.

:mod:`kftune.commands.schedule` shares everything here up to step 4.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

from kftune.core.errors import ConfigError, KftuneError
from kftune.steps._common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, add_common_arguments, run_main

log = logging.getLogger(__name__)

HEALTHZ = "/apis/v2beta1/healthz"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
HOST_ENV = "KF_PIPELINES_ENDPOINT"
#: Run states after which a run does not change any more (KFP v2beta1 ``RuntimeState``).
FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED", "ERROR")


class RemoteError(KftuneError):
    """The KFP host cannot be used (unreachable, credentials rejected, an API error); one line."""


# --------------------------------------------------------------------------------------------------
# Preflight
# --------------------------------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect (to a login page) surfaces as an HTTPError with a 3xx code


def auth_headers(token: str | None, cookies: str | None) -> dict[str, str]:
    """The headers ``kfp.Client`` sends for these credentials."""
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookies:
        headers["Cookie"] = cookies
    return headers


def preflight(host: str, *, token: str | None = None, cookies: str | None = None, timeout: float = 10.0,
              ca_cert: str | None = None) -> dict[str, Any]:
    """``GET <host>/apis/v2beta1/healthz`` once; its JSON answer, or :class:`RemoteError` with one line
    that says what is wrong (unreachable, rejected credentials, a login redirect, not a KFP API)."""
    url = host.rstrip("/") + HEALTHZ
    request = urllib.request.Request(url, headers={"Accept": "application/json", **auth_headers(token, cookies)})
    handlers: list[Any] = [_NoRedirect()]
    if ca_cert:
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_cert)))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        code = exc.code
        if code in (401, 403):
            raise RemoteError(f"KFP at {host} rejected the credentials (HTTP {code} on {HEALTHZ}): check --token, "
                              "--token-file or --cookies") from None
        if 300 <= code < 400:
            where = exc.headers.get("Location", "elsewhere") if exc.headers else "elsewhere"
            raise RemoteError(f"KFP at {host} redirected {HEALTHZ} to {where} (a login page?): the credentials "
                              "were not accepted; give --token or --cookies") from None
        if code == 404:
            raise RemoteError(f"no KFP API at {host} (HTTP 404 on {HEALTHZ}): check --host, e.g. "
                              "http://localhost:8080 or https://<kubeflow-host>/pipeline") from None
        raise RemoteError(f"KFP at {host} answered HTTP {code} on {HEALTHZ}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise RemoteError(f"cannot reach KFP at {host}: {reason}") from None
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RemoteError(f"{host}{HEALTHZ} answered with something that is not the KFP API (a login page?): "
                          "check --host and the credentials") from None
    if not isinstance(answer, dict):
        raise RemoteError(f"{host}{HEALTHZ} answered {answer!r}, not a KFP health object")
    return answer


# --------------------------------------------------------------------------------------------------
# Spec -> compiled package and arguments
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    """A spec made ready for a KFP host: the job, the variant, the pipeline arguments and rounds."""

    job: Any
    variant: str
    arguments: dict[str, Any]
    search_rounds: int


def prepare(spec_path: str, *, variant: str | None, store: str | None, warm_start: bool,
            overrides: dict[str, Any]) -> Prepared:
    """Validate the spec and map it to the pipeline's arguments; :class:`ConfigError` when it cannot map."""
    from kftune.io.specfile import load_spec
    from kftune.pipelines.pipeline import DEFAULT_STORE, arguments_for_spec, rounds_for

    job = load_spec(spec_path)
    res = job.spec.resources
    chosen = variant or ("gpu" if res.trial_gpu > 0 or res.final_gpu > 0 else "cpu")
    root = store or DEFAULT_STORE
    if not root.startswith("s3://"):
        from kftune.core.errors import Problem

        raise ConfigError([Problem("--store", f"{root!r} is not an object store: pipeline pods need s3://bucket/prefix "
                                              "(a local path exists only inside one pod)")])
    arguments = arguments_for_spec(job, variant=chosen, store=root, run_id="", warm_start=warm_start, cluster=True)
    arguments.update({k: v for k, v in overrides.items() if v is not None})
    rounds = rounds_for(arguments)
    return Prepared(job=job, variant=chosen, arguments=arguments, search_rounds=rounds)


@contextlib.contextmanager
def compiled_package(prepared: Prepared, registry: str | None) -> Iterator[str]:
    """The pipeline compiled for ``prepared`` into a temporary YAML file (removed afterwards)."""
    from kftune.pipelines.build import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="kftune-submit-") as tmp:
        path = Path(tmp) / f"kftune-{prepared.variant}.yaml"
        compile_pipeline(prepared.variant, path, search_rounds=prepared.search_rounds, registry=registry)
        yield str(path)


# --------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Remote:
    """Where and how to reach KFP (from the command line and the environment)."""

    host: str
    token: str | None = None
    cookies: str | None = None
    namespace: str | None = None
    ca_cert: str | None = None
    timeout: float = 10.0


def remote_from_args(args: argparse.Namespace) -> Remote:
    """The :class:`Remote` of a command line; :class:`ConfigError` without a host or with an unreadable token file."""
    from kftune.core.errors import Problem

    host = (args.host or os.environ.get(HOST_ENV) or "").strip()
    if not host:
        raise ConfigError([Problem("--host", f"missing: give --host URL (or set ${HOST_ENV}), e.g. "
                                             "http://localhost:8080")])
    if urllib.parse.urlsplit(host).scheme not in ("http", "https"):
        raise ConfigError([Problem("--host", f"{host!r} is not an http(s) URL, e.g. http://localhost:8080")])
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            problem = Problem("--token-file", f"cannot read {args.token_file}: {exc.strerror or exc}")
            raise ConfigError([problem]) from None
    return Remote(host=host.rstrip("/"), token=token, cookies=args.cookies, namespace=args.namespace,
                  ca_cert=args.ca_cert, timeout=args.connect_timeout)


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Hide what ``kfp.Client`` prints, logs at INFO (on the root logger) and warns: its "Run details"
    links and "Creating experiment" notes; we print our own lines."""
    captured = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(captured), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield captured
    finally:
        logging.disable(previous)
    for line in captured.getvalue().splitlines():
        log.debug("kfp: %s", line)


def connect(remote: Remote) -> Any:
    """Preflight, then a ``kfp.Client`` (whose own healthz call then succeeds at once)."""
    health = preflight(remote.host, token=remote.token, cookies=remote.cookies, timeout=remote.timeout,
                       ca_cert=remote.ca_cert)
    if health.get("multi_user") and not remote.namespace:
        raise RemoteError(f"KFP at {remote.host} is a multi-user installation: give --namespace (your profile "
                          "namespace)")
    with quiet():
        from kftune.pipelines.client import make_client

        try:
            return make_client(remote.host, token=remote.token, cookies=remote.cookies, namespace=remote.namespace,
                               ca_cert=remote.ca_cert)
        except Exception as exc:  # noqa: BLE001 - one line instead of the client's traceback
            raise RemoteError(f"KFP client for {remote.host}: {api_message(exc)}") from None


def api_message(exc: BaseException) -> str:
    """One line for an exception of the KFP client (``ApiException``: the status and the server's message)."""
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    if status is not None:
        message = ""
        if body:
            try:
                message = json.loads(body).get("message") or ""
            except (ValueError, AttributeError):
                message = str(body)[:200]
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".rstrip() + (f": {message}" if message else "")
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run_url(host: str, run_id: str) -> str:
    return f"{host}/#/runs/details/{run_id}"


def add_remote_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``submit`` and ``schedule`` share."""
    p.add_argument("spec", metavar="SPEC.yaml", help="the TuningJob spec")
    p.add_argument("--host", help=f"KFP API endpoint, e.g. http://localhost:8080 (default ${HOST_ENV})")
    auth = p.add_argument_group("authentication")
    auth.add_argument("--token", help=f"bearer token (default ${TOKEN_ENV})")
    auth.add_argument("--token-file", help="read the bearer token from this file (e.g. a service-account token)")
    auth.add_argument("--cookies", help="cookie header for a login proxy, e.g. 'authservice_session=...'")
    auth.add_argument("--namespace", help="profile namespace (multi-user Kubeflow)")
    auth.add_argument("--ca-cert", help="CA bundle for an https host with a private CA")
    auth.add_argument("--connect-timeout", type=float, default=10.0, help="seconds for the preflight (default 10)")
    pipe = p.add_argument_group("pipeline")
    pipe.add_argument("--variant", choices=("cpu", "gpu"), help="default: gpu when the spec asks for GPUs")
    pipe.add_argument("--store", help="store root, s3://bucket/prefix (default s3://kftune/tuning)")
    pipe.add_argument("--experiment", help="KFP experiment (default: the spec's name)")
    pipe.add_argument("--registry", help="image registry (default $KFTUNE_IMAGE_REGISTRY, else ghcr.io/kftune)")
    over = p.add_argument_group("overrides (pipeline parameters; default: the spec's values)")
    over.add_argument("--corpus")
    over.add_argument("--downsample", type=float)
    over.add_argument("--max-trials", type=int)
    over.add_argument("--parallel-trials", type=int)
    over.add_argument("--max-epochs", type=int)
    over.add_argument("--seed", type=int)
    add_common_arguments(p)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in ("corpus", "downsample", "max_trials", "parallel_trials",
                                                   "max_epochs", "seed")}


def first_problem(exc: ConfigError) -> str:
    head = str(exc.problems[0]) if exc.problems else str(exc)
    return head + (f" (and {len(exc.problems) - 1} more: kftune validate shows all)" if len(exc.problems) > 1 else "")


def prepare_from_args(args: argparse.Namespace) -> tuple[Remote, Prepared]:
    """The KFP host and the prepared spec a ``submit``/``schedule`` command line asks for (:class:`ConfigError`
    when either cannot be used)."""
    remote = remote_from_args(args)
    return remote, prepare(args.spec, variant=args.variant, store=args.store, warm_start=args.warm_start,
                           overrides=overrides_from_args(args))


def config_failure(prog: str, args: argparse.Namespace, exc: ConfigError) -> int:
    """Print why the spec or command line cannot map onto the pipeline; the exit code for it."""
    print(f"{prog}: {exc.source or args.spec}: cannot map onto the pipeline: {first_problem(exc)}", file=sys.stderr)
    return EXIT_CONFIG


# --------------------------------------------------------------------------------------------------
# submit
# --------------------------------------------------------------------------------------------------

def wait_for(client: Any, host: str, run_id: str, timeout: float, poll: float) -> str:
    """Follow run ``run_id`` until it reaches a final state (printing state changes); its state, or
    ``TIMEOUT``."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            with quiet():
                run = client.get_run(run_id)
        except Exception as exc:  # noqa: BLE001
            raise RemoteError(f"following run {run_id}: {api_message(exc)}") from None
        state = str(getattr(run, "state", None) or "UNKNOWN").upper()
        if state != last:
            print(f"kftune submit: run {run_id} {state}", flush=True)
            last = state
        if state in FINAL_STATES:
            return state
        if time.monotonic() >= deadline:
            return "TIMEOUT"
        time.sleep(max(0.0, min(poll, deadline - time.monotonic())))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kftune submit",
        description="Create a run of the kftune pipeline on a Kubeflow Pipelines host (the pipeline compiled for the "
                    "spec). Checks the host and the credentials first; nothing is created when they fail.")
    add_remote_arguments(p)
    p.add_argument("--run-name", help="the run's display name (default '<spec name> <time>')")
    p.add_argument("--warm-start", action="store_true",
                   help="start the search around the best trials of earlier runs under the same store root")
    p.add_argument("--wait", action="store_true", help="follow the run until it ends; exit 0 only if it succeeded")
    p.add_argument("--timeout", type=float, default=24 * 3600.0, help="--wait gives up after this many seconds")
    p.add_argument("--poll", type=float, default=10.0, help="--wait checks the run's state this often (seconds)")
    return p


def _body(args: argparse.Namespace) -> int:
    try:
        remote, prepared = prepare_from_args(args)
    except ConfigError as exc:
        return config_failure("kftune submit", args, exc)
    job = prepared.job
    experiment = args.experiment or job.name
    run_name = args.run_name or f"{job.name} {datetime.now().strftime('%Y-%m-%d %H:%M:%S')}"
    try:
        client = connect(remote)
        with compiled_package(prepared, args.registry) as package, quiet():
            try:
                result = client.create_run_from_pipeline_package(
                    package, arguments=prepared.arguments, run_name=run_name, experiment_name=experiment,
                    namespace=remote.namespace)
            except Exception as exc:  # noqa: BLE001 - ApiException, urllib3 errors: one line
                raise RemoteError(f"KFP at {remote.host} did not create the run: {api_message(exc)}") from None
        run_id = result.run_id
        print(f"kftune submit: created run {run_id} ({run_name!r}, pipeline kftune-{prepared.variant}, "
              f"{prepared.search_rounds} search rounds, experiment {experiment!r}): {run_url(remote.host, run_id)}",
              flush=True)
        if not args.wait:
            return EXIT_OK
        state = wait_for(client, remote.host, run_id, args.timeout, args.poll)
    except RemoteError as exc:
        print(f"kftune submit: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if state == "SUCCEEDED":
        return EXIT_OK
    print(f"kftune submit: run {run_id} ended {state}" if state != "TIMEOUT"
          else f"kftune submit: run {run_id} still running after {args.timeout:g} s", file=sys.stderr)
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
