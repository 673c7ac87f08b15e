"""``kftune deploy``: serve a trained model on the cluster as a KServe ``InferenceService``.

Creates the InferenceService ``--name`` in ``--namespace`` (default: the pod's own namespace, else the
kubeconfig context's) or, when it exists, patches it to serve ``--model``, the model's URI in the object
store (e.g. ``s3://kftune/tuning/runs/<run>/final/model.pt``, what the pipeline's final training
writes). The object is :func:`kftune.core.inference_service.inference_service`: a custom predictor
running ``kftune serve`` in the serving image (``kftune._image.image(kind, serving=True)``: ``cpu``,
or ``cuda`` with ``--gpus``), the model's URI as its storage URI (KServe's storage initializer
downloads it to ``/mnt/models``), the ServiceAccount whose Secret holds the store's credentials
(``--service-account``, default ``kftune-serving`` from ``manifests/base/serving``), CPU and memory
requests and limits, and with ``--gpus N`` an ``nvidia.com/gpu`` limit and the GPU nodes' toleration.

The calls (:class:`kftune.io.kserve.KServeDeployer`): GET the InferenceService; 404: POST it; else PATCH
it (JSON merge patch). With ``--wait`` the step then reads it until KServe reports it ``Ready`` (or
``--timeout`` seconds pass: exit 1). The run's identity needs get, create and patch on
``inferenceservices.serving.kserve.io``: the Role ``kftune-deployer`` in
``manifests/base/rbac/deployer-role.yaml``; a 403 says so.

Prints one JSON line: ``name``, ``namespace``, ``action`` (``created`` or ``patched``), ``url`` (once
KServe reports one), ``ready``, ``model`` and ``image``. ``--dry-run`` prints the InferenceService as
YAML instead and contacts nothing (``kftune deploy ... --dry-run | kubectl apply -f -``).

Exit codes: 0 deployed (and ready, with ``--wait``); 1 the API refused or the service did not turn
ready; 2 bad arguments (every problem named, nothing sent).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from kftune.core.errors import ConfigError, Problem
from kftune.core.inference_service import (DEFAULT_SERVICE_ACCOUNT, GPU_TOLERATION, Resources, inference_service,
                                           name_problems, namespace_problems, readiness, service_name_for,
                                           service_url, storage_uri_problems)
from kftune.steps._common import CheckedConfig, add_common_arguments, run_main

log = logging.getLogger(__name__)

__all__ = ["DeployConfig", "DeployResult", "build_parser", "main", "manifest", "run", "service_name_for"]

# An image reference with a tag or a digest: "registry/path/name:tag" or "...@sha256:<hex>".
_IMAGE = re.compile(r"^[^\s:@]+(:[0-9]+)?(/[^\s:@]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$")


@dataclass(frozen=True)
class DeployConfig(CheckedConfig):
    """What to deploy and where (see the module docstring).

    ``name``: the InferenceService's name (also the model's name in the V1/V2 routes); ``model``: the
    model's URI in the object store; ``namespace``: empty for the current one; ``image``: the serving
    image (default: this release's ``kftune-serving`` image of the kind ``gpus`` asks for, from
    ``registry`` or ``$KFTUNE_IMAGE_REGISTRY``); ``gpus``: GPUs of the model server (0: CPU);
    ``node_selector``/``tolerations``: where its pod may run (``tolerations`` ``None``: the GPU nodes'
    taint when ``gpus`` > 0); ``wait``: wait for readiness up to ``timeout`` seconds, reading every
    ``poll_interval``; ``kubeconfig``/``context``: which cluster outside a pod.
    """

    name: str
    model: str
    namespace: str = ""
    image: str | None = None
    registry: str | None = None
    gpus: int = 0
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    resources: Resources = field(default_factory=Resources)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] | None = None
    wait: bool = False
    timeout: float = 600.0
    poll_interval: float = 5.0
    request_timeout: float = 30.0
    kubeconfig: str | None = None
    context: str | None = None

    def problems(self) -> list[Problem]:
        p = name_problems(self.name, "deploy.name")
        p += storage_uri_problems(self.model, "deploy.model")
        p += namespace_problems(self.namespace, "deploy.namespace")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0:
            p.append(Problem("deploy.gpus", f"{self.gpus!r} must be a whole number >= 0 (0 serves on CPU)"))
        if self.image is not None and (not isinstance(self.image, str) or not _IMAGE.match(self.image)):
            p.append(Problem("deploy.image", f"{self.image!r} is not an image reference with a tag or digest, e.g. "
                                             "registry.example.com/ml/kftune-serving:1.0.0-cpu"))
        elif isinstance(self.image, str) and self.image.endswith(":" + "latest"):
            p.append(Problem("deploy.image", f"{self.image!r}: a `latest` tag names no release; use a version tag"))
        if self.image is None:
            from kftune._image import image_registry

            try:
                image_registry(self.registry)
            except ConfigError as exc:
                p += [Problem(f"deploy.{q.path}", q.message) for q in exc.problems]
        if not isinstance(self.service_account, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?",
                                                                         self.service_account or ""):
            p.append(Problem("deploy.service_account", f"{self.service_account!r} is not a ServiceAccount name"))
        p += self.resources.problems("deploy.resources")
        if not isinstance(self.node_selector, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.node_selector.items()):
            p.append(Problem("deploy.node_selector", f"{self.node_selector!r} must map label names to strings"))
        if self.tolerations is not None and not all(isinstance(t, Mapping) for t in self.tolerations):
            p.append(Problem("deploy.tolerations", f"{self.tolerations!r} must be a list of Kubernetes tolerations"))
        for name in ("timeout", "poll_interval", "request_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                p.append(Problem(f"deploy.{name}", f"{value!r} must be a number of seconds > 0"))
        return p

    @classmethod
    def from_pipeline(cls, job: Any, *, service_name: str, model: str, namespace: str, image: str, registry: str,
                      gpus: int, node_selector: Mapping[str, str], tolerations: Sequence[Mapping[str, Any]],
                      timeout: int) -> "DeployConfig":
        """The config of the pipeline's deploy task, from its parameters (``job``: the parsed
        :class:`~kftune.core.spec.TuningJob`): an empty ``service_name`` is made from the job's name, an
        empty ``namespace`` is the run's own, an empty ``image`` this release's serving image; node selector
        and tolerations apply with GPUs only (no tolerations: the GPU nodes' taint); ``timeout`` 0 does not
        wait for readiness."""
        return cls(name=service_name.strip() or service_name_for(job.name), model=model,
                   namespace=namespace.strip(), image=image.strip() or None, registry=registry or None, gpus=gpus,
                   node_selector=dict(node_selector) if gpus else {},
                   tolerations=tuple(tolerations) if gpus and tolerations else None, wait=timeout > 0,
                   timeout=float(timeout) if timeout > 0 else 600.0)

    def image_reference(self) -> str:
        """The serving image: ``image``, else this release's serving image of the kind ``gpus`` asks for."""
        if self.image:
            return self.image
        from kftune._image import image

        return image("cuda" if self.gpus else "cpu", self.registry, serving=True)


@dataclass(frozen=True)
class DeployResult:
    """What ``run`` did: the service, where, whether it was ``created`` or ``patched``, its URL once KServe
    reports one, and whether it is ready (``None``: not waited for, and KServe had reported no status yet;
    after a patch without waiting, what KServe reported for the new generation so far)."""

    name: str
    namespace: str
    action: str
    url: str | None
    ready: bool | None
    model: str
    image: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """What was deployed, whether it is ready, and its routes (V1, V2, plain) once KServe reports a URL."""
        state = {True: "Ready", False: "not ready yet", None: "not waited for"}[self.ready]
        lines = [f"# InferenceService {self.namespace}/{self.name}", "",
                 f"{self.action.capitalize()}: serves `{self.model}` with `{self.image}` ({state}).", ""]
        if self.url:
            lines += [f"URL: {self.url}", "", f"- KServe V1: `POST {self.url}/v1/models/{self.name}:predict`",
                      f"- Open Inference Protocol (V2): `POST {self.url}/v2/models/{self.name}/infer`",
                      f"- plain: `POST {self.url}/predict`"]
        return "\n".join(lines) + "\n"


def manifest(config: DeployConfig, namespace: str | None = None) -> dict[str, Any]:
    """The InferenceService ``config`` describes (checked first: raises :class:`ConfigError`)."""
    config.validate()
    tolerations = config.tolerations
    if tolerations is None:
        tolerations = (GPU_TOLERATION,) if config.gpus else ()
    return inference_service(config.name, config.model, config.image_reference(),
                             namespace=namespace or config.namespace or None, service_account=config.service_account,
                             gpus=config.gpus, resources=config.resources, node_selector=config.node_selector,
                             tolerations=tolerations)


def run(config: DeployConfig, *, api: Any = None, deployer: Any = None) -> DeployResult:
    """Create or patch the InferenceService ``config`` describes and, with ``config.wait``, wait until it
    is ready (see the module docstring). ``api``: a ``CustomObjectsApi`` (default: in-cluster config,
    else the kubeconfig); ``deployer``: a :class:`kftune.io.kserve.KServeDeployer` to use instead.
    Raises :class:`ConfigError` for a bad config (before any request) and
    :class:`kftune.io.kserve.KServeError` when the API refuses or the service does not turn ready."""
    config.validate()
    from kftune.io import kube
    from kftune.io.kserve import KServeDeployer, load_api

    namespace = config.namespace or kube.current_namespace(kubeconfig=config.kubeconfig, context=config.context)
    body = manifest(config, namespace)
    if deployer is None:
        deployer = KServeDeployer(api if api is not None else load_api(config.kubeconfig, config.context),
                                  request_timeout=config.request_timeout, poll_interval=config.poll_interval)
    log.info("deploying %s as InferenceService %s/%s (image %s%s)", config.model, namespace, config.name,
             body["spec"]["predictor"]["containers"][0]["image"], f", {config.gpus} GPU(s)" if config.gpus else "")
    applied = deployer.apply(body, namespace)
    obj, ready = applied.object, None
    if config.wait:
        obj = deployer.wait_until_ready(applied.name, applied.namespace, config.timeout)
        ready = True
    elif obj and obj.get("status"):
        ready = readiness(obj)[0]
    url = service_url(obj or {})
    log.info("InferenceService %s/%s %s%s", applied.namespace, applied.name, applied.action,
             f", serving at {url}" if url else "")
    return DeployResult(name=applied.name, namespace=applied.namespace, action=applied.action, url=url, ready=ready,
                        model=config.model, image=body["spec"]["predictor"]["containers"][0]["image"])


# ------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kftune deploy",
        description="Serve a trained model on the cluster: create or patch a KServe InferenceService that runs "
                    "`kftune serve` on the model's URI in the object store (GET, then POST or a merge PATCH).",
        epilog="The run's identity needs get, create and patch on inferenceservices.serving.kserve.io "
               "(manifests/base/rbac/deployer-role.yaml).")
    p.add_argument("--name", required=True, help="the InferenceService's name (and the model's name in its routes)")
    p.add_argument("--model", required=True,
                   help="the model's URI in the object store, e.g. s3://kftune/tuning/runs/<run>/final/model.pt")
    p.add_argument("--namespace", default="", help="default: the pod's namespace, else the kubeconfig context's")
    p.add_argument("--image", help="the serving image (default: this release's kftune-serving image, cpu or cuda)")
    p.add_argument("--registry", help="registry of the default image (default $KFTUNE_IMAGE_REGISTRY, else ghcr.io/kftune)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs of the model server (default 0: CPU)")
    p.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT,
                   help="ServiceAccount whose Secret holds the store's credentials (default %(default)s)")
    defaults = Resources()
    p.add_argument("--cpu", default=defaults.cpu, help="CPU request (default %(default)s)")
    p.add_argument("--memory", default=defaults.memory, help="memory request (default %(default)s)")
    p.add_argument("--cpu-limit", default=defaults.cpu_limit, help="CPU limit (default %(default)s)")
    p.add_argument("--memory-limit", default=defaults.memory_limit, help="memory limit (default %(default)s)")
    p.add_argument("--node-selector", action="append", default=[], metavar="LABEL=VALUE",
                   help="a node label the server's pod must match (repeatable)")
    p.add_argument("--wait", action="store_true", help="wait until KServe reports the service Ready")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait (default %(default)s)")
    p.add_argument("--poll-interval", type=float, default=5.0,
                   help="seconds between two reads with --wait (default %(default)s)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG, else ~/.kube/config; "
                                        "in-cluster config inside a pod)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--dry-run", action="store_true", help="print the InferenceService as YAML; contact nothing")
    add_common_arguments(p)
    return p


def config_from_args(args: argparse.Namespace) -> DeployConfig:
    """The :class:`DeployConfig` a command line describes (raises :class:`ConfigError` for a bad
    ``--node-selector``)."""
    selector: dict[str, str] = {}
    problems = []
    for item in args.node_selector:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(Problem("--node-selector", f"{item!r} is not LABEL=VALUE"))
        else:
            selector[key.strip()] = value.strip()
    if problems:
        raise ConfigError(problems)
    return DeployConfig(name=args.name, model=args.model, namespace=args.namespace, image=args.image,
                        registry=args.registry, gpus=args.gpus, service_account=args.service_account,
                        resources=Resources(cpu=args.cpu, memory=args.memory, cpu_limit=args.cpu_limit,
                                            memory_limit=args.memory_limit),
                        node_selector=selector, wait=args.wait, timeout=args.timeout,
                        poll_interval=args.poll_interval, kubeconfig=args.kubeconfig, context=args.context)


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        config = config_from_args(args)
        if args.dry_run:
            import yaml

            print(yaml.safe_dump(manifest(config), sort_keys=False), end="")
            return 0
        result = run(config)
        print(json.dumps(result.to_dict(), sort_keys=True))
        return 0

    return run_main(body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
