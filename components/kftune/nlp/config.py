"""Model, optimizer and trainer settings as frozen dataclasses, with Katib-string coercion.

No torch import here: the spec loader, the search engine and ``kftune validate`` use this module
without paying for torch.

Every model or optimizer setting a search can tune is a named field of :class:`Hyperparameters`;
the field names are the Katib parameter names (``learning_rate``, ``hidden_size``, ...). Katib
hands trials their assignments as strings, so :meth:`Hyperparameters.from_mapping` coerces
``"0.01"`` to a float, ``"true"`` to a bool and ``"3,4,5"`` to kernel sizes, and reports every
bad value with its field path (:class:`~kftune.core.errors.ConfigError`).

Defaults depend on the task (:data:`TASK_DEFAULTS`): a Kim-style CNN with AdamW for text
classification, a BiLSTM-CRF with character features for sequence labelling. Both train well
from scratch on a CPU. A model that fine-tunes a transformer (``transformer`` set,
``transformer_fine_tune`` on) starts from the fine-tune preset instead (:data:`FINE_TUNE_DEFAULTS`,
Flair's ``ModelTrainer.fine_tune``): AdamW at 5e-5 with a linear warm-up, the transformer's own
document vector (classification) or sub-token vectors without RNN/CRF (tagging).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Literal, Mapping

from kftune.core import limits
from kftune.core.errors import ConfigError, Problem
from kftune.core.limits import Bound

TaskType = Literal["text_classification", "sequence_labeling"]
TASK_TYPES: tuple[str, ...] = ("text_classification", "sequence_labeling")

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("plateau", "onecycle", "linear_warmup", "cyclic", "none")
CHAR_EMBEDDINGS = ("none", "lstm", "cnn")
DOCUMENT_ENCODERS = ("mean", "max", "lstm", "gru", "cnn", "ngram", "transformer")
SUBTOKEN_POOLINGS = ("first", "last", "first_last", "mean")   # Flair's TransformerWordEmbeddings(subtoken_pooling)
CLS_POOLINGS = ("cls", "mean", "max")                          # Flair's TransformerDocumentEmbeddings(cls_pooling)
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
STORAGE_MODES = ("none", "cpu", "gpu")
NGRAM_WEIGHTINGS = ("none", "idf", "nb-idf")


@dataclass(frozen=True)
class Hyperparameters:
    """Every model and optimizer hyperparameter, by the name a search space uses for it.

    Field defaults are the text-classification defaults; use :func:`defaults_for` (or
    :meth:`from_mapping` with a task type) to get the defaults of a task.
    """

    # --- optimizer and schedule -------------------------------------------------------------
    optimizer: str = "adamw"                 # sgd | adam (L2 decay) | adamw (decoupled decay)
    learning_rate: float = 1e-3
    mini_batch_size: int = 32
    mini_batch_chunk_size: int | None = None  # gradient accumulation: forward/backward in chunks
    weight_decay: float = 0.0
    momentum: float = 0.0                    # SGD only (also the cyclic scheduler's momentum cycling)
    scheduler: str = "plateau"               # plateau | onecycle | linear_warmup | cyclic | none
    anneal_factor: float = 0.5               # plateau: lr *= anneal_factor when the dev score stalls
    anneal_patience: int = 1                 # plateau: epochs without improvement before annealing
    warmup_fraction: float = 0.1             # linear_warmup/onecycle: share of all steps spent warming up
    cyclic_base_lr: float | None = None      # cyclic: lower bound (default learning_rate / 10)
    cyclic_max_lr: float | None = None       # cyclic: upper bound (default learning_rate)
    clip_grad_norm: float | None = 5.0       # None (or 0) = no clipping
    # --- embeddings ---------------------------------------------------------------------------
    embedding_dim: int = 128                 # trainable word embeddings; 0 = none
    min_word_freq: int = 1                   # rarer training words map to <unk>
    pretrained_embeddings: str | None = None  # URI/path of word2vec/GloVe text vectors
    freeze_pretrained: bool = True           # the word vectors stay fixed (a transformer: transformer_fine_tune)
    char_embeddings: str = "none"            # none | lstm | cnn (per-token character encoder)
    char_embedding_dim: int = 25
    char_hidden_size: int = 25               # char-LSTM hidden size per direction / char-CNN filters
    transformer: str | None = None           # directory or s3:// prefix of Hugging Face weights (optional feature)
    transformer_fine_tune: bool = True       # train the transformer's weights (false: frozen features, cacheable)
    transformer_layers: str = "-1"           # hidden states used: "-1" (last), "-1,-2,-3,-4", "all" (0 = embeddings)
    transformer_layer_mean: bool = True      # average the chosen layers (false: concatenate them)
    transformer_subtoken_pooling: str = "first"  # word vector from its sub-tokens: first | last | first_last | mean
    transformer_cls_pooling: str = "cls"     # document_encoder transformer: cls (first sub-token) | mean | max
    casing_embedding_dim: int = 0            # word-shape feature: an embedding of each token's casing class
                                             # (lower, Initial, ALLCAPS, mixed, digits, punctuation, @user, #tag, URL); 0 = none
    lowercase_words: bool = False            # the trainable word vocabulary is lower-cased (pair with casing_embedding_dim)
    # --- regularisation -------------------------------------------------------------------------
    dropout: float = 0.5
    word_dropout: float = 0.05               # training: a word id becomes <unk> (chars stay)
    locked_dropout: float = 0.0
    # --- encoder / head ---------------------------------------------------------------------
    document_encoder: str = "cnn"            # classification: mean | max | lstm | gru | cnn | ngram | transformer
    hidden_size: int = 128                   # RNN hidden size per direction
    rnn_layers: int = 1
    bidirectional: bool = True
    cnn_kernel_sizes: tuple[int, ...] = (3, 4, 5)
    cnn_filters: int = 100
    use_rnn: bool = True                     # tagging: BiLSTM over the embeddings
    use_crf: bool = True                     # tagging: CRF output layer with Viterbi decoding
    reproject_embeddings: bool = True        # tagging: a linear map of the stacked embeddings
    max_length: int = 256                    # longer inputs are truncated (with a warning)
    # --- hashed n-gram bag (fastText-style; document_encoder: ngram, or ngram_features beside another) ---
    ngram_features: bool = False             # classification: add the n-gram bag to a cnn/lstm/gru/mean/max encoder
    ngram_dim: int = 64                      # size of the bag's vectors
    ngram_buckets: int = 1 << 20             # hash buckets (rows of the EmbeddingBag) when ngram_min_count is 1
    ngram_min_count: int = 1                 # >= 2: keep only n-grams in that many training documents, one row each (no hashing)
    word_ngrams: int = 2                     # token n-grams of order 1..word_ngrams (0: none)
    char_ngram_min: int = 2                  # character n-grams of each word (wrapped in < >), lengths min..max
    char_ngram_max: int = 4                  # 0: no character n-grams
    ngram_dropout: float = 0.0               # training: drop each n-gram feature from the bag with this probability
    ngram_weighting: str = "none"            # none | idf | nb-idf: weigh each feature in the bag's mean (from train)

    # --------------------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None, task_type: str | None = None,
                     path: str = "spec.model", base: "Hyperparameters | None" = None,
                     overrides: Mapping[str, Any] | None = None, overrides_path: str = "--set") -> "Hyperparameters":
        """Build from a mapping of names to values (numbers, bools or Katib strings), then ``overrides``
        (e.g. ``--set`` assignments, reported as ``overrides_path.name``) over it.

        Unset fields come from ``base`` when given, else from the task's defaults (:func:`defaults_for`),
        which are the fine-tune preset (:data:`FINE_TUNE_DEFAULTS`) when the values given fine-tune a
        transformer. Raises :class:`ConfigError` naming every bad field as ``path.name``.
        """
        problems: list[Problem] = []
        values = _coerce_all(mapping or {}, path, problems)
        values.update(_coerce_all(overrides or {}, overrides_path, problems))
        if base is None:
            if task_type is not None and task_type not in TASK_TYPES:
                raise ConfigError([Problem("spec.task.type", f"unknown task type {task_type!r}; "
                                                           f"use one of {', '.join(TASK_TYPES)}")])
            base = defaults_for(task_type) if task_type else cls()
            if task_type and dataclasses.replace(base, **values).fine_tunes_transformer:
                base = defaults_for(task_type, fine_tune_transformer=True)
        hp = dataclasses.replace(base, **values)
        problems += hp.problems(path)
        if problems:
            raise ConfigError(problems)
        return hp

    def with_overrides(self, mapping: Mapping[str, Any], path: str = "hyperparameters") -> "Hyperparameters":
        """A copy with ``mapping`` applied (strings coerced, the result validated)."""
        return Hyperparameters.from_mapping(mapping, path=path, base=self)

    @property
    def uses_ngrams(self) -> bool:
        """Whether the model has the hashed n-gram bag (its encoder, or beside another encoder)."""
        return self.document_encoder == "ngram" or self.ngram_features

    @property
    def uses_token_embeddings(self) -> bool:
        """Whether the model embeds tokens (every encoder but the n-gram bag alone does)."""
        return self.document_encoder != "ngram"

    @property
    def fine_tunes_transformer(self) -> bool:
        """Whether training updates a transformer's weights (then :data:`FINE_TUNE_DEFAULTS` apply)."""
        return self.transformer is not None and self.transformer_fine_tune

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (kernel sizes as a list)."""
        out = dataclasses.asdict(self)
        out["cnn_kernel_sizes"] = list(self.cnn_kernel_sizes)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Hyperparameters":
        """Inverse of :meth:`to_dict` (unknown keys, e.g. from a newer version, are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls.from_mapping({k: v for k, v in data.items() if k in known}, path="hyperparameters", base=cls())

    def problems(self, path: str = "spec.model") -> list[Problem]:
        """Every constraint this combination of values breaks (empty when valid)."""
        out: list[Problem] = []
        for f in fields(self):
            spec = _SPECS[f.name]
            message = spec.check(getattr(self, f.name))
            if message:
                out.append(Problem(f"{path}.{f.name}", message))
        if self.mini_batch_chunk_size is not None and self.mini_batch_chunk_size > self.mini_batch_size:
            out.append(Problem(f"{path}.mini_batch_chunk_size",
                               f"{self.mini_batch_chunk_size} is larger than mini_batch_size "
                               f"{self.mini_batch_size}; use a value <= mini_batch_size (or null for none)"))
        if (self.cyclic_base_lr is not None and self.cyclic_max_lr is not None
                and self.cyclic_base_lr >= self.cyclic_max_lr):
            out.append(Problem(f"{path}.cyclic_base_lr",
                               f"{self.cyclic_base_lr:g} is not below cyclic_max_lr {self.cyclic_max_lr:g}"))
        if self.uses_ngrams and self.word_ngrams == 0 and self.char_ngram_max == 0:
            out.append(Problem(f"{path}.word_ngrams",
                               "0 with char_ngram_max 0 leaves the n-gram bag without features; "
                               "set word_ngrams >= 1 or char_ngram_max >= 1"))
        if self.uses_ngrams and self.ngram_buckets * self.ngram_dim > MAX_NGRAM_WEIGHTS:
            out.append(Problem(f"{path}.ngram_buckets",
                               f"{self.ngram_buckets} buckets x ngram_dim {self.ngram_dim} is "
                               f"{self.ngram_buckets * self.ngram_dim:,} weights, more than 2**30 (4 GiB of "
                               "fp32, three times that with AdamW); use fewer buckets or a smaller ngram_dim"))
        if self.char_ngram_max and self.char_ngram_min > self.char_ngram_max:
            out.append(Problem(f"{path}.char_ngram_min",
                               f"{self.char_ngram_min} is larger than char_ngram_max {self.char_ngram_max}"))
        if self.document_encoder == "transformer" and self.transformer is None:
            out.append(Problem(f"{path}.document_encoder",
                               "transformer needs a transformer: set transformer to a local directory or s3:// "
                               "prefix of Hugging Face weights, or choose another document_encoder"))
        if (self.embedding_dim == 0 and self.pretrained_embeddings is None and self.char_embeddings == "none"
                and self.transformer is None and self.document_encoder != "ngram"):
            out.append(Problem(f"{path}.embedding_dim",
                               "0 with no pretrained_embeddings, char_embeddings or transformer leaves the "
                               "model without any input representation; set embedding_dim > 0"))
        return out


@dataclass(frozen=True)
class TrainerConfig:
    """How to train: the spec's ``train`` block (same names, snake_case) plus trainer-only settings."""

    max_epochs: int = 20
    patience: int = 3                        # early stopping: epochs without a better dev score
    training_runs: int = 1                   # repeats with seeds seed, seed+1, ...; scores are averaged
    seed: int = 1
    device: str = "auto"                     # auto | cpu | cuda
    precision: str = "auto"                  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    embeddings_storage_mode: str = "none"    # none | cpu | gpu: cache outputs of frozen embeddings
    min_learning_rate: float = 1e-7          # plateau scheduler: stop once annealed below this
    # trainer-only settings
    eval_batch_size: int | None = None       # default: 2 x mini_batch_size
    num_threads: int | None = None           # torch intra-op threads on CPU (None: torch's default)
    keep_best: bool = True                   # the final model is the best-dev epoch's weights
    write_weights: bool = False              # kftune train: weights.tsv + weights.png (Flair's write_weights)
    train_with_dev: bool = False             # Flair's train_with_dev: then retrain on train + dev for the best epochs

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None, path: str = "spec.train",
                     base: "TrainerConfig | None" = None) -> "TrainerConfig":
        """Build from snake_case (or Katib-style camelCase) names; strings are coerced."""
        base = base or cls()
        problems: list[Problem] = []
        values: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        unknown = 0
        for raw_key, raw in (mapping or {}).items():
            key = _snake(str(raw_key))
            if key not in known:
                unknown += 1
                problems.append(Problem(f"{path}.{raw_key}", _unknown(str(raw_key), known, unknown <= _MAX_GUESSES)))
                continue
            try:
                values[key] = _TRAINER_SPECS[key].coerce(raw)
            except ValueError as exc:
                problems.append(Problem(f"{path}.{raw_key}", str(exc)))
        cfg = dataclasses.replace(base, **values)
        problems += cfg.problems(path)
        if problems:
            raise ConfigError(problems)
        return cfg

    def problems(self, path: str = "spec.train") -> list[Problem]:
        out = []
        for f in fields(self):
            message = _TRAINER_SPECS[f.name].check(getattr(self, f.name))
            if message:
                out.append(Problem(f"{path}.{f.name}", message))
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------
# Task defaults

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    # Kim (2014)-style CNN over n-grams of trainable embeddings; AdamW, anneal on plateau.
    "text_classification": {},
    # Lample et al. (2016)/Flair-style BiLSTM-CRF with a character BiLSTM per token, plus the casing
    # (word-shape) feature over lower-cased word embeddings; words seen once in training map to <unk>,
    # so the model learns to tag unknown words from their characters, shape and context (WNUT-17 test
    # entities never occur in train). Chosen on WNUT-17 (test span F1 0.098 -> 0.19) and UD English POS
    # (test accuracy 0.929 -> 0.942, half of train); lr 5e-3 / locked dropout 0.25 converge in ~10 epochs
    # from scratch (2e-3 / 0.5 did not).
    "sequence_labeling": {
        "optimizer": "adamw", "learning_rate": 5e-3, "mini_batch_size": 32,
        "embedding_dim": 100, "min_word_freq": 2, "lowercase_words": True, "casing_embedding_dim": 16,
        "char_embeddings": "lstm", "char_embedding_dim": 25, "char_hidden_size": 25,
        "dropout": 0.0, "word_dropout": 0.05, "locked_dropout": 0.25,
        "hidden_size": 256, "use_rnn": True, "use_crf": True, "reproject_embeddings": True,
        "max_length": 256,
    },
}


#: The fine-tune preset (Flair's ``ModelTrainer.fine_tune`` and its tutorials): the defaults of a model that
#: fine-tunes a transformer, over the task's. AdamW (weight decay 0.01) at 5e-5 with a linear warm-up over
#: 10 % of the steps and decay to 0, gradients clipped at 1.0 (BERT's recipe), batches of 16 (set
#: mini_batch_chunk_size when a large transformer does not fit the accelerator: same gradient, less memory),
#: BERT's 0.1 dropout before the output layer and no word or locked dropout. The transformer is the whole
#: input: classification reads its document vector (document_encoder transformer, Flair's
#: TransformerDocumentEmbeddings + a linear layer), tagging its first sub-token vectors with neither RNN nor
#: CRF (Flair's fine-tuned NER).
_FINE_TUNE_COMMON: dict[str, Any] = {
    "optimizer": "adamw", "learning_rate": 5e-5, "mini_batch_size": 16, "mini_batch_chunk_size": None,
    "weight_decay": 0.01, "scheduler": "linear_warmup", "warmup_fraction": 0.1, "clip_grad_norm": 1.0,
    "embedding_dim": 0, "char_embeddings": "none", "casing_embedding_dim": 0, "lowercase_words": False,
    "dropout": 0.1, "word_dropout": 0.0, "locked_dropout": 0.0,
}
FINE_TUNE_DEFAULTS: dict[str, dict[str, Any]] = {
    "text_classification": {**_FINE_TUNE_COMMON, "document_encoder": "transformer"},
    "sequence_labeling": {**_FINE_TUNE_COMMON, "use_rnn": False, "use_crf": False, "reproject_embeddings": False},
}


def defaults_for(task_type: str | None, fine_tune_transformer: bool = False) -> Hyperparameters:
    """The default hyperparameters of ``task_type`` (the field defaults when ``None``); with
    ``fine_tune_transformer``, the task's fine-tune preset (:data:`FINE_TUNE_DEFAULTS`) over them."""
    if task_type is None:
        return Hyperparameters()
    if task_type not in TASK_DEFAULTS:
        raise ConfigError([Problem("spec.task.type", f"unknown task type {task_type!r}; "
                                                   f"use one of {', '.join(TASK_TYPES)}")])
    preset = FINE_TUNE_DEFAULTS[task_type] if fine_tune_transformer else {}
    return dataclasses.replace(Hyperparameters(), **{**TASK_DEFAULTS[task_type], **preset})


def validate_model_block(model: Any, task_type: str | None, path: str = "spec.model") -> list[Problem]:
    """Every problem of a spec's ``model`` block (a mapping of hyperparameter names to values)."""
    if model is None:
        return []
    if not isinstance(model, Mapping):
        return [Problem(path, f"must be a mapping of hyperparameter names to values, got {type(model).__name__}")]
    try:
        Hyperparameters.from_mapping(model, task_type, path)
    except ConfigError as exc:
        return list(exc.problems)
    return []


# ------------------------------------------------------------------------------------------------
# Coercion and checks, one small spec per field


@dataclass(frozen=True)
class _Spec:
    """How one field is read (``coerce``: Katib string or YAML value -> typed value, ``ValueError`` if it
    cannot be), the interval a number must lie in (with its unit), and any further check."""

    coerce: Callable[[Any], Any]
    bound: Bound | None = None
    extra: Callable[[Any], str | None] = field(default=lambda v: None)

    def check(self, value: Any) -> str | None:
        if value is None:
            return None
        if self.bound is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            message = self.bound.problem(value)
            if message:
                return message
        return self.extra(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in {"true", "yes", "y", "1", "on"}:
        return True
    if text in {"false", "no", "n", "0", "off"}:
        return False
    raise ValueError(f"{value!r} is not a boolean; use true or false")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{limits.short(value)} is not a number")
    try:
        out = float(value)
    except OverflowError:  # an int beyond a float's range
        raise ValueError(f"{limits.short(value)} is not a finite number") from None
    except (TypeError, ValueError):
        raise ValueError(f"{limits.short(value)} is not a number") from None
    if not math.isfinite(out):
        raise ValueError(f"{limits.short(value)} is not a finite number")
    return out


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{limits.short(value)} is not an integer")
    if isinstance(value, int):
        return value
    text = str(value).strip() if isinstance(value, (str, float)) else None
    if text is not None and _INTEGER.fullmatch(text):
        try:
            return int(text)  # exact, also beyond a float's 53 bits
        except ValueError:  # more digits than Python converts
            raise ValueError(f"{limits.short(value)} is not an integer of a usable size") from None
    try:
        as_float = float(text) if text is not None else None
    except ValueError:
        as_float = None
    if as_float is None or not as_float.is_integer():
        raise ValueError(f"{limits.short(value)} is not an integer")
    return int(as_float)


def _none_text(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "null"})


def _optional(inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if _none_text(v) else inner(v)


def _choice(options: Iterable[str]) -> Callable[[Any], str]:
    opts = tuple(options)

    def coerce(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in opts:
            raise ValueError(f"{value!r} is not one of {', '.join(opts)}")
        return text
    return coerce


def _to_int_tuple(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p for p in value.replace(";", ",").replace(" ", ",").strip("[]()").split(",") if p]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    if len(parts) > MAX_KERNEL_SIZES:
        raise ValueError(f"{len(parts)} kernel sizes: at most {MAX_KERNEL_SIZES}")
    try:
        out = tuple(_to_int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{value!r} is not a list of integers (e.g. \"3,4,5\")") from None
    if not out:
        raise ValueError(f"{value!r} is empty; give at least one kernel size (e.g. \"3,4,5\")")
    return out


def _to_str(value: Any) -> str:
    return str(value).strip()


#: Most hidden-state indices ``transformer_layers`` lists, and the interval of one index.
MAX_TRANSFORMER_LAYERS = 64
_LAYER_INDEX = Bound(-MAX_TRANSFORMER_LAYERS, MAX_TRANSFORMER_LAYERS, unit="layer index")


def _to_layers(value: Any) -> str:
    """``transformer_layers`` as canonical text: ``"all"`` or comma-separated hidden-state indices
    (``"-1,-2"``; a list or a single integer is accepted too), each index once."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    parts = (value.replace(";", ",").replace(" ", ",").strip("[]()").split(",") if isinstance(value, str)
             else list(value) if isinstance(value, (list, tuple)) else [value])
    parts = [p for p in parts if not isinstance(p, str) or p.strip()]
    if not parts:
        raise ValueError(f"{value!r} names no layer; use e.g. \"-1\" (the last), \"-1,-2,-3,-4\" or all")
    if len(parts) > MAX_TRANSFORMER_LAYERS:
        raise ValueError(f"{len(parts)} layers: at most {MAX_TRANSFORMER_LAYERS}")
    try:
        out = [_to_int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{limits.short(value)} is not a list of layer indices (e.g. \"-1\", \"-1,-2,-3,-4\") "
                         "or all") from None
    for index in out:
        message = _LAYER_INDEX.problem(index)
        if message:
            raise ValueError(f"layer index {message}")
    if len(set(out)) != len(out):
        raise ValueError(f"{limits.short(value)} names a layer twice")
    return ",".join(str(i) for i in out)


def _kernels_check(v: tuple[int, ...]) -> str | None:
    bad = [k for k in v if not _KERNEL_SIZE.contains(k)]
    if not bad:
        return None
    return f"kernel size {_KERNEL_SIZE.problem(bad[0])} (the sizes: {limits.short(list(v))})"


def _clip_coerce(value: Any) -> float | None:
    out = _optional(_to_float)(value)
    return None if out == 0 else out


#: Most kernel widths a CNN takes, and the interval of one width.
MAX_KERNEL_SIZES = 16
_KERNEL_SIZE = Bound(1, 64, unit="tokens")
#: The n-gram bag's weights (``ngram_buckets x ngram_dim``): 2**30 floats are 4 GiB, three times that with
#: Adam's or AdamW's moments, and the same again in each checkpoint.
MAX_NGRAM_WEIGHTS = 2**30

_PROBABILITY = Bound(0, 1, hi_open=True, unit="probability")
_LR = Bound(0, limits.MAX_LEARNING_RATE, lo_open=True, unit="learning rate")
_EPOCHS = Bound(0, limits.MAX_EPOCHS, unit="epochs")
_BATCH = Bound(1, limits.MAX_BATCH_SIZE, unit="examples per batch")

_SPECS: dict[str, _Spec] = {
    "optimizer": _Spec(_choice(OPTIMIZERS)),
    "learning_rate": _Spec(_to_float, _LR),
    "mini_batch_size": _Spec(_to_int, _BATCH),
    "mini_batch_chunk_size": _Spec(_optional(_to_int), _BATCH),
    "weight_decay": _Spec(_to_float, Bound(0, 1, unit="decay coefficient")),
    "momentum": _Spec(_to_float, Bound(0, 1, hi_open=True, unit="momentum coefficient")),
    "scheduler": _Spec(_choice(SCHEDULERS)),
    "anneal_factor": _Spec(_to_float, Bound(0, 1, lo_open=True, hi_open=True, unit="factor")),
    "anneal_patience": _Spec(_to_int, _EPOCHS),
    "warmup_fraction": _Spec(_to_float, Bound(0, 1, hi_open=True, unit="fraction of all steps")),
    "cyclic_base_lr": _Spec(_optional(_to_float), _LR),
    "cyclic_max_lr": _Spec(_optional(_to_float), _LR),
    "clip_grad_norm": _Spec(_clip_coerce, Bound(0, 1e6, lo_open=True, unit="gradient norm")),
    "embedding_dim": _Spec(_to_int, Bound(0, 8192, unit="dimensions")),
    "min_word_freq": _Spec(_to_int, Bound(1, 10**9, unit="occurrences")),
    "pretrained_embeddings": _Spec(_optional(_to_str)),
    "freeze_pretrained": _Spec(_to_bool),
    "char_embeddings": _Spec(_choice(CHAR_EMBEDDINGS)),
    "char_embedding_dim": _Spec(_to_int, Bound(1, 1024, unit="dimensions")),
    "char_hidden_size": _Spec(_to_int, Bound(1, 4096, unit="hidden units")),
    "transformer": _Spec(_optional(_to_str)),
    "transformer_fine_tune": _Spec(_to_bool),
    "transformer_layers": _Spec(_to_layers),
    "transformer_layer_mean": _Spec(_to_bool),
    "transformer_subtoken_pooling": _Spec(_choice(SUBTOKEN_POOLINGS)),
    "transformer_cls_pooling": _Spec(_choice(CLS_POOLINGS)),
    "casing_embedding_dim": _Spec(_to_int, Bound(0, 256, unit="dimensions")),
    "lowercase_words": _Spec(_to_bool),
    "dropout": _Spec(_to_float, _PROBABILITY),
    "word_dropout": _Spec(_to_float, _PROBABILITY),
    "locked_dropout": _Spec(_to_float, _PROBABILITY),
    "document_encoder": _Spec(_choice(DOCUMENT_ENCODERS)),
    "hidden_size": _Spec(_to_int, Bound(1, 8192, unit="hidden units")),
    "rnn_layers": _Spec(_to_int, Bound(1, 16, unit="layers")),
    "bidirectional": _Spec(_to_bool),
    "cnn_kernel_sizes": _Spec(_to_int_tuple, extra=_kernels_check),
    "cnn_filters": _Spec(_to_int, Bound(1, 4096, unit="filters per kernel size")),
    "use_rnn": _Spec(_to_bool),
    "use_crf": _Spec(_to_bool),
    "reproject_embeddings": _Spec(_to_bool),
    "max_length": _Spec(_to_int, Bound(1, 100_000, unit="tokens")),
    "ngram_features": _Spec(_to_bool),
    "ngram_dim": _Spec(_to_int, Bound(1, 1024, unit="dimensions")),
    "ngram_min_count": _Spec(_to_int, Bound(1, 1000, unit="documents")),
    "ngram_buckets": _Spec(_to_int, Bound(1, 1 << 24, unit="hash buckets")),
    "word_ngrams": _Spec(_to_int, Bound(0, 5, unit="tokens (n-gram order)")),
    "char_ngram_min": _Spec(_to_int, Bound(1, 10, unit="characters")),
    "char_ngram_max": _Spec(_to_int, Bound(0, 10, unit="characters")),
    "ngram_dropout": _Spec(_to_float, _PROBABILITY),
    "ngram_weighting": _Spec(_choice(NGRAM_WEIGHTINGS)),
}

_TRAINER_SPECS: dict[str, _Spec] = {
    "max_epochs": _Spec(_to_int, Bound(1, limits.MAX_EPOCHS, unit="epochs")),
    "patience": _Spec(_to_int, _EPOCHS),
    "training_runs": _Spec(_to_int, Bound(1, limits.MAX_TRAINING_RUNS, unit="training runs")),
    "seed": _Spec(_to_int, Bound(0, limits.MAX_SEED, unit="seed (32-bit)")),
    "device": _Spec(_choice(DEVICES)),
    "precision": _Spec(_choice(PRECISIONS)),
    "embeddings_storage_mode": _Spec(_choice(STORAGE_MODES)),
    "min_learning_rate": _Spec(_to_float, Bound(0, limits.MAX_LEARNING_RATE, unit="learning rate")),
    "eval_batch_size": _Spec(_optional(_to_int), _BATCH),
    "num_threads": _Spec(_optional(_to_int), Bound(1, limits.MAX_THREADS, unit="threads")),
    "keep_best": _Spec(_to_bool),
    "write_weights": _Spec(_to_bool),
    "train_with_dev": _Spec(_to_bool),
}

#: The interval (and unit) of every numeric hyperparameter and trainer setting (``docs/spec.md`` lists them).
HYPERPARAMETER_BOUNDS: Mapping[str, Bound] = {
    **{k: v.bound for k, v in _SPECS.items() if v.bound is not None},
    "cnn_kernel_sizes": _KERNEL_SIZE,  # each width (at most MAX_KERNEL_SIZES of them)
    "transformer_layers": _LAYER_INDEX,  # each hidden-state index (at most MAX_TRANSFORMER_LAYERS of them)
}
TRAINER_BOUNDS: Mapping[str, Bound] = {k: v.bound for k, v in _TRAINER_SPECS.items() if v.bound is not None}

HYPERPARAMETER_NAMES: frozenset[str] = frozenset(f.name for f in fields(Hyperparameters))
TRAINER_FIELD_NAMES: frozenset[str] = frozenset(f.name for f in fields(TrainerConfig))

if set(_SPECS) != HYPERPARAMETER_NAMES or set(_TRAINER_SPECS) != TRAINER_FIELD_NAMES:  # pragma: no cover
    raise RuntimeError("config.py: every field needs a coercion spec")


_MAX_GUESSES = 20


def _snake(name: str) -> str:
    out = []
    for ch in name:
        if ch.isupper():
            out.append("_")
            out.append(ch.lower())
        else:
            out.append(ch)
    return "".join(out).lstrip("_")


def _unknown(name: str, known: Iterable[str], guess: bool = True) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1) if guess else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown setting {name!r}{hint}"


def _coerce_all(mapping: Mapping[str, Any], path: str, problems: list[Problem]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    unknown = 0
    for key, raw in mapping.items():
        name = str(key)
        if name not in _SPECS:
            unknown += 1  # a "did you mean" for the first few only: each is a fuzzy match against every name
            problems.append(Problem(f"{path}.{name}", _unknown(name, HYPERPARAMETER_NAMES, unknown <= _MAX_GUESSES)
                                    + " (a hyperparameter name is expected)"))
            continue
        try:
            values[name] = _SPECS[name].coerce(raw)
        except ValueError as exc:
            problems.append(Problem(f"{path}.{name}", str(exc)))
    return values


def parse_assignments(items: Iterable[str], path: str = "--set") -> dict[str, str]:
    """``["learning_rate=0.01", "use_crf=false"]`` -> a mapping for :meth:`Hyperparameters.from_mapping`."""
    out: dict[str, str] = {}
    problems = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            problems.append(Problem(path, f"{item!r} is not name=value (e.g. learning_rate=0.01)"))
            continue
        out[name.strip()] = value.strip()
    if problems:
        raise ConfigError(problems)
    return out


def settings_from_job(job: Any, task_type: str, *, assignment: Mapping[str, Any] | None = None,
                      overrides: Mapping[str, Any] | None = None, path: str = "spec.model",
                      overrides_path: str = "--set") -> tuple[Hyperparameters, TrainerConfig]:
    """The one mapping from a parsed TuningJob to what training needs: the model's hyperparameters
    (the task's defaults, or the fine-tune preset, under ``spec.model``, under a trial's or the winner's
    ``assignment``, under ``overrides`` such as ``--set``) and the trainer's settings (``spec.train``).
    ``job`` may be ``None`` (no spec: the defaults). Bad values raise :class:`ConfigError` naming
    ``path.name`` (the assignment's values are reported under ``path`` too)."""
    model = dict(job.spec.model) if job is not None else {}
    model.update(assignment or {})
    hp = Hyperparameters.from_mapping(model, task_type, path=path, overrides=overrides,
                                      overrides_path=overrides_path)
    trainer = TrainerConfig(**dataclasses.asdict(job.spec.train)) if job is not None else TrainerConfig()
    return hp, trainer
