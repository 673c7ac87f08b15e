"""The training loop every trial, the LR range test's caller and the final training share.

One code path for CPU and CUDA: batches are collated on the CPU and, on CUDA, copied through pinned
memory with non-blocking copies; the forward pass runs under bf16 autocast on CUDA (``precision``
``auto``) and in float32 on the CPU. Deterministic on the CPU given a seed: batch order is a
function of (seed, epoch), dropout draws from torch's RNG whose state is checkpointed.

Per epoch: train (with ``mini_batch_chunk_size`` gradient accumulation, gradient clipping and the
schedule of :mod:`kftune.nlp.schedulers`), evaluate on dev (loss and :func:`dev_score`), keep the
best weights, call the callbacks, write a checkpoint. Stops on ``max_epochs``, on ``patience``
epochs without a better dev score, when annealing pushes the lr below ``min_learning_rate``, when
a callback asks, or pauses at ``until_epoch`` (a successive-halving budget; resume later).

Callback contract (for the search engine): ``on_epoch_end(epoch, result) -> bool``; ``True`` stops
the training after this epoch (the checkpoint records the stop).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Protocol, Sequence

import torch

from kftune._progress import Progress
from kftune.core.errors import ConfigError, Problem, TrainingInterrupted, TrialFailedError
from kftune.nlp.checkpoint import CheckpointStore, capture_rng_state, restore_rng_state, snapshot
from kftune.nlp.config import Hyperparameters, TrainerConfig
from kftune.nlp.data import (
    UNK_LABEL,
    EncodedDataset,
    TaskInfo,
    TextEncoder,
    batch_order,
    collate,
    iterate_batches,
)
from kftune.nlp.models import Model, fit_to_training_split
from kftune.nlp.predict import autocast_context
from kftune.nlp.schedulers import Schedule, build_optimizer, clip_gradients, sparse_parameters
from kftune.nlp.weights import record_interval

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Results, callbacks, errors


@dataclass
class EpochResult:
    """What one epoch produced (a row of ``loss.tsv``)."""

    run: int
    epoch: int
    timestamp: str
    seconds: float
    learning_rate: float
    train_loss: float
    dev_loss: float
    dev_score: float
    samples_per_second: float
    improved: bool
    dev_scores_by_corpus: dict[str, float] | None = None  # several corpora (MultiCorpus): each one's dev score

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    """The outcome of :meth:`Trainer.fit`.

    ``status``: ``max_epochs``, ``early_stopped`` (patience), ``min_lr`` (annealed below
    ``min_learning_rate``), ``stopped`` (a callback), or ``paused`` (``until_epoch`` reached; can be
    resumed). ``best_state`` holds the best dev epoch's weights on the CPU.
    """

    status: str
    best_score: float
    best_epoch: int
    epochs: int
    history: list[EpochResult]
    seconds: float
    samples_per_second: float
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    final_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.status != "paused"


class EpochCallback(Protocol):
    def on_epoch_end(self, epoch: int, result: EpochResult) -> bool | None:
        """Called after each epoch's dev evaluation; return ``True`` to stop training."""
        ...


# ------------------------------------------------------------------------------------------------
# Devices and the dev metric


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError([Problem("train.device", "cuda was asked for but no CUDA device is available; "
                                                   "use auto or cpu")])
    return torch.device(name)


def resolve_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bf16 on a CUDA device that supports it, float32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def dev_score(task: TaskInfo, gold: Sequence[Any], predicted: Sequence[Any]) -> float:
    """The metric training selects on: accuracy for classification; micro span F1 (seqeval) for
    BIO/BIOES tags; token accuracy otherwise (POS). Predicted tag sequences shorter than the gold
    one (a truncated sentence) are padded with ``O`` (span schemes) or ``<unk>`` (counted wrong)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold items but {len(predicted)} predictions")
    if not gold:
        return 0.0
    if task.is_classification:
        return sum(g == p for g, p in zip(gold, predicted)) / len(gold)
    scheme = (task.tag_scheme or "").upper()
    filler = "O" if scheme in ("BIO", "BIOES", "IOB", "IOBES") else UNK_LABEL
    pred = [list(p) + [filler] * (len(g) - len(p)) for g, p in zip(gold, predicted)]
    gold_l = [list(g) for g in gold]
    if scheme in ("BIO", "IOB"):
        # strict IOB2, as kftune evaluate scores the test split: a stray I- without its B- is no entity
        from seqeval.metrics import f1_score
        from seqeval.scheme import IOB2

        return float(f1_score(gold_l, pred, average="micro", mode="strict", scheme=IOB2, zero_division=0))
    if scheme in ("BIOES", "IOBES"):
        from seqeval.metrics import f1_score
        from seqeval.scheme import IOBES

        return float(f1_score(gold_l, pred, average="micro", mode="strict", scheme=IOBES, zero_division=0))
    total = sum(len(g) for g in gold_l)
    return sum(a == b for g, p in zip(gold_l, pred) for a, b in zip(g, p)) / max(total, 1)


def scores_by_corpus(task: TaskInfo, examples: Sequence[Any], gold: Sequence[Any],
                     predicted: Sequence[Any]) -> dict[str, float] | None:
    """:func:`dev_score` of each source corpus of a split prepared from several corpora (the examples'
    ``corpus``), in the order the corpora first appear; ``None`` for a split of one corpus."""
    groups: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        name = getattr(example, "corpus", None)
        if name is not None:
            groups.setdefault(name, []).append(i)
    if len(groups) < 2:
        return None
    return {name: dev_score(task, [gold[i] for i in idx], [predicted[i] for i in idx])
            for name, idx in groups.items()}


# ------------------------------------------------------------------------------------------------
# The trainer


def _state_to_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


class Trainer:
    """Trains one model (one run). See the module docstring for the loop and the stop rules.

    ``stop_requested`` is polled after every optimizer step (a SIGTERM handler sets it): the trainer
    then writes a mid-epoch checkpoint and raises :class:`TrainingInterrupted`.

    ``weights`` (:class:`kftune.nlp.weights.WeightTracker`, ``train.writeWeights``) records weight
    statistics before the first step, every tenth of an epoch and at its end; its rows go into the checkpoints.
    When the dev split holds several corpora (their examples name it), each epoch's result carries the dev
    score of each (``dev_scores_by_corpus``); training still selects on the score over the whole split.
    """

    def __init__(self, model: Model, encoder: TextEncoder, train_data: EncodedDataset, dev_data: EncodedDataset,
                 hp: Hyperparameters, config: TrainerConfig, *, seed: int | None = None, run: int = 1,
                 device: torch.device | None = None, callbacks: Sequence[EpochCallback | Callable] = (),
                 checkpoints: CheckpointStore | None = None,
                 stop_requested: Callable[[], bool] | None = None, show_progress: bool = True,
                 weights: Any = None):
        if train_data.num_usable == 0:
            raise TrialFailedError("the training split has no usable (non-empty) sentences")
        self.model, self.encoder, self.hp, self.config = model, encoder, hp, config
        self.train_data, self.dev_data = train_data, dev_data
        self.seed = config.seed if seed is None else seed
        self.run = run
        self.device = device or resolve_device(config.device)
        self.autocast_dtype = resolve_autocast(config.precision, self.device)
        self.callbacks = list(callbacks)
        self.checkpoints = checkpoints
        self.stop_requested = stop_requested or (lambda: False)
        self.show_progress = show_progress
        self.weights = weights
        self.eval_batch_size = config.eval_batch_size or 2 * hp.mini_batch_size
        fit_to_training_split(self.model, train_data)
        self.model.to(self.device)
        if getattr(self.model, "embeddings", None) is not None:
            self.model.embeddings.set_storage_mode(config.embeddings_storage_mode)
        self.steps_per_epoch = math.ceil(train_data.num_usable / hp.mini_batch_size)
        self.optimizer = build_optimizer(self.model.parameters(), hp, sparse=sparse_parameters(self.model))
        self.schedule = Schedule(self.optimizer, hp, self.steps_per_epoch, config.max_epochs)
        # progress state (all of it goes into checkpoints)
        self.epoch = 0
        self.best_score = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[EpochResult] = []
        self.status = "running"
        self.elapsed = 0.0
        self._position: dict[str, Any] | None = None

    # -- checkpoints ---------------------------------------------------------------------------
    def _checkpoint_state(self, position: dict[str, Any] | None = None) -> dict[str, Any]:
        # at the end of the best epoch the best weights are the model's: store (and copy) them once
        best_is_model = position is None and self.best_state is not None and self.best_epoch == self.epoch
        model_state = self.best_state if best_is_model else _state_to_cpu(self.model.state_dict())
        return {
            "run": self.run, "seed": self.seed, "epoch": self.epoch, "position": position,
            "status": self.status, "model": model_state,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.state_dict(),
            "rng": capture_rng_state(), "best_score": self.best_score, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "best_state": None if best_is_model else self.best_state,
            "best_is_model": best_is_model,
            "history": [h.to_dict() for h in self.history], "elapsed": self.elapsed,
            "hyperparameters": self.hp.to_dict(),
            "trainer": {"max_epochs": self.config.max_epochs, "patience": self.config.patience},
            "weights": self.weights.state_dict() if self.weights is not None else None,
        }

    def save_checkpoint(self, position: dict[str, Any] | None = None, background: bool = False) -> None:
        """Write the trainer's state; ``background`` writes a snapshot while training goes on."""
        if self.checkpoints is None:
            return
        state = self._checkpoint_state(position)
        if background:
            state["optimizer"] = snapshot(state["optimizer"])
            state["scheduler"] = snapshot(state["scheduler"])
        self.checkpoints.save(state, background=background)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by this trainer (same hyperparameters)."""
        saved = state.get("hyperparameters")
        current = self.hp.to_dict()
        if saved != current:
            # a field added by a later kftune is missing from an older checkpoint: it matches when this run
            # leaves it at the field's default (the older version behaved as the default does)
            defaults = Hyperparameters().to_dict()
            saved = {**{k: defaults[k] for k in current if k not in (saved or {})}, **(saved or {})}
        if saved != current:
            diff = sorted(k for k in current if saved.get(k) != current[k])
            raise ConfigError([Problem("resume", f"the checkpoint was written with other hyperparameters "
                                                 f"({', '.join(diff)}); resume with the same settings, or "
                                                 "train without --resume into a new output")])
        if state.get("seed") != self.seed:
            raise ConfigError([Problem("resume", f"the checkpoint was written with seed {state.get('seed')}, "
                                                 f"not {self.seed}")])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.best_state = state.get("best_state")
        if state.get("best_is_model"):
            self.best_state = _state_to_cpu(state["model"])
        self.history = [EpochResult(**h) for h in state["history"]]
        self.status = str(state["status"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self._position = state.get("position")
        if self.weights is not None:
            self.weights.load_state_dict(state.get("weights"))
        where = (f"epoch {self._position['epoch']} batch {self._position['batch']}" if self._position
                 else f"the end of epoch {self.epoch}")
        log.info("run %d: resumed from %s (%s)", self.run, where, self.checkpoints.uri if self.checkpoints else "")

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, dataset: EncodedDataset) -> tuple[float, float, list[Any]]:
        """(mean loss, dev score, predicted labels/tag lists as strings) on ``dataset``."""
        self.model.eval()
        loss_sum, count = 0.0, 0
        labels = self.encoder.labels
        classification = self.encoder.task.is_classification
        predicted: list[Any] = [UNK_LABEL if classification else [] for _ in range(len(dataset))]
        cache = self.config.embeddings_storage_mode != "none"
        order = batch_order(dataset, self.eval_batch_size, shuffle=False)
        with torch.inference_mode(), autocast_context(self.device, self.autocast_dtype):
            for batch in iterate_batches(dataset, order, self.device, cache=cache):
                loss, n, pred = self.model.loss_and_predict(batch, with_scores=False)
                loss_sum += float(loss)
                count += n
                for row, i in enumerate(batch.indices):
                    predicted[i] = labels.itos[pred.labels[row]] if classification else labels.decode(pred.labels[row])
        score = dev_score(self.encoder.task, dataset.gold(), predicted)
        return loss_sum / max(count, 1), score, predicted

    # -- training --------------------------------------------------------------------------------
    def _check_finite(self, loss_sum: float) -> None:
        if not math.isfinite(loss_sum):
            raise TrialFailedError(f"the training loss became {loss_sum} in epoch {self.epoch + 1}; "
                                   f"lower learning_rate (now {self.schedule.lr:g}) or enable clip_grad_norm")

    def _train_step(self, batch_indices: Sequence[int], cache: bool) -> tuple[torch.Tensor, int]:
        """One optimizer step; returns the summed loss (a float64 tensor on the device: reading it
        forces a CUDA sync, so the loop does that only now and then) and the item count."""
        batch = collate(self.train_data, batch_indices, cache=cache)
        total = batch.count
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for chunk in batch.chunks(self.hp.mini_batch_chunk_size):
            if self.device.type == "cuda":
                chunk = chunk.pin_memory().to(self.device, non_blocking=True)
            with autocast_context(self.device, self.autocast_dtype):
                loss, _ = self.model.loss(chunk)
            (loss / total).backward()
            loss_sum += loss.detach().double()
        if self.device.type == "cpu":  # free on the CPU: never step on a NaN loss
            self._check_finite(float(loss_sum))
        if self.hp.clip_grad_norm is not None:
            clip_gradients(self.model.parameters(), self.hp.clip_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.after_batch()
        return loss_sum, total

    def fit(self, until_epoch: int | None = None, resume: bool = True) -> FitResult:
        """Train to the end (or to ``until_epoch``), continuing from the checkpoint when ``resume``
        and one exists. Returns the best dev score and its weights."""
        if resume and self.checkpoints is not None and self.checkpoints.exists():
            state = self.checkpoints.load()
            if state is not None:
                self.restore(state)
        if self.status not in ("running", "paused"):
            log.info("run %d: already finished (%s) at epoch %d", self.run, self.status, self.epoch)
            return self._result()
        self.status = "running"
        max_epochs = self.config.max_epochs
        cache = self.config.embeddings_storage_mode != "none"
        if self.weights is not None and not self.weights.rows:
            self.weights.record(self.epoch * self.steps_per_epoch, self.epoch)  # the weights before training
        while self.epoch < max_epochs:
            epoch = self.epoch + 1
            if until_epoch is not None and epoch > until_epoch:
                self.status = "paused"
                break
            if self.hp.scheduler == "plateau" and self.schedule.lr < self.config.min_learning_rate:
                log.info("run %d: learning rate %.3g below min_learning_rate %.3g: stopping", self.run,
                         self.schedule.lr, self.config.min_learning_rate)
                self.status = "min_lr"
                break
            order = batch_order(self.train_data, self.hp.mini_batch_size, shuffle=True,
                                seed=self.seed * 1_000_003 + epoch)
            position = self._position if self._position and self._position["epoch"] == epoch else None
            self._position = None
            start_batch = position["batch"] if position else 0
            loss_sum = torch.tensor(position["loss_sum"] if position else 0.0, dtype=torch.float64,
                                    device=self.device)
            count = position["count"] if position else 0
            samples = position["samples"] if position else 0
            seconds_before = position["seconds"] if position else 0.0
            lr = self.schedule.lr
            self.model.train()
            started = time.perf_counter()
            bar = Progress(len(order), f"run {self.run} epoch {epoch}/{max_epochs}", unit="batch") \
                if self.show_progress else None
            if bar is not None and start_batch:
                bar.update(start_batch)
            interval = record_interval(len(order))
            for b in range(start_batch, len(order)):
                step_loss, step_count = self._train_step(order[b], cache)
                loss_sum += step_loss
                count += step_count
                samples += len(order[b])
                if self.weights is not None and ((b + 1) % interval == 0 or b + 1 == len(order)):
                    self.weights.record((epoch - 1) * len(order) + b + 1, epoch)
                if b % 50 == 49:
                    self._check_finite(float(loss_sum))
                if bar is not None:
                    bar.update(1)
                    if b % 20 == 0:
                        bar.set_postfix_str(f"loss {float(loss_sum) / max(count, 1):.4f}")
                if self.stop_requested() and b + 1 < len(order):
                    if bar is not None:
                        bar.close()
                    seconds = seconds_before + time.perf_counter() - started
                    self.elapsed += time.perf_counter() - started
                    self.save_checkpoint({"epoch": epoch, "batch": b + 1, "loss_sum": float(loss_sum),
                                          "count": count, "samples": samples, "seconds": seconds})
                    raise TrainingInterrupted(self.checkpoints.uri if self.checkpoints else None, epoch, b + 1)
            if bar is not None:
                bar.close()
            epoch_loss = float(loss_sum)
            self._check_finite(epoch_loss)
            train_seconds = time.perf_counter() - started
            dev_loss, score, predicted = self.evaluate(self.dev_data)
            by_corpus = scores_by_corpus(self.encoder.task, self.dev_data.examples, self.dev_data.gold(), predicted)
            seconds = seconds_before + time.perf_counter() - started
            self.elapsed += time.perf_counter() - started
            improved = score > self.best_score
            if improved:
                self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
                if self.config.keep_best:
                    self.best_state = _state_to_cpu(self.model.state_dict())
            else:
                self.bad_epochs += 1
            self.schedule.after_epoch(score)
            self.epoch = epoch
            result = EpochResult(run=self.run, epoch=epoch, timestamp=datetime.now(timezone.utc).isoformat(
                timespec="seconds"), seconds=round(seconds, 4), learning_rate=lr,
                train_loss=epoch_loss / max(count, 1), dev_loss=dev_loss, dev_score=score,
                samples_per_second=samples / max(seconds_before + train_seconds, 1e-9), improved=improved,
                dev_scores_by_corpus=by_corpus)
            self.history.append(result)
            per_corpus = (" (" + ", ".join(f"{name} {value:.4f}" for name, value in by_corpus.items()) + ")"
                          if by_corpus else "")
            log.info("run %d epoch %d: train loss %.4f, dev loss %.4f, dev score %.4f%s%s, lr %.3g, %.1fs",
                     self.run, epoch, result.train_loss, dev_loss, score, per_corpus, " (best)" if improved else "",
                     lr, seconds)
            stop = False
            for cb in self.callbacks:
                fn = getattr(cb, "on_epoch_end", cb)
                if fn(epoch, result):
                    stop = True
            if stop:
                self.status = "stopped"
            elif self.bad_epochs >= self.config.patience and self.bad_epochs > 0:
                log.info("run %d: no better dev score for %d epochs (patience %d): stopping", self.run,
                         self.bad_epochs, self.config.patience)
                self.status = "early_stopped"
            elif self.epoch >= max_epochs:
                self.status = "max_epochs"
            self.save_checkpoint(background=self.status == "running")
            if self.status != "running":
                break
            if self.stop_requested():
                if self.checkpoints is not None:
                    self.checkpoints.wait()
                raise TrainingInterrupted(self.checkpoints.uri if self.checkpoints else None, epoch, len(order))
        if self.status == "running":  # loop left by the lr check or until_epoch without a status
            self.status = "max_epochs"
        if self.status in ("min_lr", "paused"):
            self.save_checkpoint()
        if self.checkpoints is not None:
            self.checkpoints.wait()
        return self._result()

    def _result(self) -> FitResult:
        rates = [h.samples_per_second for h in self.history]
        best = self.best_state if self.best_state is not None else _state_to_cpu(self.model.state_dict())
        return FitResult(status=self.status, best_score=self.best_score if self.history else float("nan"),
                         best_epoch=self.best_epoch, epochs=self.epoch, history=list(self.history),
                         seconds=self.elapsed, samples_per_second=sum(rates) / len(rates) if rates else 0.0,
                         best_state=best if self.config.keep_best else None,
                         final_state=_state_to_cpu(self.model.state_dict()))


def copy_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A deep copy of a state dict (for callers that keep several)."""
    return copy.deepcopy(state)
