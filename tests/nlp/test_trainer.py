"""kftune.nlp.trainer: learning, determinism, stop rules, schedules, callbacks, budgets, dev score."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from seqeval.metrics import f1_score

from kftune.core.errors import ConfigError, TrialFailedError
from kftune.nlp.checkpoint import CheckpointStore, seed_everything
from kftune.nlp.config import Hyperparameters, TrainerConfig
from kftune.nlp.data import SPLITS, TaskInfo, TextEncoder, read_corpus_info, read_split, task_from_corpus_info
from kftune.nlp.models import build_model
from kftune.nlp.trainer import Trainer, dev_score, resolve_autocast, resolve_device
from tests.nlp.synthetic import one_torch_thread, write_corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_ = one_torch_thread

SMALL = {"hidden_size": 16, "embedding_dim": 16, "cnn_filters": 8, "char_embedding_dim": 8, "char_hidden_size": 8}


def _setup(tmp_path: Path, task: str, sizes=(200, 50, 10), **hp_overrides):
    directory = write_corpus(tmp_path / f"corpus-{task}", task, sizes=sizes)
    info = task_from_corpus_info(read_corpus_info(directory))
    splits = {s: read_split(directory / f"{s}.jsonl", task) for s in SPLITS}
    hp = Hyperparameters.from_mapping({**SMALL, **hp_overrides}, task)
    enc = TextEncoder.build(info, splits["train"], min_word_freq=1, max_length=hp.max_length,
                            use_chars=hp.char_embeddings != "none")
    return hp, enc, enc.encode(splits["train"], "train", training=True), enc.encode(splits["dev"], "dev")


def _fit(setup, *, seed=1, config=None, checkpoints=None, until=None, resume=True, callbacks=()):
    hp, enc, train, dev = setup
    seed_everything(seed)
    model = build_model(enc.task.type, hp, enc)
    trainer = Trainer(model, enc, train, dev, hp, config or TrainerConfig(max_epochs=3), seed=seed,
                      checkpoints=checkpoints, callbacks=callbacks, show_progress=False)
    return trainer.fit(until_epoch=until, resume=resume), trainer


@pytest.mark.parametrize("task", ["text_classification", "sequence_labeling"])
def test_learns_the_synthetic_task(tmp_path: Path, task: str) -> None:
    result, _ = _fit(_setup(tmp_path, task, learning_rate=0.01), config=TrainerConfig(max_epochs=6))
    assert result.best_score >= 0.9, result.history
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.best_state is not None and result.epochs == len(result.history)


def test_deterministic_given_a_seed(tmp_path: Path) -> None:
    setup = _setup(tmp_path, "text_classification")
    a, _ = _fit(setup, seed=5)
    b, _ = _fit(setup, seed=5)
    c, _ = _fit(setup, seed=6)
    key = [(h.train_loss, h.dev_loss, h.dev_score) for h in a.history]
    assert key == [(h.train_loss, h.dev_loss, h.dev_score) for h in b.history]
    assert key != [(h.train_loss, h.dev_loss, h.dev_score) for h in c.history]
    assert all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)


def test_early_stopping_with_patience(tmp_path: Path) -> None:
    # a learning rate this small never changes the dev score after epoch 1
    setup = _setup(tmp_path, "text_classification", learning_rate=1e-12, scheduler="none")
    result, _ = _fit(setup, config=TrainerConfig(max_epochs=10, patience=2))
    assert result.status == "early_stopped" and result.epochs == 3 and result.best_epoch == 1


def test_plateau_anneals_and_stops_at_min_lr(tmp_path: Path) -> None:
    setup = _setup(tmp_path, "text_classification", learning_rate=1e-12, anneal_patience=0, anneal_factor=0.1)
    result, _ = _fit(setup, config=TrainerConfig(max_epochs=10, patience=10, min_learning_rate=1e-13))
    lrs = [h.learning_rate for h in result.history]
    assert lrs[0] == pytest.approx(1e-12, rel=1e-6) and lrs[1] == pytest.approx(1e-13, rel=1e-6)
    assert result.status == "min_lr" and result.epochs == 3  # epoch 4 would run at 1e-15


@pytest.mark.parametrize("scheduler", ["onecycle", "linear_warmup", "cyclic", "plateau", "none"])
def test_budget_pause_and_resume_equals_straight_run(tmp_path: Path, scheduler: str) -> None:
    """Training to epoch 1, then resuming from the checkpoint to the end equals one straight run
    (the successive-halving path), for every schedule; and the lr follows the schedule."""
    setup = _setup(tmp_path, "text_classification", scheduler=scheduler, optimizer="sgd", learning_rate=0.1,
                   momentum=0.9, cyclic_base_lr=0.01, cyclic_max_lr=0.1, warmup_fraction=0.3)
    config = TrainerConfig(max_epochs=3, patience=5)
    straight, _ = _fit(setup, config=config)
    ckpt = _local_ckpt(tmp_path / f"ckpt-{scheduler}")
    paused, _ = _fit(setup, config=config, checkpoints=ckpt, until=1)
    assert paused.status == "paused" and paused.epochs == 1
    resumed, _ = _fit(setup, config=config, checkpoints=ckpt)
    assert resumed.epochs == 3 and resumed.status == straight.status
    assert [h.dev_score for h in resumed.history] == [h.dev_score for h in straight.history]
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in straight.history]
    lrs = [h.learning_rate for h in straight.history]
    if scheduler == "none":
        assert lrs == [0.1, 0.1, 0.1]
    if scheduler == "cyclic":
        assert lrs[0] == pytest.approx(0.01) and all(0.01 - 1e-9 <= lr <= 0.1 + 1e-9 for lr in lrs)
    if scheduler == "linear_warmup":
        assert lrs[0] < lrs[1] and lrs[2] < lrs[1]


def _local_ckpt(directory: Path) -> CheckpointStore:
    from kftune.io.store import open_store

    return CheckpointStore(open_store(directory), "checkpoint.pt")


def test_callback_can_stop_and_sees_every_epoch(tmp_path: Path) -> None:
    seen = []

    class Pruner:
        def on_epoch_end(self, epoch, result):
            seen.append((epoch, result.dev_score))
            return epoch >= 2

    result, _ = _fit(_setup(tmp_path, "text_classification"), config=TrainerConfig(max_epochs=5),
                     callbacks=[Pruner()])
    assert result.status == "stopped" and result.epochs == 2
    assert [e for e, _ in seen] == [1, 2] and seen[1][1] == result.history[1].dev_score


def test_finished_checkpoint_is_not_retrained(tmp_path: Path) -> None:
    setup = _setup(tmp_path, "text_classification")
    ckpt = _local_ckpt(tmp_path / "ckpt")
    first, _ = _fit(setup, checkpoints=ckpt)
    calls = []
    again, _ = _fit(setup, checkpoints=ckpt, callbacks=[lambda e, r: calls.append(e)])
    assert calls == [] and again.best_score == first.best_score and again.epochs == first.epochs


def test_resume_refuses_other_hyperparameters(tmp_path: Path) -> None:
    ckpt = _local_ckpt(tmp_path / "ckpt")
    _fit(_setup(tmp_path, "text_classification"), checkpoints=ckpt, until=1)
    other = _setup(tmp_path, "text_classification", dropout=0.3)
    with pytest.raises(ConfigError, match="other hyperparameters \\(dropout\\)"):
        _fit(other, checkpoints=ckpt)


def test_resume_takes_a_checkpoint_older_than_a_new_field_left_at_its_default(tmp_path: Path, monkeypatch) -> None:
    from kftune.nlp.config import Hyperparameters

    ckpt = _local_ckpt(tmp_path / "ckpt")
    real = Hyperparameters.to_dict
    # a checkpoint from a kftune without ngram_min_count
    monkeypatch.setattr(Hyperparameters, "to_dict",
                        lambda self: {k: v for k, v in real(self).items() if k != "ngram_min_count"})
    _fit(_setup(tmp_path, "text_classification"), checkpoints=ckpt, until=1)
    monkeypatch.setattr(Hyperparameters, "to_dict", real)
    other = _setup(tmp_path, "text_classification", ngram_min_count=3)
    with pytest.raises(ConfigError, match="other hyperparameters \\(ngram_min_count\\)"):
        _fit(other, checkpoints=ckpt)
    resumed, _ = _fit(_setup(tmp_path, "text_classification"), checkpoints=ckpt)
    assert resumed.epochs >= 2


def test_accumulation_matches_full_batches_without_dropout(tmp_path: Path) -> None:
    base = dict(dropout=0.0, word_dropout=0.0, locked_dropout=0.0, document_encoder="mean", mini_batch_size=16)
    full, _ = _fit(_setup(tmp_path, "text_classification", **base))
    chunked, _ = _fit(_setup(tmp_path, "text_classification", mini_batch_chunk_size=4, **base))
    for a, b in zip(full.history, chunked.history):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.dev_score == pytest.approx(b.dev_score)


def test_nan_loss_fails_the_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hp, enc, train, dev = _setup(tmp_path, "text_classification")
    model = build_model(enc.task.type, hp, enc)
    original = model.loss
    monkeypatch.setattr(model, "loss", lambda batch: (original(batch)[0] * float("nan"), batch.size))
    trainer = Trainer(model, enc, train, dev, hp, TrainerConfig(max_epochs=1), show_progress=False)
    with pytest.raises(TrialFailedError, match="loss became nan"):
        trainer.fit()


def test_unseen_dev_labels_do_not_crash_training(tmp_path: Path) -> None:
    directory = write_corpus(tmp_path / "c", "text_classification", sizes=(100, 20, 5),
                             extra={"dev": [{"label": "NEW", "text": "apple", "tokens": ["apple"]}]})
    task = task_from_corpus_info(read_corpus_info(directory))
    splits = {s: read_split(directory / f"{s}.jsonl", task.type) for s in SPLITS}
    hp = Hyperparameters.from_mapping(SMALL, task.type)
    enc = TextEncoder.build(task, splits["train"], min_word_freq=1, max_length=50, use_chars=False)
    dev = enc.encode(splits["dev"], "dev")
    result, trainer = _fit((hp, enc, enc.encode(splits["train"], "train", training=True), dev),
                           config=TrainerConfig(max_epochs=3))
    assert math.isfinite(result.history[-1].dev_loss)
    _, score, predicted = trainer.evaluate(dev)
    assert predicted[-1] != "NEW" and score <= 20 / 21


def test_dev_score_metrics() -> None:
    cls = TaskInfo("text_classification")
    assert dev_score(cls, ["a", "b", "a"], ["a", "a", "a"]) == pytest.approx(2 / 3)
    gold = [["B-PER", "I-PER", "O"], ["B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O"], ["O", "O"]]
    assert dev_score(TaskInfo("sequence_labeling", tag_scheme="BIO"), gold, pred) == pytest.approx(f1_score(gold, pred))
    bioes_gold = [["S-PER", "O", "B-LOC", "E-LOC"]]
    assert dev_score(TaskInfo("sequence_labeling", tag_scheme="BIOES"), bioes_gold, bioes_gold) == 1.0
    pos = TaskInfo("sequence_labeling", tag_scheme=None)
    assert dev_score(pos, [["N", "V", "N"], ["D"]], [["N", "N"], ["D"]]) == pytest.approx(2 / 4)  # truncated pred
    assert dev_score(pos, [], []) == 0.0
    with pytest.raises(ValueError):
        dev_score(cls, ["a"], [])


def test_devices_and_precision() -> None:
    cpu = resolve_device("auto") if not torch.cuda.is_available() else torch.device("cpu")
    assert resolve_autocast("auto", cpu) is None and resolve_autocast("bf16", cpu) is torch.bfloat16
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


def test_stop_request_mid_epoch_checkpoints_and_resumes_exactly(tmp_path: Path) -> None:
    """What SIGTERM does: stop after a batch in the middle of epoch 2, checkpoint, resume -> same run."""
    from kftune.nlp.trainer import TrainingInterrupted

    setup = _setup(tmp_path, "sequence_labeling", sizes=(120, 30, 5), mini_batch_size=8)
    config = TrainerConfig(max_epochs=3, patience=5)
    straight, _ = _fit(setup, config=config)
    ckpt = _local_ckpt(tmp_path / "ckpt")
    hp, enc, train, dev = setup
    seed_everything(1)
    polls = iter(range(10_000))
    trainer = Trainer(build_model(enc.task.type, hp, enc), enc, train, dev, hp, config, seed=1, checkpoints=ckpt,
                      stop_requested=lambda: next(polls) == 20, show_progress=False)  # 15 batches an epoch + 1 poll at its end
    with pytest.raises(TrainingInterrupted, match="epoch 2 after batch 5") as info:
        trainer.fit()
    assert info.value.checkpoint_uri == ckpt.uri
    state = ckpt.load()
    assert state is not None and state["position"]["epoch"] == 2 and state["position"]["batch"] == 5
    resumed, _ = _fit(setup, config=config, checkpoints=ckpt)
    assert [(h.train_loss, h.dev_score) for h in resumed.history] == \
        [(h.train_loss, h.dev_score) for h in straight.history]


# ------------------------------------------------------------------------------------------------
# Plain Adam, write_weights, several corpora


@pytest.mark.parametrize("encoder", ["cnn", "ngram"])
def test_adam_trains_and_resumes_exactly_from_checkpoints(tmp_path: Path, encoder: str) -> None:
    """optimizer: adam (L2 weight decay; LazyAdam for the n-gram bag's sparse rows) learns, and a run paused
    at an epoch boundary or interrupted mid-epoch, then resumed from its checkpoint, equals a straight run."""
    from kftune.core.errors import TrainingInterrupted

    from kftune.nlp.embeddings import encode_corpus

    extra = {"document_encoder": "ngram", "ngram_buckets": 4096, "ngram_dim": 16} if encoder == "ngram" else {}
    directory = write_corpus(tmp_path / "corpus", "text_classification", sizes=(200, 50, 10))
    splits = {s: read_split(directory / f"{s}.jsonl", "text_classification") for s in SPLITS}
    hp = Hyperparameters.from_mapping({**SMALL, "optimizer": "adam", "learning_rate": 0.02, "weight_decay": 1e-3,
                                       "scheduler": "none", **extra}, "text_classification")
    enc, train_data, dev_data, _ = encode_corpus(task_from_corpus_info(read_corpus_info(directory)), splits["train"],
                                                 splits["dev"], hp)
    setup = (hp, enc, train_data, dev_data)
    config = TrainerConfig(max_epochs=3, patience=5)
    straight, trainer = _fit(setup, config=config)
    expected = torch.optim.Adam if encoder == "cnn" else __import__("kftune.nlp.schedulers").nlp.schedulers.LazyAdam
    assert type(trainer.optimizer) is expected
    assert straight.history[-1].train_loss < straight.history[0].train_loss and straight.best_score > 0.6

    def same(result) -> None:
        assert [(h.train_loss, h.dev_loss, h.dev_score) for h in result.history] == \
               [(h.train_loss, h.dev_loss, h.dev_score) for h in straight.history]
        assert all(torch.equal(result.final_state[k], straight.final_state[k]) for k in straight.final_state)

    ckpt = _local_ckpt(tmp_path / "ckpt-epoch")
    paused, _ = _fit(setup, config=config, checkpoints=ckpt, until=1)
    assert paused.status == "paused" and ckpt.load()["optimizer"]["state"]  # Adam's moments are checkpointed
    resumed, _ = _fit(setup, config=config, checkpoints=ckpt)
    same(resumed)

    hp, enc, train, dev = setup
    ckpt = _local_ckpt(tmp_path / "ckpt-batch")
    calls = []
    seed_everything(1)
    interrupted = Trainer(build_model(enc.task.type, hp, enc), enc, train, dev, hp, config, seed=1,
                          checkpoints=ckpt, show_progress=False, stop_requested=lambda: calls.append(1) or len(calls) == 9)
    with pytest.raises(TrainingInterrupted):
        interrupted.fit()
    assert ckpt.load()["position"] is not None  # stopped mid-epoch
    resumed, _ = _fit(setup, config=config, checkpoints=ckpt)
    same(resumed)


def test_weight_tracker_records_every_tenth_of_an_epoch_and_resumes(tmp_path: Path) -> None:
    from kftune.nlp.weights import WeightTracker, read_weights_tsv, weights_tsv

    setup = _setup(tmp_path, "text_classification", mini_batch_size=8)  # 200 examples: 25 steps per epoch
    hp, enc, train, dev = setup
    config = TrainerConfig(max_epochs=2, patience=5)

    def fit(checkpoints=None, until=None):
        seed_everything(1)
        model = build_model(enc.task.type, hp, enc)
        tracker = WeightTracker(model, samples=4, max_tensors=3)
        trainer = Trainer(model, enc, train, dev, hp, config, seed=1, checkpoints=checkpoints, show_progress=False,
                          weights=tracker)
        return trainer.fit(until_epoch=until), tracker

    _, tracker = fit()
    names = [n for n, _ in tracker.tensors]
    assert len(names) == 3 and tracker.skipped > 0
    steps = sorted({r[1] for r in tracker.rows})
    # every 25 // 10 = 2 steps and at each epoch's end
    assert steps == [0, *range(2, 25, 2), 25, *range(27, 50, 2), 50]
    assert {r[2] for r in tracker.rows} == {0, 1, 2}
    first = [r for r in tracker.rows if r[3] == names[0]]
    assert all(len(r[8]) == 4 for r in first) and first[0][8] != first[-1][8]  # the sampled weights moved
    assert all(r[6] >= 0 and r[7] >= 0 for r in tracker.rows)
    text = weights_tsv(tracker.rows, samples=4)
    assert text.splitlines()[0].split("\t")[-1] == "sample_3"
    assert read_weights_tsv(text)[5][:5] == tracker.rows[5][:5]

    ckpt = _local_ckpt(tmp_path / "ckpt")
    fit(ckpt, until=1)
    _, resumed = fit(ckpt)
    assert [r[:5] for r in resumed.rows] == [r[:5] for r in tracker.rows]
    assert weights_tsv(resumed.rows, samples=4) == text


def test_dev_scores_per_corpus(tmp_path: Path) -> None:
    """A dev split whose examples name their corpora gets each corpus' dev score beside the joint one."""
    from kftune.nlp.data import Example
    from kftune.nlp.trainer import scores_by_corpus

    task = TaskInfo(type="text_classification")
    examples = [Example(("a",), label="A", corpus="one"), Example(("b",), label="B", corpus="two"),
                Example(("c",), label="A", corpus="one"), Example(("d",), label="B", corpus="two")]
    gold = [e.label for e in examples]
    assert scores_by_corpus(task, examples, gold, ["A", "A", "A", "B"]) == {"one": 1.0, "two": 0.5}
    assert scores_by_corpus(task, [Example(("a",), label="A")], ["A"], ["A"]) is None
