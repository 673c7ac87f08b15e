"""``kftune katib SPEC.yaml``: print the Katib ``Experiment`` (``kubeflow.org/v1beta1``) for a spec's search,
or create it in the cluster and follow it (``--apply``, ``--watch``).

The mapping is :mod:`kftune.core.katib_export`'s; this command reads the inputs and writes YAML::

    kftune katib examples/wnut17.yaml --namespace kubeflow-user > experiment.yaml
    kubectl apply -f experiment.yaml

    # coarse-to-fine: one Experiment per round
    kftune katib examples/trec6.yaml --phase coarse | kubectl apply -f -
    kubectl get trials -l katib.kubeflow.org/experiment=trec6-coarse -o json > coarse.json
    kftune katib examples/trec6.yaml --phase fine --from-trials coarse.json | kubectl apply -f -

Or through the Kubernetes API (:class:`kftune.io.katib.KatibLauncher`; in-cluster config inside a pod, else
the kubeconfig, ``--kubeconfig``/``--context``)::

    kftune katib examples/trec6.yaml --apply                     # create it; prints name, namespace, uid
    kftune katib examples/trec6.yaml --apply --watch --timeout 21600
    kftune katib examples/trec6.yaml --watch                     # follow one applied earlier (kubectl apply)

``--watch`` follows the Experiment (a watch on the one object, a fresh read whenever a watch ends) until it
succeeds, then prints its best trial as one JSON line (:class:`kftune.io.katib.ExperimentResult`: typed
assignment, objective value, trial counts); a failed Experiment, a timeout (the Experiment is left running) or
an API error that says what to fix (Katib not installed, RBAC: the verbs on ``experiments.kubeflow.org`` of the
Role in manifests/base/rbac) exit 1. The namespace is ``--namespace``, else the spec's ``metadata.namespace``,
else the pod's own, else the kubeconfig context's. ``--if-exists follow`` makes a retried ``--apply`` follow
the Experiment its first attempt created instead of failing.

Where the spec does not map exactly onto Katib (successive halving as hyperband, ``bohb`` as Katib's hyperband
or tpe, the LR range test, the finalists), each difference is printed on stderr as ``note: ...``, written as a comment above the
YAML and kept in the Experiment's ``kftune.dev/notes`` annotation.

``--from-trials URI`` (repeatable) gives the trials of the earlier rounds: Katib ``Trial`` objects
(``kubectl get trials -o json`` or ``-o yaml``; a List or one Trial) or kftune trial records (a JSON
record, a JSON list of them, or a directory / ``s3://`` prefix holding ``<trial-id>.json`` records,
as ``kftune trial`` writes them under ``runs/<run>/search/trials/``). Trials are assigned to rounds by
their Experiment (the ``katib.kubeflow.org/experiment`` label, else the ``<experiment>-`` prefix of
the trial's name); records of some other search all count as the coarse round. The fine Experiment is
the round after the last one found. The trial pods need the Secret ``kftune-s3`` (``KFTUNE_S3_*``
variables) and the ConfigMap ``kftune-spec-<name>`` holding the spec file as ``spec.yaml``
(manifests/base makes both), and the prepared corpus at ``--corpus`` (``kftune corpus`` writes it).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from kftune.core.errors import ArtifactNotFoundError, ConfigError, DataError, Problem
from kftune.core.katib_export import (
    DEFAULT_S3_SECRET,
    DEFAULT_STORE,
    KatibExperiment,
    TrialPodConfig,
    coarse_to_fine_config,
    export_experiment,
    trials_from_katib,
)
from kftune.core.lr_handoff import apply_lr_range
from kftune.core.space import SearchSpace
from kftune.core.spec import TuningJob
from kftune.core.trials import Trial
from kftune.steps._common import EXIT_OK, add_common_arguments, run_main

log = logging.getLogger(__name__)

#: How long ``--watch`` follows an Experiment by default (seconds).
DEFAULT_WATCH_TIMEOUT_S = 24 * 3600.0
#: ``--image-kind`` values and the image kind (``kftune._image``) each selects.
IMAGE_KINDS = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda"}
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kftune katib",
        description="Print the Katib Experiment (kubeflow.org/v1beta1) for a TuningJob spec's search. "
                    "Differences from kftune's own search are printed on stderr as notes.")
    p.add_argument("spec", metavar="SPEC.yaml", help="the TuningJob spec")
    p.add_argument("--namespace", help="the Experiment's namespace (default: the spec's metadata.namespace, else none)")
    p.add_argument("--image-kind", choices=sorted(IMAGE_KINDS),
                   help="trial image: cpu, or gpu (= cuda) with spec.resources.trialGPU GPUs per trial "
                        "(default: gpu when trialGPU > 0, else cpu)")
    p.add_argument("--registry", help="image registry (default: $KFTUNE_IMAGE_REGISTRY, else ghcr.io/kftune)")
    p.add_argument("--phase", choices=("coarse", "fine"),
                   help="coarse-to-fine only: the coarse round (default) or the next fine round")
    p.add_argument("--from-trials", action="append", default=[], metavar="URI",
                   help="trials of the earlier rounds (repeatable): Katib Trials as JSON/YAML, or kftune trial "
                        "records (a file, a directory or an s3:// prefix)")
    p.add_argument("--lr-range", metavar="URI",
                   help="a finished LR range test's result.json: its range replaces the feasibleSpace of "
                        "spec.lrRangeTest.applyTo")
    p.add_argument("--store", default=DEFAULT_STORE, help=f"artifact store of the trials (default {DEFAULT_STORE})")
    p.add_argument("--run-id", help="the run the trials belong to (default: the spec's metadata.name)")
    p.add_argument("--corpus", help="the prepared corpus (default: <store>/runs/<run-id>/corpus)")
    p.add_argument("--s3-secret", default=DEFAULT_S3_SECRET,
                   help=f"Secret with the KFTUNE_S3_* variables (default {DEFAULT_S3_SECRET})")
    p.add_argument("--spec-configmap", help="ConfigMap with the spec as spec.yaml (default kftune-spec-<name>)")
    p.add_argument("-o", "--output", help="write the YAML here instead of stdout")
    cluster = p.add_argument_group("in the cluster (the Kubernetes API)")
    cluster.add_argument("--apply", action="store_true",
                         help="create the Experiment instead of printing it; prints its name, namespace and uid")
    cluster.add_argument("--watch", action="store_true",
                         help="follow the Experiment (with --apply: the one created; alone: the one the spec names, "
                              "applied earlier) until it ends; prints its best trial as JSON")
    cluster.add_argument("--timeout", type=float, default=DEFAULT_WATCH_TIMEOUT_S,
                         help="seconds --watch follows it before giving up, leaving it running (default %(default)g)")
    cluster.add_argument("--if-exists", choices=("fail", "follow"), default="fail",
                         help="--apply when an Experiment of that name exists: fail (default) or follow it")
    cluster.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG, else ~/.kube/config; "
                                              "in-cluster config inside a pod)")
    cluster.add_argument("--context", help="kubeconfig context")
    add_common_arguments(p)
    return p


# -- reading inputs -------------------------------------------------------------------------------

def _split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b.json`` -> (``s3://bucket``, ``a/b.json``)."""
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    return f"s3://{bucket}", key.strip("/")


def read_documents(uri: str) -> list[tuple[str, Any]]:
    """Every JSON/YAML document at ``uri``: a local file, a local directory (its ``*.json``, ``*.yaml``),
    ``-`` (stdin), an ``s3://`` object or prefix. Returns ``(where, document)`` pairs.

    Raises :class:`ArtifactNotFoundError` for a missing path or prefix, :class:`DataError` for a file
    that is neither JSON nor YAML.
    """
    import yaml

    def parse(where: str, data: bytes) -> list[tuple[str, Any]]:
        text = data.decode("utf-8")
        try:
            return [(where, json.loads(text))]
        except ValueError:
            pass
        try:
            return [(where, d) for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise DataError(f"{where}: neither JSON nor YAML ({exc})") from None

    if uri == "-":
        return parse("<stdin>", sys.stdin.buffer.read())
    if uri.startswith("s3://"):
        from kftune.io.store import open_store

        root, key = _split_uri(uri)
        store = open_store(root)
        if key and key.endswith((".json", ".yaml", ".yml")):
            return parse(uri, store.get_bytes(key))
        keys = [k for k in store.list(key) if k.endswith(".json")]
        if not keys:
            raise ArtifactNotFoundError(uri)
        return [doc for k in keys for doc in parse(store.uri_for(k), store.get_bytes(k))]
    path = Path(uri.removeprefix("file://"))
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.suffix in (".json", ".yaml", ".yml") and f.is_file())
        if not files:
            raise ArtifactNotFoundError(uri)
        return [doc for f in files for doc in parse(str(f), f.read_bytes())]
    if not path.is_file():
        raise ArtifactNotFoundError(uri)
    return parse(str(path), path.read_bytes())


def _flatten(docs: Sequence[tuple[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split documents into Katib Trial objects and kftune trial records."""
    katib: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []

    def take(where: str, obj: Any) -> None:
        if isinstance(obj, list):
            for item in obj:
                take(where, item)
        elif isinstance(obj, dict) and isinstance(obj.get("items"), list):  # a List / TrialList
            for item in obj["items"]:
                take(where, item)
        elif isinstance(obj, dict) and obj.get("kind") == "Trial":
            katib.append(obj)
        elif isinstance(obj, dict) and "id" in obj and "assignment" in obj:
            records.append(obj)
        else:
            raise DataError(f"{where}: not a Katib Trial, a list of Trials or a kftune trial record "
                            f"(got {type(obj).__name__}{' with keys ' + ', '.join(sorted(obj)[:6]) if isinstance(obj, dict) else ''})")

    for where, doc in docs:
        take(where, doc)
    return katib, records


def round_names(job: TuningJob, rounds: int) -> list[str]:
    """The Experiment name of each coarse-to-fine round (as :func:`export_experiment` names them)."""
    names = [f"{job.name}-coarse"]
    names += [f"{job.name}-fine" if rounds == 2 else f"{job.name}-fine-{r}" for r in range(1, rounds)]
    return names


def load_earlier_rounds(job: TuningJob, uris: Sequence[str], space: SearchSpace) -> list[list[Trial]]:
    """The trials of the earlier coarse-to-fine rounds, grouped by round (coarse first)."""
    docs = [d for uri in uris for d in read_documents(uri)]
    katib, records = _flatten(docs)
    search = job.spec.search
    objective = search.objective
    strategy = next((s.value for s in objective.metric_strategies if s.name == objective.objective_metric_name), None)
    trials: list[tuple[str | None, Trial]] = []
    for t in trials_from_katib(katib, space, objective.type, objective.objective_metric_name, strategy):
        source = next((k for k in katib if (k.get("metadata") or {}).get("name") == t.id), {})
        trials.append((((source.get("metadata") or {}).get("labels") or {}).get(EXPERIMENT_LABEL), t))
    for rec in records:
        try:
            trials.append((None, Trial.from_dict(rec)))
        except DataError as exc:
            raise DataError(f"trial record {rec.get('id')!r}: {exc}") from None
    if not trials:
        raise DataError(f"no trials in {', '.join(uris)}")
    names = round_names(job, coarse_to_fine_config(job).rounds)
    groups: dict[int, list[Trial]] = {}
    unplaced = []
    seen: set[str] = set()
    for experiment, t in trials:
        if t.id in seen:
            continue
        seen.add(t.id)
        r = names.index(experiment) if experiment in names else next(
            (i for i in range(len(names) - 1, -1, -1) if t.id.startswith(names[i] + "-")), None)
        if r is None:
            unplaced.append(t)
        else:
            groups.setdefault(r, []).append(t)
    if unplaced and groups:
        raise DataError(f"{len(unplaced)} trial(s) belong to none of the Experiments {names} "
                        f"(e.g. {unplaced[0].id}) while others do; give the trials of this search's rounds only")
    if unplaced:
        log.info("the %d trials given belong to no %s Experiment; they count as the coarse round", len(unplaced), job.name)
        return [unplaced]
    last = max(groups)
    missing = [names[r] for r in range(last + 1) if r not in groups]
    if missing:
        raise DataError(f"no trials of round(s) {missing} among those given; every earlier round is needed")
    return [groups[r] for r in range(last + 1)]


# -- writing --------------------------------------------------------------------------------------

#: Plain scalars that some YAML reader takes for something other than a string: YAML 1.2 numbers
#: (kubectl and kustomize read ``1e-4`` as a float, PyYAML as a string), YAML 1.1 booleans and nulls.
_NOT_A_STRING = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|0x[0-9a-fA-F]+|0o[0-7]+"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)|(?i:y|n|yes|no|true|false|on|off|null)|~|)$")


def _yaml_dumper() -> Any:
    """A safe dumper that quotes every string a YAML 1.1 or 1.2 reader could take for a number, a
    boolean or null (Katib's feasibleSpace values must stay strings after ``kubectl apply``), and
    writes multi-line strings as blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: Any, value: str) -> Any:
        style = "|" if "\n" in value else ("'" if _NOT_A_STRING.match(value) else None)
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return Dumper


def render(experiment: KatibExperiment, command: str) -> str:
    """The Experiment as YAML, headed by comments: how it was made and every note."""
    import textwrap

    import yaml

    from kftune._version import __version__

    lines = [f"# Katib Experiment generated by `{command}` (kftune {__version__}).",
             "# Regenerate it rather than edit it."]
    for note in experiment.notes:
        wrapped = textwrap.wrap(note, width=100, break_long_words=False, break_on_hyphens=False)
        lines.append(f"# NOTE: {wrapped[0]}")
        lines += [f"#   {w}" for w in wrapped[1:]]
    body = yaml.dump(experiment.body, Dumper=_yaml_dumper(), sort_keys=False, width=120, allow_unicode=True)
    return "\n".join(lines) + "\n" + body


def _body(args: argparse.Namespace) -> int:
    from kftune._image import image
    from kftune.io.specfile import load_spec

    job = load_spec(args.spec)
    resources = job.spec.resources
    kind = args.image_kind or ("gpu" if resources.trial_gpu > 0 else "cpu")
    image_kind = IMAGE_KINDS[kind]
    store = args.store.rstrip("/")
    run_id = args.run_id or job.name
    pod = TrialPodConfig(image=image(image_kind, args.registry), gpu=image_kind == "cuda", store=store,
                         run_id=run_id, corpus=args.corpus or f"{store}/runs/{run_id}/corpus",
                         spec_configmap=args.spec_configmap, s3_secret=args.s3_secret, namespace=args.namespace)
    lr_result = None
    params = job.spec.search.parameters
    if args.lr_range:
        docs = read_documents(args.lr_range)
        if len(docs) != 1 or not isinstance(docs[0][1], dict):
            raise DataError(f"{args.lr_range}: expected one JSON object (the result.json of `kftune lr-find`)")
        lr_result = docs[0][1]
        params, _ = apply_lr_range(params, lr_result, job.spec.lr_range_test.apply_to)
    earlier: list[list[Trial]] = []
    if args.from_trials:
        if job.spec.search.algorithm.algorithm_name != "coarse-to-fine" or args.phase != "fine":
            raise ConfigError([Problem("--from-trials", "only for a coarse-to-fine spec with --phase fine")])
        # the earlier rounds searched the spec's space, or the LR range test's when one is given
        earlier = load_earlier_rounds(job, args.from_trials, SearchSpace.from_parameters(params))
    experiment = export_experiment(job, pod, phase=args.phase, earlier_rounds=earlier, lr_result=lr_result)
    for note in experiment.notes:
        print(f"note: {note}", file=sys.stderr)
    shown = ["kftune katib", args.spec] + (["--phase", args.phase] if args.phase else [])
    if args.image_kind:
        shown += ["--image-kind", args.image_kind]
    text = render(experiment, " ".join(shown))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        log.info("wrote Experiment %s to %s", experiment.name, args.output)
    elif not (args.apply or args.watch):
        sys.stdout.write(text)
    if args.apply or args.watch:
        return apply_and_watch(args, experiment)
    return EXIT_OK


def apply_and_watch(args: argparse.Namespace, experiment: KatibExperiment, *, api: Any = None) -> int:
    """``--apply`` and ``--watch`` (see the module docstring); ``api``: a ``CustomObjectsApi`` to use instead
    of the one the kubeconfig or the pod's ServiceAccount gives."""
    from kftune.io import kube
    from kftune.io.katib import KatibLauncher, load_api

    if args.watch and not args.timeout > 0:
        raise ConfigError([Problem("--timeout", f"{args.timeout:g} must be a number of seconds > 0")])
    namespace = ((experiment.body.get("metadata") or {}).get("namespace")
                 or kube.current_namespace(kubeconfig=args.kubeconfig, context=args.context))
    launcher = KatibLauncher(api if api is not None else load_api(args.kubeconfig, args.context))
    name = experiment.name
    if args.apply:
        created = launcher.create_experiment(experiment.body, namespace, if_exists=args.if_exists)
        meta = created.get("metadata") or {}
        name = str(meta.get("name") or name)
        if not args.watch:
            print(json.dumps({"name": name, "namespace": namespace, "uid": meta.get("uid")}, sort_keys=True))
            return EXIT_OK
    log.info("following Katib Experiment %s/%s (at most %g s)", namespace, name, args.timeout)
    result = launcher.wait_for_experiment(name, namespace, args.timeout)
    print(json.dumps(result.to_dict(), sort_keys=True))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
