"""kftune.nlp.tokenizers: each kind on known Korean and English text, to_dict round trips, deterministic
subword training, unknown kinds and missing packages; and a morpheme model that predicts the same after
it is saved and loaded in a fresh Python process."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kftune.core.errors import ConfigError
from kftune.core.tokenization import TOKENIZER_TYPES, TOKENIZERS, check_tokenizer, parse_tokenizer
from kftune.nlp.tokenizers import (
    TOKENIZER_CLASSES,
    CharTokenizer,
    MorphemeTokenizer,
    RegexTokenizer,
    SubwordTokenizer,
    WhitespaceTokenizer,
    build_tokenizer,
    tokenizer_from_dict,
)

KOREAN = ["너무재밓었다그래서보는것을추천한다", "영화 정말 재밌어요!!", "이 영화는 별로였다.", "", "   "]
ENGLISH = ["Don't stop: it's state-of-the-art, 3.5% better.", "a  b\tc"]
TRAIN = [f"{a} {b} 영화 {c}" for a in ("정말", "너무", "진짜", "아주") for b in ("재밌어요", "지루해요", "좋아요")
         for c in ("최고", "별로", "추천")] * 3


@pytest.fixture(scope="module")
def morpheme() -> MorphemeTokenizer:
    tok = build_tokenizer("morpheme")
    assert isinstance(tok, MorphemeTokenizer)
    return tok


@pytest.fixture(scope="module")
def subword() -> SubwordTokenizer:
    tok = build_tokenizer({"type": "subword", "vocabSize": 100}, train_texts=TRAIN)
    assert isinstance(tok, SubwordTokenizer)
    return tok


def test_the_core_table_and_the_classes_list_the_same_kinds():
    assert tuple(TOKENIZER_CLASSES) == TOKENIZER_TYPES == ("regex", "whitespace", "char", "morpheme", "subword")


def test_regex_and_whitespace():
    assert RegexTokenizer().tokenize(ENGLISH[0]) == ["Don't", "stop", ":", "it's", "state-of-the-art", ",", "3",
                                                     ".", "5", "%", "better", "."]
    assert RegexTokenizer().tokenize("영화 정말 재밌어요!!") == ["영화", "정말", "재밌어요", "!", "!"]
    assert WhitespaceTokenizer().tokenize(ENGLISH[1]) == ["a", "b", "c"]
    assert WhitespaceTokenizer().tokenize("영화 정말 재밌어요!!") == ["영화", "정말", "재밌어요!!"]


def test_char_with_and_without_word_boundaries():
    assert CharTokenizer().tokenize("좋은 영화 !") == ["좋", "은", "영", "화", "!"]
    assert CharTokenizer(boundaries=True).tokenize(" 좋은  영화 ") == ["좋", "은", "▁", "영", "화"]
    assert build_tokenizer({"type": "char", "boundaries": True}).tokenize("a b") == ["a", "▁", "b"]


def test_morpheme_tokens_are_form_and_tag(morpheme):
    tokens = morpheme.tokenize("너무재밓었다그래서보는것을추천한다")
    assert tokens[:1] == ["너무/MAG"] and "었/EP" in tokens and "추천/NNG" in tokens and "그래서/MAJ" in tokens
    assert morpheme.tokenize("이 영화는 별로였다.")[:3] == ["이/MM", "영화/NNG", "는/JX"]
    assert morpheme.tokenize("") == [] and morpheme.tokenize("  ") == []
    forms = build_tokenizer({"type": "morpheme", "tags": False}).tokenize("이 영화는 별로였다.")
    assert forms[:3] == ["이", "영화", "는"] and all("/" not in t for t in forms)


def test_subword_pieces(subword):
    pieces = subword.tokenize("정말 재밌어요")
    assert pieces and all(isinstance(p, str) for p in pieces) and pieces[0].startswith("▁")
    assert "".join(pieces).replace("▁", " ").strip() == "정말 재밌어요"


@pytest.mark.parametrize("kind", TOKENIZER_TYPES)
def test_to_dict_round_trip_through_json_gives_identical_tokens(kind, morpheme, subword):
    tok = {"morpheme": morpheme, "subword": subword}.get(kind) or build_tokenizer(kind)
    data = json.loads(json.dumps(tok.to_dict()))
    assert data["type"] == kind
    again = tokenizer_from_dict(data)
    assert type(again) is type(tok) and again == tok
    texts = KOREAN + ENGLISH
    expected = [tok.tokenize(t) for t in texts]
    assert [again.tokenize(t) for t in texts] == expected
    assert list(again.tokenize_many(iter(texts))) == expected  # streaming gives the same, in order


def test_old_dicts_mean_whitespace():
    assert isinstance(tokenizer_from_dict(None), WhitespaceTokenizer)


def test_subword_training_is_deterministic(subword):
    again = SubwordTokenizer.train(iter(TRAIN), vocab_size=100)
    assert again.model == subword.model  # byte-identical model from the same texts
    assert again.to_dict() == subword.to_dict()
    bpe = SubwordTokenizer.train(TRAIN, vocab_size=100, model_type="bpe")
    assert bpe.model == SubwordTokenizer.train(TRAIN, vocab_size=100, model_type="bpe").model
    assert bpe.to_dict()["model_type"] == "bpe"


def test_subword_needs_train_texts():
    with pytest.raises(ConfigError, match="train split"):
        build_tokenizer("subword")


@pytest.mark.parametrize("value", ["mecab", {"type": "bert"}])
def test_an_unknown_tokenizer_lists_the_choices(value):
    with pytest.raises(ConfigError, match="regex, whitespace, char, morpheme, subword"):
        build_tokenizer(value)
    with pytest.raises(ConfigError, match="choices: regex, whitespace, char, morpheme, subword"):
        tokenizer_from_dict({"type": "mecab"})


def test_options_are_checked_by_name():
    _, problems = parse_tokenizer({"type": "subword", "vocab_size": 10}, "spec.corpus.tokenizer")
    assert [p.path for p in problems] == ["spec.corpus.tokenizer.vocab_size"]
    assert 'did you mean "vocabSize"' in problems[0].message
    _, problems = parse_tokenizer({"type": "subword", "vocabSize": 10, "modelType": "word"}, "t")
    assert {p.path for p in problems} == {"t.vocabSize", "t.modelType"}
    _, problems = parse_tokenizer({"type": "regex", "tags": True}, "t")
    assert "it has no options" in problems[0].message
    choice, problems = parse_tokenizer({"type": "subword", "vocabSize": 4000}, "t")
    assert not problems and choice.to_spec() == {"type": "subword", "vocabSize": 4000}
    assert parse_tokenizer("subword", "t")[0].to_spec() == "subword"


def _missing(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in modules else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("kind, module, package, extra", [
    ("morpheme", "kiwipiepy", "kiwipiepy", "korean"),
    ("morpheme", "kiwipiepy_model", "kiwipiepy-model", "korean"),
    ("subword", "sentencepiece", "sentencepiece", "subword"),
])
def test_a_missing_package_is_named_with_its_install_command(monkeypatch, kind, module, package, extra):
    _missing(monkeypatch, module)
    with pytest.raises(ConfigError) as info:
        build_tokenizer(kind, train_texts=TRAIN)
    message = str(info.value)
    assert package in message and f"pip install 'kftune[{extra}]'" in message
    _, problems = check_tokenizer(kind, "spec.corpus.tokenizer", fmt="csv")
    assert problems and package in problems[0].message and TOKENIZERS[kind].install in problems[0].message


def test_a_missing_package_simulated_in_sys_modules(monkeypatch):
    monkeypatch.setitem(sys.modules, "kiwipiepy", None)  # what an uninstalled package looks like to find_spec
    _, problems = check_tokenizer(None, "spec.corpus.tokenizer", fmt="tsv", registry_default="morpheme",
                                  corpus="NSMC")
    assert len(problems) == 1 and "NSMC's default tokenizer is morpheme" in problems[0].message
    assert "kiwipiepy" in problems[0].message and "pip install 'kftune[korean]'" in problems[0].message
    with pytest.raises(ConfigError, match="kiwipiepy"):
        MorphemeTokenizer().tokenize("영화")


def test_tagged_formats_take_only_whitespace():
    for fmt in ("conll", "conllu"):
        _, problems = check_tokenizer("morpheme", "spec.corpus.tokenizer", fmt=fmt)
        assert problems and "must be whitespace" in problems[0].message
        assert check_tokenizer("whitespace", "t", fmt=fmt)[0].type == "whitespace"
    assert check_tokenizer(None, "t", fmt="conll")[0].type == "whitespace"
    assert check_tokenizer(None, "t", fmt="trec")[0].type == "whitespace"
    assert check_tokenizer(None, "t", fmt="csv")[0].type == "regex"


# --------------------------------------------------------------------------- with a model
def test_encoder_saves_its_tokenizer_and_old_dicts_load_as_whitespace(morpheme):
    from kftune.nlp.data import Example, TaskInfo, TextEncoder

    task = TaskInfo("text_classification", tokenizer=morpheme.to_dict())
    enc = TextEncoder.build(task, [Example(("영화/NNG",), label="A")], min_word_freq=1, max_length=8,
                            use_chars=False, tokenizer=morpheme)
    data = json.loads(json.dumps(enc.to_dict()))
    again = TextEncoder.from_dict(data)
    assert again.tokenizer == morpheme and again.tokenize("영화 좋다") == morpheme.tokenize("영화 좋다")
    del data["tokenizer"]
    old = TextEncoder.from_dict(data)
    assert old.tokenizer is None and old.tokenize("영화 좋다") == ["영화", "좋다"]


_PREDICT = """
import json, sys, torch
torch.set_num_threads(1)
from kftune.nlp.model_io import load_model
from kftune.nlp.predict import predict
model = load_model(sys.argv[1])
sentences = json.loads(sys.argv[2])
print(json.dumps([p.to_dict() for p in predict(model, sentences)], ensure_ascii=False))
"""


def test_a_morpheme_model_predicts_the_same_in_a_fresh_process(corpus_mirror, tmp_path):
    """A tiny classifier trained on a few hundred NSMC reviews (the corpus step's morpheme tokens), saved,
    and loaded in another Python process: the same tokens and the same scores for raw Korean sentences."""
    import torch

    from kftune.nlp.checkpoint import seed_everything
    from kftune.nlp.config import Hyperparameters, TrainerConfig
    from kftune.nlp.data import SPLITS, read_corpus_info, read_split, task_from_corpus_info
    from kftune.nlp.embeddings import encode_corpus
    from kftune.nlp.model_io import load_model, save_model
    from kftune.nlp.models import build_model
    from kftune.nlp.predict import predict
    from kftune.nlp.trainer import Trainer
    from kftune.steps.corpus import CorpusConfig, run

    lines = (corpus_mirror / "nsmc" / "ratings_train.txt").read_text(encoding="utf-8").splitlines()[:501]
    source = tmp_path / "nsmc.tsv"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")  # the header and 500 reviews
    corpus = tmp_path / "nsmc"
    run(CorpusConfig(out=str(corpus), uri=str(source), format="tsv", text_columns=("document",),
                     label_map={"0": "negative", "1": "positive"}, allow_unverified=True, tokenizer="morpheme"))
    info = read_corpus_info(corpus)
    assert info["tokenizer"]["type"] == "morpheme"
    task = task_from_corpus_info(info)
    splits = {s: read_split(corpus / f"{s}.jsonl", task.type) for s in SPLITS}
    assert 380 <= len(splits["train"]) <= 420 and splits["train"][0].text
    hp = Hyperparameters.from_mapping({"hidden_size": 16, "embedding_dim": 16, "cnn_filters": 8,
                                       "learning_rate": 0.01, "max_length": 40, "char_embeddings": "none"},
                                      task.type)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seed_everything(1)
        enc, train, dev, _ = encode_corpus(task, splits["train"], splits["dev"], hp)
        assert enc.tokenizer is not None and enc.tokenizer.kind == "morpheme"
        model = build_model(task.type, hp, enc)
        result = Trainer(model, enc, train, dev, hp, TrainerConfig(max_epochs=2), show_progress=False).fit()
        path = tmp_path / "model.pt"
        save_model(model, enc, hp, path, state_dict=result.best_state)
        assert torch.load(path, weights_only=True)["encoder"]["tokenizer"]["type"] == "morpheme"
        sentences = ["너무재밓었다그래서보는것을추천한다", "이 영화 정말 최악이다 돈 아깝다", ""]
        here = [p.to_dict() for p in predict(load_model(path), sentences)]
    finally:
        torch.set_num_threads(threads)
    assert here[0]["tokens"] == enc.tokenizer.tokenize(sentences[0]) and "추천/NNG" in here[0]["tokens"]
    fresh = subprocess.run([sys.executable, "-c", _PREDICT, str(path), json.dumps(sentences)],
                           capture_output=True, text=True, check=True)
    there = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert [p["tokens"] for p in there] == [p["tokens"] for p in here]
    assert [p["label"] for p in there] == [p["label"] for p in here]
    for a, b in zip(there, here):
        assert a["scores"].keys() == b["scores"].keys()
        assert all(abs(a["scores"][k] - b["scores"][k]) < 1e-6 for k in a["scores"])
