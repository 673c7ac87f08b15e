"""The word-shape (casing) feature and lower-cased word vocabularies: classes, encoding, training, saving."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kftune.core.errors import ConfigError
from kftune.nlp.checkpoint import seed_everything
from kftune.nlp.config import Hyperparameters, TrainerConfig
from kftune.nlp.data import (CASING_CLASSES, SPLITS, Example, TaskInfo, TextEncoder, casing_class, collate,
                             read_corpus_info, read_split, task_from_corpus_info)
from kftune.nlp.embeddings import encode_corpus
from kftune.nlp.model_io import LoadedModel, load_model, save_model
from kftune.nlp.models import build_model
from kftune.nlp.predict import predict
from kftune.nlp.trainer import Trainer
from tests.nlp.synthetic import one_torch_thread, write_corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_ = one_torch_thread

TAG = TaskInfo("sequence_labeling", tag_scheme="BIO")


@pytest.mark.parametrize("token, name", [
    ("hello", "lower"), ("Hello", "initial_upper"), ("I", "initial_upper"), ("HELLO", "all_upper"),
    ("iPhone", "mixed"), ("McDonald", "mixed"), ("2017", "numeric"), ("3.5", "numeric"), ("B2B", "has_digit"),
    ("4th", "has_digit"), (".", "punctuation"), ("--", "punctuation"), ("@paulwalk", "mention"),
    ("#tbt", "hashtag"), ("http://t.co/x", "url"), ("https://example.com", "url"), ("www.x.org", "url"),
    ("영화", "other"), ("@", "punctuation"), ("#", "punctuation"),
])
def test_casing_classes_of_known_tokens(token: str, name: str) -> None:
    assert CASING_CLASSES[casing_class(token) - 1] == name


def test_casing_ids_are_encoded_padded_and_chunked() -> None:
    train = [Example(("Paul", "runs", "@x"), tags=("B-PER", "O", "O")), Example(("ROME",), tags=("B-LOC",))]
    enc = TextEncoder.build(TAG, train, min_word_freq=1, max_length=10, use_chars=False, use_casing=True)
    data = enc.encode(train, "train", training=True)
    assert data.casing is not None and data.casing[0].tolist() == [casing_class(t) for t in ("Paul", "runs", "@x")]
    batch = collate(data, [0, 1])
    assert batch.casing is not None and batch.casing.shape == (2, 3) and batch.casing[1, 1:].tolist() == [0, 0]
    first, second = batch.chunks(1)
    assert first.casing is not None and first.casing.shape == (1, 3)
    assert second.casing is not None and second.casing.tolist() == [[casing_class("ROME")]]
    # off by default: no casing ids, and an old encoder dict (without the keys) loads with it off
    plain = TextEncoder.build(TAG, train, min_word_freq=1, max_length=10, use_chars=False)
    assert plain.encode(train, "x").casing is None and collate(plain.encode(train, "x"), [0]).casing is None
    old = plain.to_dict()
    old.pop("casing"), old.pop("lowercase")
    assert TextEncoder.from_dict(old).casing is False and TextEncoder.from_dict(enc.to_dict()).casing is True


def test_lowercase_words_share_one_entry() -> None:
    train = [Example(("Apple", "apple", "APPLE", "pie"), tags=("B-ORG", "O", "O", "O"))]
    enc = TextEncoder.build(TAG, train, min_word_freq=1, max_length=10, use_chars=False, lowercase=True)
    assert enc.words.itos[2:] == ["apple", "pie"]
    ids = enc.encode([Example(("ApPlE", "Pie", "kiwi"), tags=("O", "O", "O"))], "dev").words[0].tolist()
    assert ids == [enc.words.index("apple"), enc.words.index("pie"), 1]
    assert TextEncoder.from_dict(enc.to_dict()).lowercase is True


def test_hyperparameters_coerce_and_bound_the_casing_settings() -> None:
    hp = Hyperparameters.from_mapping({"casing_embedding_dim": "16", "lowercase_words": "true"}, "sequence_labeling")
    assert hp.casing_embedding_dim == 16 and hp.lowercase_words is True
    old = Hyperparameters().to_dict()
    old.pop("casing_embedding_dim"), old.pop("lowercase_words")
    assert Hyperparameters.from_dict(old).casing_embedding_dim == 0  # models saved before: feature off
    with pytest.raises(ConfigError, match="casing_embedding_dim"):
        Hyperparameters.from_mapping({"casing_embedding_dim": -1}, "sequence_labeling")


def test_casing_ids_are_computed_when_the_encoder_has_none() -> None:
    train = [Example(("Paul", "went", "to", "ROME"), tags=("B-PER", "O", "O", "B-LOC")), Example(("@x",), tags=("O",))]
    hp = Hyperparameters.from_mapping({"casing_embedding_dim": 4, "embedding_dim": 0, "char_embeddings": "lstm"},
                                      "sequence_labeling")
    with_ids = TextEncoder.build(TAG, train, min_word_freq=1, max_length=10, use_chars=True, use_casing=True)
    without = TextEncoder.build(TAG, train, min_word_freq=1, max_length=10, use_chars=True)
    torch.manual_seed(0)
    model = build_model("sequence_labeling", hp, without).eval()
    a = collate(with_ids.encode(train, "a"), [0, 1])
    b = collate(without.encode(train, "b"), [0, 1])
    assert b.casing is None
    emb = model.embeddings.embeddings["casing"]
    assert torch.equal(emb(a), emb(b))


def test_tagger_trains_with_casing_and_reloads_identically(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", "sequence_labeling", sizes=(200, 40, 10))
    info = task_from_corpus_info(read_corpus_info(corpus))
    splits = {s: read_split(corpus / f"{s}.jsonl", "sequence_labeling") for s in SPLITS}
    hp = Hyperparameters.from_mapping({"hidden_size": 16, "embedding_dim": 16, "char_hidden_size": 8,
                                       "learning_rate": 0.01, "casing_embedding_dim": 4, "lowercase_words": True,
                                       "min_word_freq": 2}, "sequence_labeling")
    enc, train, dev, _ = encode_corpus(info, splits["train"], splits["dev"], hp)
    assert enc.casing and enc.lowercase and train.casing is not None
    seed_everything(1)
    model = build_model("sequence_labeling", hp, enc)
    assert "casing" in model.embeddings.embeddings
    before = model.embeddings.embeddings["casing"].embedding.weight.detach().clone()
    result = Trainer(model, enc, train, dev, hp, TrainerConfig(max_epochs=3), show_progress=False).fit()
    assert result.best_score > 0.5
    model.load_state_dict(result.best_state)
    assert not torch.equal(before, model.embeddings.embeddings["casing"].embedding.weight)  # it learns
    path = tmp_path / "model.pt"
    save_model(model, enc, hp, path, state_dict=result.best_state)
    sentences = [list(e.tokens) for e in splits["test"]] + ["Paul went to ROME with @anna #tbt"]
    direct = predict(LoadedModel(model=model.eval(), encoder=enc, hyperparameters=hp, task=info), sentences)
    loaded = load_model(path)
    assert loaded.hyperparameters.casing_embedding_dim == 4 and loaded.encoder.casing
    again = predict(loaded, sentences)
    assert [p.tags for p in again] == [p.tags for p in direct]
    assert all(abs(a - b) < 1e-6 for p, q in zip(again, direct) for a, b in zip(p.tag_scores or (), q.tag_scores or ()))
