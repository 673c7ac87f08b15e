"""The corpus step end to end on the real corpora in ../shared/corpora (through the mirror)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from kftune.core.errors import ChecksumError, ConfigError
from kftune.steps.corpus import CorpusConfig, main, run

FILES = ("train.jsonl", "dev.jsonl", "test.jsonl", "corpus.json", "card.md")


@pytest.fixture(autouse=True)
def _drop_cli_log_handler():
    """main() installs a stderr handler on the root logger; with capsys that stream is closed after the
    test, so remove the handler rather than let later tests log into a closed stream."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_kftune", False)]:
        root.removeHandler(handler)


def half_up(x: float) -> int:
    return math.floor(x + 0.5)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def corpus_json(out: Path) -> dict:
    return json.loads((out / "corpus.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- TREC_6 (the acceptance run)
def test_trec6_downsample_counts_and_proportions(corpus_mirror, tmp_path, capsys):
    out = tmp_path / "trec6"
    assert main(["--name", "TREC_6", "--downsample", "0.1", "--seed", "1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)

    # counts follow from 5,452 train / 500 test: dev = 10% of train, then 10% of train and dev kept
    dev_full = half_up(5452 * 0.1)
    expected = {"train": half_up((5452 - dev_full) * 0.1), "dev": half_up(dev_full * 0.1), "test": 500}
    assert expected == {"train": 491, "dev": 55, "test": 500}
    splits = {s: jsonl(out / f"{s}.jsonl") for s in ("train", "dev", "test")}
    assert {s: len(v) for s, v in splits.items()} == expected
    meta = corpus_json(out)
    assert {s: meta["splits"][s]["examples"] for s in expected} == expected
    for s, rows in splits.items():
        assert meta["splits"][s]["sha256"] == hashlib.sha256((out / f"{s}.jsonl").read_bytes()).hexdigest()
        assert meta["splits"][s]["tokens"] == sum(len(r["tokens"]) for r in rows)
    assert meta["name"] == "TREC_6" and meta["task"] == "text_classification"
    assert meta["labels"] == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"] and meta["tag_scheme"] is None
    assert (meta["seed"], meta["downsample"], meta["dev_fraction"]) == (1, 0.1, 0.1)

    # label proportions within 1 point of the full corpus
    full = Counter(line.split(":", 1)[0] for line in
                   (corpus_mirror / "trec" / "train_5500.label").read_text(encoding="latin-1").splitlines())
    for split in ("train", "dev"):
        got = Counter(r["label"] for r in splits[split])
        for label, n in full.items():
            assert abs(got[label] / len(splits[split]) - n / 5452) <= 0.01, (split, label)

    # the rows are real TREC questions, in the shared format
    row = splits["test"][0]
    assert row == {"label": "NUM", "text": "How far is it from Denver to Aspen ?",
                   "tokens": ["How", "far", "is", "it", "from", "Denver", "to", "Aspen", "?"]}
    train_texts = {r["text"] for r in splits["train"]}
    assert train_texts.isdisjoint(r["text"] for r in splits["dev"]) or len(train_texts) < 491  # dups exist in TREC

    card = (out / "card.md").read_text(encoding="utf-8")
    for needle in ("# Corpus card: TREC_6", "9e4c8bdcaffb96ed61041bd64b564183d52793a8e91d84fc3a8646885f466ec3",
                   "| train | 491 |", "| dev | 55 |", "| test | 500 |", "## Label distribution", "| ABBR |",
                   "min | mean | median | p95 | max", "seed: 1", "downsample: 0.1", "license"):
        assert needle in card
    assert "train=491  dev=55  test=500" in capsys.readouterr().out


def test_same_input_and_seed_give_byte_identical_output(corpus_mirror, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    cfg = CorpusConfig(out=str(a), name="TREC_6", downsample=0.3, seed=7)
    run(cfg)
    run(CorpusConfig(out=str(b), name="trec-6", downsample=0.3, seed=7))
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    run(CorpusConfig(out=str(c), name="TREC_6", downsample=0.3, seed=8))
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    # re-running into an existing corpus directory replaces it
    run(cfg)
    assert (a / "train.jsonl").read_bytes() == (b / "train.jsonl").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_trec50_fine_labels_and_full_test(corpus_mirror, tmp_path):
    result = run(CorpusConfig(out=str(tmp_path / "t50"), name="TREC_50", dev_fraction=0.1))
    assert result.splits["train"].examples == 5452 - 545 and result.splits["test"].examples == 500
    assert len(result.labels) == 50 and "HUM:ind" in result.labels


def test_downsample_test_option(corpus_mirror, tmp_path):
    result = run(CorpusConfig(out=str(tmp_path / "o"), name="TREC_6", downsample=0.1, downsample_test=True))
    assert result.splits["test"].examples == 50


# --------------------------------------------------------------------------- WNUT_17 and UD_ENGLISH
def test_wnut17_downsampled(corpus_mirror, tmp_path):
    out = tmp_path / "wnut"
    assert main(["--name", "WNUT_17", "--downsample", "0.1", "--seed", "1", "--out", str(out)]) == 0
    meta = corpus_json(out)
    assert {s: meta["splits"][s]["examples"] for s in ("train", "dev", "test")} == {
        "train": half_up(3394 * 0.1), "dev": half_up(1009 * 0.1), "test": 1287}
    assert meta["tag_scheme"] == "BIO" and meta["task"] == "sequence_labeling" and meta["label_type"] == "ner"
    assert len(meta["labels"]) == 13 and "B-creative-work" in meta["labels"]
    train = jsonl(out / "train.jsonl")
    assert all(len(r["tokens"]) == len(r["tags"]) and set(r) == {"tags", "tokens"} for r in train)
    test = jsonl(out / "test.jsonl")
    assert sum(len(r["tokens"]) for r in test) == 23394
    # sentences with an entity keep their share (stratified by the rarest entity type)
    with_entity = sum(any(t != "O" for t in r["tags"]) for r in train) / len(train)
    full = [s for s in (corpus_mirror / "wnut17" / "wnut17train.conll").read_text(encoding="utf-8").split("\n\n") if s]
    full_share = sum(any(not line.endswith("\tO") for line in s.splitlines()) for s in full) / len(full)
    assert abs(with_entity - full_share) < 0.01
    assert "## Entities per type" in (out / "card.md").read_text(encoding="utf-8")


def test_ud_english_upos(corpus_mirror, tmp_path):
    out = tmp_path / "ud"
    assert main(["--name", "UD_ENGLISH", "--column", "upos", "--downsample", "0.1", "--out", str(out)]) == 0
    meta = corpus_json(out)
    assert {s: meta["splits"][s]["examples"] for s in ("train", "dev", "test")} == {
        "train": half_up(12544 * 0.1), "dev": half_up(2001 * 0.1), "test": 2077}
    assert meta["splits"]["test"]["tokens"] == 25094
    assert meta["label_type"] == "upos" and meta["tag_scheme"] is None
    assert meta["labels"] == sorted("ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM "
                                    "VERB X".split())
    first = jsonl(out / "test.jsonl")[0]
    assert len(first["tokens"]) == len(first["tags"]) > 0
    assert "CC BY-SA 4.0" in (out / "card.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- failures leave nothing behind
def test_checksum_mismatch_is_refused_and_nothing_is_left(shared_corpora, tmp_path, monkeypatch, caplog):
    mirror = tmp_path / "mirror"
    shutil.copytree(shared_corpora / "trec", mirror / "trec")
    (mirror / "trec" / "train_5500.label").chmod(0o644)
    with open(mirror / "trec" / "train_5500.label", "ab") as f:
        f.write(b"HUM:ind Who tampered with this file ?\n")
    bad = hashlib.sha256((mirror / "trec" / "train_5500.label").read_bytes()).hexdigest()
    monkeypatch.setenv("KFTUNE_CORPUS_MIRROR", str(mirror))
    monkeypatch.setenv("KFTUNE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out" / "trec"
    assert main(["--name", "TREC_6", "--out", str(out)]) == 1
    log = caplog.text
    assert "train_5500.label" in log and bad in log
    assert "9e4c8bdcaffb96ed61041bd64b564183d52793a8e91d84fc3a8646885f466ec3" in log
    assert not (tmp_path / "out").exists()  # the check failed before any output was started
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
    with pytest.raises(ChecksumError):
        run(CorpusConfig(out=str(out), name="TREC_6"))


def test_malformed_data_fails_without_partial_output(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("KFTUNE_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "bad.conll"
    # S- makes the corpus BIOES; "B-y O" is only caught when writing (pass 2), after output has begun
    data.write_text("a\tS-x\n\n" * 20 + "b\tB-y\nc\tO\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["--uri", str(data), "--format", "conll", "--allow-unverified", "--out", str(out)]) == 1
    assert "bad.conll:41:" in caplog.text and "must be followed by I-/E-y" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.conll", "cache"]  # no out, no temporary dir


@pytest.mark.parametrize("argv, needle", [
    (["--name", "TREC_6", "--downsample", "0"], "corpus.downsample"),
    (["--name", "TREC_6", "--downsample", "1.5"], "corpus.downsample"),
    (["--name", "NOPE"], "unknown corpus 'NOPE'"),
    (["--name", "TREC_6", "--uri", "x.txt", "--format", "fasttext"], "not both"),
    (["--uri", "x.txt"], "corpus.format"),
    (["--uri", "x.txt#member", "--format", "fasttext"], "only for zip/tar archives"),
    (["--name", "TREC_6", "--train", "a.txt"], "corpus.train"),
    (["--name", "TREC_6", "--label-column", "fine"], "TREC_50"),
    (["--name", "UD_ENGLISH", "--column", "nope"], "corpus.label_column"),
    (["--name", "TREC_6", "--seed", "-1"], "corpus.seed"),
    (["--name", "TREC_6", "--dev-fraction", "1"], "corpus.dev_fraction"),
])
def test_config_errors_exit_2(tmp_path, capsys, argv, needle):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as err:
        CorpusConfig(out="", name="TREC_6", downsample=2.0, dev_fraction=-1, seed=-3).validate()
    paths = {p.path for p in err.value.problems}
    assert {"corpus.out", "corpus.downsample", "corpus.dev_fraction", "corpus.seed"} <= paths


def test_usage_errors_exit_2(capsys):
    assert main(["--name", "TREC_6"]) == 2  # --out is required
    assert main(["--help"]) == 0
    assert "--downsample" in capsys.readouterr().out


def test_out_must_not_clobber_an_unrelated_directory(corpus_mirror, tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("precious")
    assert main(["--name", "TREC_6", "--out", str(tmp_path / "home")]) == 2
    assert (tmp_path / "home" / "notes.txt").read_text() == "precious"


# --------------------------------------------------------------------------- URI corpora
def test_uri_fasttext_carves_dev_and_test_and_pins_unverified(tmp_path, monkeypatch):
    monkeypatch.setenv("KFTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KFTUNE_CORPUS_MIRROR", raising=False)
    data = tmp_path / "reviews.txt"
    lines = [f"__label__{'pos' if i % 4 else 'neg'} review number {i} was {'great' if i % 4 else 'awful'} !"
             for i in range(200)]
    lines.insert(5, "__label__pos ...")  # tokenises to '.', '.', '.': kept
    lines.insert(7, "__label__neg")  # no text: skipped and counted
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--uri", str(data), "--format", "fasttext", "--seed", "3", "--out", str(out)]
    assert main(argv) == 2  # no sha256 and not allowed
    assert main([*argv, "--allow-unverified"]) == 0
    meta = corpus_json(out)
    counts = {s: meta["splits"][s]["examples"] for s in ("train", "dev", "test")}
    test_n = half_up(201 * 0.1)
    assert counts == {"test": test_n, "dev": half_up((201 - test_n) * 0.1),
                      "train": 201 - test_n - half_up((201 - test_n) * 0.1)}
    assert meta["preparation"]["skipped_empty"] == 1
    assert meta["preparation"]["test"].startswith("carved from train")
    assert meta["source"]["files"][0]["checksum_from"] == "trust-on-first-use"
    assert main(argv) == 0  # pinned now: no flag needed
    sha = meta["source"]["files"][0]["sha256"]
    assert main([*argv[:-2], "--sha256", sha, "--out", str(tmp_path / "out2")]) == 0
    assert (out / "train.jsonl").read_bytes() == (tmp_path / "out2" / "train.jsonl").read_bytes()


def test_uri_tsv_inside_a_zip_with_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("KFTUNE_CACHE_DIR", str(tmp_path / "cache"))
    archive = tmp_path / "SST-2.zip"
    rows = "".join(f"a {'fine' if i % 2 else 'dull'} film {i}\t{i % 2}\n" for i in range(100))
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("SST-2/train.tsv", "sentence\tlabel\n" + rows)
        zf.writestr("SST-2/dev.tsv", "sentence\tlabel\nit is bad\t0\nit is good\t1\n")
    out = tmp_path / "sst"
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    result = run(CorpusConfig(out=str(out), uri=str(archive), train="SST-2/train.tsv", test="SST-2/dev.tsv",
                              sha256=sha, format="tsv", text_columns=("sentence",), label_column="label"))
    assert {s: v.examples for s, v in result.splits.items()} == {"train": 90, "dev": 10, "test": 2}
    assert result.labels == ("0", "1")
    assert jsonl(out / "test.jsonl")[0] == {"label": "0", "text": "it is bad", "tokens": ["it", "is", "bad"]}
    files = result.metadata["source"]["files"]
    assert [(f["split"], f["member"], f["sha256"]) for f in files] == [
        ("train", "SST-2/train.tsv", sha), ("test", "SST-2/dev.tsv", sha)]
    # the same through the CLI, with uri#member and a label map
    assert main(["--uri", f"{archive}#SST-2/train.tsv", "--test", "SST-2/dev.tsv", "--sha256", sha,
                 "--format", "tsv", "--text-column", "sentence", "--label-map", "0=negative,1=positive",
                 "--out", str(tmp_path / "cli")]) == 0
    assert corpus_json(tmp_path / "cli")["labels"] == ["negative", "positive"]


def test_uri_directory_with_split_files(tmp_path, monkeypatch):
    monkeypatch.setenv("KFTUNE_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "ner"
    data.mkdir()
    (data / "a.conll").write_text("Paul\tS-PER\nsays\tO\n\n" * 30, encoding="utf-8")
    (data / "b.conll").write_text("New\tB-LOC\nYork\tE-LOC\n", encoding="utf-8")
    result = run(CorpusConfig(out=str(tmp_path / "o"), uri=str(data), train="a.conll", test="b.conll",
                              format="conll", allow_unverified=True))
    assert result.tag_scheme == "BIOES" and result.labels == ("B-LOC", "E-LOC", "O", "S-PER")
    assert {s: v.examples for s, v in result.splits.items()} == {"train": 27, "dev": 3, "test": 1}
    # a dev file next to a train file given as the uri
    result = run(CorpusConfig(out=str(tmp_path / "p"), uri=str(data / "a.conll"), dev="b.conll", format="conll",
                              allow_unverified=True))
    assert {s: v.examples for s, v in result.splits.items()} == {"train": 27, "dev": 1, "test": 3}


def test_metrics_are_logged_as_katib_lines(corpus_mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KFTUNE_KATIB_STDOUT", "1")
    assert main(["--name", "TREC_6", "--downsample", "0.1", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "train_examples=491" in out and "test_examples=500" in out


# --------------------------------------------------------------------------- store output
@pytest.mark.integration
def test_output_to_s3(corpus_mirror, s3_env, tmp_path):
    from kftune.io.store import open_store

    run(CorpusConfig(out=f"{s3_env}/corpus", name="TREC_6", downsample=0.1))
    run(CorpusConfig(out=str(tmp_path / "local"), name="TREC_6", downsample=0.1))
    store = open_store(f"{s3_env}/corpus")
    assert sorted(store.list()) == sorted(FILES)
    for name in FILES:
        assert store.get_bytes(name) == (tmp_path / "local" / name).read_bytes(), name


# --------------------------------------------------------------------------- the registry
def test_registry_lookup_and_entries():
    from kftune.core.corpus_registry import corpus_names, get_corpus, is_sha256

    assert {"TREC_6", "TREC_50", "WNUT_17", "UD_ENGLISH", "AG_NEWS", "NSMC", "SST_2"} <= set(corpus_names())
    assert get_corpus("trec-6").name == "TREC_6"
    with pytest.raises(ConfigError, match="known corpora"):
        get_corpus("IMDB_NOPE")
    for name in corpus_names():
        entry = get_corpus(name)
        assert "train" in entry.splits and "test" in entry.splits
        for f in entry.files:
            assert f.sha256 is not None and is_sha256(f.sha256), (name, f.url)
            assert f.url.startswith("https://")


def test_registry_checksums_match_the_shared_corpora(shared_corpora):
    from kftune.core.corpus_registry import get_corpus
    from kftune.io.download import sha256_file

    for name in ("TREC_6", "WNUT_17", "UD_ENGLISH"):
        for f in get_corpus(name).files:
            path = shared_corpora / f.mirror_path
            assert path.stat().st_size == f.size and sha256_file(path) == f.sha256, f.mirror_path


@pytest.mark.parametrize("name, filename, content, expected", [
    ("AG_NEWS", "train.csv", '"3","Wall St. Bears Claw Back","Reuters - Short-sellers are seeing green."\n',
     ("Business", "Wall St. Bears Claw Back Reuters - Short-sellers are seeing green.")),
    ("NSMC", "ratings_train.txt", 'id\tdocument\tlabel\n9976970\t아 더빙.. 진짜 짜증나네요 "목소리\t0\n',
     ("negative", '아 더빙.. 진짜 짜증나네요 "목소리')),
    ("SST_2", "train.tsv", "sentence\tlabel\nhide new secretions from the parental units \t0\n",
     ("negative", "hide new secretions from the parental units")),
])
def test_registry_reader_options_fit_the_published_formats(tmp_path, name, filename, content, expected):
    """The files of these corpora are not on this machine; their reader options are checked on lines in
    the published format (AG: quoted CSV without header; NSMC and GLUE SST-2: TSV with a header)."""
    from kftune.steps.corpus import _plan, _reader

    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    plan = _plan(CorpusConfig(out=str(tmp_path / "o"), name=name))
    (example,) = list(_reader(plan, path, None))
    assert (example.label, example.text) == expected
    assert plan.task == "text_classification"


def test_real_cli_in_a_subprocess(corpus_mirror, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "KFTUNE_PROGRESS": "log"}
    ok = subprocess.run([sys.executable, "-m", "kftune", "corpus", "--name", "TREC_6", "--downsample", "0.1",
                         "--seed", "1", "--out", str(tmp_path / "o")], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "TREC_6: train=491  dev=55  test=500" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "kftune", "corpus", "--name", "TREC_6", "--downsample", "2",
                          "--out", str(tmp_path / "p")], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "corpus.downsample" in bad.stderr


# --------------------------------------------------------------------------- tokenizers
def test_nsmc_is_tokenized_into_morphemes_by_default(corpus_mirror, tmp_path, capsys):
    out = tmp_path / "nsmc"
    assert main(["--name", "NSMC", "--downsample", "0.002", "--downsample-test", "--out", str(out)]) == 0
    meta = corpus_json(out)
    tok = meta["tokenizer"]
    assert tok["type"] == "morpheme" and tok["tags"] is True and tok["analyzer"] == "kiwipiepy" and tok["version"]
    rows = jsonl(out / "train.jsonl")
    assert rows and all(set(r) == {"label", "text", "tokens"} for r in rows)
    assert all(t.count("/") >= 1 and t.rsplit("/", 1)[1].isupper() for r in rows for t in r["tokens"]
               if t.rsplit("/", 1)[1][:1].isalpha())
    assert meta["splits"]["train"]["tokens"] == sum(len(r["tokens"]) for r in rows)
    from kftune.nlp.tokenizers import tokenizer_from_dict

    again = tokenizer_from_dict(tok)  # corpus.json recreates the tokenizer that made the tokens
    assert [again.tokenize(r["text"]) for r in rows[:20]] == [r["tokens"] for r in rows[:20]]
    card = (out / "card.md").read_text(encoding="utf-8")
    assert f"| tokenizer | morpheme (tags=True); kiwipiepy {tok['version']}" in card
    printed = capsys.readouterr().out
    assert "tokenizer morpheme (tags=True):" in printed and "sentences/s" in printed


def test_nsmc_label_map_replaces_the_registry_names(corpus_mirror, tmp_path, capsys):
    """--label-map on a registered csv/tsv corpus: the labels themselves become 부정/긍정 (every split, the
    metadata, the card), so the model, predict and the server use them."""
    out = tmp_path / "nsmc"
    assert main(["--name", "NSMC", "--label-map", "0=부정,1=긍정", "--tokenizer", "regex", "--downsample", "0.002",
                 "--downsample-test", "--out", str(out)]) == 0
    meta = corpus_json(out)
    assert meta["labels"] == ["긍정", "부정"]
    assert meta["source"]["reader_options"]["label_map"] == {"0": "부정", "1": "긍정"}
    for split in ("train", "dev", "test"):
        rows = jsonl(out / f"{split}.jsonl")
        assert rows and {r["label"] for r in rows} == {"긍정", "부정"}
    assert "| 부정 |" in (out / "card.md").read_text(encoding="utf-8")
    # the registry's own map written out gives the registry's corpus, byte for byte
    kwargs = dict(name="NSMC", tokenizer="regex", downsample=0.002, downsample_test=True)
    plain = run(CorpusConfig(out=str(tmp_path / "plain"), **kwargs))
    same = run(CorpusConfig(out=str(tmp_path / "same"), label_map={"0": "negative", "1": "positive"}, **kwargs))
    assert plain.labels == ("negative", "positive")
    assert {s: v.sha256 for s, v in same.splits.items()} == {s: v.sha256 for s, v in plain.splits.items()}


@pytest.mark.parametrize("label_map, path, needle", [
    ({"0": "부정", "1": "긍정", "2": "중립"}, "corpus.label_map.2", "'2' is not a raw label of NSMC: not one of ['0', '1']"),
    ({"1": "긍정"}, "corpus.label_map", "raw label '0' of NSMC has no name"),
])
def test_nsmc_label_map_errors_name_the_key_and_the_raw_labels(tmp_path, label_map, path, needle):
    problems = CorpusConfig(out=str(tmp_path / "o"), name="NSMC", tokenizer="regex", label_map=label_map).problems()
    assert [p.path for p in problems] == [path] and needle in problems[0].message
    trec = CorpusConfig(out=str(tmp_path / "o"), name="TREC_6", label_map={"DESC": "d"}).problems()
    assert [p.path for p in trec] == ["corpus.label_map"] and "csv/tsv corpora only" in trec[0].message


def test_pretokenized_corpora_keep_their_tokens_and_record_whitespace(corpus_mirror, tmp_path):
    result = run(CorpusConfig(out=str(tmp_path / "t"), name="TREC_6", downsample=0.1))
    assert result.metadata["tokenizer"] == {"type": "whitespace"}
    assert "| tokenizer | whitespace |" in (tmp_path / "t" / "card.md").read_text(encoding="utf-8")
    assert result.tokenization["sentences"] == sum(s.examples for s in result.splits.values())
    with pytest.raises(ConfigError) as err:
        CorpusConfig(out=str(tmp_path / "w"), name="WNUT_17", tokenizer="char").validate()
    assert [p.path for p in err.value.problems] == ["corpus.tokenizer"]
    assert "must be whitespace" in str(err.value)


def _reviews(tmp_path: Path, n: int = 240) -> Path:
    words = ["좋은", "영화", "재밌어요", "최고", "별로", "지루해요", "배우", "연기", "good", "bad", "movie", "plot"]
    rows = ["text,label"] + [f"{words[i % 12]} {words[(i * 5) % 12]} {words[(i * 7 + 3) % 12]}{i},"
                             f"{'pos' if i % 3 else 'neg'}" for i in range(n)]
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_char_and_regex_tokenizers_on_a_uri_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("KFTUNE_CACHE_DIR", str(tmp_path / "cache"))
    data = _reviews(tmp_path)
    base = ["--uri", str(data), "--format", "csv", "--allow-unverified"]
    assert main([*base, "--out", str(tmp_path / "r")]) == 0
    assert corpus_json(tmp_path / "r")["tokenizer"] == {"type": "regex"}
    assert main([*base, "--tokenizer", '{"type": "char", "boundaries": true}', "--out", str(tmp_path / "c")]) == 0
    assert corpus_json(tmp_path / "c")["tokenizer"] == {"type": "char", "boundaries": True}
    row = jsonl(tmp_path / "c" / "train.jsonl")[0]
    assert row["tokens"] == [c if c != " " else "▁" for c in " ".join(row["text"].split())]


def test_subword_is_trained_on_the_train_split_only_and_deterministic(tmp_path, monkeypatch):
    from kftune.nlp.tokenizers import SubwordTokenizer, tokenizer_from_dict

    monkeypatch.setenv("KFTUNE_CACHE_DIR", str(tmp_path / "cache"))
    data = _reviews(tmp_path)
    seen: list[list[str]] = []
    real = SubwordTokenizer.train.__func__

    def spy(cls, texts, *args, **kwargs):
        texts = list(texts)
        seen.append(texts)
        return real(cls, texts, *args, **kwargs)

    monkeypatch.setattr(SubwordTokenizer, "train", classmethod(spy))
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        run(CorpusConfig(out=str(out), uri=str(data), format="csv", allow_unverified=True,
                         tokenizer={"type": "subword", "vocabSize": 100}))
    train = jsonl(outs[0] / "train.jsonl")
    assert seen[0] == [r["text"] for r in train]  # the output train split's texts, nothing from dev or test
    dev_test = {r["text"] for s in ("dev", "test") for r in jsonl(outs[0] / f"{s}.jsonl")}
    assert dev_test and dev_test.isdisjoint(seen[0])
    for name in FILES:  # the same input gives a byte-identical model, corpus.json and splits
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    tok = tokenizer_from_dict(corpus_json(outs[0])["tokenizer"])
    assert tok.kind == "subword" and all(tok.tokenize(r["text"]) == r["tokens"] for r in train)


def test_an_unknown_tokenizer_exits_2_listing_the_choices(tmp_path, capsys):
    assert main(["--name", "TREC_6", "--tokenizer", "mecab", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "corpus.tokenizer" in err and "regex, whitespace, char, morpheme, subword" in err
    assert main(["--name", "TREC_6", "--tokenizer", "{not json", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_a_missing_package_fails_before_any_work(corpus_mirror, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "kiwipiepy" else real(name, *a, **k))
    fetched = []
    monkeypatch.setattr("kftune.io.download.Downloader.fetch", lambda *a, **k: fetched.append(a))
    assert main(["--name", "NSMC", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "kiwipiepy" in err and "pip install 'kftune[korean]'" in err and "NSMC's default tokenizer" in err
    assert fetched == [] and not (tmp_path / "o").exists()
    # another tokenizer needs no kiwipiepy
    assert CorpusConfig(out=str(tmp_path / "o"), name="NSMC", tokenizer="regex").problems() == []
