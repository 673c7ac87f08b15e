"""The whole ``kind: TuningJob`` document: metadata, the ``spec`` sections, the checks across sections,
and :func:`parse_spec` / :func:`job_to_dict` (see :mod:`kftune.core.spec` for their contract)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Collection, Mapping, Sequence

from kftune.core.errors import ConfigError, Problem
from kftune.core.limits import Bound
from kftune.core.parameters import ParameterSpec
from kftune.core.spec.corpus import (
    _COLUMN_INDEX,
    _CORPUS_FIELDS,
    _TASK_FIELDS,
    CorpusSpec,
    TaskSpec,
    _corpus,
    corpus_task,
    _registered,
    _task,
)
from kftune.core.spec.fields import (
    _F,
    _INVALID,
    _LABEL_KEY,
    _Ctx,
    _build,
    _dump_section,
    _section,
    _show,
    _str,
    _str_map,
    _type_name,
)
from kftune.core.spec.search import _SEARCH_FIELDS, SearchSpec, _check_early_stopping, _search
from kftune.core.spec.training import (
    _EVALUATION_FIELDS,
    _RESOURCES_FIELDS,
    _TRAIN_FIELDS,
    EvaluationSpec,
    LrRangeTestSpec,
    ResourcesSpec,
    TrainSpec,
    _dump_lr,
    _lr_range_test,
    _model,
)

API_VERSION = "kftune.dev/v1alpha1"
KIND = "TuningJob"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = 40


# --------------------------------------------------------------------------------------------------
# Config objects
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """The ``spec`` of a TuningJob. ``model`` holds the defaults of every hyperparameter not searched
    (read-only; nested lists are tuples)."""

    corpus: CorpusSpec
    task: TaskSpec
    model: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    lr_range_test: LrRangeTestSpec = field(default_factory=LrRangeTestSpec)
    search: SearchSpec
    train: TrainSpec = field(default_factory=TrainSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)


@dataclass(frozen=True, kw_only=True)
class TuningJob:
    """A whole ``kind: TuningJob`` document."""

    name: str
    spec: JobSpec
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    api_version = API_VERSION
    kind = KIND


ModelValidator = Callable[[Mapping[str, Any], str, str], "list[Problem]"]


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------

_METADATA_FIELDS = (
    _F("name", "name", _str(_DNS_LABEL, "a lowercase name of letters, digits and - (a Kubernetes name)"),
       required=True, hint="e.g. trec6"),
    _F("namespace", "namespace", _str(_DNS_LABEL, "a Kubernetes namespace name")),
    _F("labels", "labels", _str_map(_LABEL_KEY, "a Kubernetes label key")),
)


def _spec_fields() -> tuple[_F, ...]:
    return (
        _F("corpus", "corpus", _corpus, required=True,
           hint="e.g. {name: TREC_6}", dump=lambda o: _dump_section(o, _CORPUS_FIELDS)),
        _F("task", "task", _task, required=True, hint="e.g. {type: text_classification}",
           dump=lambda o: _dump_section(o, _TASK_FIELDS)),
        _F("model", "model", _model),
        _F("lrRangeTest", "lr_range_test", _lr_range_test, dump=_dump_lr),
        _F("search", "search", _search, required=True, hint="Katib's ExperimentSpec fields",
           dump=lambda o: _dump_section(o, _SEARCH_FIELDS)),
        _F("train", "train", lambda v, p, c: _build(TrainSpec, _section(v, p, _TRAIN_FIELDS, c), ()),
           dump=lambda o: _dump_section(o, _TRAIN_FIELDS)),
        _F("evaluation", "evaluation",
           lambda v, p, c: _build(EvaluationSpec, _section(v, p, _EVALUATION_FIELDS, c), ()),
           dump=lambda o: _dump_section(o, _EVALUATION_FIELDS)),
        _F("resources", "resources",
           lambda v, p, c: _build(ResourcesSpec, _section(v, p, _RESOURCES_FIELDS, c), ()),
           dump=lambda o: _dump_section(o, _RESOURCES_FIELDS)),
    )


def _probe_parameter_values(params: Sequence[tuple[int, ParameterSpec]], task_type: str,
                            model_validator: ModelValidator, names: Collection[str] | None, ctx: _Ctx) -> None:
    """Check each value a parameter can take (list entries; min and max) as a value of its hyperparameter."""
    found_for: dict[tuple[str, str], list[Problem]] = {}  # the same value of the same name is checked once
    for i, p in params:
        if names is not None and p.name not in names:
            continue  # reported as an unknown hyperparameter
        fs = p.feasible_space
        probes = ([(f"list[{j}]", v) for j, v in enumerate(fs.list)] if fs.list
                  else [(k, v) for k, v in (("min", fs.min), ("max", fs.max)) if v is not None])
        for where, text in probes:
            found = found_for.get((p.name, text))
            if found is None:
                try:
                    found = model_validator({p.name: text}, task_type, "probe")
                except ConfigError as exc:
                    found = exc.problems
                found_for[(p.name, text)] = found
            for problem in found:
                if problem.path == f"probe.{p.name}":  # not combination rules with the other defaults
                    ctx.add(f"spec.search.parameters[{i}].feasibleSpace.{where}",
                            f"not a valid {p.name}: {problem.message}")


def _cross_checks(values: dict[str, Any], raw: Mapping[str, Any], ctx: _Ctx,
                  model_validator: ModelValidator | None, hyperparameter_names: Collection[str] | None) -> None:
    """Checks that span sections of ``spec`` (each section is already checked on its own)."""
    corpus, task, search = values.get("corpus"), values.get("task"), values.get("search")
    lr = values.get("lr_range_test", LrRangeTestSpec())
    train = values.get("train", TrainSpec() if raw.get("train") is None else None)
    resources = values.get("resources", ResourcesSpec() if raw.get("resources") is None else None)
    entry = _registered(corpus.name) if corpus is not None and corpus.name is not None else None
    if corpus is not None and task is not None:
        expected = corpus_task(corpus)
        if expected is not None and expected != task.type:
            what = (f"format {corpus.format}" if corpus.format is not None else corpus.name if not corpus.corpora
                    else f"{corpus.corpora[0].id} (spec.corpus.corpora[0])")
            ctx.add("spec.task.type", f"{task.type} does not fit corpus {what}, which holds {expected} data")
        if corpus.corpora and raw["task"].get("labelType") is None:
            # several registered corpora that name their labels alike: that name (else the task's default)
            types = {r.label_type if r is not None else None
                     for r in (_registered(c.name) if c.name else None for c in corpus.corpora)}
            if len(types) == 1 and None not in types:
                values["task"] = task = dataclasses.replace(task, label_type=types.pop())
        if entry is not None and raw["task"].get("labelType") is None:
            values["task"] = task = dataclasses.replace(task, label_type=entry.label_type)
    model_ok = raw.get("model") is None or values.get("model") is not None
    if model_validator is not None and task is not None and model_ok:
        try:
            ctx.problems.extend(model_validator(values.get("model", MappingProxyType({})), task.type, "spec.model"))
        except ConfigError as exc:
            ctx.problems.extend(exc.problems)
    if model_validator is not None and task is not None:
        _probe_parameter_values([(i, p) for i, p, clean in ctx.parameters if clean], task.type, model_validator,
                                hyperparameter_names, ctx)
    if hyperparameter_names is not None:
        for i, p, _ in ctx.parameters:
            if p.name not in hyperparameter_names:
                guess = ctx.guess(p.name, hyperparameter_names)
                ctx.add(f"spec.search.parameters[{i}].name",
                        f"{_show(p.name)} is not a hyperparameter kftune's models have"
                        + (f'; did you mean "{guess}"?' if guess else "") + " (see docs/spec.md)")
    if search is not None and lr.enabled:
        target = search.parameter(lr.apply_to)
        if target is None:
            ctx.add("spec.lrRangeTest.applyTo",
                    f"{_show(lr.apply_to)} is not a search parameter; the LR range test's suggestion replaces "
                    f"that parameter's feasibleSpace. Add a double parameter named {lr.apply_to} to "
                    "spec.search.parameters, point applyTo at one, or set lrRangeTest.enabled: false")
        elif target.parameter_type != "double":
            i = search.parameters.index(target)
            ctx.add("spec.lrRangeTest.applyTo",
                    f"parameter {target.name} (spec.search.parameters[{i}]) is {target.parameter_type}; the LR "
                    "range test sets a log-uniform double range, so make it parameterType double")
    if search is not None and search.early_stopping is not None:
        raw_search = raw.get("search")
        _check_early_stopping(search.early_stopping, train.max_epochs if train is not None else None,
                              raw_search.get("earlyStopping") if isinstance(raw_search, Mapping) else None, ctx)
    if train is not None and resources is not None and train.device == "cpu":
        written = raw.get("resources") or {}
        # a CPU-only job asks for no GPU unless it says so (then the check below names the conflict);
        # writing the 0 into the config keeps job_to_dict -> parse_spec a round trip
        unwritten = {attr: 0 for attr, key in (("trial_gpu", "trialGPU"), ("final_gpu", "finalGPU"))
                     if isinstance(written, Mapping) and written.get(key) is None}
        if unwritten:
            values["resources"] = resources = dataclasses.replace(resources, **unwritten)
        for attr, key in (("trial_gpu", "trialGPU"), ("final_gpu", "finalGPU")):
            if written.get(key) is not None and getattr(resources, attr) > 0:  # asked for, not a default
                ctx.add(f"spec.resources.{key}", f"{getattr(resources, attr)} GPU(s) requested, but "
                                                 "train.device is cpu: they would sit idle. Set "
                                                 f"{key}: 0 or device: auto")


def _job(data: Any, ctx: _Ctx, model_validator: ModelValidator | None,
         hyperparameter_names: Collection[str] | None) -> Any:
    if not isinstance(data, Mapping):
        return ctx.add("", f"a TuningJob spec is a mapping (apiVersion, kind, metadata, spec), "
                           f"not {_type_name(data)}")
    top = _section(data, "", (
        _F("apiVersion", "api_version", _str(), required=True, hint=API_VERSION),
        _F("kind", "kind", _str(), required=True, hint=KIND),
        _F("metadata", "metadata", lambda v, p, c: _section(v, p, _METADATA_FIELDS, c), required=True,
           hint="{name: ...}"),
        _F("spec", "spec", lambda v, p, c: v, required=True),
    ), ctx)
    if top is None:  # unreachable: data is a Mapping
        return _INVALID
    if top.get("api_version") not in (None, API_VERSION):
        ctx.add("apiVersion", f"{_show(top['api_version'])} is not {API_VERSION}")
    if top.get("kind") not in (None, KIND):
        hint = ("; a Katib Experiment's spec goes under spec.search (see docs/spec.md)"
                if top["kind"] == "Experiment" else "")
        ctx.add("kind", f"{_show(top['kind'])} is not {KIND}{hint}")
    raw_spec = top.get("spec")
    values = (_section(raw_spec, "spec", _spec_fields(), ctx)
              if raw_spec is not None else None)
    if values is not None:
        _cross_checks(values, raw_spec, ctx, model_validator, hyperparameter_names)
    meta = top.get("metadata") or {}
    name = meta.get("name")
    if name is not None and len(name) > MAX_NAME_LENGTH:
        ctx.add("metadata.name", f"{_show(name)} is {len(name)} characters; at most {MAX_NAME_LENGTH}, so that "
                                 "trial and pod names derived from it stay within Kubernetes' 63")
    spec = _build(JobSpec, values, ("corpus", "task", "search"))
    if spec is _INVALID or name is None:
        return _INVALID
    return TuningJob(name=name, spec=spec, namespace=meta.get("namespace"),
                     labels=meta.get("labels", MappingProxyType({})))


def field_bounds() -> dict[str, Bound]:
    """The interval (and unit) of every bounded numeric field of the spec, by path (``spec.train.maxEpochs``).

    ``docs/spec.md`` ("Limits") lists them; ``kftune.nlp.config.HYPERPARAMETER_BOUNDS`` has the model's.
    The ``lrRangeTest`` fields and algorithm settings are bounded by their own classes (see docs/spec.md).
    """
    out: dict[str, Bound] = {}
    for path, section in (("spec.corpus", _CORPUS_FIELDS), ("spec.search", _SEARCH_FIELDS),
                          ("spec.train", _TRAIN_FIELDS), ("spec.resources", _RESOURCES_FIELDS)):
        for f in section:
            bound = getattr(f.check, "bound", None)
            if bound is not None and (bound.lo is not None or bound.hi is not None):
                out[f"{path}.{f.key}"] = bound
        if path == "spec.corpus":
            out["spec.corpus.textColumn"] = out["spec.corpus.labelColumn"] = _COLUMN_INDEX
    return out


def spec_problems(data: Any, *, model_validator: ModelValidator | None = None,
                  hyperparameter_names: Collection[str] | None = None) -> list[Problem]:
    """Every problem of ``data`` as a TuningJob (empty if it is valid). See :func:`parse_spec`."""
    ctx = _Ctx()
    _job(data, ctx, model_validator, hyperparameter_names)
    return ctx.problems


def parse_spec(data: Any, *, source: str | None = None, model_validator: ModelValidator | None = None,
               hyperparameter_names: Collection[str] | None = None) -> TuningJob:
    """Validate a loaded TuningJob document and return it as frozen config objects.

    ``model_validator(model, task_type, "spec.model")`` returns the problems of the ``model`` block
    (it knows the hyperparameters); ``hyperparameter_names``, when given, is the set of names a search
    parameter (and ``lrRangeTest.applyTo``) may use. Corpus names are checked against
    :mod:`kftune.core.corpus_registry`.
    Raises :class:`ConfigError` carrying every problem found, each with its field path, and ``source``
    (the file) for the message.
    """
    ctx = _Ctx()
    job = _job(data, ctx, model_validator, hyperparameter_names)
    if ctx.problems or job is _INVALID:
        raise ConfigError(ctx.problems or [Problem("", "not a valid TuningJob")], source)
    return job


# --------------------------------------------------------------------------------------------------
# Rendering back to a YAML-shaped dict
# --------------------------------------------------------------------------------------------------

def job_to_dict(job: TuningJob) -> dict[str, Any]:
    """The whole job as a YAML-shaped dict with every default spelled out; ``parse_spec`` of it gives ``job``."""
    metadata: dict[str, Any] = {"name": job.name}
    if job.namespace is not None:
        metadata["namespace"] = job.namespace
    if job.labels:
        metadata["labels"] = dict(job.labels)
    spec = _dump_section(job.spec, _spec_fields())
    spec.setdefault("model", {})
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
