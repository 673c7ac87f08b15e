"""The fastText-style n-gram bag: feature hashing, the encoder, sparse-aware optimisation and clipping."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kftune.core.errors import ConfigError
from kftune.nlp.config import Hyperparameters
from kftune.nlp.data import Example, TaskInfo, TextEncoder, batch_order, collate
from kftune.nlp.embeddings import encode_corpus, ngram_spec
from kftune.nlp.model_io import load_model, save_model
from kftune.nlp.models import NgramBag, build_model
from kftune.nlp.ngrams import NgramSpec
from kftune.nlp.predict import predict
from kftune.nlp.schedulers import LazyAdam, LazyAdamW, build_optimizer, clip_gradients, sparse_parameters
from tests.nlp.synthetic import one_torch_thread

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_ = one_torch_thread

CLS = TaskInfo("text_classification")
BAG = {"document_encoder": "ngram", "embedding_dim": 0, "dropout": 0.0, "ngram_buckets": 4096, "ngram_dim": 16}


def _reviews() -> list[Example]:
    good = ["정말 재밌다", "최고의 영화", "배우 연기 좋다", "재밌고 감동", "좋은 영화 추천"]
    bad = ["정말 지루하다", "최악의 영화", "연기 별로다", "지루하고 졸림", "나쁜 영화 비추"]
    out = [Example(tuple(t.split()), label="pos", text=t) for t in good]
    out += [Example(tuple(t.split()), label="neg", text=t) for t in bad]
    return out


# ---------------------------------------------------------------------------------------------- hashing


def test_ids_count_every_token_and_character_ngram() -> None:
    spec = NgramSpec(word_ngrams=2, char_min=2, char_max=4, buckets=1000)
    ids = spec.ids(("a", "b", "c"), "ab")
    # token 1-grams (3) + 2-grams (2); characters of "<ab>": 3 bigrams + 2 trigrams + 1 four-gram
    assert len(ids) == 5 + 6
    assert all(0 <= i < 1000 for i in ids)
    assert NgramSpec(word_ngrams=0, char_max=0).ids(("a",), "a") == []
    # without text, the characters come from the tokens joined by spaces
    assert spec.ids(("ab",)) == spec.ids(("ab",), "ab")


def test_token_and_character_features_hash_apart() -> None:
    tokens_only = NgramSpec(word_ngrams=1, char_max=0, buckets=1 << 24)
    chars_only = NgramSpec(word_ngrams=0, char_min=1, char_max=1, buckets=1 << 24)
    assert set(tokens_only.ids(("가",), "")) .isdisjoint(chars_only.ids((), "가"))


def test_ids_are_the_same_in_another_process() -> None:
    """CRC-32, not Python's salted hash(): a model trained in one pod predicts the same in another."""
    spec = NgramSpec(word_ngrams=3, buckets=1 << 18)
    here = spec.ids(("영화/NNG", "가/JKS", "좋/VA"), "영화가 좋다")
    code = ("from kftune.nlp.ngrams import NgramSpec;"
            "print(NgramSpec(word_ngrams=3, buckets=1 << 18).ids(('영화/NNG', '가/JKS', '좋/VA'), '영화가 좋다'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout
    assert out.strip() == str(here)


# ---------------------------------------------------------------------------------------------- the model


def test_hyperparameters_check_the_bag() -> None:
    with pytest.raises(ConfigError, match="without features"):
        Hyperparameters.from_mapping({**BAG, "word_ngrams": 0, "char_ngram_max": 0}, "text_classification")
    with pytest.raises(ConfigError, match="char_ngram_min"):
        Hyperparameters.from_mapping({**BAG, "char_ngram_min": 5, "char_ngram_max": 3}, "text_classification")
    with pytest.raises(ConfigError, match="document_encoder"):
        Hyperparameters.from_mapping({"document_encoder": "bag"}, "text_classification")
    hp = Hyperparameters.from_mapping(BAG, "text_classification")
    assert hp.uses_ngrams and not hp.uses_token_embeddings
    assert ngram_spec(Hyperparameters.from_mapping({}, "text_classification")) is None


def test_ngram_classifier_learns_and_has_no_token_embeddings() -> None:
    torch.manual_seed(0)
    hp = Hyperparameters.from_mapping({**BAG, "learning_rate": 0.05}, "text_classification")
    encoder, train, _, _ = encode_corpus(CLS, _reviews(), None, hp)
    model = build_model("text_classification", hp, encoder)
    assert model.embeddings is None and isinstance(model.ngram_bag, NgramBag)
    opt = build_optimizer(model.parameters(), hp, sparse=sparse_parameters(model))
    assert isinstance(opt, LazyAdamW)
    batch = collate(train, list(range(len(train.examples))))
    for _ in range(60):
        loss, n = model.loss(batch)
        opt.zero_grad()
        (loss / n).backward()
        assert model.ngram_bag.bag.weight.grad.is_sparse
        opt.step()
    model.eval()
    predicted = encoder.labels.decode(model.predict(batch).labels)
    assert predicted == [e.label for e in _reviews()]


def test_bag_beside_a_cnn_adds_its_vector() -> None:
    hp = Hyperparameters.from_mapping({"ngram_features": True, "ngram_buckets": 512, "ngram_dim": 8,
                                       "embedding_dim": 10, "cnn_filters": 4, "cnn_kernel_sizes": [1, 2]},
                                      "text_classification")
    encoder, train, _, _ = encode_corpus(CLS, _reviews(), None, hp)
    model = build_model("text_classification", hp, encoder)
    assert model.decoder.in_features == 4 * 2 + 8
    assert model(collate(train, [0, 1, 2])).shape == (3, len(encoder.labels))


def test_feature_dropout_keeps_a_feature_of_every_document() -> None:
    torch.manual_seed(0)
    bag = NgramBag(64, 4, feature_dropout=0.99)
    encoder = TextEncoder.build(CLS, _reviews(), min_word_freq=1, max_length=20, use_chars=False,
                                ngrams=NgramSpec(buckets=64))
    data = encoder.encode(_reviews(), "train", training=True)
    batch = collate(data, list(range(len(data.examples))))
    bag.train()
    out = bag(batch)
    assert out.shape == (len(data.examples), 4)
    assert torch.isfinite(out).all() and (out.abs().sum(dim=1) > 0).all()   # an empty bag would be all zeros
    bag.eval()
    mean = torch.nn.functional.embedding_bag(batch.ngrams, bag.bag.weight, batch.ngram_offsets, mode="mean")
    assert torch.allclose(bag(batch), mean, atol=1e-6)   # unweighted, the bag is the mean of its vectors


def test_chunks_split_the_ngram_bag_consistently() -> None:
    encoder = TextEncoder.build(CLS, _reviews(), min_word_freq=1, max_length=20, use_chars=False,
                                ngrams=NgramSpec(buckets=64))
    data = encoder.encode(_reviews(), "train", training=True)
    batch = collate(data, list(range(len(data.examples))))
    pieces = batch.chunks(3)
    assert [p.size for p in pieces] == [3, 3, 3, 1]
    rebuilt = [data.ngrams[i].tolist() for i in range(len(data.examples))]
    for piece in pieces:
        ends = piece.ngram_offsets.tolist()[1:] + [piece.ngrams.numel()]
        for j, (lo, hi) in enumerate(zip(piece.ngram_offsets.tolist(), ends)):
            assert piece.ngrams[lo:hi].tolist() == rebuilt[piece.indices[j]]


def test_model_file_keeps_the_ngram_spec_and_predicts_the_same(tmp_path) -> None:
    torch.manual_seed(0)
    hp = Hyperparameters.from_mapping(BAG, "text_classification")
    encoder, train, _, _ = encode_corpus(CLS, _reviews(), None, hp)
    model = build_model("text_classification", hp, encoder)
    save_model(model, encoder, hp, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.encoder.ngrams == encoder.ngrams
    model.eval()
    direct = model.predict(collate(train, [0, 1]))
    via_file = predict(loaded, ["정말 재밌다", "최고의 영화"])
    assert [p.score for p in via_file] == pytest.approx(direct.scores, abs=1e-6)


# ---------------------------------------------------------------------------------------------- optimiser


@pytest.mark.parametrize("dense_cls, lazy_cls", [(torch.optim.AdamW, LazyAdamW), (torch.optim.Adam, LazyAdam)])
def test_lazy_adams_match_torchs_on_dense_parameters(dense_cls: type, lazy_cls: type) -> None:
    """Dense parameters: LazyAdamW is AdamW (decoupled decay), LazyAdam is Adam (L2 decay in the gradient)."""
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    opt_a = dense_cls(a.parameters(), lr=0.01, weight_decay=0.1)
    opt_b = lazy_cls(b.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(5):
        x = torch.randn(4, 5)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_sgd_leaves_sparse_rows_out_of_weight_decay() -> None:
    hp = Hyperparameters.from_mapping({**BAG, "optimizer": "sgd", "weight_decay": 0.01}, "text_classification")
    encoder, train, _, _ = encode_corpus(CLS, _reviews(), None, hp)
    model = build_model("text_classification", hp, encoder)
    opt = build_optimizer(model.parameters(), hp, sparse=sparse_parameters(model))
    loss, n = model.loss(collate(train, [0, 1]))
    loss.backward()
    opt.step()   # torch's SGD raises on a decayed sparse gradient
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]


@pytest.mark.parametrize("lazy_cls, dense_cls, weight_decay", [(LazyAdamW, torch.optim.AdamW, 0.0),
                                                                  (LazyAdam, torch.optim.Adam, 0.5)])
def test_lazy_adams_update_only_touched_rows_as_torchs_would(lazy_cls: type, dense_cls: type,
                                                            weight_decay: float) -> None:
    """A touched row moves as under torch's optimizer (Adam: the L2 penalty in the gradient); an untouched
    row is neither moved nor decayed (SparseAdam's laziness)."""
    torch.manual_seed(0)
    sparse = torch.nn.EmbeddingBag(10, 3, mode="mean", sparse=True)
    dense = torch.nn.EmbeddingBag(10, 3, mode="mean", sparse=False)
    dense.load_state_dict(sparse.state_dict())
    before = sparse.weight.detach().clone()
    ids, offsets = torch.tensor([1, 2, 2, 7]), torch.tensor([0, 2])
    touched = [1, 2, 7]
    for model, opt in ((sparse, lazy_cls(sparse.parameters(), lr=0.1, weight_decay=weight_decay)),
                       (dense, dense_cls(dense.parameters(), lr=0.1, weight_decay=weight_decay))):
        model(ids, offsets).sum().backward()
        opt.step()
    assert torch.allclose(sparse.weight[touched], dense.weight[touched], atol=1e-6)
    untouched = [i for i in range(10) if i not in touched]
    assert torch.equal(sparse.weight[untouched], before[untouched])
    if weight_decay:
        assert not torch.equal(dense.weight[untouched], before[untouched])  # dense Adam decays every row
    # decoupled (AdamW) and L2 (Adam) decay differ on the same rows
    adamw = torch.nn.EmbeddingBag(10, 3, mode="mean", sparse=True)
    adamw.load_state_dict({"weight": before.clone()})
    adamw(ids, offsets).sum().backward()
    LazyAdamW(adamw.parameters(), lr=0.1, weight_decay=0.5).step()
    assert not torch.allclose(adamw.weight[touched], sparse.weight[touched], atol=1e-4)


@pytest.mark.parametrize("name, dense_cls, lazy_cls", [("adam", torch.optim.Adam, LazyAdam),
                                                         ("adamw", torch.optim.AdamW, LazyAdamW),
                                                         ("sgd", torch.optim.SGD, torch.optim.SGD)])
def test_build_optimizer_picks_the_named_optimizer(name: str, dense_cls: type, lazy_cls: type) -> None:
    dense_hp = Hyperparameters.from_mapping({"optimizer": name, "weight_decay": 0.01}, "text_classification")
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), dense_hp)
    assert type(opt) is dense_cls and opt.param_groups[0]["weight_decay"] == 0.01
    hp = Hyperparameters.from_mapping({**BAG, "optimizer": name}, "text_classification")
    encoder, _, _, _ = encode_corpus(CLS, _reviews(), None, hp)
    model = build_model("text_classification", hp, encoder)
    assert type(build_optimizer(model.parameters(), hp, sparse=sparse_parameters(model))) is lazy_cls


def test_clip_gradients_takes_sparse_gradients_like_dense_ones() -> None:
    torch.manual_seed(0)
    sparse = torch.nn.EmbeddingBag(10, 3, mode="sum", sparse=True)
    dense = torch.nn.EmbeddingBag(10, 3, mode="sum", sparse=False)
    dense.load_state_dict(sparse.state_dict())
    ids, offsets = torch.tensor([1, 2, 2, 7]), torch.tensor([0, 2])
    for model in (sparse, dense):
        (model(ids, offsets) * 10).sum().backward()
    norm_sparse = clip_gradients(sparse.parameters(), 1.0)
    norm_dense = clip_gradients(dense.parameters(), 1.0)
    assert float(norm_sparse) == pytest.approx(float(norm_dense), rel=1e-5)
    assert torch.allclose(sparse.weight.grad.to_dense(), dense.weight.grad, atol=1e-6)


def test_training_order_is_unchanged_by_the_bag() -> None:
    hp = Hyperparameters.from_mapping(BAG, "text_classification")
    _, train, _, _ = encode_corpus(CLS, _reviews(), None, hp)
    assert batch_order(train, 4, shuffle=True, seed=3) == batch_order(train, 4, shuffle=True, seed=3)


def test_predict_reads_the_raw_text_of_corpus_examples(tmp_path) -> None:
    """Evaluation hands predict() the corpus' examples: the bag's character n-grams must come from their
    raw text, as in training, not from the tokens joined (morphemes would give other n-grams)."""
    torch.manual_seed(0)
    hp = Hyperparameters.from_mapping(BAG, "text_classification")
    morphemes = [Example(("재밌/VA", "다/EF"), label="pos", text="재밌다"),
                 Example(("지루/XR", "하/XSA", "다/EF"), label="neg", text="지루하다")]
    encoder, train, _, _ = encode_corpus(CLS, morphemes, None, hp)
    model = build_model("text_classification", hp, encoder)
    save_model(model, encoder, hp, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    model.eval()
    direct = model.predict(collate(train, [0, 1])).scores
    assert [p.score for p in predict(loaded, morphemes)] == pytest.approx(direct, abs=1e-6)
    assert [p.tokens for p in predict(loaded, morphemes)] == [e.tokens for e in morphemes]


def test_feature_weights_follow_idf_and_the_naive_bayes_ratio() -> None:
    from kftune.nlp.ngrams import feature_weights

    docs = [[0, 1], [0, 2], [0, 1], [0, 3]]     # 0 in every document; 1 only in class 0; 2, 3 in class 1
    labels = [0, 1, 0, 1]
    assert feature_weights(docs, labels, 5, 2, "none").tolist() == [1.0] * 5
    idf = feature_weights(docs, labels, 5, 2, "idf")
    assert idf[0] == pytest.approx(1.0) and idf[1] < idf[2] == pytest.approx(idf[3]) and idf[4] == idf.max()
    nb = feature_weights(docs, labels, 5, 2, "nb-idf")
    assert nb[0] == pytest.approx(0.0, abs=1e-9)   # in every document of both classes: says nothing
    assert nb[1] > nb[2] > 0                        # seen twice in one class beats once
    three = feature_weights([[0], [1], [2]], [0, 1, 2], 3, 3, "nb-idf")
    assert three[0] == pytest.approx(three[1]) == pytest.approx(three[2])   # one-vs-rest: symmetric


def test_nb_idf_weights_are_fitted_from_train_and_saved(tmp_path) -> None:
    torch.manual_seed(0)
    hp = Hyperparameters.from_mapping({**BAG, "ngram_weighting": "nb-idf"}, "text_classification")
    encoder, train, _, _ = encode_corpus(CLS, _reviews(), None, hp)
    model = build_model("text_classification", hp, encoder)
    assert torch.equal(model.ngram_bag.feature_weights, torch.ones(hp.ngram_buckets))
    from kftune.nlp.models import fit_to_training_split

    fit_to_training_split(model, train)
    weights = model.ngram_bag.feature_weights.clone()
    assert not torch.equal(weights, torch.ones(hp.ngram_buckets))
    save_model(model, encoder, hp, tmp_path / "model.pt")
    assert torch.equal(load_model(tmp_path / "model.pt").model.ngram_bag.feature_weights, weights)


# ---------------------------------------------------------------------------------------------- min count


def test_ngram_vocabulary_keeps_features_of_enough_documents() -> None:
    from kftune.nlp.ngrams import NgramVocabulary

    # 7 twice in one document counts once; 5 is in two documents, 9 in one
    vocab = NgramVocabulary.build([[7, 7, 5], [5, 9], []], min_count=2)
    assert len(vocab) == 1 and vocab.rows([9, 5, 7, 5]).tolist() == [0, 0]
    vocab = NgramVocabulary.build([[7, 7, 5], [5, 9]], min_count=1)
    assert vocab.kept.tolist() == [5, 7, 9]
    assert vocab.rows([9, 1, 5, 2**32 - 1, 7]).tolist() == [2, 0, 1]   # unknown hashes are dropped
    assert len(NgramVocabulary.build([], 2)) == 0 and NgramVocabulary.build([], 2).rows([3]).tolist() == []
    with pytest.raises(ValueError):
        NgramVocabulary([3, 1])


def test_hashes_are_the_ids_before_the_modulo() -> None:
    spec = NgramSpec(word_ngrams=2, char_min=1, char_max=3, buckets=997)
    assert [h % 997 for h in spec.hashes(("영화/NNG", "좋/VA"), "영화 좋다")] == spec.ids(("영화/NNG", "좋/VA"), "영화 좋다")


def test_min_count_gives_the_bag_one_row_per_kept_ngram(tmp_path) -> None:
    torch.manual_seed(0)
    hp = Hyperparameters.from_mapping({**BAG, "ngram_min_count": 2, "learning_rate": 0.05}, "text_classification")
    encoder, train, _, _ = encode_corpus(CLS, _reviews(), None, hp)
    vocab = encoder.ngram_vocab
    assert vocab is not None and 0 < len(vocab) < 100
    # the kept features are exactly those of two or more reviews
    per_doc = [set(encoder.ngrams.hashes(e.tokens, e.text)) for e in _reviews()]
    assert set(vocab.kept.tolist()) == {h for d in per_doc for h in d if sum(h in o for o in per_doc) >= 2}
    assert all(int(t.max()) < len(vocab) for t in train.ngrams if t.numel())
    model = build_model("text_classification", hp, encoder)
    assert model.ngram_bag.bag.num_embeddings == len(vocab) == encoder.ngram_rows
    opt = build_optimizer(model.parameters(), hp, sparse=sparse_parameters(model))
    batch = collate(train, list(range(len(train.examples))))
    for _ in range(40):
        loss, n = model.loss(batch)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    model.eval()
    save_model(model, encoder, hp, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.encoder.ngram_vocab is not None
    assert loaded.encoder.ngram_vocab.kept.tolist() == vocab.kept.tolist()
    direct = model.predict(collate(train, [0, 5]))
    via_file = predict(loaded, ["정말 재밌다", "정말 지루하다"])
    assert [p.score for p in via_file] == pytest.approx(direct.scores, abs=1e-6)
    # a review with no kept n-gram gets the zero bag (the decoder's bias) instead of an error
    assert len(predict(loaded, ["뷁"])) == 1


def test_min_count_vocabulary_is_fitted_by_the_training_split_first() -> None:
    hp = Hyperparameters.from_mapping({**BAG, "ngram_min_count": 2}, "text_classification")
    encoder = TextEncoder.build(CLS, _reviews(), min_word_freq=1, max_length=64, use_chars=False,
                                ngrams=ngram_spec(hp))
    with pytest.raises(ValueError, match="training split first"):
        encoder.encode(_reviews(), "dev")   # no silent fall-back to hashed buckets
    encoder.encode(_reviews(), "train", training=True)
    fitted = encoder.ngram_vocab
    assert fitted is not None and len(fitted) > 0
    encoder.encode(_reviews()[:3], "train", training=True)   # a second training pass keeps the vocabulary
    assert encoder.ngram_vocab is fitted


def test_min_count_is_bounded() -> None:
    with pytest.raises(ConfigError, match="ngram_min_count"):
        Hyperparameters.from_mapping({**BAG, "ngram_min_count": 0}, "text_classification")
