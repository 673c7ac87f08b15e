"""Hugging Face transformers as embeddings (kftune.nlp.embeddings): word vectors from sub-tokens and document
vectors, fine-tuned or frozen, the fine-tune preset, training a classifier and a tagger, the LR range test,
and the model file that predicts in a fresh process without the weights it was trained from.

Every test runs on the tiny BERT of tests/fixtures/tiny_transformer.py (a tokenizer trained on real TREC and
WNUT-17 text, a random 2-layer model), never on a hub download.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kftune.core.errors import ConfigError
from kftune.core.lr_range import RangeTestConfig
from kftune.nlp.checkpoint import seed_everything
from kftune.nlp.config import FINE_TUNE_DEFAULTS, Hyperparameters, TrainerConfig, defaults_for
from kftune.nlp.data import SPLITS, Example, TaskInfo, TextEncoder, collate, read_corpus_info, read_split, \
    task_from_corpus_info
from kftune.nlp.embeddings import TransformerDocumentEmbedding, TransformerWordEmbedding
from kftune.nlp.lr_find import run_range_test
from kftune.nlp.model_io import load_model, save_model
from kftune.nlp.models import build_model, transformer_of
from kftune.nlp.predict import predict
from kftune.nlp.trainer import Trainer
from tests.nlp.synthetic import one_torch_thread, write_corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_ = one_torch_thread

SENTENCES = [("Paul", "Walker", "visited", "Uzbekistan", "yesterday"), ("Who", "wrote", "Hamlet", "?"), ("x",)]


def _hf(directory: Path):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(directory), AutoModel.from_pretrained(directory).eval()


def _batch(task: str = "sequence_labeling"):
    info = TaskInfo(task, tag_scheme="BIO" if task == "sequence_labeling" else None)
    examples = ([Example(t, tags=("O",) * len(t)) for t in SENTENCES] if task == "sequence_labeling"
                else [Example(t, label="A") for t in SENTENCES])
    enc = TextEncoder.build(info, examples, min_word_freq=1, max_length=64, use_chars=False)
    data = enc.encode(examples, "train")
    return collate(data, list(range(len(SENTENCES))))


def _reference(directory: Path, layers: list[int]) -> tuple[list[torch.Tensor], object]:
    """The hidden states of the chosen layers for SENTENCES, computed with transformers directly."""
    tokenizer, model = _hf(directory)
    enc = tokenizer([list(s) for s in SENTENCES], is_split_into_words=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**enc, output_hidden_states=True).hidden_states
    return [states[i] for i in layers], enc


# ------------------------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("pooling", ["first", "last", "first_last", "mean"])
def test_word_vectors_pool_each_words_subtokens_as_flair_does(tiny_transformer: Path, pooling: str) -> None:
    emb = TransformerWordEmbedding(str(tiny_transformer), fine_tune=False, subtoken_pooling=pooling).eval()
    batch = _batch()
    with torch.no_grad():
        out = emb(batch)
    [last], enc = _reference(tiny_transformer, [-1])
    assert emb.embedding_length == out.shape[-1] == (64 if pooling == "first_last" else 32)
    assert out.shape[:2] == batch.words.shape
    for b, tokens in enumerate(SENTENCES):
        positions: dict[int, list[int]] = {}
        for pos, word in enumerate(enc.word_ids(b)):
            if word is not None:
                positions.setdefault(word, []).append(pos)
        assert sorted(positions) == list(range(len(tokens)))
        for w, pos in positions.items():
            first, final, every = last[b, pos[0]], last[b, pos[-1]], last[b, pos].mean(dim=0)
            expected = {"first": first, "last": final, "first_last": torch.cat([first, final]), "mean": every}[pooling]
            torch.testing.assert_close(out[b, w], expected, rtol=1e-5, atol=1e-5)
        assert out[b, len(tokens):].eq(0).all()  # padding positions stay zero
    assert len([w for w in enc.word_ids(0) if w == 3]) > 1  # "Uzbekistan" is several sub-tokens


@pytest.mark.parametrize("layer_mean", [True, False])
def test_several_layers_are_averaged_or_concatenated(tiny_transformer: Path, layer_mean: bool) -> None:
    emb = TransformerWordEmbedding(str(tiny_transformer), fine_tune=False, layers="-1,-2,0", layer_mean=layer_mean)
    with torch.no_grad():
        out = emb(_batch())
    chosen, enc = _reference(tiny_transformer, [-1, -2, 0])
    pos = enc.word_ids(1).index(2)  # "Hamlet": its first sub-token
    expected = torch.stack(chosen).mean(0)[1, pos] if layer_mean else torch.cat(chosen, dim=-1)[1, pos]
    assert emb.embedding_length == (32 if layer_mean else 96)
    torch.testing.assert_close(out[1, 2], expected, rtol=1e-5, atol=1e-5)
    every = TransformerWordEmbedding(str(tiny_transformer), fine_tune=False, layers="all", layer_mean=False)
    assert every.layer_indexes == [0, 1, 2] and every.embedding_length == 96


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_document_vectors(tiny_transformer: Path, pooling: str) -> None:
    emb = TransformerDocumentEmbedding(str(tiny_transformer), fine_tune=False, cls_pooling=pooling)
    with torch.no_grad():
        out = emb(_batch("text_classification"))
    [last], enc = _reference(tiny_transformer, [-1])
    assert out.shape == (3, 32) and emb.embedding_length == 32
    for b in range(3):
        words = [p for p, w in enumerate(enc.word_ids(b)) if w is not None]  # no [CLS], [SEP], [PAD]
        expected = {"cls": last[b, 0], "mean": last[b, words].mean(0), "max": last[b, words].max(0).values}[pooling]
        torch.testing.assert_close(out[b], expected, rtol=1e-5, atol=1e-5)


def test_bad_settings_name_the_field_and_the_choices(tiny_transformer: Path) -> None:
    with pytest.raises(ConfigError, match=r"spec\.model\.transformer_subtoken_pooling: 'avg' is not one of "
                                          r"first, last, first_last, mean"):
        Hyperparameters.from_mapping({"transformer_subtoken_pooling": "avg"}, "sequence_labeling")
    with pytest.raises(ConfigError,
                       match=r"spec\.model\.transformer_cls_pooling: 'pooler' is not one of cls, mean, max"):
        Hyperparameters.from_mapping({"transformer_cls_pooling": "pooler"}, "text_classification")
    with pytest.raises(ConfigError, match=r"spec\.model\.transformer_layers: 'top' is not a list of layer indices"):
        Hyperparameters.from_mapping({"transformer_layers": "top"}, "text_classification")
    with pytest.raises(ConfigError, match=r"spec\.model\.document_encoder: transformer needs a transformer"):
        Hyperparameters.from_mapping({"document_encoder": "transformer"}, "text_classification")
    with pytest.raises(ConfigError, match=r"hyperparameters\.transformer_layers: layer -4 does not exist: .* has 2 "
                                          r"layers"):
        TransformerWordEmbedding(str(tiny_transformer), fine_tune=True, layers="-1,-4")
    with pytest.raises(ConfigError, match=r"hyperparameters\.transformer: .*cannot load Hugging Face weights"):
        TransformerWordEmbedding(str(tiny_transformer.parent), fine_tune=True)


def test_a_missing_transformers_package_names_the_package_and_the_install_command(
        tiny_transformer: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    hp = Hyperparameters.from_mapping({"transformer": str(tiny_transformer)}, "text_classification")
    enc = TextEncoder.build(TaskInfo("text_classification"), [Example(("a",), label="A")], min_word_freq=1,
                            max_length=8, use_chars=False)
    with pytest.raises(ConfigError, match=r"optional 'transformers' package.*pip install 'kftune\[transformers\]'"):
        build_model("text_classification", hp, enc)


# --------------------------------------------------------------------------------------------- preset


def test_fine_tuning_a_transformer_starts_from_the_fine_tune_preset() -> None:
    cls = Hyperparameters.from_mapping({"transformer": "/w"}, "text_classification")
    assert (cls.optimizer, cls.learning_rate, cls.weight_decay) == ("adamw", 5e-5, 0.01)
    assert (cls.scheduler, cls.warmup_fraction, cls.clip_grad_norm) == ("linear_warmup", 0.1, 1.0)
    assert cls.document_encoder == "transformer" and cls.embedding_dim == 0 and cls.transformer_fine_tune
    tag = Hyperparameters.from_mapping({"transformer": "/w"}, "sequence_labeling")
    assert (tag.use_rnn, tag.use_crf, tag.reproject_embeddings, tag.char_embeddings) == (False, False, False, "none")
    assert tag == defaults_for("sequence_labeling", fine_tune_transformer=True).with_overrides({"transformer": "/w"})
    # what is written wins over the preset; a trial's assignment (or --set) counts as written
    mine = Hyperparameters.from_mapping({"transformer": "/w"}, "sequence_labeling",
                                        overrides={"learning_rate": "3e-5", "use_crf": "true"})
    assert (mine.learning_rate, mine.use_crf, mine.scheduler) == (3e-5, True, "linear_warmup")
    # a frozen transformer is a feature extractor beside the task's usual model: the task defaults
    frozen = Hyperparameters.from_mapping({"transformer": "/w", "transformer_fine_tune": False}, "sequence_labeling")
    assert frozen == defaults_for("sequence_labeling").with_overrides({"transformer": "/w",
                                                                       "transformer_fine_tune": False})
    assert set(FINE_TUNE_DEFAULTS["text_classification"]) - set(FINE_TUNE_DEFAULTS["sequence_labeling"]) == {
        "document_encoder"}
    with pytest.raises(ConfigError, match=r"--set\.transformer_layers"):
        Hyperparameters.from_mapping({"transformer": "/w"}, "sequence_labeling", overrides={"transformer_layers": "x"})


# ------------------------------------------------------------------------------------------- training


def _prepared(root: Path, task: str, hp_values: dict, sizes=(240, 60, 10)):
    corpus = write_corpus(root, task, sizes=sizes)
    info = task_from_corpus_info(read_corpus_info(corpus))
    splits = {s: read_split(corpus / f"{s}.jsonl", task) for s in SPLITS}
    hp = Hyperparameters.from_mapping(hp_values, task)
    enc = TextEncoder.build(info, splits["train"], min_word_freq=1, max_length=hp.max_length,
                            use_chars=hp.char_embeddings != "none", use_casing=hp.casing_embedding_dim > 0,
                            lowercase=hp.lowercase_words)
    return hp, enc, enc.encode(splits["train"], "train", training=True), enc.encode(splits["dev"], "dev")


def _pretrained_state(directory: Path) -> dict[str, torch.Tensor]:
    return _hf(directory)[1].state_dict()


@pytest.mark.parametrize("task", ["text_classification", "sequence_labeling"])
def test_fine_tuning_trains_the_model_and_changes_the_transformer(tiny_transformer: Path, tmp_path: Path,
                                                                  task: str) -> None:
    # the preset, with a learning rate for a randomly initialised encoder on a keyword task
    hp, enc, train, dev = _prepared(tmp_path, task, {"transformer": str(tiny_transformer), "learning_rate": 1e-3})
    seed_everything(1)
    model = build_model(task, hp, enc)
    result = Trainer(model, enc, train, dev, hp, TrainerConfig(max_epochs=6, patience=6, device="cpu", seed=1),
                     show_progress=False).fit()
    losses = [h.train_loss for h in result.history]
    assert losses[-1] < 0.7 * losses[0] and result.best_score >= 0.8, [(h.train_loss, h.dev_score)
                                                                       for h in result.history]
    before = _pretrained_state(tiny_transformer)
    after = transformer_of(model).model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "embeddings.word_embeddings.weight" in changed and "encoder.layer.1.output.dense.weight" in changed


def test_a_frozen_transformer_keeps_its_weights_bit_identical_and_is_cached(tiny_transformer: Path,
                                                                           tmp_path: Path) -> None:
    hp, enc, train, dev = _prepared(tmp_path, "sequence_labeling",
                                    {"transformer": str(tiny_transformer), "transformer_fine_tune": False,
                                     "embedding_dim": 16, "char_embeddings": "none", "hidden_size": 16,
                                     "weight_decay": 0.1})
    assert hp.use_rnn and hp.learning_rate == 5e-3  # not the fine-tune preset: the task's BiLSTM-CRF
    seed_everything(1)
    model = build_model("sequence_labeling", hp, enc)
    emb = transformer_of(model)
    assert emb.cacheable and not any(p.requires_grad for p in emb.model.parameters())
    calls = []
    emb.register_forward_hook(lambda *a: calls.append(1))
    result = Trainer(model, enc, train, dev, hp,
                     TrainerConfig(max_epochs=2, patience=2, device="cpu", seed=1, embeddings_storage_mode="cpu"),
                     show_progress=False).fit()
    assert result.epochs == 2 and result.history[-1].train_loss < result.history[0].train_loss
    first_epoch_calls = -(-len(train.usable) // hp.mini_batch_size) + -(-len(dev.usable) // (2 * hp.mini_batch_size))
    assert len(calls) == first_epoch_calls  # epoch 2 read every sentence from the cache
    before, after = _pretrained_state(tiny_transformer), emb.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not emb.model.training  # frozen features: no dropout, even while the tagger trains


def test_the_lr_range_test_runs_on_a_fine_tuned_transformer(tiny_transformer: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", "text_classification", sizes=(320, 40, 10))
    hp = Hyperparameters.from_mapping({"transformer": str(tiny_transformer)}, "text_classification")
    result = run_range_test(corpus, hp, TrainerConfig(device="cpu", seed=1, num_threads=1),
                            RangeTestConfig(start_lr=1e-6, end_lr=1.0, iterations=20), seed=1, show_progress=False)
    assert len(result.losses) >= 5 and all(l > 0 for l in result.losses)
    assert result.lrs[0] == pytest.approx(1e-6)


# --------------------------------------------------------------------------------- the model file


@pytest.fixture(scope="module")
def saved_tagger(tiny_transformer: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """A fine-tuned tagger saved to model.pt, trained from a copy of the weights that is then deleted."""
    tmp = tmp_path_factory.mktemp("transformer-model")
    weights = tmp / "weights"
    shutil.copytree(tiny_transformer, weights)
    hp, enc, train, dev = _prepared(tmp / "corpus", "sequence_labeling",
                                    {"transformer": str(weights), "learning_rate": 1e-3,
                                     "transformer_subtoken_pooling": "mean"}, sizes=(160, 40, 10))
    seed_everything(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model("sequence_labeling", hp, enc)
        result = Trainer(model, enc, train, dev, hp, TrainerConfig(max_epochs=2, patience=2, device="cpu", seed=1),
                         show_progress=False).fit()
        path = save_model(model, enc, hp, tmp / "model.pt", state_dict=result.best_state)
        model.load_state_dict(result.best_state)
        texts = ["Paul Walker runs to Berlin", "Anna and Rome", ""]
        from kftune.nlp.model_io import LoadedModel

        expected = predict(LoadedModel(model=model.eval(), encoder=enc, hyperparameters=hp, task=enc.task), texts)
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(weights)  # the model file must not need them
    return Path(path), [(texts[i], p) for i, p in enumerate(expected)]


def test_the_model_file_holds_the_transformer_and_loads_without_its_weights(saved_tagger) -> None:
    path, expected = saved_tagger
    payload = torch.load(path, weights_only=True)
    assert {"config.json", "tokenizer.json"} <= set(payload["transformer"])
    loaded = load_model(path)
    assert loaded.hyperparameters.transformer_subtoken_pooling == "mean"
    got = predict(loaded, [t for t, _ in expected])
    assert [p.tags for p in got] == [p.tags for _, p in expected]
    for g, (_, e) in zip(got, expected):
        assert g.tag_scores == pytest.approx(e.tag_scores, abs=1e-6)


def test_kftune_predict_in_a_fresh_process_gives_the_same_tags(saved_tagger) -> None:
    path, expected = saved_tagger
    texts = [t for t, _ in expected if t]
    args = [a for t in texts for a in ("--text", t)]
    proc = subprocess.run([sys.executable, "-m", "kftune", "predict", "--model", str(path), *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [r["text"] for r in records] == texts
    assert [r["tags"] for r in records] == [list(p.tags) for t, p in expected if t]


@pytest.mark.integration
def test_weights_under_an_s3_prefix_are_read_once_per_process(tiny_transformer: Path, s3_env: str) -> None:
    from kftune.io.store import open_store
    from kftune.nlp import embeddings

    uri = f"{s3_env}/models/tiny-bert"
    store = open_store(uri)
    for f in tiny_transformer.iterdir():
        store.put_file(f.name, f)
    with pytest.raises(ConfigError, match="no store was handed in"):  # nlp opens no store itself
        TransformerWordEmbedding(uri, fine_tune=True)
    first = TransformerWordEmbedding(uri, fine_tune=True, open_store=open_store)
    local = embeddings.materialize_directory(uri, open_store)
    assert sorted(p.name for p in Path(local).iterdir()) == sorted(p.name for p in tiny_transformer.iterdir())
    second = TransformerDocumentEmbedding(uri, fine_tune=False, open_store=open_store)  # the same local copy
    assert embeddings.materialize_directory(uri) == local  # cached per process: not a second download
    reference = _pretrained_state(tiny_transformer)
    for emb in (first, second):
        assert all(torch.equal(reference[k], v) for k, v in emb.model.state_dict().items())
