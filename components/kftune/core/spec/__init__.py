"""The TuningJob spec as typed, frozen config objects, and its validation.

The ``search`` block uses Katib's ExperimentSpec vocabulary field for field; the Python fields are
the snake_case forms of Katib's camelCase names. Values of ``feasibleSpace`` stay strings, as in
Katib's API, and are parsed where they are used (the search space).

Contract of :func:`parse_spec`:

- input is the mapping a YAML loader produced (no I/O here; :mod:`kftune.io.specfile` reads files);
- every problem is collected (unknown fields with a "did you mean", wrong types, missing required
  fields, out-of-range values, inconsistent combinations) and reported at once in one
  :class:`~kftune.core.errors.ConfigError`, each with its field path written the way the YAML spells it
  (``spec.search.parameters[1].feasibleSpace.min``);
- on success it returns a :class:`TuningJob` whose values are all valid: downstream code never
  re-checks them. ``parse_spec(job_to_dict(job)) == job`` holds for every valid job, and
  :func:`search_to_katib` gives the Katib ``search`` fields back exactly as written.

The reference for every field, default and allowed value is ``docs/spec.md``.

One module per seam of the document; import from this package, which re-exports them all:

=========================  ===========================================================================
:mod:`.fields`             the checking toolkit: problem collector, value checks, field tables (private)
:mod:`.corpus`             ``spec.corpus`` (one corpus, a uri, or several) and ``spec.task``
:mod:`.search`             ``spec.search``: objective, algorithm, earlyStopping, counts, parameters
:mod:`.training`           ``spec.model``, ``lrRangeTest``, ``train``, ``evaluation``, ``resources``
:mod:`.job`                the document: metadata, cross-section checks, ``parse_spec``, ``job_to_dict``
=========================  ===========================================================================

The search parameters themselves (:class:`ParameterSpec`, :class:`FeasibleSpace`) are
:mod:`kftune.core.parameters`', below the search space and the samplers, which the ``search`` checks call.
"""

from __future__ import annotations

from kftune.core.parameters import (
    DISTRIBUTIONS,
    PARAMETER_TYPES,
    Distribution,
    FeasibleSpace,
    ParameterSpec,
    ParameterType,
    to_katib_parameters,
)
from kftune.core.spec.corpus import (
    CORPUS_FORMATS,
    DEFAULT_LABEL_TYPES,
    FORMAT_OPTIONS,
    FORMAT_TASKS,
    QUOTING,
    TAG_SCHEMES,
    TASK_TYPES,
    TREC_LABELS,
    URI_SCHEMES,
    CorpusFormat,
    CorpusSpec,
    TaskSpec,
    TaskType,
    corpus_task,
)
from kftune.core.spec.job import (
    API_VERSION,
    KIND,
    MAX_NAME_LENGTH,
    JobSpec,
    ModelValidator,
    TuningJob,
    field_bounds,
    job_to_dict,
    parse_spec,
    spec_problems,
)
from kftune.core.spec.search import (
    ALGORITHMS,
    EARLY_STOPPING_ALGORITHMS,
    KATIB_GENERATED_FIELDS,
    KATIB_SEARCH_KEYS,
    METRIC_STRATEGIES,
    OBJECTIVE_METRICS,
    OBJECTIVE_TYPES,
    AlgorithmSpec,
    EarlyStoppingSpec,
    MetricStrategy,
    ObjectiveSpec,
    ObjectiveType,
    SearchSpec,
    Setting,
    search_to_katib,
)
from kftune.core.spec.training import (
    DEVICES,
    EMBEDDINGS_STORAGE_MODES,
    LR_CONFIG_KEYS,
    PRECISIONS,
    TOLERATION_EFFECTS,
    TOLERATION_OPERATORS,
    EvaluationSpec,
    LrRangeTestSpec,
    ResourcesSpec,
    Toleration,
    TrainSpec,
)

__all__ = [
    "ALGORITHMS", "API_VERSION", "CORPUS_FORMATS", "DEFAULT_LABEL_TYPES", "DEVICES", "DISTRIBUTIONS",
    "EARLY_STOPPING_ALGORITHMS", "EMBEDDINGS_STORAGE_MODES", "FORMAT_OPTIONS", "FORMAT_TASKS",
    "KATIB_GENERATED_FIELDS", "KATIB_SEARCH_KEYS", "KIND", "LR_CONFIG_KEYS", "MAX_NAME_LENGTH", "METRIC_STRATEGIES",
    "OBJECTIVE_METRICS", "OBJECTIVE_TYPES", "PARAMETER_TYPES", "PRECISIONS", "QUOTING", "TAG_SCHEMES", "TASK_TYPES",
    "TOLERATION_EFFECTS", "TOLERATION_OPERATORS", "TREC_LABELS", "URI_SCHEMES",
    "AlgorithmSpec", "CorpusFormat", "CorpusSpec", "Distribution", "EarlyStoppingSpec", "EvaluationSpec",
    "FeasibleSpace", "JobSpec", "LrRangeTestSpec", "MetricStrategy", "ModelValidator", "ObjectiveSpec",
    "ObjectiveType", "ParameterSpec", "ParameterType", "ResourcesSpec", "SearchSpec", "Setting", "TaskSpec",
    "TaskType", "Toleration", "TrainSpec", "TuningJob",
    "corpus_task", "field_bounds", "job_to_dict", "parse_spec", "search_to_katib", "spec_problems",
    "to_katib_parameters",
]
