"""How trials and the final model train and where they run: ``spec.model``, ``spec.lrRangeTest``,
``spec.train``, ``spec.evaluation`` and ``spec.resources``, as config objects, and their checks.

The ``model`` block's hyperparameters are checked by the caller's ``model_validator`` (it knows the models;
see :func:`kftune.core.spec.parse_spec`), the LR range test's settings by
:class:`kftune.core.lr_range.RangeTestConfig`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

from kftune.core import limits
from kftune.core.errors import ConfigError
from kftune.core.lr_range import RangeTestConfig
from kftune.core.spec.fields import (
    _F,
    _IDENT,
    _INVALID,
    _LABEL_KEY,
    _Ctx,
    _bool,
    _enum,
    _flag,
    _float,
    _freeze,
    _int,
    _is_int,
    _join,
    _parse_float,
    _section,
    _show,
    _str,
    _str_map,
    _type_name,
)


# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
EMBEDDINGS_STORAGE_MODES: tuple[str, ...] = ("none", "cpu", "gpu")
TOLERATION_OPERATORS: tuple[str, ...] = ("Equal", "Exists")
TOLERATION_EFFECTS: tuple[str, ...] = ("NoSchedule", "PreferNoSchedule", "NoExecute")

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_EXTENDED_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


# --------------------------------------------------------------------------------------------------
# Config objects
# --------------------------------------------------------------------------------------------------

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
    train_with_dev: bool = False


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


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------

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
    _F("trainWithDev", "train_with_dev", _bool),
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
