"""``kftune train``: train a text classifier or sequence tagger on a prepared corpus.

Reads the corpus step's output (a directory or store URI), trains ``training_runs`` models with
seeds ``seed, seed+1, ...`` and writes under ``--out`` (a directory or ``s3://`` URI):

    model.pt              the best run's best-dev weights + vocabularies + labels + config (one file)
    loss.tsv              per epoch: epoch, time, learning_rate, train_loss, dev_loss, dev_score, ...
                          (a corpus prepared from several corpora: also dev_score_<corpus> per corpus)
    training_curve.png    losses and dev score per epoch, learning rate on a second axis
    weights.tsv           with ``write_weights`` (``train.writeWeights``, ``--write-weights``): every tenth of
                          an epoch, per parameter tensor: mean, std, norm and 10 sampled values
                          (:mod:`kftune.nlp.weights`, Flair's weights.txt)
    weights.png           with ``write_weights``: one small plot per tensor of those values over iterations
    checkpoints/run-N.pt  the last checkpoint of run N (every epoch; on SIGTERM mid-epoch too)
    result.json           the :class:`TrainResult`

With ``train_with_dev`` (``train.trainWithDev``, ``--train-with-dev``; Flair's option of that name) the best run
is then trained again from its seed on train + dev, for the epochs at which it scored best on the dev split it
had not seen, and that model is ``model.pt`` (:func:`_train_with_dev`). ``dev_score`` stays the held-out
score of the first phase; the second phase writes ``loss_with_dev.tsv`` and ``checkpoints/run-N-with-dev.pt``.

The pipeline's final training is :func:`run_final`: the winner of the search (select-best's record) trained
with the spec's ``model`` and ``train`` blocks into the run's journal (``runs/<run>/final/``), resumed.

``--resume`` continues from the checkpoints and ends where an uninterrupted run would. SIGTERM
(pod eviction) writes a checkpoint and exits with code 143. Metrics go to the sinks of
``kftune.io.metrics.sinks_from_env`` per epoch (train_loss, dev_loss, dev_score, learning_rate,
samples_per_second, epoch, epoch_seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from kftune.core.errors import ConfigError, DataError, Problem
from kftune.nlp.config import Hyperparameters, TrainerConfig, parse_assignments, settings_from_job
from kftune.steps._common import CheckedConfig, add_common_arguments, run_main

log = logging.getLogger(__name__)

LOSS_COLUMNS = ("epoch", "time", "learning_rate", "train_loss", "dev_loss", "dev_score", "seconds",
                "samples_per_second", "run")


@dataclass(frozen=True)
class TrainConfig(CheckedConfig):
    """Everything one training needs.

    ``corpus``: the corpus step's output (directory or store URI). ``out``: where outputs go
    (directory or store URI). ``task_type``: checked against ``corpus.json`` when given (a spec's
    ``task.type``). ``until_epoch``: stop after this epoch with status ``paused`` (a successive-halving
    budget); a later run with ``resume=True`` continues. ``handle_signals``: turn SIGTERM into a
    checkpoint and :class:`~kftune.core.errors.TrainingInterrupted` (main thread only).
    """

    corpus: str
    out: str
    hyperparameters: Hyperparameters | None = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    task_type: str | None = None
    resume: bool = False
    run_id: str | None = None
    trial: str | None = None
    until_epoch: int | None = None
    handle_signals: bool = True
    metrics_jsonl: str | None = None
    show_progress: bool = True

    def problems(self) -> list[Problem]:
        out = []
        if not self.corpus:
            out.append(Problem("corpus", "is empty; give the output directory or URI of `kftune corpus`"))
        if not self.out:
            out.append(Problem("out", "is empty; give a directory or store URI for the outputs"))
        if self.until_epoch is not None and self.until_epoch < 1:
            out.append(Problem("until_epoch", f"{self.until_epoch} must be >= 1"))
        return out


@dataclass(frozen=True)
class TrainResult:
    """What a training produced. ``dev_score`` is the mean of the runs' best dev scores (one run:
    that run's); the model file holds the best run's best epoch. ``dev_scores_by_corpus``: for a corpus
    prepared from several, each one's dev score at the best run's best epoch (empty otherwise)."""

    status: str
    task: str
    dev_score: float
    dev_scores: tuple[float, ...]
    best_run: int
    best_epoch: int
    epochs: int
    seconds: float
    samples_per_second: float
    model_uri: str | None
    out_uri: str
    hyperparameters: dict[str, Any]
    trainer: dict[str, Any]
    dev_scores_by_corpus: dict[str, float] = field(default_factory=dict)
    train_with_dev_epochs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["dev_scores"] = list(self.dev_scores)
        return out


@dataclass(frozen=True)
class _Refit:
    """The retraining on train + dev (``train_with_dev``): its last weights, the encoder and pretrained
    vectors it was built with, its epochs and the number of training examples."""

    final_state: dict[str, Any]
    encoder: Any
    pretrained_weights: Any
    epochs: int
    train_examples: int


def _fresh_run(config: TrainConfig, task: Any, hp: Hyperparameters, encoder: Any, weights: Any, store: Any,
               run_number: int, suffix: str = "") -> tuple[int, Any, Any]:
    """``(seed, model, checkpoints)`` of run ``run_number``: the seed set, a new model, and the checkpoint
    ``checkpoints/run-N<suffix>.pt`` (replaced, with a warning, unless the config resumes)."""
    from kftune.io.store import open_store
    from kftune.nlp.checkpoint import CheckpointStore, seed_everything
    from kftune.nlp.models import build_model

    seed = config.trainer.seed + run_number - 1
    seed_everything(seed)
    model = build_model(task.type, hp, encoder, pretrained_weights=weights,
                        storage_mode=config.trainer.embeddings_storage_mode, open_store=open_store)
    checkpoints = CheckpointStore(store, f"checkpoints/run-{run_number}{suffix}.pt")
    if not config.resume and checkpoints.exists():
        log.warning("run %d: replacing the checkpoint at %s (pass --resume to continue from it)",
                    run_number, checkpoints.uri)
        checkpoints.delete()
    return seed, model, checkpoints


def _train_with_dev(config: TrainConfig, task: Any, splits: Mapping[str, Sequence[Any]], hp: Hyperparameters,
                    held_out: Any, run_number: int, store: Any, device: Any, stop_flag: Any) -> _Refit:
    """Flair's ``train_with_dev``, with the epoch count measured first: the run ``run_number`` (whose fit on
    train alone is ``held_out``) trained again from its seed on train + dev, vocabularies and n-gram weights
    rebuilt from both, for the epochs at which that run scored best on the dev split it had not seen. Nothing
    is selected on dev here (its scores are on seen data): the last epoch's weights are the model, and the
    plateau scheduler, which reads the dev score, anneals when the fit to seen data stalls (Flair anneals on
    the training loss). Checkpointed as ``checkpoints/run-N-with-dev.pt`` and resumed like the first phase;
    the epochs go to ``loss_with_dev.tsv``; ``write_weights`` tracks the first phase only."""
    from kftune.io.store import open_store, put_text
    from kftune.nlp.embeddings import encode_corpus
    from kftune.nlp.trainer import Trainer

    tcfg = config.trainer
    epochs = max(held_out.best_epoch, 1)
    both = [*splits["train"], *splits["dev"]]
    encoder, train_data, dev_data, weights = encode_corpus(task, both, splits["dev"], hp,
                                                           also_known=splits.get("test", ()), open_store=open_store)
    log.info("train_with_dev: run %d again on train + dev (%d sentences) for %d epochs, its best on held-out dev; "
             "the dev scores below are on seen data", run_number, train_data.num_usable, epochs)
    seed, model, checkpoints = _fresh_run(config, task, hp, encoder, weights, store, run_number, "-with-dev")
    cfg = dataclasses.replace(tcfg, max_epochs=epochs, patience=epochs, keep_best=False, write_weights=False)

    def on_epoch_end(epoch: int, result: Any) -> bool:
        put_text(store, "loss_with_dev.tsv", loss_tsv([h.to_dict() for h in trainer.history]))
        return False

    trainer = Trainer(model, encoder, train_data, dev_data, hp, cfg, seed=seed, run=run_number, device=device,
                      callbacks=[on_epoch_end], checkpoints=checkpoints, stop_requested=stop_flag,
                      show_progress=config.show_progress)
    fit = trainer.fit(resume=config.resume)
    put_text(store, "loss_with_dev.tsv", loss_tsv([h.to_dict() for h in fit.history]))
    return _Refit(final_state=fit.final_state, encoder=encoder, pretrained_weights=weights, epochs=fit.epochs,
                  train_examples=train_data.num_usable)


# ------------------------------------------------------------------------------------------------
# Corpus and signals


@contextlib.contextmanager
def _local_corpus(uri: str) -> Iterator[Path]:
    """A local directory with the corpus files (a store URI is copied to a temporary directory)."""
    if "://" not in uri or uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
        if not path.is_dir():
            raise ConfigError([Problem("corpus", f"{uri}: not a directory; give the output of `kftune corpus`")])
        yield path
        return
    from kftune.io.store import open_store

    store = open_store(uri)
    with tempfile.TemporaryDirectory(prefix="kftune-corpus-") as tmp:
        for name in ("corpus.json", "train.jsonl", "dev.jsonl", "test.jsonl"):
            if name == "test.jsonl" and not store.exists(name):
                continue
            store.get_file(name, Path(tmp) / name)
        yield Path(tmp)


class _StopFlag:
    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self) -> bool:
        return self.event.is_set()


@contextlib.contextmanager
def _sigterm_to_flag(enabled: bool) -> Iterator[_StopFlag]:
    flag = _StopFlag()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: writing a checkpoint, then exiting (resume with --resume)")
        flag.event.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------------
# Outputs


def loss_tsv(rows: Sequence[dict[str, Any]]) -> str:
    """``loss.tsv``: :data:`LOSS_COLUMNS`, then ``dev_score_<corpus>`` for each corpus of a corpus prepared
    from several (the rows' ``dev_scores_by_corpus``)."""
    corpora: list[str] = []
    for r in rows:
        corpora += [c for c in (r.get("dev_scores_by_corpus") or {}) if c not in corpora]
    lines = ["\t".join(LOSS_COLUMNS + tuple(f"dev_score_{c}" for c in corpora))]
    for r in rows:
        by_corpus = r.get("dev_scores_by_corpus") or {}
        lines.append("\t".join([
            str(r["epoch"]), str(r["timestamp"]), f"{r['learning_rate']:.6g}", f"{r['train_loss']:.6f}",
            f"{r['dev_loss']:.6f}", f"{r['dev_score']:.6f}", f"{r['seconds']:.3f}",
            f"{r['samples_per_second']:.1f}", str(r["run"])]
            + [f"{by_corpus[c]:.6f}" if c in by_corpus else "" for c in corpora]))
    return "\n".join(lines) + "\n"


def _write_plot(store: Any, rows: Sequence[dict[str, Any]], title: str) -> None:
    from kftune.nlp.plots import plot_training_curve

    with tempfile.TemporaryDirectory(prefix="kftune-plot-") as tmp:
        path = plot_training_curve(rows, Path(tmp) / "training_curve.png", title=title)
        store.put_file("training_curve.png", path)


def _write_weights_plot(store: Any, rows: Sequence[Sequence[Any]], title: str, run: int) -> None:
    from kftune.nlp.plots import plot_weights

    with tempfile.TemporaryDirectory(prefix="kftune-plot-") as tmp:
        path = plot_weights(rows, Path(tmp) / "weights.png", title=title, run=run)
        store.put_file("weights.png", path)


# ------------------------------------------------------------------------------------------------
# run()


def run(config: TrainConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train as ``config`` says (see the module docstring). ``callbacks`` get
    ``on_epoch_end(epoch, EpochResult) -> bool`` (``True`` stops the run)."""
    config.validate()
    import torch

    from kftune.io.metrics import sinks_from_env
    from kftune.io.store import open_store, put_json, put_text
    from kftune.nlp.checkpoint import seed_everything
    from kftune.nlp.data import SPLITS, read_corpus_info, read_split, task_from_corpus_info
    from kftune.nlp.embeddings import encode_corpus
    from kftune.nlp.model_io import save_model
    from kftune.nlp.models import build_model
    from kftune.nlp.trainer import Trainer, resolve_device
    from kftune.nlp.weights import WeightTracker, weights_tsv

    started = time.perf_counter()
    tcfg = config.trainer
    with _local_corpus(config.corpus) as corpus_dir:
        info = read_corpus_info(corpus_dir)
        task = task_from_corpus_info(info)
        if config.task_type is not None and config.task_type != task.type:
            raise ConfigError([Problem("spec.task.type", f"{config.task_type!r}, but the corpus at {config.corpus} "
                                                         f"is {task.type!r}; train on a matching corpus")])
        splits = {s: read_split(corpus_dir / f"{s}.jsonl", task.type)
                  for s in SPLITS if (corpus_dir / f"{s}.jsonl").exists()}
    if "train" not in splits or "dev" not in splits:
        raise DataError(f"{config.corpus}: needs train.jsonl and dev.jsonl")
    hp = config.hyperparameters or Hyperparameters.from_mapping({}, task.type)
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    device = resolve_device(tcfg.device)

    encoder, train_data, dev_data, pretrained_weights = encode_corpus(task, splits["train"], splits["dev"], hp,
                                                                       also_known=splits.get("test", ()),
                                                                       open_store=open_store)
    log.info("%s (%s): %d train / %d dev sentences, %d words, %d labels, device %s",
             task.corpus_name, task.type, train_data.num_usable, len(dev_data), len(encoder.words),
             len(encoder.labels) - 1, device)

    store = open_store(config.out)
    sink = sinks_from_env("train", run_id=config.run_id, trial=config.trial, jsonl_path=config.metrics_jsonl)
    done_rows: list[dict[str, Any]] = []
    done_weights: list[list[Any]] = []  # weight statistics of the finished runs (write_weights)
    fits = []
    best_fit_index = 0
    best_state = None
    try:
        with _sigterm_to_flag(config.handle_signals) as stop_flag:
            for k in range(1, tcfg.training_runs + 1):
                seed, model, checkpoints = _fresh_run(config, task, hp, encoder, pretrained_weights, store, k)
                current: list[Trainer] = []  # the trainer below, once made (its history includes resumed epochs)
                tracker = WeightTracker(model, run=k) if tcfg.write_weights else None
                if tracker is not None and tracker.skipped:
                    log.info("write_weights: tracking the first %d of %d parameter tensors", len(tracker.tensors),
                             len(tracker.tensors) + tracker.skipped)

                def on_epoch_end(epoch: int, result: Any, _k: int = k, _current: list[Trainer] = current,
                                 _tracker: Any = tracker) -> bool:
                    rows = done_rows + [h.to_dict() for h in _current[0].history]
                    put_text(store, "loss.tsv", loss_tsv(rows))
                    if _tracker is not None:
                        put_text(store, "weights.tsv", weights_tsv(done_weights + _tracker.rows))
                    sink.log({"epoch": epoch, "train_loss": result.train_loss, "dev_loss": result.dev_loss,
                              "dev_score": result.dev_score, "learning_rate": result.learning_rate,
                              "samples_per_second": result.samples_per_second, "epoch_seconds": result.seconds},
                             step=epoch if tcfg.training_runs == 1 else (_k - 1) * tcfg.max_epochs + epoch)
                    sink.flush()
                    return False

                trainer = Trainer(model, encoder, train_data, dev_data, hp, tcfg, seed=seed, run=k, device=device,
                                  callbacks=[on_epoch_end, *callbacks], checkpoints=checkpoints,
                                  stop_requested=stop_flag, show_progress=config.show_progress, weights=tracker)
                current.append(trainer)
                fit = trainer.fit(until_epoch=config.until_epoch, resume=config.resume)
                done_rows += [h.to_dict() for h in fit.history]
                if tracker is not None:
                    done_weights += tracker.rows
                fits.append(fit)
                if len(fits) == 1 or fit.best_score > fits[best_fit_index].best_score:
                    best_fit_index = len(fits) - 1
                    best_state = fit.best_state if fit.best_state is not None else fit.final_state
                del model, trainer
            best = fits[best_fit_index]
            refit = None
            if tcfg.train_with_dev and best.status != "paused":
                refit = _train_with_dev(config, task, splits, hp, best, best_fit_index + 1, store, device, stop_flag)
                best_state = refit.final_state
    finally:
        sink.close()

    put_text(store, "loss.tsv", loss_tsv(done_rows))
    if done_rows:
        _write_plot(store, done_rows, title=task.corpus_name or task.type)
    if tcfg.write_weights:
        put_text(store, "weights.tsv", weights_tsv(done_weights))
        _write_weights_plot(store, done_weights, title=task.corpus_name or task.type, run=best_fit_index + 1)
    best_row = next((h for h in best.history if h.epoch == best.best_epoch), None)
    by_corpus = dict(best_row.dev_scores_by_corpus or {}) if best_row is not None else {}
    scores = tuple(f.best_score for f in fits)
    mean_score = sum(scores) / len(scores)
    status = "paused" if any(f.status == "paused" for f in fits) else best.status
    metadata = {"dev_score": best.best_score, "best_epoch": best.best_epoch, "epochs": best.epochs,
                "run": best_fit_index + 1, "status": status, "corpus": info.get("name"),
                "corpus_splits": {s: (info.get("splits", {}).get(s) or {}).get("sha256") for s in SPLITS},
                "trainer": tcfg.to_dict()}
    encoder_out, weights_out = encoder, pretrained_weights
    if refit is not None:  # the model file is the retrained one: its vocabularies are those of train + dev
        encoder_out, weights_out = refit.encoder, refit.pretrained_weights
        metadata["train_with_dev"] = {"epochs": refit.epochs, "run": best_fit_index + 1,
                                      "train_examples": refit.train_examples}
    label_map = ((info.get("source") or {}).get("reader_options") or {}).get("label_map")
    if isinstance(label_map, dict) and label_map:  # raw label -> the name the model predicts (the spec's labelMap)
        metadata["label_map"] = {str(k): str(v) for k, v in label_map.items()}
    with tempfile.TemporaryDirectory(prefix="kftune-model-") as tmp:
        local = Path(tmp) / "model.pt"
        seed_everything(tcfg.seed)
        final_model = build_model(task.type, hp, encoder_out, pretrained_weights=weights_out, open_store=open_store)
        save_model(final_model, encoder_out, hp, local, metadata=metadata, state_dict=best_state)
        store.put_file("model.pt", local)
    model_uri = store.uri_for("model.pt")
    result = TrainResult(
        status=status, task=task.type, dev_score=mean_score, dev_scores=scores, best_run=best_fit_index + 1,
        best_epoch=best.best_epoch, epochs=best.epochs, seconds=round(time.perf_counter() - started, 3),
        samples_per_second=round(sum(f.samples_per_second for f in fits) / len(fits), 2), model_uri=model_uri,
        out_uri=store.root_uri, hyperparameters=hp.to_dict(), trainer=tcfg.to_dict(), dev_scores_by_corpus=by_corpus,
        train_with_dev_epochs=refit.epochs if refit is not None else None)
    put_json(store, "result.json", result.to_dict())
    with sinks_from_env("train", run_id=config.run_id, trial=config.trial, jsonl_path=config.metrics_jsonl) as final:
        final.log({"dev_score": mean_score, "epochs": float(best.epochs)}, step=None)
    log.info("training %s: dev score %.4f (best epoch %d of run %d)%s, model %s", status, mean_score,
             best.best_epoch, best_fit_index + 1,
             "; per corpus " + ", ".join(f"{c} {v:.4f}" for c, v in by_corpus.items()) if by_corpus else "",
             model_uri)
    return result


# ------------------------------------------------------------------------------------------------
# The pipeline's final training

#: What the final training writes that a KFP ``Model`` artifact gets a copy of (those that exist).
FINAL_FILES = ("model.pt", "result.json", "loss.tsv", "training_curve.png", "weights.tsv", "weights.png",
               "loss_with_dev.tsv")


@dataclass(frozen=True)
class FinalConfig(CheckedConfig):
    """The pipeline's final training: the winner ``best`` (select-best's record: its ``trial_id`` and
    ``assignment``) trained on ``corpus`` with the spec's ``model`` and ``train`` blocks, into the run's journal
    (``runs/<run_id>/final/`` under ``store``), resumed from the checkpoints there (a retried task continues);
    ``model_dir``: a local directory that gets a copy of :data:`FINAL_FILES` (a KFP ``Model`` artifact)."""

    corpus: str
    store: str
    run_id: str
    best: Mapping[str, Any]
    model_dir: str | None = None

    def problems(self) -> list[Problem]:
        out = []
        if not isinstance(self.best, Mapping) or not isinstance(self.best.get("assignment"), Mapping):
            out.append(Problem("final.best", "is not a selection record with an assignment; give select-best's "
                                             "output (runs/<run>/search/best.json)"))
        return out


@dataclass(frozen=True)
class FinalResult:
    """The final training's :class:`TrainResult`, where it went (``out``, the model's ``model_uri``), the
    winner's ``trial`` id and ``html``: a page with the training curve and the hyperparameters."""

    train: TrainResult
    out: str
    model_uri: str
    trial: str
    html: str

    @property
    def metrics(self) -> dict[str, float]:
        """dev_score, epochs and best_epoch: what a KFP ``Metrics`` output shows."""
        return {"dev_score": self.train.dev_score, "epochs": self.train.epochs, "best_epoch": self.train.best_epoch}

    @property
    def metadata(self) -> dict[str, Any]:
        """The metadata of the pipeline's ``Model`` artifact."""
        t = self.train
        return {"framework": "pytorch", "task": t.task, "dev_score": t.dev_score, "epochs": t.epochs,
                "best_epoch": t.best_epoch, "trial": self.trial}


def final_page(result: TrainResult, curve_png: bytes | None) -> str:
    """An HTML page: the final training's dev score and epochs, its training curve, its hyperparameters."""
    import base64
    import html

    image = ""
    if curve_png:
        image = f'<img alt="training curve" src="data:image/png;base64,{base64.b64encode(curve_png).decode()}">'
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v))}</td></tr>"
                   for k, v in sorted(result.hyperparameters.items()))
    with_dev = (f"; then trained on train + dev for {result.train_with_dev_epochs} epochs (trainWithDev): the model"
                if result.train_with_dev_epochs else "")
    return (f"<html><body><h1>Final training</h1><p>dev score {result.dev_score:.4f}, best epoch {result.best_epoch} "
            f"of {result.epochs} ({html.escape(result.status)}){with_dev}</p>{image}<h2>Hyperparameters</h2>"
            f"<table>{rows}</table></body></html>\n")


def run_final(config: FinalConfig, *, job: Any) -> FinalResult:
    """Train the winner for ``train.maxEpochs`` (see :class:`FinalConfig`); ``job``: the parsed
    :class:`~kftune.core.spec.TuningJob`."""
    config.validate()
    from kftune.io.journal import RunJournal

    task_type = job.spec.task.type
    hp, trainer = settings_from_job(job, task_type, assignment=config.best["assignment"],
                                    path="final.hyperparameters")
    journal = RunJournal.open(config.store, config.run_id)
    out = journal.run_uri("final")
    result = run(TrainConfig(corpus=config.corpus, out=out, hyperparameters=hp, trainer=trainer, task_type=task_type,
                             resume=True, run_id=config.run_id, trial="final", show_progress=False))
    from kftune.io.store import open_store

    source = open_store(out)
    if config.model_dir is not None:
        target = Path(config.model_dir)
        target.mkdir(parents=True, exist_ok=True)
        for name in FINAL_FILES:
            if source.exists(name):
                source.get_file(name, target / name)
    curve = source.get_bytes("training_curve.png") if source.exists("training_curve.png") else None
    return FinalResult(train=result, out=out, model_uri=result.model_uri or f"{out}/model.pt",
                       trial=str(config.best.get("trial_id", "")), html=final_page(result, curve))


# ------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kftune train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Hyperparameter names for --set: see kftune.nlp.config.Hyperparameters "
               "(e.g. --set learning_rate=0.01 --set cnn_kernel_sizes=3,4,5 --set use_crf=false).")
    parser.add_argument("--corpus", required=True, help="output directory or store URI of `kftune corpus`")
    parser.add_argument("--out", required=True, help="output directory or store URI (s3://bucket/prefix)")
    parser.add_argument("--spec", help="a TuningJob spec: its model and train blocks give the defaults")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="NAME=VALUE",
                        help="set a hyperparameter (repeatable)")
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--patience", type=int)
    parser.add_argument("--training-runs", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--embeddings-storage-mode", choices=("none", "cpu", "gpu"))
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--until-epoch", type=int, help="stop after this epoch (resume later with --resume)")
    parser.add_argument("--write-weights", action="store_true", default=None,
                        help="write weights.tsv and weights.png: weight statistics every tenth of an epoch "
                             "(spec: train.writeWeights)")
    parser.add_argument("--train-with-dev", action="store_true", default=None,
                        help="then train the best run again on train + dev for its best epochs; that is the model "
                             "(spec: train.trainWithDev)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints under --out")
    parser.add_argument("--run-id", help="run id for metrics grouping (default $KFTUNE_RUN_ID)")
    parser.add_argument("--trial", help="trial id for metrics grouping")
    parser.add_argument("--metrics-jsonl", help="also append metrics to this JSONL file")
    add_common_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` a command line describes (spec defaults, then flags)."""
    model_block: dict[str, Any] = {}
    train_block: dict[str, Any] = {}
    task_type = None
    if args.spec:
        from kftune.io.specfile import load_spec

        job = load_spec(args.spec)
        task_type = job.spec.task.type
        model_block = dict(job.spec.model)
        train_block = dataclasses.asdict(job.spec.train)
    if task_type is None:
        from kftune.nlp.data import read_corpus_info

        with _local_corpus(args.corpus) as corpus_dir:
            task_type = read_corpus_info(corpus_dir)["task"]
    # --set over the spec's model block, both over the task's defaults (the fine-tune preset when they fine-tune
    # a transformer, e.g. --set transformer=DIR)
    hp = Hyperparameters.from_mapping(model_block, task_type, path="spec.model",
                                      overrides=parse_assignments(args.assignments), overrides_path="--set")
    flags = {"max_epochs": args.max_epochs, "patience": args.patience, "training_runs": args.training_runs,
             "seed": args.seed, "device": args.device, "precision": args.precision,
             "embeddings_storage_mode": args.embeddings_storage_mode, "num_threads": args.threads,
             "write_weights": args.write_weights, "train_with_dev": args.train_with_dev}
    trainer = TrainerConfig.from_mapping(train_block, path="spec.train")
    trainer = TrainerConfig.from_mapping({k: v for k, v in flags.items() if v is not None}, path="flags",
                                         base=trainer)
    return TrainConfig(corpus=args.corpus, out=args.out, hyperparameters=hp, trainer=trainer, task_type=task_type,
                       resume=args.resume, run_id=args.run_id, trial=args.trial, until_epoch=args.until_epoch,
                       metrics_jsonl=args.metrics_jsonl)


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        result = run(config_from_args(args))  # SIGTERM: run_main maps TrainingInterrupted to exit 143
        print(json.dumps({"status": result.status, "dev_score": round(result.dev_score, 6),
                          "best_epoch": result.best_epoch, "epochs": result.epochs, "model": result.model_uri}))
        return 0

    return run_main(body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
