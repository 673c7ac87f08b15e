"""kftune.nlp.models, crf and embeddings: shapes, exact CRF math, accumulation, pretrained vectors, caching."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest
import torch

from kftune.core.errors import ConfigError, DataError
from kftune.nlp.config import Hyperparameters
from kftune.nlp.crf import CRF
from kftune.nlp.data import Example, TaskInfo, TextEncoder, collate
from kftune.nlp.embeddings import StackedEmbeddings, TokenEmbedding, WordEmbedding, load_pretrained_vectors
from kftune.nlp.models import SequenceTagger, TextClassifier, build_model
from tests.nlp.synthetic import one_torch_thread

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_ = one_torch_thread

CLS = TaskInfo("text_classification")
TAG = TaskInfo("sequence_labeling", tag_scheme="BIO")
NO_DROPOUT = {"dropout": 0.0, "word_dropout": 0.0, "locked_dropout": 0.0}


def _cls_data(use_chars: bool = False, max_length: int = 20):
    train = [Example(("a", "b", "c", "d"), label="X"), Example(("b",), label="Y"),
             Example(("c", "a"), label="X"), Example(("d", "d", "a", "b", "c", "a"), label="Y")]
    enc = TextEncoder.build(CLS, train, min_word_freq=1, max_length=max_length, use_chars=use_chars)
    return enc, enc.encode(train, "train", training=True)


def _tag_data():
    train = [Example(("Paul", "Walker", "runs"), tags=("B-PER", "I-PER", "O")), Example(("Rome",), tags=("B-LOC",)),
             Example(("the", "Anna", "and", "Rome", "x"), tags=("O", "B-PER", "O", "B-LOC", "O"))]
    enc = TextEncoder.build(TAG, train, min_word_freq=1, max_length=20, use_chars=True)
    return enc, enc.encode(train, "train", training=True)


# ---------------------------------------------------------------------------------------------- CRF


def _brute_force(crf: CRF, emissions: torch.Tensor, length: int):
    n = crf.num_tags
    scores = {}
    for path in itertools.product(range(n), repeat=length):
        s = crf.start[path[0]] + emissions[0, path[0]]
        for t in range(1, length):
            s = s + crf.transitions[path[t - 1], path[t]] + emissions[t, path[t]]
        scores[path] = s + crf.end[path[-1]]
    return scores


def test_crf_matches_brute_force_enumeration() -> None:
    torch.manual_seed(0)
    crf = CRF(3).requires_grad_(False)
    emissions = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    tags = torch.tensor([[0, 2, 1, 1], [1, 0, 0, 0]])
    nll = crf.nll(emissions, tags, mask)
    paths = crf.viterbi(emissions, mask)
    marg = crf.marginals(emissions, mask)
    for b, length in enumerate([4, 2]):
        scores = _brute_force(crf, emissions[b], length)
        log_z = torch.logsumexp(torch.stack(list(scores.values())), 0)
        gold = tuple(tags[b, :length].tolist())
        assert torch.allclose(nll[b], log_z - scores[gold], atol=1e-5)
        best = max(scores, key=lambda p: scores[p].item())
        assert tuple(paths[b, :length].tolist()) == best
        assert paths[b, length:].eq(0).all()
        for t in range(length):
            for j in range(3):
                p = sum(torch.exp(s - log_z) for path, s in scores.items() if path[t] == j)
                assert torch.allclose(marg[b, t, j], p, atol=1e-5)
        assert marg[b, length:].eq(0).all()


# ------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("encoder", ["mean", "max", "lstm", "gru", "cnn"])
def test_classifier_encoders(encoder: str) -> None:
    enc, data = _cls_data()
    hp = Hyperparameters.from_mapping({"document_encoder": encoder, "hidden_size": 8, "embedding_dim": 6,
                                       "cnn_filters": 4, "cnn_kernel_sizes": "2,5"}, "text_classification")
    torch.manual_seed(0)
    model = build_model("text_classification", hp, enc)
    assert isinstance(model, TextClassifier)
    batch = collate(data, [0, 1, 2, 3])
    assert model(batch).shape == (4, len(enc.labels))
    loss, count = model.loss(batch)
    assert count == 4 and loss.dim() == 0 and loss.item() > 0
    model.eval()
    pred = model.predict(batch)
    assert all(label != 0 for label in pred.labels)  # never <unk>
    assert pred.distributions is not None and torch.allclose(pred.distributions.sum(1), torch.ones(4))
    # padding does not change a sentence's output (a single-token sentence shorter than every kernel too)
    alone = model(collate(data, [1]))
    assert torch.allclose(alone, model(batch)[1:2], atol=1e-5)


@pytest.mark.parametrize("settings", [{}, {"use_crf": False}, {"use_rnn": False, "reproject_embeddings": False},
                                      {"char_embeddings": "cnn", "rnn_layers": 2}])
def test_tagger_variants(settings: dict) -> None:
    enc, data = _tag_data()
    hp = Hyperparameters.from_mapping({"hidden_size": 8, "embedding_dim": 6, **settings}, "sequence_labeling")
    model = build_model("sequence_labeling", hp, enc)
    assert isinstance(model, SequenceTagger) and (model.crf is not None) == hp.use_crf
    batch = collate(data, [0, 1, 2])
    model.eval()
    loss, count = model.loss(batch)
    assert count == 9 and loss.item() > 0
    pred = model.predict(batch)
    assert [len(p) for p in pred.labels] == [3, 1, 5] and [len(s) for s in pred.scores] == [3, 1, 5]
    assert all(0 < s <= 1 for row in pred.scores for s in row)
    assert all(t != 0 for row in pred.labels for t in row)
    loss2, count2, pred2 = model.loss_and_predict(batch)
    assert torch.allclose(loss, loss2) and count2 == count and pred2.labels == pred.labels


@pytest.mark.parametrize("task", ["text_classification", "sequence_labeling"])
def test_chunked_gradients_equal_full_batch(task: str) -> None:
    enc, data = _cls_data() if task == "text_classification" else _tag_data()
    hp = Hyperparameters.from_mapping({"hidden_size": 8, "embedding_dim": 6, "document_encoder": "lstm",
                                       **NO_DROPOUT}, task)
    torch.manual_seed(0)
    model = build_model(task, hp, enc)
    batch = collate(data, list(range(len(data))))

    def grads(chunk_size):
        model.zero_grad()
        for chunk in batch.chunks(chunk_size):
            loss, _ = model.loss(chunk)
            (loss / batch.count).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    full, chunked = grads(None), grads(1)
    assert len(full) == len(chunked)
    for a, b in zip(full, chunked):
        assert torch.allclose(a, b, atol=1e-6)


def test_word_dropout_only_in_training() -> None:
    enc, data = _cls_data()
    hp = Hyperparameters.from_mapping({"word_dropout": 0.5, "dropout": 0.0, "document_encoder": "mean"},
                                      "text_classification")
    torch.manual_seed(0)
    model = build_model("text_classification", hp, enc)
    batch = collate(data, [0, 1, 2, 3])
    model.eval()
    assert torch.equal(model(batch), model(batch))
    model.train()
    assert not torch.equal(model(batch), model(batch))


# ------------------------------------------------------------------------------------------ embeddings


def _write_vectors(path: Path, header: bool) -> None:
    lines = ["3 2"] if header else []
    lines += ["the 1.0 2.0", "paris 0.5 0.5", "rome -1 1"]
    data = ("\n".join(lines) + "\n").encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("name, header", [("w2v.txt", True), ("glove.txt", False), ("glove.txt.gz", False)])
def test_pretrained_vectors(tmp_path: Path, name: str, header: bool) -> None:
    path = tmp_path / name
    _write_vectors(path, header)
    vocab, weights = load_pretrained_vectors(str(path), {"The", "Paris", "x"})
    assert vocab.itos == ["<pad>", "<unk>", "the", "paris"]  # rome is not a corpus word
    assert weights.shape == (4, 2) and weights[0].eq(0).all()
    assert torch.allclose(weights[1], torch.tensor([0.75, 1.25]))  # <unk> = mean of the kept vectors
    assert vocab.encode(["The", "paris", "nope"]) == [2, 3, 1]  # lower-case fallback


def test_pretrained_model_freezes_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    _write_vectors(path, header=False)
    enc, _ = _cls_data()
    train = [Example(("the", "paris"), label="X"), Example(("rome",), label="Y")]
    enc = TextEncoder.build(CLS, train, min_word_freq=1, max_length=10, use_chars=False)
    enc.pretrained, weights = load_pretrained_vectors(str(path), {"the", "paris", "rome"})
    hp = Hyperparameters.from_mapping({"pretrained_embeddings": str(path), "embedding_dim": 0,
                                       "document_encoder": "mean"}, "text_classification")
    model = build_model("text_classification", hp, enc, pretrained_weights=weights)
    emb = model.embeddings.embeddings["pretrained"]
    assert not emb.embedding.weight.requires_grad
    data = enc.encode(train, "train", training=True)
    out = model.embeddings(collate(data, [0]))
    assert torch.allclose(out[0, 1], torch.tensor([0.5, 0.5]))
    with pytest.raises(ConfigError, match="not loaded"):
        build_model("text_classification", hp, enc)


def test_bad_vector_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("a 1 2\nb 1\n")
    with pytest.raises(DataError, match="line 2 has 1 values"):
        load_pretrained_vectors(str(bad), None)
    with pytest.raises(DataError, match="no such file"):
        load_pretrained_vectors(str(tmp_path / "missing.txt"), None)


class _CountingFrozen(TokenEmbedding):
    """A frozen, costly-to-compute embedding stand-in (like a frozen transformer) that counts calls."""

    cacheable = True

    def __init__(self) -> None:
        super().__init__()
        self.embedding_length = 3
        self.calls = 0

    def forward(self, batch):
        self.calls += 1
        return batch.words.unsqueeze(-1).float().repeat(1, 1, 3)


@pytest.mark.parametrize("mode, expected_calls", [("none", 3), ("cpu", 1)])
def test_frozen_embedding_cache(mode: str, expected_calls: int) -> None:
    enc, data = _cls_data()
    frozen = _CountingFrozen()
    stack = StackedEmbeddings([("words", WordEmbedding(len(enc.words), 2)), ("frozen", frozen)], storage_mode=mode)
    outputs = [stack(collate(data, [0, 1, 3], cache=True)) for _ in range(3)]
    assert frozen.calls == expected_calls
    assert all(torch.equal(outputs[0], o) for o in outputs)
    # a batch that mixes cached and new sentences, in another order, gives the same rows
    mixed = stack(collate(data, [3, 2], cache=True))
    assert torch.equal(mixed[0, :6], outputs[0][2, :6])
    assert outputs[0].shape == (3, 6, 5)
