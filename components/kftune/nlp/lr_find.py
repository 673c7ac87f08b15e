"""The learning-rate range test on a real model: a fresh model, one short pass, the loss of every batch.

:func:`run_range_test` builds a *fresh* model from the hyperparameters (seeded, never restored from any
saved state), then trains it for ``iterations`` mini-batches while the learning rate follows the range
test's schedule (:class:`kftune.core.lr_range.RangeTestState`), and returns the analysed curve
(:class:`kftune.core.lr_range.RangeTestResult`). Each batch is the training core's step: forward under
autocast (bf16 on CUDA through :func:`kftune.nlp.trainer.resolve_autocast`, float32 on the CPU), backward
with ``mini_batch_chunk_size`` gradient accumulation, gradient clipping at ``clip_grad_norm``, an optimizer
step of the model's own optimizer (:func:`kftune.nlp.schedulers.build_optimizer`). The hyperparameters'
``scheduler`` and ``learning_rate`` are not used: the range test's schedule sets the rate of every batch.
It is not the trainer's epoch loop: no dev evaluation per epoch, no checkpoints, no early stopping.

Contract:

- At most one epoch: when ``iterations`` exceeds the batches of one pass over the training split, the test
  runs one epoch's batches with the *same* ``startLR``..``endLR`` span compressed into them (so the last
  batch still runs at ``endLR``); the result's ``config.iterations`` is the number planned after the cap,
  and ``extra`` records ``iterations_requested``, ``capped`` and ``steps_per_epoch`` (a warning is logged).
- Stops early when :class:`RangeTestState` says the loss diverged (``diverged=True``) or is not finite
  (the optimizer step of a non-finite loss is skipped).
- Optionally every ``dev_metric_every`` batches the model is evaluated (eval mode, no gradient) on a fixed
  subset of at most ``dev_subset`` dev sentences (chosen with the seed, the same for every run): the task's
  dev score (accuracy, span F1 or token accuracy, :func:`kftune.nlp.trainer.dev_score`) is recorded as the
  result's ``metric`` (Smith's accuracy-against-LR curve, read in the linear mode) and the dev loss in
  ``extra["dev_loss"]``.
- Deterministic on the CPU given ``seed``: the model's initialisation, the batch order and dropout all draw
  from generators seeded here, so two runs with the same seed give identical curves. The caller's RNG states
  (Python, NumPy, torch) are restored afterwards, and so is torch's thread count.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from kftune._progress import Progress
from kftune.core.errors import ConfigError, DataError, Problem
from kftune.core.lr_range import RangeTestConfig, RangeTestResult, RangeTestState
from kftune.nlp.checkpoint import capture_rng_state, restore_rng_state, seed_everything
from kftune.nlp.config import Hyperparameters, TrainerConfig
from kftune.nlp.data import (
    EncodedDataset,
    Example,
    TaskInfo,
    TextEncoder,
    batch_order,
    collate,
    iterate_batches,
    read_corpus_info,
    read_split,
    task_from_corpus_info,
)
from kftune.nlp.embeddings import encode_corpus
from kftune.nlp.models import Model, build_model, fit_to_training_split
from kftune.nlp.predict import autocast_context
from kftune.nlp.schedulers import build_optimizer, clip_gradients, sparse_parameters
from kftune.nlp.storage import StoreOpener
from kftune.nlp.trainer import dev_score, resolve_autocast, resolve_device

log = logging.getLogger(__name__)

#: Dev sentences the optional dev metric is measured on (a fixed, seeded subset).
DEFAULT_DEV_SUBSET = 256

# The hyperparameters that shape the encoded data (vocabularies, truncation, extra id columns).
_DATA_FIELDS = ("min_word_freq", "max_length", "char_embeddings", "pretrained_embeddings", "ngram_buckets",
                "word_ngrams", "char_ngram_min", "char_ngram_max", "ngram_min_count")


@dataclass
class PreparedData:
    """A corpus encoded for one set of data-shaping hyperparameters (see :func:`prepare_data`).

    Reusable across range tests and training runs whose hyperparameters agree on ``min_word_freq``,
    ``max_length``, ``char_embeddings`` and ``pretrained_embeddings`` (:meth:`check_compatible`).
    """

    corpus: str
    info: dict[str, Any]
    task: TaskInfo
    encoder: TextEncoder
    train: EncodedDataset
    dev: EncodedDataset | None
    pretrained_weights: torch.Tensor | None
    data_hyperparameters: dict[str, Any]
    open_store: StoreOpener | None = None
    """Reads the transformer of the hyperparameters from an artifact store (see :mod:`kftune.nlp.storage`)."""

    def check_compatible(self, hp: Hyperparameters) -> None:
        """Raise :class:`ConfigError` when ``hp`` would have encoded the corpus differently."""
        wanted = _data_fields(hp)
        diff = [k for k in _DATA_FIELDS if wanted[k] != self.data_hyperparameters[k]]
        if diff:
            raise ConfigError([Problem(f"hyperparameters.{k}",
                                       f"{wanted[k]!r} differs from {self.data_hyperparameters[k]!r}, with which "
                                       f"the corpus was encoded; call prepare_data with these hyperparameters")
                               for k in diff])


def _data_fields(hp: Hyperparameters) -> dict[str, Any]:
    out = {k: getattr(hp, k) for k in _DATA_FIELDS}
    out["char_embeddings"] = hp.char_embeddings != "none"  # only whether chars are encoded matters
    if not hp.uses_ngrams:   # the n-gram settings shape the encoding only when there is a bag
        out.update(ngram_buckets=None, word_ngrams=None, char_ngram_min=None, char_ngram_max=None,
                   ngram_min_count=None)
    return out


def prepare_data(corpus_dir: str | Path, hp: Hyperparameters, *, need_dev: bool = False,
                 open_store: StoreOpener | None = None) -> PreparedData:
    """Read the corpus step's output in ``corpus_dir`` (``corpus.json``, ``train.jsonl``, ``dev.jsonl``),
    build the vocabularies from train (and load pretrained vectors when ``hp.pretrained_embeddings`` is set,
    keeping the corpus' words), and encode train and dev. ``dev.jsonl`` may be absent unless ``need_dev``.
    ``open_store`` reads pretrained vectors and transformer weights that sit in an artifact store.
    Raises :class:`DataError` for a missing or malformed corpus."""
    root = Path(corpus_dir)
    info = read_corpus_info(root)
    task = task_from_corpus_info(info)
    train_examples = read_split(root / "train.jsonl", task.type)
    dev_path = root / "dev.jsonl"
    dev_examples: list[Example] | None = None
    if dev_path.is_file():
        dev_examples = read_split(dev_path, task.type)
    elif need_dev:
        raise DataError(f"{dev_path}: no dev split; the dev metric needs one (the corpus step writes dev.jsonl)")
    if not train_examples:
        raise DataError(f"{root / 'train.jsonl'}: the training split is empty")
    encoder, train, dev, weights = encode_corpus(task, train_examples, dev_examples, hp, open_store=open_store)
    return PreparedData(corpus=str(corpus_dir), info=info, task=task, encoder=encoder, train=train, dev=dev,
                        pretrained_weights=weights, data_hyperparameters=_data_fields(hp), open_store=open_store)


def fresh_model(data: PreparedData, hp: Hyperparameters, seed: int, storage_mode: str = "none") -> Model:
    """A newly initialised model for ``data`` (torch's RNG seeded with ``seed`` first)."""
    seed_everything(seed)
    model = build_model(data.task.type, hp, data.encoder, pretrained_weights=data.pretrained_weights,
                        storage_mode=storage_mode, open_store=data.open_store)
    fit_to_training_split(model, data.train)
    return model


def steps_per_epoch(data: PreparedData, hp: Hyperparameters) -> int:
    """Mini-batches in one pass over the usable training sentences."""
    return math.ceil(data.train.num_usable / hp.mini_batch_size)


def capped_config(config: RangeTestConfig, epoch_batches: int) -> tuple[RangeTestConfig, bool]:
    """``config`` with ``iterations`` capped at one epoch's batches (the lr span unchanged), and whether it was."""
    if config.iterations <= epoch_batches:
        return config, False
    if epoch_batches < 2:
        raise DataError(f"one epoch is {epoch_batches} mini-batch(es); a range test needs at least 2 and "
                        "usefully dozens: use a larger training split or a smaller mini_batch_size")
    return dataclasses.replace(config, iterations=epoch_batches), True


def _dev_subset(dev: EncodedDataset, size: int, seed: int) -> list[int]:
    usable = list(dev.usable)
    if len(usable) > size:
        usable = sorted(random.Random(seed).sample(usable, size))
    return usable


class _DevProbe:
    """Evaluates the model on a fixed dev subset: (dev loss per item, dev score)."""

    def __init__(self, data: PreparedData, dev: EncodedDataset, positions: Sequence[int], batch_size: int,
                 device: torch.device, dtype: torch.dtype | None):
        self.data, self.dev, self.device, self.dtype = data, dev, device, dtype
        ordered = sorted(positions, key=lambda i: (len(dev.words[i]), i))
        self.order = [ordered[s:s + batch_size] for s in range(0, len(ordered), batch_size)]
        gold = dev.gold()
        self.positions = list(positions)
        self.gold = [gold[i] for i in self.positions]

    def __call__(self, model: Model) -> tuple[float, float]:
        labels = self.data.encoder.labels
        classification = self.data.task.is_classification
        predicted: dict[int, Any] = {}
        loss_sum, count = 0.0, 0
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), autocast_context(self.device, self.dtype):
                for batch in iterate_batches(self.dev, self.order, self.device):
                    loss, n, pred = model.loss_and_predict(batch, with_scores=False)
                    loss_sum += float(loss)
                    count += n
                    for row, i in enumerate(batch.indices):
                        predicted[i] = (labels.itos[pred.labels[row]] if classification
                                        else labels.decode(pred.labels[row]))
        finally:
            model.train(was_training)
        score = dev_score(self.data.task, self.gold, [predicted[i] for i in self.positions])
        return loss_sum / max(count, 1), score


def _train_step(model: Model, optimizer: torch.optim.Optimizer, data: EncodedDataset, indices: Sequence[int],
                hp: Hyperparameters, device: torch.device, dtype: torch.dtype | None, cache: bool) -> float:
    """One mini-batch as the trainer does it; returns the mean loss per item (not stepped when non-finite)."""
    batch = collate(data, indices, cache=cache)
    total = batch.count
    loss_sum = 0.0
    for chunk in batch.chunks(hp.mini_batch_chunk_size):
        if device.type == "cuda":
            chunk = chunk.pin_memory().to(device, non_blocking=True)
        with autocast_context(device, dtype):
            loss, _ = model.loss(chunk)
        (loss / total).backward()
        loss_sum += float(loss.detach())
    mean = loss_sum / max(total, 1)
    if math.isfinite(mean):
        if hp.clip_grad_norm is not None:
            clip_gradients(model.parameters(), hp.clip_grad_norm)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return mean


def run_range_test(corpus: str | Path | PreparedData, hyperparameters: Hyperparameters,
                   trainer_config: TrainerConfig | None = None, range_config: RangeTestConfig | None = None, *,
                   device: str | torch.device | None = None, seed: int | None = None,
                   dev_metric_every: int | None = None, dev_subset: int = DEFAULT_DEV_SUBSET,
                   show_progress: bool = True, open_store: StoreOpener | None = None) -> RangeTestResult:
    """Run one LR range test on a fresh model and return the analysed curve (see the module docstring).

    ``corpus``: the corpus step's output directory, or data from :func:`prepare_data` (to encode once for
    several runs). ``trainer_config`` supplies ``device``, ``precision``, ``embeddings_storage_mode``,
    ``num_threads`` and ``seed`` (``device``/``seed`` arguments win). ``dev_metric_every``: evaluate every
    that many batches on ``dev_subset`` dev sentences (``None``: never). ``result.extra`` holds
    ``iterations_requested``, ``capped``, ``steps_per_epoch``, ``batches``, ``seconds``, ``device``,
    ``seed``, ``precision``, the dev settings and, with a dev metric, ``dev_loss`` per batch (``None``
    where not measured). ``open_store``: see :func:`prepare_data`.
    """
    hp = hyperparameters
    tc = trainer_config or TrainerConfig()
    requested = range_config or RangeTestConfig()
    seed = tc.seed if seed is None else int(seed)
    problems = []
    if dev_metric_every is not None and (isinstance(dev_metric_every, bool) or not isinstance(dev_metric_every, int)
                                         or dev_metric_every < 1):
        problems.append(Problem("dev_metric_every", f"must be an integer >= 1 (batches between dev evaluations) "
                                                    f"or None, got {dev_metric_every!r}"))
    if isinstance(dev_subset, bool) or not isinstance(dev_subset, int) or dev_subset < 1:
        problems.append(Problem("dev_subset", f"must be an integer >= 1 (dev sentences), got {dev_subset!r}"))
    if problems:
        raise ConfigError(problems)
    if isinstance(corpus, PreparedData):
        data = corpus
        data.check_compatible(hp)
        if dev_metric_every is not None and data.dev is None:
            raise DataError(f"{data.corpus}: no dev split; the dev metric needs one")
    else:
        data = prepare_data(corpus, hp, need_dev=dev_metric_every is not None, open_store=open_store)
    if data.train.num_usable == 0:
        raise DataError(f"{data.corpus}: the training split has no usable (non-empty) sentences")
    dev_ok = data.dev is not None and data.dev.num_usable > 0
    if dev_metric_every is not None and not dev_ok:
        raise DataError(f"{data.corpus}: the dev split has no usable sentences for the dev metric")

    dev_name = device if isinstance(device, str) else None
    torch_device = device if isinstance(device, torch.device) else resolve_device(dev_name or tc.device)
    dtype = resolve_autocast(tc.precision, torch_device)
    epoch_batches = steps_per_epoch(data, hp)
    config, capped = capped_config(requested, epoch_batches)
    if capped:
        log.warning("range test capped at one epoch: %d mini-batches of %d (%d usable sentences) instead of "
                    "the %d asked for; the lr still runs from %g to %g", config.iterations, hp.mini_batch_size,
                    data.train.num_usable, requested.iterations, config.start_lr, config.end_lr)

    rng_before = capture_rng_state()
    threads_before = torch.get_num_threads()
    if tc.num_threads is not None:
        torch.set_num_threads(tc.num_threads)
    started = time.perf_counter()
    dev_losses: list[float | None] = []
    try:
        cache = tc.embeddings_storage_mode != "none"
        model = fresh_model(data, hp, seed, storage_mode=tc.embeddings_storage_mode)
        model.to(torch_device)
        optimizer = build_optimizer(model.parameters(), hp, sparse=sparse_parameters(model))
        probe = None
        if dev_metric_every is not None and data.dev is not None:
            probe = _DevProbe(data, data.dev, _dev_subset(data.dev, dev_subset, seed),
                              tc.eval_batch_size or 2 * hp.mini_batch_size, torch_device, dtype)
        order = batch_order(data.train, hp.mini_batch_size, shuffle=True, seed=seed)[:config.iterations]
        state = RangeTestState(config)
        log.info("LR range test on %s: %d mini-batches of %d, lr %g -> %g (%s), %s%s, seed %d",
                 data.info.get("name") or data.corpus, config.iterations, hp.mini_batch_size, config.start_lr,
                 config.end_lr, config.mode, torch_device, " bf16" if dtype is not None else "", seed)
        model.train()
        bar = Progress(config.iterations, "lr range test", unit="batch") if show_progress else None
        try:
            for b, indices in enumerate(order):
                lr = state.next_lr
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = _train_step(model, optimizer, data.train, indices, hp, torch_device, dtype, cache)
                metric = None
                dev_loss = None
                if probe is not None and (b + 1) % dev_metric_every == 0:  # type: ignore[operator]
                    dev_loss, metric = probe(model)
                dev_losses.append(dev_loss)
                go_on = state.update(loss, lr=lr, metric=metric)
                if bar is not None:
                    bar.set_postfix_str(f"lr {lr:.2e} loss {state.smoothed[-1]:.4f}")
                    bar.update(1)
                if not go_on:
                    break
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - started
    finally:
        restore_rng_state(rng_before)
        torch.set_num_threads(threads_before)
    result = state.result()
    extra: dict[str, Any] = {
        "iterations_requested": requested.iterations, "capped": capped, "steps_per_epoch": epoch_batches,
        "batches": len(result.losses), "seconds": round(seconds, 4), "device": str(torch_device),
        "precision": "bf16" if dtype is not None else "fp32", "seed": seed,
        "mini_batch_size": hp.mini_batch_size, "train_sentences": data.train.num_usable,
    }
    if capped:
        extra["cap_reason"] = (f"{requested.iterations} iterations asked for, but one epoch is {epoch_batches} "
                               f"mini-batches: the test ran at most one epoch with the same lr span")
    if probe is not None:
        extra.update(dev_metric_every=dev_metric_every, dev_subset=len(probe.positions),
                     dev_loss=[None if x is None or not math.isfinite(x) else x for x in dev_losses])
    result = dataclasses.replace(result, extra=extra)
    s = result.suggestion
    log.info("LR range test: %d batches in %.1fs (%s); %s suggests %s; range %s", len(result.losses), seconds,
             result.stop_reason, result.method, "none" if s.lr is None else f"{s.lr:.3g}",
             "none" if result.range is None else f"[{result.range.base_lr:.3g}, {result.range.max_lr:.3g}]")
    return result
