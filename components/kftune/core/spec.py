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
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Collection, Iterable, Literal, Mapping, NamedTuple, Sequence

from kftune.core import limits
from kftune.core.corpus_registry import (
    CONLLU_COLUMNS,
    FORMATS,
    TASK_OF_FORMAT,
    CorpusEntry,
    corpus_names,
    get_corpus,
)
from kftune.core.errors import ConfigError, Problem
from kftune.core.limits import Bound
from kftune.core.lr_range import RangeTestConfig
from kftune.core.multicorpus import ID_PATTERN, Source, default_id, joint_problems
from kftune.core.tokenization import TokenizerChoice, check_tokenizer, default_tokenizer, parse_tokenizer

ParameterType = Literal["double", "int", "discrete", "categorical"]
Distribution = Literal["uniform", "logUniform", "normal", "logNormal"]


@dataclass(frozen=True)
class FeasibleSpace:
    """Katib ``feasibleSpace``: ``min``/``max``/``step`` for numbers, ``list`` for discrete/categorical."""

    min: str | None = None
    max: str | None = None
    step: str | None = None
    list: tuple[str, ...] = ()
    distribution: Distribution | None = None


@dataclass(frozen=True)
class ParameterSpec:
    """Katib ``ParameterSpec``: ``{name, parameterType, feasibleSpace}``."""

    name: str
    parameter_type: ParameterType
    feasible_space: FeasibleSpace = field(default_factory=FeasibleSpace)


# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------

API_VERSION = "kftune.dev/v1alpha1"
KIND = "TuningJob"

TaskType = Literal["text_classification", "sequence_labeling"]
CorpusFormat = Literal["fasttext", "csv", "tsv", "trec", "conll", "conllu"]
ObjectiveType = Literal["maximize", "minimize"]

TASK_TYPES: tuple[str, ...] = ("text_classification", "sequence_labeling")
#: Which task each corpus file format carries (the corpus registry's table).
FORMAT_TASKS: Mapping[str, str] = MappingProxyType(dict(TASK_OF_FORMAT))
CORPUS_FORMATS: tuple[str, ...] = FORMATS
URI_SCHEMES: tuple[str, ...] = ("http", "https", "s3", "file")
#: ``tagScheme`` of a CoNLL corpus: check tags as BIO or BIOES, ``auto`` (what holds in both), ``none``
#: (plain tags such as POS: no span checks, and ``dev_score`` is token accuracy).
TAG_SCHEMES: tuple[str, ...] = ("BIO", "BIOES", "auto", "none")
TREC_LABELS: tuple[str, ...] = ("coarse", "fine")
QUOTING: tuple[str, ...] = ("minimal", "none")
DEFAULT_LABEL_TYPES: Mapping[str, str] = MappingProxyType(
    {"text_classification": "class", "sequence_labeling": "tag"})

PARAMETER_TYPES: tuple[str, ...] = ("double", "int", "discrete", "categorical")
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "logUniform", "normal", "logNormal")
OBJECTIVE_TYPES: tuple[str, ...] = ("maximize", "minimize")
#: The objective metrics a trial reports, with the direction each one is optimized in.
#: ``dev_score`` is the task's main dev metric: accuracy (text classification), micro span F1
#: (BIO/BIOES tagging), token accuracy (other tagging, e.g. POS).
OBJECTIVE_METRICS: Mapping[str, str] = MappingProxyType({"dev_score": "maximize", "dev_loss": "minimize"})
METRIC_STRATEGIES: tuple[str, ...] = ("min", "max", "latest")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
EMBEDDINGS_STORAGE_MODES: tuple[str, ...] = ("none", "cpu", "gpu")
TOLERATION_OPERATORS: tuple[str, ...] = ("Equal", "Exists")
TOLERATION_EFFECTS: tuple[str, ...] = ("NoSchedule", "PreferNoSchedule", "NoExecute")

#: Katib ExperimentSpec fields that kftune generates itself (``kftune katib``); a spec must not set them.
KATIB_GENERATED_FIELDS: Mapping[str, str] = MappingProxyType({
    "trialTemplate": "the trial template is generated by kftune (`kftune katib`); remove it",
    "metricsCollectorSpec": "kftune trials print Katib StdOut metric lines; the collector is set by "
                            "`kftune katib`; remove it",
    "resumePolicy": "set by `kftune katib`; remove it",
    "nasConfig": "neural architecture search is not supported; remove it",
})


#: Search algorithms (``algorithm.algorithmName``) and early-stopping rules (``earlyStopping.algorithmName``).
#: Their ``algorithmSettings`` are defined and checked by the implementations: ``kftune.core.samplers.SAMPLERS``
#: and ``kftune.core.early_stopping.EARLY_STOPPING`` (the tests keep these names equal to those registries).
ALGORITHMS: tuple[str, ...] = ("random", "grid", "tpe", "coarse-to-fine")
EARLY_STOPPING_ALGORITHMS: tuple[str, ...] = ("medianstop", "successive-halving", "asha")


# --------------------------------------------------------------------------------------------------
# Config objects
# --------------------------------------------------------------------------------------------------

class Setting(NamedTuple):
    """One Katib ``algorithmSettings`` entry: ``{name, value}`` (the value a string, as in Katib)."""

    name: str
    value: str


@dataclass(frozen=True, kw_only=True)
class AlgorithmSpec:
    """Katib ``AlgorithmSpec``: the search algorithm and its settings (checked by the sampler)."""

    algorithm_name: str
    algorithm_settings: tuple[Setting, ...] = ()

    def settings(self) -> dict[str, str]:
        """``{name: value}``, the form ``Sampler.suggest(settings=...)`` takes; absent ones take the sampler's defaults."""
        return {s.name: s.value for s in self.algorithm_settings}


@dataclass(frozen=True, kw_only=True)
class EarlyStoppingSpec:
    """Katib ``EarlyStoppingSpec``: same shape as :class:`AlgorithmSpec` (checked by the rule)."""

    algorithm_name: str
    algorithm_settings: tuple[Setting, ...] = ()

    def settings(self) -> dict[str, str]:
        """``{name: value}``, the form ``get_early_stopping(name, settings)`` takes."""
        return {s.name: s.value for s in self.algorithm_settings}


@dataclass(frozen=True, kw_only=True)
class MetricStrategy:
    """Katib ``metricStrategies`` entry: which value of a metric's history counts (min, max or latest)."""

    name: str
    value: Literal["min", "max", "latest"]


@dataclass(frozen=True, kw_only=True)
class ObjectiveSpec:
    """Katib ``ObjectiveSpec``."""

    type: ObjectiveType
    objective_metric_name: str
    goal: float | None = None
    additional_metric_names: tuple[str, ...] = ()
    metric_strategies: tuple[MetricStrategy, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SearchSpec:
    """The ``search`` block: Katib ExperimentSpec fields, plus kftune's noise-aware finalist re-runs.

    ``max_failed_trial_count`` ``None`` means no limit below ``max_trial_count``.
    ``finalists``: the best trials re-trained with extra seeds before a winner is named (0: off);
    ``finalist_runs``: training runs (seeds) each finalist is judged on, the search's own run included.
    """

    objective: ObjectiveSpec
    algorithm: AlgorithmSpec
    early_stopping: EarlyStoppingSpec | None = None
    parallel_trial_count: int = 1
    max_trial_count: int
    max_failed_trial_count: int | None = None
    parameters: tuple[ParameterSpec, ...]
    finalists: int = 3
    finalist_runs: int = 3

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def parameter(self, name: str) -> ParameterSpec | None:
        """The search parameter called ``name``, or ``None``."""
        return next((p for p in self.parameters if p.name == name), None)

    @property
    def failure_limit(self) -> int:
        """Failed trials after which the search stops (``maxFailedTrialCount``, else ``maxTrialCount``)."""
        return self.max_trial_count if self.max_failed_trial_count is None else self.max_failed_trial_count


@dataclass(frozen=True, kw_only=True)
class CorpusSpec:
    """Which corpus to prepare: a registered ``name`` (see :mod:`kftune.core.corpus_registry`) or a
    ``uri`` with a ``format`` and that format's options, plus how to split and downsample it.

    ``train``/``dev``/``test``: for a ``uri`` that is a directory or an archive, the split files inside
    it (or full URIs of their own). ``label_column``: csv/tsv the label column (header name or 0-based
    index); conll the tag column index (negative counts from the end); conllu the field (upos, xpos,
    ...; also for the registered UD corpus); trec ``coarse`` (6 classes) or ``fine`` (50).
    ``text_column``: csv/tsv, one column or a tuple of columns joined with a space.
    ``tokenizer``: how text becomes tokens (:mod:`kftune.core.tokenization`); ``None`` takes the registered
    corpus' default, else the format's (regex for raw text, whitespace for pre-tokenized formats).
    :meth:`reader_options` gives the keyword arguments of the format's reader in :mod:`kftune.nlp.corpora`.

    Several corpora trained as one (Flair's MultiCorpus, :mod:`kftune.core.multicorpus`): ``corpora`` holds
    one :class:`CorpusSpec` per corpus (its source fields and its ``id``; never set when ``corpora`` is
    empty), and this object only the shared ``tokenizer``, ``downsample``, ``dev_fraction`` and ``seed``.
    :attr:`sources` gives the corpora either way.
    """

    name: str | None = None
    uri: str | None = None
    format: CorpusFormat | None = None
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    sha256: str | None = None
    text_column: str | int | tuple[str | int, ...] | None = None
    label_column: str | int | None = None
    token_column: int | None = None
    tag_scheme: Literal["BIO", "BIOES", "auto", "none"] | None = None
    delimiter: str | None = None
    header: bool | None = None
    quoting: Literal["minimal", "none"] | None = None
    label_map: Mapping[str, str] | None = None
    label_prefix: str | None = None
    encoding: str | None = None
    tokenizer: TokenizerChoice | None = None
    downsample: float = 1.0
    dev_fraction: float = 0.1
    seed: int = 1
    id: str | None = None
    corpora: tuple["CorpusSpec", ...] = ()

    @property
    def sources(self) -> tuple["CorpusSpec", ...]:
        """The corpora this spec trains on: the ``corpora`` entries, or this corpus alone."""
        return self.corpora or (self,)

    def describe(self) -> str:
        """How messages name the corpus: its name or uri; several corpora joined with `` + ``."""
        if self.corpora:
            return " + ".join(c.id or c.name or c.uri or "?" for c in self.corpora)
        return self.name or self.uri or "?"

    def reader_options(self) -> dict[str, Any]:
        """Keyword arguments for the reader of ``format`` (``read_delimited``, ``read_conll``, ...): only
        what the spec sets, so the reader's defaults apply to the rest. Empty for a registered corpus."""
        if self.format is None:
            return {}
        out: dict[str, Any] = {}
        if self.encoding is not None:
            out["encoding"] = self.encoding
        if self.format in ("csv", "tsv"):
            out["delimiter"] = self.delimiter or ("\t" if self.format == "tsv" else ",")
            if self.text_column is not None:
                out["text_columns"] = (self.text_column if isinstance(self.text_column, tuple)
                                       else (self.text_column,))
            optional = {"label_column": self.label_column, "header": self.header, "quoting": self.quoting,
                        "label_map": dict(self.label_map) if self.label_map is not None else None}
        elif self.format == "fasttext":
            optional = {"label_prefix": self.label_prefix}
        elif self.format == "trec":
            optional = {"level": self.label_column}
        elif self.format == "conll":
            scheme = None if self.tag_scheme == "none" else self.tag_scheme
            optional = {"token_column": self.token_column, "tag_column": self.label_column}
            if self.tag_scheme is not None:
                out["scheme"] = scheme
        else:  # conllu
            optional = {"column": self.label_column}
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """What is learned: document labels or one tag per token; ``label_type`` names the label (Flair's)."""

    type: TaskType
    label_type: str


@dataclass(frozen=True, kw_only=True)
class LrRangeTestSpec:
    """Leslie Smith's LR range test, run before the search; its suggested range replaces the
    ``feasibleSpace`` of the search parameter ``apply_to`` (log-uniform).

    ``config`` holds how the test runs and is read (:class:`kftune.core.lr_range.RangeTestConfig`,
    validated there); the common settings are readable here too.
    """

    enabled: bool = True
    apply_to: str = "learning_rate"
    config: RangeTestConfig = field(default_factory=RangeTestConfig)

    @property
    def start_lr(self) -> float:
        return self.config.start_lr

    @property
    def end_lr(self) -> float:
        return self.config.end_lr

    @property
    def iterations(self) -> int:
        return self.config.iterations

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def smoothing(self) -> float:
        return self.config.smoothing

    @property
    def divergence_factor(self) -> float | None:
        return self.config.divergence_factor

    @property
    def method(self) -> str:
        return self.config.method


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """How every trial and the final model train. The fields are those of the trainer's
    ``kftune.nlp.config.TrainerConfig``, so ``TrainerConfig(**dataclasses.asdict(train))`` works.

    ``eval_batch_size`` ``None``: twice ``mini_batch_size``; ``num_threads`` ``None``: torch's default
    (the local search divides the CPU among parallel trials itself).
    """

    max_epochs: int = 20
    patience: int = 3
    training_runs: int = 1
    seed: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    embeddings_storage_mode: Literal["none", "cpu", "gpu"] = "none"
    min_learning_rate: float = 1e-7
    eval_batch_size: int | None = None
    num_threads: int | None = None
    keep_best: bool = True
    write_weights: bool = False


@dataclass(frozen=True, kw_only=True)
class EvaluationSpec:
    """How the final model is evaluated. ``baseline``: train the baseline (TF-IDF + logistic regression,
    or the most frequent tag per word) on the train split and score it beside the model."""

    baseline: bool = True


@dataclass(frozen=True, kw_only=True)
class Toleration:
    """A Kubernetes toleration for trial and final-training pods."""

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: str | None = None


@dataclass(frozen=True, kw_only=True)
class ResourcesSpec:
    """What trial and final-training pods request on the cluster (ignored by local runs)."""

    trial_gpu: int = 1
    final_gpu: int = 1
    trial_cpu: str | None = None
    final_cpu: str | None = None
    trial_memory: str | None = None
    final_memory: str | None = None
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    tolerations: tuple[Toleration, ...] = ()


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
# Small helpers: showing values, numbers, freezing
# --------------------------------------------------------------------------------------------------

_INVALID: Any = object()
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CORPUS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_EXTENDED_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
MAX_NAME_LENGTH = 40


def _show(value: Any) -> str:
    """A value as the user wrote it, JSON-quoted, shortened."""
    if _is_int(value):
        return limits.short(value)
    try:
        text = json.dumps(_thaw(value), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        try:
            text = repr(value)
        except ValueError:  # an integer inside of more digits than Python prints
            text = f"<{_type_name(value)}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_float(value: Any) -> float | None:
    """A finite float from a number or a numeric string (``"1e-4"``), else ``None`` (also for NaN, infinities
    and integers too large for a float)."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            result = float(value)
        elif isinstance(value, str):
            result = float(value.strip())
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return result if math.isfinite(result) else None


def _parse_int(value: Any) -> int | None:
    """An int from an integer or an integer string (``"3"``), else ``None`` (also for a string of more
    digits than Python converts)."""
    if _is_int(value):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        try:
            return int(value)
        except ValueError:  # more than sys.get_int_max_str_digits() digits
            return None
    return None


def _not_finite(value: Any) -> bool:
    """Whether ``value`` spells NaN or an infinity (``.nan``, ``"inf"``, ``1e999``)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        try:
            return not math.isfinite(float(value.strip()))
        except ValueError:
            return False
    return False


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _suggest(value: str, choices: Collection[str]) -> str | None:
    """The closest choice to ``value`` (case, snake_case and typos forgiven), or ``None``."""
    for choice in choices:
        if choice.lower() == value.lower() or choice == _camel(value):
            return choice
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_MAX_GUESSES = 50


class _Ctx:
    """Collects problems; every check reports here and goes on."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        # (index, parameter, whether it has no problem of its own) of each search parameter built, for
        # the checks across blocks even when another parameter (and so the search block) is invalid.
        self.parameters: list[tuple[int, ParameterSpec, bool]] = []

        self.guesses_left = _MAX_GUESSES

    def add(self, path: str, message: str) -> Any:
        self.problems.append(Problem(path, message))
        return _INVALID

    def guess(self, value: str, choices: Collection[str]) -> str | None:
        """:func:`_suggest`, for the first :data:`_MAX_GUESSES` misspellings of a document only (each costs a
        fuzzy match against every choice; a document of thousands of unknown keys is no typo)."""
        if self.guesses_left <= 0:
            return None
        self.guesses_left -= 1
        return _suggest(value, choices)


def _flag(ctx: _Ctx, path: str, message: str) -> bool:
    """Report a problem and return ``False`` (for ``ok = _flag(...)`` in loops that go on)."""
    ctx.add(path, message)
    return False


Check = Callable[[Any, str, _Ctx], Any]


# --------------------------------------------------------------------------------------------------
# Value checks: (value, path, ctx) -> parsed value, or _INVALID after reporting
# --------------------------------------------------------------------------------------------------

def _int(lo: int | None = None, hi: int | None = None, unit: str = "") -> Check:
    """An integer in ``[lo, hi]``; ``unit`` names what it counts in the message (``limits.Bound``)."""
    bound = Bound(lo, hi, unit=unit)

    def check(value: Any, path: str, ctx: _Ctx) -> Any:
        if not _is_int(value):
            return ctx.add(path, f"{_show(value)} is not an integer")
        message = bound.problem(value, limits.short(value))
        return value if message is None else ctx.add(path, message)
    check.bound = bound  # type: ignore[attr-defined]
    return check


def _float(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, unit: str = "") -> Check:
    """A finite number (or numeric string) in the interval; NaN and infinities are refused."""
    bound = Bound(lo, hi, lo_open, hi_open, unit)

    def check(value: Any, path: str, ctx: _Ctx) -> Any:
        number = _parse_float(value)
        if number is None:
            what = "a finite number" if _not_finite(value) or _is_int(value) else "a number"
            return ctx.add(path, f"{_show(value)} is not {what}")
        message = bound.problem(number, _show(value))
        return number if message is None else ctx.add(path, message)
    check.bound = bound  # type: ignore[attr-defined]
    return check


def _bool(value: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(value, bool):
        return ctx.add(path, f"{_show(value)} is not a boolean (true or false)")
    return value


def _str(pattern: re.Pattern[str] | None = None, what: str = "") -> Check:
    def check(value: Any, path: str, ctx: _Ctx) -> Any:
        if not isinstance(value, str):
            return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a string")
        if not value.strip():
            return ctx.add(path, "must not be empty")
        if pattern is not None and not pattern.match(value):
            return ctx.add(path, f"{_show(value)} is not {what}")
        return value
    return check


def _enum(choices: Sequence[str]) -> Check:
    def check(value: Any, path: str, ctx: _Ctx) -> Any:
        if isinstance(value, str) and value in choices:
            return value
        message = f"{_show(value)} is not one of: {', '.join(choices)}"
        guess = ctx.guess(value, choices) if isinstance(value, str) else None
        return ctx.add(path, message + (f'; did you mean "{guess}"?' if guess else ""))
    return check


def _katib_value(value: Any, path: str, ctx: _Ctx) -> Any:
    """Katib keeps feasibleSpace and setting values as strings; a plain YAML number is taken as its text."""
    if isinstance(value, str):
        return value
    if _is_int(value) or isinstance(value, float):
        return str(value)
    hint = f'; quote it: "{str(value).lower()}"' if isinstance(value, bool) else ""
    return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a string{hint}")


def _str_list(item: Check, *, unique: bool = True) -> Check:
    def check(value: Any, path: str, ctx: _Ctx) -> Any:
        if not isinstance(value, (list, tuple)):
            return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a list")
        out, seen, ok = [], set(), True
        for i, v in enumerate(value):
            parsed = item(v, f"{path}[{i}]", ctx)
            if parsed is _INVALID:
                ok = False
            elif unique and parsed in seen:
                ok = _flag(ctx, f"{path}[{i}]", f"{_show(v)} is listed twice")
            else:
                out.append(parsed)
                seen.add(parsed)
        return tuple(out) if ok else _INVALID
    return check


def _str_map(key_pattern: re.Pattern[str], key_what: str) -> Check:
    def check(value: Any, path: str, ctx: _Ctx) -> Any:
        if not isinstance(value, Mapping):
            return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a mapping")
        out, ok = {}, True
        for k, v in value.items():
            if not isinstance(k, str) or not key_pattern.match(k):
                ok = _flag(ctx, _join(path, str(k)), f"{_show(k)} is not {key_what}")
            elif isinstance(v, bool) or v is None or not isinstance(v, (str, int, float)):
                ok = _flag(ctx, _join(path, k), f"{_show(v)} is {_type_name(v)}; use a string")
            else:
                out[k] = str(v)
        return MappingProxyType(out) if ok else _INVALID
    return check


@dataclass(frozen=True)
class _F:
    """One YAML field of a section: its camelCase key, the dataclass attribute, how it is checked."""

    key: str
    attr: str
    check: Check
    required: bool = False
    hint: str = ""
    dump: Callable[[Any], Any] = _thaw


def _section(data: Any, path: str, spec: Sequence[_F], ctx: _Ctx,
             extra: Mapping[str, str] = MappingProxyType({})) -> dict[str, Any] | None:
    """Check a mapping against its fields. Returns ``{attr: parsed}`` for the valid, present fields
    (absent optional fields are left out so dataclass defaults apply), or ``None`` if it is no mapping."""
    if not isinstance(data, Mapping):
        ctx.add(path, f"{_show(data)} is {_type_name(data)}, not a mapping of fields "
                      f"({', '.join(f.key for f in spec)})")
        return None
    known = {f.key: f for f in spec}
    for key in data:
        if not isinstance(key, str):
            ctx.add(path, f"field names must be strings, got {_show(key)}")
        elif key in extra:
            ctx.add(_join(path, key), extra[key])
        elif key not in known:
            guess = ctx.guess(key, known)
            ctx.add(_join(path, key), "unknown field" + (f'; did you mean "{guess}"?' if guess else "")
                    + f" (fields here: {', '.join(known)})")
    out: dict[str, Any] = {}
    for f in spec:
        p = _join(path, f.key)
        if data.get(f.key) is None:
            if f.required:
                ctx.add(p, "required" + (f" ({f.hint})" if f.hint else ""))
            continue
        value = f.check(data[f.key], p, ctx)
        if value is not _INVALID:
            out[f.attr] = value
    return out


def _dump_section(obj: Any, spec: Sequence[_F]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in spec:
        value = getattr(obj, f.attr)
        if value is None or (isinstance(value, (tuple, Mapping)) and not value and not f.required):
            continue
        out[f.key] = f.dump(value)
    return out


def _build(cls: type, values: dict[str, Any] | None, required: Iterable[str]) -> Any:
    """Construct ``cls`` if its required attributes are all valid, else ``_INVALID`` (already reported)."""
    if values is None or any(r not in values for r in required):
        return _INVALID
    return cls(**values)


# --------------------------------------------------------------------------------------------------
# The search block (Katib ExperimentSpec)
# --------------------------------------------------------------------------------------------------

_FEASIBLE_FIELDS = (
    _F("min", "min", _katib_value), _F("max", "max", _katib_value), _F("step", "step", _katib_value),
    _F("list", "list", _str_list(_katib_value)), _F("distribution", "distribution", _enum(DISTRIBUTIONS)),
)


def _check_feasible(ptype: str, fs: dict[str, Any], raw: Mapping[str, Any], path: str, ctx: _Ctx) -> None:
    """Katib's rules for one parameter's feasibleSpace, plus those its samplers need (both bounds, min < max)."""
    numeric = ptype in ("double", "int")
    if numeric:
        if raw.get("list") is not None:
            ctx.add(_join(path, "list"), f"a list is for discrete and categorical parameters, not {ptype}; "
                                         "use min and max (and step)")
        parsed: dict[str, float] = {}
        for key in ("min", "max", "step"):
            if key not in fs:
                if key != "step" and raw.get(key) is None:
                    ctx.add(_join(path, key), f"required for a {ptype} parameter")
                continue
            number = _parse_float(fs[key])
            if number is None:
                what = "a finite number" if _not_finite(fs[key]) else "a number"
                ctx.add(_join(path, key), f"{_show(fs[key])} is not {what}")
            elif ptype == "int" and _parse_int(fs[key]) is None:
                ctx.add(_join(path, key), f"{_show(fs[key])} is not an integer (parameterType int)")
            else:
                parsed[key] = number
        lo, hi, step = parsed.get("min"), parsed.get("max"), parsed.get("step")
        if lo is not None and hi is not None and lo >= hi:
            ctx.add(_join(path, "max"), f"max {fs['max']} must be greater than min {fs['min']}")
        elif lo is not None and hi is not None and not math.isfinite(hi - lo):
            ctx.add(_join(path, "max"), f"the range {fs['min']}..{fs['max']} is wider than a float holds")
        if step is not None:
            if step <= 0:
                ctx.add(_join(path, "step"), f"{_show(fs['step'])} must be > 0")
            elif lo is not None and hi is not None and lo < hi and step > hi - lo:
                ctx.add(_join(path, "step"), f"{_show(fs['step'])} is larger than the range "
                                             f"{fs['min']}..{fs['max']}")
            elif lo is not None and hi is not None and lo < hi and (hi - lo) / step > limits.MAX_GRID_STEPS:
                ctx.add(_join(path, "step"), f"{_show(fs['step'])} makes more than {limits.MAX_GRID_STEPS:,} "
                                             f"values between {fs['min']} and {fs['max']}; use a larger step")
        if fs.get("distribution") in ("logUniform", "logNormal") and lo is not None and lo <= 0:
            ctx.add(_join(path, "min"), f"{_show(fs['min'])} must be > 0 for distribution "
                                        f"{fs['distribution']} (a log scale has no zero)")
    else:
        for key in ("min", "max", "step"):
            if raw.get(key) is not None:
                ctx.add(_join(path, key), f"not used by a {ptype} parameter; give the values in list")
        if raw.get("distribution") is not None:
            ctx.add(_join(path, "distribution"), f"only double and int parameters have a distribution, "
                                                 f"not {ptype}")
        if raw.get("list") is None:
            ctx.add(_join(path, "list"), f"required for a {ptype} parameter (the values to choose from, "
                                         'e.g. ["64", "128"])')
        elif "list" in fs:
            if not fs["list"]:
                ctx.add(_join(path, "list"), "must not be empty")
            elif len(fs["list"]) > limits.MAX_LIST_VALUES:
                ctx.add(_join(path, "list"), f"{len(fs['list'])} values: at most {limits.MAX_LIST_VALUES}")
            if ptype == "discrete":
                for i, v in enumerate(fs["list"]):
                    if _parse_float(v) is None and _not_finite(v):
                        ctx.add(f"{_join(path, 'list')}[{i}]", f"{_show(v)} is not a finite number")
                    elif _parse_float(v) is None:
                        ctx.add(f"{_join(path, 'list')}[{i}]", f"{_show(v)} is not a number (parameterType "
                                                               "discrete takes numbers; use categorical for words)")


def _parameter(data: Any, path: str, ctx: _Ctx) -> Any:
    values = _section(data, path, (
        _F("name", "name", _str(_IDENT, "a name made of letters, digits and _ (a hyperparameter name)"),
           required=True, hint="the hyperparameter, e.g. learning_rate"),
        _F("parameterType", "parameter_type", _enum(PARAMETER_TYPES), required=True,
           hint="double, int, discrete or categorical"),
        _F("feasibleSpace", "feasible_space", lambda v, p, c: v, required=True,
           hint="min/max/step or list"),
    ), ctx)
    if values is None:
        return _INVALID
    fs_path = _join(path, "feasibleSpace")
    fs_raw = values.get("feasible_space")
    if fs_raw is not None:
        fs = _section(fs_raw, fs_path, _FEASIBLE_FIELDS, ctx)
        if fs is None:
            values.pop("feasible_space")
        else:
            if "parameter_type" in values:
                _check_feasible(values["parameter_type"], fs, fs_raw, fs_path, ctx)
            values["feasible_space"] = FeasibleSpace(**fs)
    return _build(ParameterSpec, values, ("name", "parameter_type", "feasible_space"))


def _parameters(value: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(value, (list, tuple)):
        return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a list of parameters")
    if not value:
        return ctx.add(path, "must list at least one parameter to search")
    if len(value) > limits.MAX_PARAMETERS:
        return ctx.add(path, f"{len(value)} parameters: at most {limits.MAX_PARAMETERS} can be searched at once")
    params, seen, ok, before = [], {}, True, len(ctx.problems)
    for i, item in enumerate(value):
        mark = len(ctx.problems)
        p = _parameter(item, f"{path}[{i}]", ctx)
        if p is _INVALID:
            ok = False
            continue
        ctx.parameters.append((i, p, len(ctx.problems) == mark))
        if p.name in seen:
            ok = _flag(ctx, f"{path}[{i}].name", f"{_show(p.name)} is already parameters[{seen[p.name]}]; "
                                              "each parameter is searched once")
        seen.setdefault(p.name, i)
        params.append(p)
    return tuple(params) if ok and len(ctx.problems) == before else _INVALID


def _settings(value: Any, path: str, ctx: _Ctx) -> Any:
    """The shape of ``algorithmSettings``: a list of ``{name, value}`` with string values, each name once.
    What the names and values mean is checked by the algorithm itself (:func:`_check_settings`)."""
    if not isinstance(value, (list, tuple)):
        return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a list of {{name, value}}")
    if len(value) > limits.MAX_SETTINGS:
        return ctx.add(path, f"{len(value)} settings: an algorithm takes a few, at most {limits.MAX_SETTINGS}")
    out, seen, ok = [], set(), True
    for i, item in enumerate(value):
        ipath = f"{path}[{i}]"
        entry = _section(item, ipath, (_F("name", "name", _str(), required=True),
                                       _F("value", "value", _katib_value, required=True)), ctx)
        if entry is None or "name" not in entry or "value" not in entry:
            ok = False
        elif entry["name"] in seen:
            ok = _flag(ctx, _join(ipath, "name"), f"{_show(entry['name'])} is set twice")
        else:
            seen.add(entry["name"])
            out.append(Setting(entry["name"], entry["value"]))
    return tuple(out) if ok else _INVALID


def _algorithm_block(cls: type, names: Sequence[str], what: str) -> Check:
    def check(value: Any, path: str, ctx: _Ctx) -> Any:
        values = _section(value, path, (
            _F("algorithmName", "algorithm_name", _enum(names), required=True,
               hint=f"the {what}: {', '.join(names)}"),
            _F("algorithmSettings", "algorithm_settings", _settings),
        ), ctx)
        return _build(cls, values, ("algorithm_name",))
    return check


def _check_settings(run: Callable[[], Any], registry_path: str, block_path: str, raw_block: Any,
                    known: Collection[str], ctx: _Ctx, ignore: Collection[str] = ()) -> None:
    """Run the algorithm's own check of its settings (``run`` raises :class:`ConfigError`) and report its
    problems at the YAML's paths: ``<registry_path>.<name>`` becomes ``algorithmSettings[i].value``
    (``.name`` for an unknown setting, with a "did you mean"). Problems about settings in ``ignore``
    are dropped (they follow from a problem reported elsewhere)."""
    try:
        run()
    except ConfigError as exc:
        for problem in exc.problems:
            if not problem.path.startswith(registry_path + "."):
                ctx.add(problem.path, problem.message)
                continue
            name = problem.path[len(registry_path) + 1:]
            if name in ignore:
                continue
            where = _setting_path(raw_block, name)
            message = problem.message
            if message.startswith("unknown setting"):
                where = where.replace(".value", ".name")
                guess = ctx.guess(name, known)
                message = f"{_show(name)}: {message}" + (f'; did you mean "{guess}"?' if guess else "")
            elif where.endswith(".value"):
                message = f"{name}: {message}"
            ctx.add(_join(block_path, where), message)


def _metric_strategies(value: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(value, (list, tuple)):
        return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a list of {{name, value}}")
    out, ok = [], True
    for i, item in enumerate(value):
        entry = _section(item, f"{path}[{i}]", (
            _F("name", "name", _str(_IDENT, "a metric name"), required=True),
            _F("value", "value", _enum(METRIC_STRATEGIES), required=True)), ctx)
        built = _build(MetricStrategy, entry, ("name", "value"))
        if built is _INVALID:
            ok = False
        else:
            out.append(built)
    return tuple(out) if ok else _INVALID


_OBJECTIVE_FIELDS = (
    _F("type", "type", _enum(OBJECTIVE_TYPES), required=True, hint="maximize or minimize"),
    _F("objectiveMetricName", "objective_metric_name", _enum(tuple(OBJECTIVE_METRICS)), required=True,
       hint="dev_score or dev_loss"),
    _F("goal", "goal", _float()),
    _F("additionalMetricNames", "additional_metric_names", _str_list(_str(_IDENT, "a metric name"))),
    _F("metricStrategies", "metric_strategies", _metric_strategies,
       dump=lambda v: [{"name": m.name, "value": m.value} for m in v]),
)


def _objective(value: Any, path: str, ctx: _Ctx) -> Any:
    values = _section(value, path, _OBJECTIVE_FIELDS, ctx)
    if values is None:
        return _INVALID
    metric, otype, goal = values.get("objective_metric_name"), values.get("type"), values.get("goal")
    if metric and otype and OBJECTIVE_METRICS[metric] != otype:
        ctx.add(_join(path, "type"), f"{metric} is {OBJECTIVE_METRICS[metric][:-1]}ed, not {otype}d; "
                                     f"set type: {OBJECTIVE_METRICS[metric]}")
    if metric == "dev_score" and goal is not None and not 0 < goal <= 1:
        ctx.add(_join(path, "goal"), f"{_show(value.get('goal'))} is out of range: dev_score is a fraction "
                                     "in (0, 1] (write 0.95, not 95)")
    if metric == "dev_loss" and goal is not None and goal < 0:
        ctx.add(_join(path, "goal"), f"{_show(value.get('goal'))} is out of range: a loss is >= 0")
    extra = values.get("additional_metric_names", ())
    if metric in extra:
        ctx.add(_join(path, "additionalMetricNames"), f"{metric} is already the objective metric")
    names = {metric, *extra}
    for i, strategy in enumerate(values.get("metric_strategies", ())):
        if metric and strategy.name not in names:
            ctx.add(f"{path}.metricStrategies[{i}].name", f"{_show(strategy.name)} is neither the objective "
                                                          "metric nor one of additionalMetricNames")
    return _build(ObjectiveSpec, values, ("type", "objective_metric_name"))


def _setting_path(raw_block: Any, name: str) -> str:
    """``algorithmSettings[i].value`` of the setting called ``name`` in a raw block (for cross-field checks)."""
    items = raw_block.get("algorithmSettings") if isinstance(raw_block, Mapping) else None
    for i, item in enumerate(items or ()):
        if isinstance(item, Mapping) and item.get("name") == name:
            return f"algorithmSettings[{i}].value"
    return "algorithmSettings"


_SEARCH_FIELDS = (
    _F("objective", "objective", _objective, required=True,
       hint="e.g. {type: maximize, objectiveMetricName: dev_score}",
       dump=lambda o: _dump_section(o, _OBJECTIVE_FIELDS)),
    _F("algorithm", "algorithm", _algorithm_block(AlgorithmSpec, ALGORITHMS, "search algorithm"),
       required=True, hint=f"algorithmName: one of {', '.join(ALGORITHMS)}",
       dump=lambda a: _dump_algorithm(a)),
    _F("earlyStopping", "early_stopping",
       _algorithm_block(EarlyStoppingSpec, EARLY_STOPPING_ALGORITHMS, "early-stopping rule"),
       dump=lambda a: _dump_algorithm(a)),
    _F("parallelTrialCount", "parallel_trial_count", _int(1, limits.MAX_PARALLEL_TRIALS, "trials")),
    _F("maxTrialCount", "max_trial_count", _int(1, limits.MAX_TRIALS, "trials"), required=True,
       hint="the trial budget, e.g. 24"),
    _F("maxFailedTrialCount", "max_failed_trial_count", _int(0, limits.MAX_TRIALS, "trials")),
    _F("parameters", "parameters", _parameters, required=True, hint="the hyperparameters to search",
       dump=lambda ps: to_katib_parameters(ps)),
    _F("finalists", "finalists", _int(0, limits.MAX_TRIALS, "trials")),
    _F("finalistRuns", "finalist_runs", _int(1, limits.MAX_TRAINING_RUNS, "training runs")),
)
#: The ``search`` keys that are Katib's (the rest are kftune's own).
KATIB_SEARCH_KEYS: tuple[str, ...] = ("objective", "algorithm", "earlyStopping", "parallelTrialCount",
                                      "maxTrialCount", "maxFailedTrialCount", "parameters")


def _dump_algorithm(a: AlgorithmSpec | EarlyStoppingSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"algorithmName": a.algorithm_name}
    if a.algorithm_settings:
        out["algorithmSettings"] = [{"name": s.name, "value": s.value} for s in a.algorithm_settings]
    return out


def _check_algorithm(algorithm: AlgorithmSpec, params: tuple[ParameterSpec, ...] | None, max_trials: int | None,
                     raw_block: Any, path: str, ctx: _Ctx) -> None:
    """The sampler's own check of its settings against the space, and how many rounds fit the budget."""
    # Imported here: the samplers import the search space, which imports this module.
    from kftune.core.samplers import SAMPLERS
    from kftune.core.samplers.base import SETTINGS_PATH
    from kftune.core.space import SearchSpace

    sampler = SAMPLERS[algorithm.algorithm_name]()
    # With invalid parameters (already reported) the settings are still checked, on a stand-in space.
    stand_in = (ParameterSpec(name="_", parameter_type="categorical", feasible_space=FeasibleSpace(list=("_",))),)
    try:
        space = SearchSpace.from_parameters(params or stand_in)
    except ConfigError as exc:  # the space's own rules, should they be stricter than the checks above
        ctx.problems.extend(exc.problems)
        space = SearchSpace.from_parameters(stand_in)
    ignore = ("round_size",) if max_trials is None else ()  # needs maxTrialCount, reported already
    _check_settings(lambda: sampler.check(space, algorithm.settings(), max_trials=max_trials), SETTINGS_PATH,
                    path, raw_block, sampler.known_settings, ctx, ignore)
    rounds = _parse_int(algorithm.settings().get("rounds", "")) if algorithm.algorithm_name == "coarse-to-fine" else None
    if rounds is not None and max_trials is not None and rounds > max_trials:
        ctx.add(_join(path, _setting_path(raw_block, "rounds")),
                f"rounds {rounds} is more than maxTrialCount {max_trials}: every round needs at least one trial")


def _check_early_stopping(stopping: EarlyStoppingSpec, max_epochs: int | None, raw_block: Any, ctx: _Ctx) -> None:
    """The rule's own check of its settings, and that its epochs fit ``train.maxEpochs``."""
    from kftune.core.early_stopping import EARLY_STOPPING
    from kftune.core.early_stopping.medianstop import SETTINGS_PATH

    path = "spec.search.earlyStopping"
    rule = EARLY_STOPPING[stopping.algorithm_name]
    ignore = ("max_budget",) if max_epochs is None and "max_budget" not in stopping.settings() else ()
    _check_settings(lambda: rule.from_settings(stopping.settings(), max_epochs=max_epochs), SETTINGS_PATH,
                    path, raw_block, rule.known_settings, ctx, ignore)
    if max_epochs is None:
        return
    for name, text in stopping.settings().items():
        epochs = _parse_int(text)
        if name in ("min_budget", "max_budget", "start_step") and epochs is not None and epochs > max_epochs:
            ctx.add(_join(path, _setting_path(raw_block, name)),
                    f"{name} {epochs} is more than train.maxEpochs {max_epochs}")


def _search(value: Any, path: str, ctx: _Ctx) -> Any:
    values = _section(value, path, _SEARCH_FIELDS, ctx, extra=KATIB_GENERATED_FIELDS)
    if values is None:
        return _INVALID
    max_trials = values.get("max_trial_count")
    if max_trials is not None:
        for attr, key in (("parallel_trial_count", "parallelTrialCount"),
                          ("max_failed_trial_count", "maxFailedTrialCount"), ("finalists", "finalists")):
            if values.get(attr) is not None and values[attr] > max_trials:
                ctx.add(_join(path, key), f"{values[attr]} is more than maxTrialCount {max_trials}")
    algorithm = values.get("algorithm")
    if algorithm is not None:
        _check_algorithm(algorithm, values.get("parameters"), max_trials, value.get("algorithm"),
                         _join(path, "algorithm"), ctx)
    return _build(SearchSpec, values, ("objective", "algorithm", "max_trial_count", "parameters"))


# --------------------------------------------------------------------------------------------------
# corpus, task, model, lrRangeTest, train, resources
# --------------------------------------------------------------------------------------------------

def _column(value: Any, path: str, ctx: _Ctx) -> Any:
    if _is_int(value):
        message = _COLUMN_INDEX.problem(value)
        return value if message is None else ctx.add(path, message)
    if isinstance(value, str) and value.strip():
        return value
    return ctx.add(path, f"{_show(value)} is {_type_name(value)}; give a column name or a 0-based index")


_COLUMN_INDEX = Bound(-limits.MAX_COLUMN, limits.MAX_COLUMN, unit="column index")


def _columns(value: Any, path: str, ctx: _Ctx) -> Any:
    """One column, or a list of columns (joined with a space)."""
    if isinstance(value, (list, tuple)):
        if not value:
            return ctx.add(path, "must name at least one column")
        return _str_list(_column)(value, path, ctx)
    return _column(value, path, ctx)


def _uri(value: Any, path: str, ctx: _Ctx) -> Any:
    if _str()(value, path, ctx) is _INVALID:
        return _INVALID
    match = _SCHEME.match(value)
    if match and match.group(1).lower() not in URI_SCHEMES:
        return ctx.add(path, f"{_show(value)}: scheme {match.group(1)}:// is not supported; use "
                             f"{', '.join(s + '://' for s in URI_SCHEMES)} or a local path")
    return value


def _encoding(value: Any, path: str, ctx: _Ctx) -> Any:
    if _str()(value, path, ctx) is _INVALID:
        return _INVALID
    try:
        codecs.lookup(value)
    except LookupError:
        return ctx.add(path, f"{_show(value)} is not a text encoding Python knows (e.g. utf-8, latin-1)")
    return value


def _delimiter(value: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(value, str) or len(value) != 1:
        return ctx.add(path, f"{_show(value)} is not a single character (e.g. \",\" or \"\\t\")")
    return value


def _label_map(value: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(value, Mapping) or not value:
        return ctx.add(path, f"{_show(value)} is not a mapping of raw label to label "
                             '(e.g. {"0": negative, "1": positive})')
    out, ok = {}, True
    for k, v in value.items():
        if isinstance(k, bool) or isinstance(v, bool) or not isinstance(k, (str, int)) \
                or not isinstance(v, (str, int)) or not str(v).strip():
            ok = _flag(ctx, _join(path, str(k)), f"{_show(v)}: raw labels and labels are strings")
        else:
            out[str(k)] = str(v)
    return MappingProxyType(out) if ok else _INVALID


_CORPUS_FIELDS = (
    _F("name", "name", _str(_CORPUS_NAME, "a corpus name (e.g. TREC_6)")),
    _F("uri", "uri", _uri),
    _F("format", "format", _enum(CORPUS_FORMATS)),
    _F("train", "train", _str()), _F("dev", "dev", _str()), _F("test", "test", _str()),
    _F("sha256", "sha256", _str(_SHA256, "a sha256 checksum (64 lowercase hex digits)")),
    _F("textColumn", "text_column", _columns),
    _F("labelColumn", "label_column", _column),
    _F("tokenColumn", "token_column", _int(-limits.MAX_COLUMN, limits.MAX_COLUMN, "column index")),
    _F("tagScheme", "tag_scheme", _enum(TAG_SCHEMES)),
    _F("delimiter", "delimiter", _delimiter),
    _F("header", "header", _bool),
    _F("quoting", "quoting", _enum(QUOTING)),
    _F("labelMap", "label_map", _label_map),
    _F("labelPrefix", "label_prefix", _str()),
    _F("encoding", "encoding", _encoding),
    _F("tokenizer", "tokenizer", lambda v, p, c: _tokenizer(v, p, c), dump=lambda t: t.to_spec()),
    _F("downsample", "downsample", _float(0, 1, lo_open=True, unit="fraction of the training examples")),
    _F("devFraction", "dev_fraction", _float(0, 1, lo_open=True, hi_open=True, unit="fraction of train")),
    _F("seed", "seed", _int(0, limits.MAX_SEED, "seed (32-bit)")),
    _F("corpora", "corpora", lambda v, p, c: _corpora(v, p, c),
       dump=lambda entries: [_dump_section(e, _ENTRY_FIELDS) for e in entries]),
)
#: Fields of spec.corpus that several corpora share (the rest belong to each entry of corpora).
_SHARED_CORPUS_KEYS = ("tokenizer", "downsample", "devFraction", "seed")
#: spec.corpus with corpora: the shared fields and the list.
_MULTI_CORPUS_FIELDS = tuple(f for f in _CORPUS_FIELDS if f.key in _SHARED_CORPUS_KEYS + ("corpora",))
#: One entry of spec.corpus.corpora: an id and the source fields of one corpus.
_ENTRY_FIELDS = (_F("id", "id", _str(ID_PATTERN, "an id of letters, digits, _, . and - (at most 64)")),
                 *(f for f in _CORPUS_FIELDS if f.key not in _SHARED_CORPUS_KEYS + ("corpora",)))
#: Format options and the formats that take them.
FORMAT_OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "textColumn": ("csv", "tsv"), "delimiter": ("csv", "tsv"), "header": ("csv", "tsv"),
    "quoting": ("csv", "tsv"), "labelMap": ("csv", "tsv"), "labelPrefix": ("fasttext",),
    "labelColumn": ("csv", "tsv", "trec", "conll", "conllu"),
    "tokenColumn": ("conll",), "tagScheme": ("conll",),
})
#: Fields that only a corpus given by uri takes (a registered corpus takes labelColumn where it has a choice,
#: and labelMap where it is csv/tsv: it replaces the registry's map of raw label to label).
_URI_ONLY = ("format", "train", "dev", "test", "sha256", "encoding",
             *(k for k in FORMAT_OPTIONS if k not in ("labelColumn", "labelMap")))


def _tokenizer(value: Any, path: str, ctx: _Ctx) -> Any:
    """A tokenizer name or ``{type: NAME, option: value}`` (checked against the format in :func:`_corpus`)."""
    choice, problems = parse_tokenizer(_thaw(value), path)
    ctx.problems.extend(problems)
    return _INVALID if problems else choice


def _registered(name: str) -> CorpusEntry | None:
    try:
        return get_corpus(name)
    except ConfigError:
        return None


def _corpus(value: Any, path: str, ctx: _Ctx, *, as_entry: bool = False) -> Any:
    """``spec.corpus`` (one corpus, or ``corpora``), or with ``as_entry`` one entry of ``spec.corpus.corpora``."""
    if not as_entry and isinstance(value, Mapping) and value.get("corpora") is not None:
        return _multi_corpus(value, path, ctx)
    if as_entry:
        shared = {k: f"set once in {path.rpartition('.corpora[')[0]}, not per corpus: it applies to every corpus"
                  for k in _SHARED_CORPUS_KEYS}
        values = _section(value, path, _ENTRY_FIELDS, ctx, extra=shared)
    else:
        values = _section(value, path, _CORPUS_FIELDS, ctx)
    if values is None:
        return _INVALID
    raw = value
    has_name, has_uri = raw.get("name") is not None, raw.get("uri") is not None
    if has_name == has_uri:
        ctx.add(_join(path, "name" if has_name else "uri"),
                "set either name (a registered corpus, e.g. TREC_6) or uri with format, not both"
                if has_name else "required: name (a registered corpus, e.g. TREC_6) or uri with format")
    if has_name and "name" in values:
        entry = _registered(values["name"])
        if entry is None:
            names = corpus_names()
            guess = _suggest(values["name"], names)
            ctx.add(_join(path, "name"), f"{_show(values['name'])} is not a registered corpus"
                    + (f'; did you mean "{guess}"?' if guess else "")
                    + f" (registered: {', '.join(names)}); or give uri and format")
        else:
            values["name"] = entry.name  # the registry's spelling: trec-6 -> TREC_6
            label = values.get("label_column")
            if raw.get("labelColumn") is not None and label is not None and label not in entry.label_columns:
                ctx.add(_join(path, "labelColumn"),
                        f"{_show(label)} is not one of: {', '.join(map(str, entry.label_columns))}"
                        if entry.label_columns else
                        f"{entry.name} has one label column; labelColumn is for corpora given by uri")
            if raw.get("labelMap") is not None and values.get("label_map") is not None:
                ctx.problems.extend(entry.label_map_problems(values["label_map"], _join(path, "labelMap")))
        for key in _URI_ONLY:
            if raw.get(key) is not None:
                ctx.add(_join(path, key), "only for a corpus given by uri; a registered corpus "
                                          "(name) knows its files, format and checksums")
    if has_uri and raw.get("format") is None:
        ctx.add(_join(path, "format"), f"required with uri: one of {', '.join(CORPUS_FORMATS)}")
    fmt = values.get("format") if has_uri else None
    if fmt is not None:
        for key, formats in FORMAT_OPTIONS.items():
            if raw.get(key) is not None and fmt not in formats:
                ctx.add(_join(path, key), f"not an option of format {fmt} (only of {', '.join(formats)})")
        label = values.get("label_column")
        lpath = _join(path, "labelColumn")
        if fmt in ("csv", "tsv"):
            text = values.get("text_column")
            texts = text if isinstance(text, tuple) else (text,)
            for key in ("textColumn", "labelColumn"):
                if raw.get(key) is None:
                    ctx.add(_join(path, key), f"required for format {fmt} (a column name or 0-based index)")
            for key, cols in (("textColumn", texts), ("labelColumn", (label,))):
                if any(_is_int(c) and c < 0 for c in cols):
                    ctx.add(_join(path, key), "a column index is >= 0")
            if label is not None and label in texts:
                ctx.add(lpath, "is also a text column")
            by_name = [c for c in (*texts, label) if isinstance(c, str) and not c.lstrip("-").isdigit()]
            if values.get("header") is False and by_name:
                ctx.add(_join(path, "header"), f"false, but column {_show(by_name[0])} is given by name; "
                                               "columns of a file without a header row are 0-based indices")
        elif fmt == "conll":
            if label is not None and not _is_int(label):
                ctx.add(lpath, f"{_show(label)} is not an integer: format conll takes the tag column's "
                               "index (0-based; -1 is the last column)")
            token = values.get("token_column")
            if token is not None and label is not None and token == label:
                ctx.add(lpath, "is the same column as tokenColumn")
        elif fmt == "conllu":
            if label is not None and label not in CONLLU_COLUMNS:
                ctx.add(lpath, f"{_show(label)} is not one of: {', '.join(CONLLU_COLUMNS)}")
        elif fmt == "trec":
            if label is not None and label not in TREC_LABELS:
                ctx.add(lpath, f"{_show(label)} is not one of: coarse (6 classes), fine (50 classes)")
    if not as_entry and (raw.get("tokenizer") is None or "tokenizer" in values):
        # the tokenizer against the format (conll/conllu: whitespace only) and the installed packages; with
        # none written, the registered corpus' default (NSMC: morpheme) must be usable too
        entry = _registered(values["name"]) if has_name and "name" in values else None
        fmt = fmt if fmt is not None else entry.format if entry is not None else None
        _, problems = check_tokenizer(values.get("tokenizer"), _join(path, "tokenizer"), fmt=fmt,
                                      registry_default=entry.tokenizer if entry is not None else None,
                                      corpus=entry.name if entry is not None else None)
        ctx.problems.extend(problems)
    return _build(CorpusSpec, values, ())


def _corpora(value: Any, path: str, ctx: _Ctx) -> Any:
    """The entries of ``spec.corpus.corpora``, each with its id (the default one written in)."""
    if not isinstance(value, (list, tuple)):
        return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a list of corpora "
                             "(e.g. [{name: TREC_6}, {uri: ..., format: csv, ...}])")
    if len(value) < 2:
        return ctx.add(path, f"holds {len(value)} corpus; list two or more, or write the one corpus' fields in "
                             f"{path.rpartition('.')[0]} itself")
    if len(value) > limits.MAX_CORPORA:
        return ctx.add(path, f"holds {len(value)} corpora; at most {limits.MAX_CORPORA}")
    entries, ok = [], True
    for i, item in enumerate(value):
        before = len(ctx.problems)
        parsed = _corpus(item, f"{path}[{i}]", ctx, as_entry=True)
        if parsed is _INVALID or len(ctx.problems) > before:  # the joint checks need every entry clean
            ok = False
        elif parsed.id is None:
            parsed = dataclasses.replace(parsed, id=default_id(parsed.name, parsed.uri))
        entries.append(parsed)
    return tuple(entries) if ok else _INVALID


def _entry_source(c: CorpusSpec) -> Source:
    """What :func:`kftune.core.multicorpus.joint_problems` needs of one parsed entry."""
    registered = _registered(c.name) if c.name is not None else None
    fmt = c.format if c.format is not None else registered.format if registered is not None else None
    task = FORMAT_TASKS[fmt] if fmt is not None else None
    scheme, key = None, None
    if registered is not None:
        scheme = registered.tag_scheme
    elif c.tag_scheme in ("BIO", "BIOES", "none"):
        scheme, key = c.tag_scheme, "tagScheme"
    default = (registered.tokenizer if registered is not None else None) or (default_tokenizer(fmt) if fmt else None)
    return Source(id=c.id or default_id(c.name, c.uri), task=task, tag_scheme=scheme, tokenizer=default,
                  scheme_key=key)


def _multi_corpus(value: Mapping[str, Any], path: str, ctx: _Ctx) -> Any:
    """``spec.corpus`` with ``corpora``: the shared fields here, the sources in the entries."""
    source_keys = {f.key: f"with corpora, each corpus' fields go into its entry of {path}.corpora; "
                          f"{path} itself takes only {', '.join(_SHARED_CORPUS_KEYS)} and corpora"
                   for f in _ENTRY_FIELDS}
    values = _section(value, path, _MULTI_CORPUS_FIELDS, ctx, extra=source_keys)
    if values is None:
        return _INVALID
    entries = values.get("corpora")
    if entries is None:
        return _INVALID
    sources = [_entry_source(e) for e in entries]
    tokenizer_ok = value.get("tokenizer") is None or "tokenizer" in values
    ctx.problems.extend(joint_problems(sources, _join(path, "corpora"), tokenizer_path=_join(path, "tokenizer"),
                                       tokenizer_given=value.get("tokenizer") is not None))
    if tokenizer_ok:
        seen: set[tuple[str, str]] = set()
        for e in entries:  # the shared tokenizer against every corpus' format and the installed packages
            registered = _registered(e.name) if e.name is not None else None
            fmt = e.format if e.format is not None else registered.format if registered is not None else None
            _, problems = check_tokenizer(values.get("tokenizer"), _join(path, "tokenizer"), fmt=fmt,
                                          registry_default=registered.tokenizer if registered is not None else None,
                                          corpus=e.id)
            for problem in problems:
                if (problem.path, problem.message) not in seen:
                    seen.add((problem.path, problem.message))
                    ctx.problems.append(problem)
    return _build(CorpusSpec, values, ())


def corpus_task(corpus: CorpusSpec) -> str | None:
    """The task a (parsed) corpus block holds: its format's, or its registered corpus'; for several corpora,
    the first one's (the others are checked to match)."""
    c = corpus.sources[0]
    if c.format is not None:
        return FORMAT_TASKS[c.format]
    registered = _registered(c.name) if c.name is not None else None
    return registered.task if registered is not None else None


_TASK_FIELDS = (
    _F("type", "type", _enum(TASK_TYPES), required=True, hint="text_classification or sequence_labeling"),
    _F("labelType", "label_type", _str(_IDENT, "a label name made of letters, digits and _")),
)


def _task(value: Any, path: str, ctx: _Ctx) -> Any:
    values = _section(value, path, _TASK_FIELDS, ctx)
    if values is None or "type" not in values:
        return _INVALID
    values.setdefault("label_type", DEFAULT_LABEL_TYPES[values["type"]])
    return TaskSpec(**values)


def _model(value: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(value, Mapping):
        return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a mapping of hyperparameter: value")
    ok = True
    for key in value:
        if not isinstance(key, str) or not _IDENT.match(key):
            ok = _flag(ctx, _join(path, str(key)), f"{_show(key)} is not a hyperparameter name")
    return _freeze(value) if ok else _INVALID


#: ``lrRangeTest`` keys of :class:`RangeTestConfig` (camelCase, as ``RangeTestConfig.to_dict`` writes them).
LR_CONFIG_KEYS: tuple[str, ...] = tuple(RangeTestConfig().to_dict())
_LR_FLOAT_KEYS = tuple(k for k, v in RangeTestConfig().to_dict().items() if isinstance(v, float))


def _lr_range_test(value: Any, path: str, ctx: _Ctx) -> Any:
    passthrough = tuple(_F(k, k, lambda v, p, c: v) for k in LR_CONFIG_KEYS)
    values = _section(value, path, (
        _F("enabled", "enabled", _bool),
        _F("applyTo", "apply_to", _str(_IDENT, "a search parameter name")),
        *passthrough,
    ), ctx)
    if values is None:
        return _INVALID
    settings: dict[str, Any] = {}
    for key in LR_CONFIG_KEYS:
        if key not in value:
            continue
        raw = value[key]
        # YAML 1.1 reads 1e-7 (no dot) as a string; take numeric strings as the numbers they spell.
        number = _parse_float(raw) if key in _LR_FLOAT_KEYS and isinstance(raw, str) else None
        settings[key] = number if number is not None else raw
    try:
        config = RangeTestConfig.from_dict(settings, prefix=path)
    except ConfigError as exc:
        ctx.problems.extend(exc.problems)
        return _INVALID
    except (TypeError, ValueError) as exc:  # a value of a type the config cannot even compare
        return ctx.add(path, f"invalid settings: {exc}")
    return LrRangeTestSpec(enabled=values.get("enabled", True),
                           apply_to=values.get("apply_to", "learning_rate"), config=config)


def _dump_lr(spec: LrRangeTestSpec) -> dict[str, Any]:
    return {"enabled": spec.enabled, "applyTo": spec.apply_to, **spec.config.to_dict()}


_TRAIN_FIELDS = (
    _F("maxEpochs", "max_epochs", _int(1, limits.MAX_EPOCHS, "epochs")),
    _F("patience", "patience", _int(0, limits.MAX_EPOCHS, "epochs")),
    _F("trainingRuns", "training_runs", _int(1, limits.MAX_TRAINING_RUNS, "training runs")),
    _F("seed", "seed", _int(0, limits.MAX_SEED, "seed (32-bit)")),
    _F("device", "device", _enum(DEVICES)),
    _F("precision", "precision", _enum(PRECISIONS)),
    _F("embeddingsStorageMode", "embeddings_storage_mode", _enum(EMBEDDINGS_STORAGE_MODES)),
    _F("minLearningRate", "min_learning_rate", _float(0, limits.MAX_LEARNING_RATE, unit="learning rate")),
    _F("evalBatchSize", "eval_batch_size", _int(1, limits.MAX_BATCH_SIZE, "examples per batch")),
    _F("numThreads", "num_threads", _int(1, limits.MAX_THREADS, "threads")),
    _F("keepBest", "keep_best", _bool),
    _F("writeWeights", "write_weights", _bool),
)

_EVALUATION_FIELDS = (_F("baseline", "baseline", _bool),)


def _quantity(value: Any, path: str, ctx: _Ctx) -> Any:
    text = str(value) if _is_int(value) or isinstance(value, float) else value
    if not isinstance(text, str) or not _QUANTITY.match(text):
        return ctx.add(path, f"{_show(value)} is not a Kubernetes quantity (e.g. \"4\", \"500m\", \"16Gi\")")
    return text


def _tolerations(value: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(value, (list, tuple)):
        return ctx.add(path, f"{_show(value)} is {_type_name(value)}, not a list of tolerations")
    out, ok = [], True
    for i, item in enumerate(value):
        ipath = f"{path}[{i}]"
        entry = _section(item, ipath, (
            _F("key", "key", _str()), _F("operator", "operator", _enum(TOLERATION_OPERATORS)),
            _F("value", "value", _str()), _F("effect", "effect", _enum(TOLERATION_EFFECTS))), ctx)
        if entry is None:
            ok = False
            continue
        if entry.get("operator") == "Exists" and isinstance(item, Mapping) and item.get("value") is not None:
            ok = _flag(ctx, _join(ipath, "value"), "must be empty with operator Exists")
        if entry.get("operator", "Equal") == "Equal" and isinstance(item, Mapping) and item.get("key") is None:
            ok = _flag(ctx, _join(ipath, "key"), "required with operator Equal")
        out.append(Toleration(**entry))
    return tuple(out) if ok else _INVALID


_RESOURCES_FIELDS = (
    _F("trialGPU", "trial_gpu", _int(0, limits.MAX_GPUS, "GPUs per pod")),
    _F("finalGPU", "final_gpu", _int(0, limits.MAX_GPUS, "GPUs per pod")),
    _F("trialCPU", "trial_cpu", _quantity),
    _F("finalCPU", "final_cpu", _quantity),
    _F("trialMemory", "trial_memory", _quantity),
    _F("finalMemory", "final_memory", _quantity),
    _F("gpuResource", "gpu_resource", _str(_EXTENDED_RESOURCE, "an extended resource name like nvidia.com/gpu")),
    _F("nodeSelector", "node_selector", _str_map(_LABEL_KEY, "a Kubernetes label key")),
    _F("tolerations", "tolerations", _tolerations,
       dump=lambda ts: [{k: v for k, v in (("key", t.key), ("operator", t.operator), ("value", t.value),
                                            ("effect", t.effect)) if v is not None} for t in ts]),
)


# --------------------------------------------------------------------------------------------------
# The whole document
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
# Rendering back to YAML-shaped dicts
# --------------------------------------------------------------------------------------------------

def to_katib_parameters(params: Iterable[ParameterSpec]) -> list[dict[str, Any]]:
    """Katib ``parameters:`` entries (camelCase, values as strings), as a spec or an Experiment has them."""
    out = []
    for p in params:
        fs = p.feasible_space
        space: dict[str, Any] = {k: v for k, v in (("min", fs.min), ("max", fs.max), ("step", fs.step))
                                 if v is not None}
        if fs.list:
            space["list"] = list(fs.list)
        if fs.distribution is not None:
            space["distribution"] = fs.distribution
        out.append({"name": p.name, "parameterType": p.parameter_type, "feasibleSpace": space})
    return out


def search_to_katib(search: SearchSpec) -> dict[str, Any]:
    """The Katib ExperimentSpec fields of a search block (kftune's own extras left out)."""
    full = _dump_section(search, _SEARCH_FIELDS)
    return {k: v for k, v in full.items() if k in KATIB_SEARCH_KEYS}


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
