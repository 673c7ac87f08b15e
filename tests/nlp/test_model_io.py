"""kftune.nlp.model_io and predict: the one-file model, incompatible files, raw-sentence prediction."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch

from kftune.core.errors import ArtifactNotFoundError
from kftune.nlp.checkpoint import seed_everything
from kftune.nlp.config import Hyperparameters, TrainerConfig
from kftune.nlp.data import SPLITS, UNK_LABEL, TextEncoder, read_corpus_info, read_split, task_from_corpus_info
from kftune.nlp.model_io import FORMAT_VERSION, IncompatibleModelError, LoadedModel, load_model, save_model
from kftune.nlp.models import build_model
from kftune.nlp.predict import Prediction, predict
from kftune.nlp.trainer import Trainer
from tests.nlp.synthetic import one_torch_thread, write_corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_ = one_torch_thread

SMALL = {"hidden_size": 16, "embedding_dim": 16, "cnn_filters": 8, "char_hidden_size": 8, "learning_rate": 0.01,
         "max_length": 6}


def _trained(tmp_path: Path, task: str) -> Path:
    corpus = write_corpus(tmp_path / "corpus", task, sizes=(200, 40, 10))
    info = task_from_corpus_info(read_corpus_info(corpus))
    splits = {s: read_split(corpus / f"{s}.jsonl", task) for s in SPLITS}
    hp = Hyperparameters.from_mapping(SMALL, task)
    enc = TextEncoder.build(info, splits["train"], min_word_freq=1, max_length=hp.max_length,
                            use_chars=hp.char_embeddings != "none")
    seed_everything(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build_model(task, hp, enc)
    result = Trainer(model, enc, enc.encode(splits["train"], "train", training=True), enc.encode(splits["dev"], "dev"),
                     hp, TrainerConfig(max_epochs=5), show_progress=False).fit()
    path = tmp_path / "model.pt"
    torch.set_num_threads(threads)
    save_model(model, enc, hp, path, metadata={"dev_score": result.best_score}, state_dict=result.best_state)
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _trained(tmp_path_factory.mktemp("cls"), "text_classification")


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _trained(tmp_path_factory.mktemp("tag"), "sequence_labeling")


def test_classifier_round_trip_and_predict(classifier: Path) -> None:
    loaded = load_model(classifier)
    assert isinstance(loaded, LoadedModel) and loaded.task.type == "text_classification"
    assert loaded.labels == ["A", "B", "C"] and loaded.metadata["dev_score"] > 0.8
    assert not loaded.model.training
    preds = predict(loaded, ["the apple is x", "banana", ["a", "cherry", "of"]])
    assert [p.label for p in preds] == ["A", "B", "C"]
    for p in preds:
        assert isinstance(p, Prediction) and p.tags is None
        assert set(p.scores or {}) == {"A", "B", "C"} and abs(sum(p.scores.values()) - 1) < 1e-5
        assert p.score == max(p.scores.values())
    assert preds[0].tokens == ("the", "apple", "is", "x")
    # the same file loaded twice predicts the same
    again = predict(load_model(str(classifier)), ["the apple is x", "banana", ["a", "cherry", "of"]])
    assert [p.scores for p in again] == [p.scores for p in preds]
    alone = predict(loaded, ["the apple is x"])[0].scores or {}
    assert all(abs(alone[k] - v) < 1e-5 for k, v in (preds[0].scores or {}).items())  # batching barely matters


def test_classifier_bad_input(classifier: Path, caplog: pytest.LogCaptureFixture) -> None:
    loaded = load_model(classifier)
    with caplog.at_level(logging.WARNING):
        preds = predict(loaded, ["", "x y z of the a x y z apple", "   "], batch_size=2)
    assert preds[0] == Prediction(tokens=(), label=UNK_LABEL, score=0.0, scores={})
    assert preds[2].label == UNK_LABEL
    assert preds[1].label in {"A", "B", "C"} and len(preds[1].tokens) == 10  # read truncated to max_length 6
    assert any("longer than max_length=6" in r.getMessage() for r in caplog.records)
    assert predict(loaded, []) == []


def test_tagger_predict_windows_and_empty(tagger: Path, caplog: pytest.LogCaptureFixture) -> None:
    loaded = load_model(tagger)
    preds = predict(loaded, ["Paul Walker runs to Rome", []])
    assert preds[0].tags == ("B-PER", "I-PER", "O", "O", "B-LOC")
    assert len(preds[0].tag_scores or ()) == 5 and all(0 < s <= 1 for s in preds[0].tag_scores or ())
    assert preds[1] == Prediction(tokens=(), tags=(), tag_scores=())
    long_sentence = "Anna and Paul Walker runs to Berlin the Rome and Anna".split()  # 11 > max_length 6
    with caplog.at_level(logging.WARNING):
        (long_pred,) = predict(loaded, [long_sentence])
    assert len(long_pred.tags or ()) == 11 and long_pred.tokens == tuple(long_sentence)
    assert long_pred.tags[6] == "B-LOC" and long_pred.tags[10] == "B-PER"
    assert any("tagged in windows" in r.getMessage() for r in caplog.records)
    assert preds[0].to_dict()["tags"][0] == "B-PER"


def test_incompatible_format_version(classifier: Path, tmp_path: Path) -> None:
    payload = torch.load(classifier, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    payload["kftune_version"] = "9.9.9"
    future = tmp_path / "future.pt"
    torch.save(payload, future)
    with pytest.raises(IncompatibleModelError, match=r"format version 2 \(written by kftune 9.9.9\).*reads format "
                                                     r"version 1"):
        load_model(future)


@pytest.mark.parametrize("content", [b"not a model at all", pickle.dumps({"format": "kftune-model"}, protocol=2) + b"x"])
def test_non_kftune_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(IncompatibleModelError, match="not a kftune model file"):
        load_model(path)


def test_other_torch_files_and_missing_files(tmp_path: Path) -> None:
    other = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    with pytest.raises(IncompatibleModelError, match="no 'kftune-model' format marker"):
        load_model(other)

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "kftune-model", "x": Evil()}, evil)
    with pytest.raises(IncompatibleModelError, match="could not read it safely"):
        load_model(evil)
    with pytest.raises(ArtifactNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_damaged_model_file(classifier: Path, tmp_path: Path) -> None:
    payload = torch.load(classifier, weights_only=True)
    del payload["state_dict"]["decoder.weight"]
    damaged = tmp_path / "damaged.pt"
    torch.save(payload, damaged)
    with pytest.raises(IncompatibleModelError, match="damaged kftune model file"):
        load_model(damaged)


def test_a_model_in_a_store_goes_through_the_store_opener_handed_in(classifier: Path, tmp_path: Path) -> None:
    """nlp opens no store: a store URI is read and written through the opener its caller passes (the steps pass
    kftune.io.store.open_store); without one, the error names the URI. The opener here maps mem://<root> to a
    local store, so every call is seen."""
    from kftune.core.errors import ConfigError
    from kftune.io.store import open_store

    opened: list[str] = []

    def opener(root: str):
        opened.append(root)
        return open_store(tmp_path / root.removeprefix("mem://"))

    loaded = load_model(classifier)
    uri = save_model(loaded.model, loaded.encoder, loaded.hyperparameters, "mem://bucket/runs/r1/model.pt",
                     metadata=loaded.metadata, open_store=opener)
    assert uri == "mem://bucket/runs/r1/model.pt" and (tmp_path / "bucket" / "runs" / "r1" / "model.pt").is_file()
    again = load_model(uri, open_store=opener)
    assert opened == ["mem://bucket/runs/r1", "mem://bucket/runs/r1"]
    assert again.metadata == loaded.metadata and again.labels == loaded.labels
    with pytest.raises(ConfigError, match=r"model: 'mem://bucket/runs/r1/model.pt' is a store URI, and no store"):
        load_model(uri)
