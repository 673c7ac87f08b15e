"""The range test on a real (tiny) model: schedule, one-epoch cap, fresh model per run, divergence, dev metric."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from kftune.core.errors import ConfigError, DataError
from kftune.core.lr_range import RangeTestConfig, lr_at
from kftune.nlp.config import Hyperparameters, TrainerConfig
from kftune.nlp.lr_find import prepare_data, run_range_test

LABELS = ("ANIMAL", "COLOUR", "NUMBER")
WORDS = {"ANIMAL": ["cat", "dog", "horse", "cow"], "COLOUR": ["red", "blue", "green", "pink"],
         "NUMBER": ["one", "two", "three", "four"]}
FILLER = ["the", "a", "is", "was", "what", "which", "here", "there", "?"]
# A small, fast classifier: the range test's loop is what is tested, not the model's capacity.
SMALL = {"embedding_dim": 16, "cnn_filters": 8, "cnn_kernel_sizes": "2,3", "mini_batch_size": 8, "dropout": 0.1}
CPU = TrainerConfig(device="cpu", seed=1, num_threads=1)


def _write_corpus(root: Path, n_train: int, n_dev: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)

    def example() -> dict:
        label = rng.choice(LABELS)
        tokens = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(WORDS[label]))
        return {"label": label, "text": " ".join(tokens), "tokens": tokens}

    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev), ("test", 10)):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(example(), sort_keys=True) + "\n" for _ in range(n)),
                                             encoding="utf-8")
    (root / "corpus.json").write_text(json.dumps({"name": "SYNTH", "task": "text_classification",
                                                  "label_type": "class", "labels": list(LABELS),
                                                  "tag_scheme": None}), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("synth"), n_train=480)  # 60 batches of 8


@pytest.fixture(scope="module")
def hp() -> Hyperparameters:
    return Hyperparameters.from_mapping(SMALL, "text_classification")


def test_runs_the_schedule_batch_by_batch_and_suggests(corpus: Path, hp: Hyperparameters) -> None:
    config = RangeTestConfig(start_lr=1e-4, end_lr=0.3, iterations=40)
    r = run_range_test(corpus, hp, CPU, config, seed=1, show_progress=False)
    assert not r.diverged and len(r.losses) == 40 and r.stop_reason == "completed 40 batches"
    assert r.lrs == tuple(lr_at(i, 1e-4, 0.3, 40) for i in range(40))
    assert r.lrs[0] == 1e-4 and r.lrs[-1] == 0.3
    assert all(math.isfinite(x) for x in r.losses)
    assert r.losses[0] == pytest.approx(math.log(4), abs=0.3)  # untrained: 3 labels + <unk>
    # it learns: the loss falls along the test (raw losses: the smoothed curve lags by ~1/(1-beta) batches)
    assert sum(r.losses[-5:]) / 5 < r.losses[0] - 0.2
    valley = r.suggestions["valley"].lr
    assert r.lr is not None and r.range is not None and valley is not None
    assert r.range.base_lr <= valley <= r.range.max_lr
    assert r.extra["capped"] is False and r.extra["batches"] == 40 and r.extra["steps_per_epoch"] == 60
    assert r.extra["device"] == "cpu" and r.extra["precision"] == "fp32" and r.metric is None


def test_caps_at_one_epoch_and_keeps_the_lr_span(tmp_path: Path, hp: Hyperparameters,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    small = _write_corpus(tmp_path / "small", n_train=100)  # 13 batches of 8
    config = RangeTestConfig(start_lr=1e-4, end_lr=1e-2, iterations=100)
    r = run_range_test(small, hp, CPU, config, seed=1, show_progress=False)
    assert r.config.iterations == 13 and len(r.losses) == 13
    assert r.lrs[0] == 1e-4 and r.lrs[-1] == 1e-2  # the whole span, compressed into one epoch
    assert r.extra["capped"] is True and r.extra["iterations_requested"] == 100
    assert "one epoch is 13" in r.extra["cap_reason"]
    assert any("capped at one epoch" in m for m in caplog.messages)


def test_a_fresh_model_every_run_deterministic_given_the_seed(corpus: Path, hp: Hyperparameters) -> None:
    config = RangeTestConfig(start_lr=1e-4, end_lr=0.3, iterations=25)
    data = prepare_data(corpus, hp)
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    a = run_range_test(data, hp, CPU, config, seed=7, show_progress=False)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG is left as it was
    b = run_range_test(data, hp, CPU, config, seed=7, show_progress=False)  # after a's training: still fresh
    c = run_range_test(corpus, hp, CPU, config, seed=7, show_progress=False)  # re-read from disk
    assert a.losses == b.losses == c.losses and a.lrs == b.lrs
    assert run_range_test(data, hp, CPU, config, seed=8, show_progress=False).losses != a.losses


def test_a_huge_end_lr_diverges_and_stops_early(corpus: Path, hp: Hyperparameters) -> None:
    config = RangeTestConfig(start_lr=1e-3, end_lr=1e6, iterations=50)
    sgd = hp.with_overrides({"optimizer": "sgd", "clip_grad_norm": "none"})
    r = run_range_test(corpus, sgd, CPU, config, seed=1, show_progress=False)
    assert r.diverged and len(r.losses) < 50
    assert "exceeds 4 x the best" in r.stop_reason or "loss is" in r.stop_reason
    assert r.extra["batches"] == len(r.losses) == r.stop_index + 1


def test_records_the_dev_metric_every_k_batches(corpus: Path, hp: Hyperparameters) -> None:
    config = RangeTestConfig(start_lr=1e-4, end_lr=0.3, iterations=30, mode="linear")
    r = run_range_test(corpus, hp, CPU, config, seed=1, dev_metric_every=5, dev_subset=16, show_progress=False)
    assert r.metric is not None and len(r.metric) == 30
    measured = [i for i, m in enumerate(r.metric) if math.isfinite(m)]
    assert measured == [4, 9, 14, 19, 24, 29]
    assert all(0.0 <= r.metric[i] <= 1.0 for i in measured)
    assert r.metric[29] > 1 / 3  # the model has learnt something by the end
    assert r.extra["dev_subset"] == 16 and r.extra["dev_metric_every"] == 5
    assert [i for i, x in enumerate(r.extra["dev_loss"]) if x is not None] == measured
    # evaluating in between changes nothing about the training curve
    plain = run_range_test(corpus, hp, CPU, config, seed=1, show_progress=False)
    assert plain.losses == r.losses


def test_bad_settings_and_data_are_reported(tmp_path: Path, corpus: Path, hp: Hyperparameters) -> None:
    with pytest.raises(ConfigError, match="dev_metric_every"):
        run_range_test(corpus, hp, CPU, RangeTestConfig(iterations=10), dev_metric_every=0)
    data = prepare_data(corpus, hp)
    with pytest.raises(ConfigError, match="max_length"):
        run_range_test(data, hp.with_overrides({"max_length": 3}), CPU, RangeTestConfig(iterations=10))
    with pytest.raises(DataError, match="corpus.json"):
        run_range_test(tmp_path, hp, CPU, RangeTestConfig(iterations=10))
    tiny = _write_corpus(tmp_path / "tiny", n_train=5)  # one batch: no range test possible
    with pytest.raises(DataError, match="at least 2"):
        run_range_test(tiny, hp, CPU, RangeTestConfig(iterations=10))
    (tiny / "dev.jsonl").unlink()
    with pytest.raises(DataError, match="dev"):
        run_range_test(tiny, hp, CPU, RangeTestConfig(iterations=10), dev_metric_every=2)


def test_a_sequence_tagger_runs_too(tmp_path: Path) -> None:
    rng = random.Random(3)
    root = tmp_path / "tags"
    root.mkdir()
    rows = []
    for _ in range(96):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 7)):
            if rng.random() < 0.3:
                tokens += [rng.choice(["Paris", "Berlin", "Rome"]), "City"]
                tags += ["B-loc", "I-loc"]
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        rows.append(json.dumps({"tokens": tokens, "tags": tags}) + "\n")
    (root / "train.jsonl").write_text("".join(rows[:80]), encoding="utf-8")
    (root / "dev.jsonl").write_text("".join(rows[80:]), encoding="utf-8")
    (root / "corpus.json").write_text(json.dumps({"name": "TAGS", "task": "sequence_labeling", "label_type": "ner",
                                                  "labels": ["B-loc", "I-loc", "O"], "tag_scheme": "BIO"}))
    hp = Hyperparameters.from_mapping({"embedding_dim": 16, "hidden_size": 16, "char_embeddings": "none",
                                       "mini_batch_size": 4}, "sequence_labeling")
    r = run_range_test(root, hp, CPU, RangeTestConfig(start_lr=1e-4, end_lr=1.0, iterations=20), seed=1,
                       dev_metric_every=10, show_progress=False)
    assert 2 <= len(r.losses) <= 20 and all(math.isfinite(x) for x in r.losses[:-1])
    assert r.metric is not None and 0.0 <= r.metric[9] <= 1.0  # span F1 on the dev subset
