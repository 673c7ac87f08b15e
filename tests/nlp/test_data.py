"""kftune.nlp.data: reading splits, vocabularies, label dictionaries, bad input, batching."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
import torch

from kftune.core.errors import DataError
from kftune.nlp.data import (
    PAD_ID,
    UNK_ID,
    UNK_LABEL,
    Example,
    LabelDictionary,
    TaskInfo,
    TextEncoder,
    Vocabulary,
    batch_order,
    collate,
    iterate_batches,
    read_corpus_info,
    read_split,
)
from tests.nlp.synthetic import one_torch_thread, write_corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_ = one_torch_thread

CLS = TaskInfo("text_classification")
TAG = TaskInfo("sequence_labeling", tag_scheme="BIO")


def _cls(tokens: str, label: str) -> Example:
    return Example(tuple(tokens.split()), label=label)


def _tag(pairs: str) -> Example:
    toks, tags = zip(*(p.split("/") for p in pairs.split())) if pairs else ((), ())
    return Example(tuple(toks), tags=tuple(tags))


def test_read_split_and_corpus_info(tmp_path: Path) -> None:
    write_corpus(tmp_path, "sequence_labeling", sizes=(5, 2, 2))
    examples = read_split(tmp_path / "train.jsonl", "sequence_labeling")
    assert len(examples) == 5 and all(len(e.tokens) == len(e.tags or ()) for e in examples)
    assert read_corpus_info(tmp_path)["task"] == "sequence_labeling"
    # text without tokens falls back to the whitespace tokenizer
    (tmp_path / "x.jsonl").write_text(json.dumps({"label": "A", "text": "a b  c"}) + "\n\n")
    assert read_split(tmp_path / "x.jsonl", "text_classification") == [Example(("a", "b", "c"), label="A")]


@pytest.mark.parametrize("line, fragment", [
    ("{not json", "not valid JSON"),
    ('{"tokens": ["a"], "tags": ["O", "O"]}', "1 tokens but 2 tags"),
    ('{"tokens": "a b", "tags": []}', "'tokens' must be a list"),
    ('["a"]', "expected a JSON object"),
])
def test_malformed_lines_name_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"tokens": ["ok"], "tags": ["O"]}\n' + line + "\n")
    with pytest.raises(DataError, match=fragment) as info:
        read_split(path, "sequence_labeling")
    assert f"{path}:2" in str(info.value)


def test_missing_files_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no corpus.json"):
        read_corpus_info(tmp_path)
    with pytest.raises(DataError, match="not found"):
        read_split(tmp_path / "train.jsonl", "text_classification")


def test_vocabulary_min_freq_and_specials() -> None:
    vocab = Vocabulary.build(Counter({"b": 3, "a": 3, "c": 1}), min_freq=2)
    assert vocab.itos == ["<pad>", "<unk>", "a", "b"]
    assert vocab.encode(["a", "c", "b"]) == [2, UNK_ID, 3]
    with pytest.raises(DataError):
        Vocabulary(["a", "b"])


def test_unseen_dev_label_maps_to_unk_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    train = [_cls("a b", "X"), _cls("c", "Y")]
    enc = TextEncoder.build(CLS, train, min_word_freq=1, max_length=10, use_chars=False)
    assert enc.labels.itos == [UNK_LABEL, "X", "Y"]
    dev = [_cls("a", "X"), _cls("b", "NEW"), _cls("c", "NEW"), _cls("d", "OTHER")]
    with caplog.at_level(logging.WARNING):
        data = enc.encode(dev, "dev")
    warnings = [r for r in caplog.records if "never seen in training" in r.getMessage()]
    assert len(warnings) == 1 and "'NEW' (2x)" in warnings[0].getMessage() and "'OTHER'" in warnings[0].getMessage()
    assert [int(t) for t in data.labels] == [1, 0, 0, 0]
    assert data.unseen_labels == Counter({"NEW": 2, "OTHER": 1})
    assert data.gold() == ["X", "NEW", "NEW", "OTHER"]  # scoring sees the real gold label
    # tags too
    enc_t = TextEncoder.build(TAG, [_tag("Paul/B-PER x/O")], min_word_freq=1, max_length=10, use_chars=True)
    data_t = enc_t.encode([_tag("Rome/B-LOC x/O")], "test")
    assert data_t.labels[0].tolist() == [0, enc_t.labels.stoi["O"]]


def test_empty_sentences(caplog: pytest.LogCaptureFixture) -> None:
    train = [_cls("a b", "X"), Example((), label="Y"), _cls("c", "Y")]
    enc = TextEncoder.build(CLS, train, min_word_freq=1, max_length=10, use_chars=True)
    with caplog.at_level(logging.WARNING):
        data = enc.encode(train, "train", training=True)
    assert data.usable == [0, 2]
    assert any("skipped 1 empty sentence" in r.getMessage() for r in caplog.records)
    dev = enc.encode([Example((), label="X"), _cls("a", "X")], "dev")
    assert len(dev) == 2 and dev.usable == [1]
    assert batch_order(dev, 4, shuffle=False) == [[1]]  # the empty sentence never enters a batch


def test_over_long_inputs_are_truncated_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    train = [_tag(" ".join(f"w{i}/O" for i in range(12))), _tag("a/O")]
    enc = TextEncoder.build(TAG, train, min_word_freq=1, max_length=5, use_chars=True)
    with caplog.at_level(logging.WARNING):
        data = enc.encode(train, "train", training=True)
    assert data.truncated == 1 and len(data.words[0]) == 5 and data.labels[0].shape == (5,)
    assert data.chars is not None and data.chars[0].shape[0] == 5
    assert any("longer than max_length=5" in r.getMessage() for r in caplog.records)


def test_batch_order_is_seeded_and_complete(tmp_path: Path) -> None:
    write_corpus(tmp_path, "text_classification", sizes=(100, 1, 1))
    examples = read_split(tmp_path / "train.jsonl", "text_classification")
    enc = TextEncoder.build(CLS, examples, min_word_freq=1, max_length=50, use_chars=False)
    data = enc.encode(examples, "train", training=True)
    a = batch_order(data, 8, shuffle=True, seed=3, bucket_factor=4)
    assert a == batch_order(data, 8, shuffle=True, seed=3, bucket_factor=4)
    assert a != batch_order(data, 8, shuffle=True, seed=4, bucket_factor=4)
    assert sorted(i for b in a for i in b) == list(range(100))
    assert all(len(b) <= 8 for b in a)
    ordered = batch_order(data, 8, shuffle=False)
    lengths = [len(data.words[i]) for b in ordered for i in b]
    assert lengths == sorted(lengths)


def test_collate_pads_and_masks() -> None:
    train = [_tag("Paul/B-PER Walker/I-PER runs/O"), _tag("Anna/B-PER")]
    enc = TextEncoder.build(TAG, train, min_word_freq=1, max_length=10, use_chars=True)
    data = enc.encode(train, "train", training=True)
    batch = collate(data, [1, 0])
    assert batch.words.shape == (2, 3) and batch.words[0, 1:].tolist() == [PAD_ID, PAD_ID]
    assert batch.mask.tolist() == [[True, False, False], [True, True, True]]
    assert batch.lengths.tolist() == [1, 3] and batch.count == 4
    assert batch.chars is not None and batch.chars.shape[:2] == (2, 3) and batch.chars[0, 1].sum() == 0
    assert batch.labels is not None and batch.labels.shape == (2, 3)
    chunks = batch.chunks(1)
    assert [c.count for c in chunks] == [1, 3] and chunks[0].words.shape == (1, 1)
    assert sum(c.count for c in chunks) == batch.count
    moved = list(iterate_batches(data, [[0, 1]], torch.device("cpu")))
    assert moved[0].words.device.type == "cpu"


def test_label_dictionary() -> None:
    labels = LabelDictionary.build(["b", "a", "a"])
    assert labels.itos == [UNK_LABEL, "a", "b"] and labels.decode([2, 0]) == ["b", UNK_LABEL]
    with pytest.raises(DataError):
        LabelDictionary(["a"])
