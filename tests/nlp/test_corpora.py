import sys
from collections import Counter
from pathlib import Path

import pytest

from kftune.core.errors import ConfigError, DataError
from kftune.nlp.corpora import (check_tags, detect_scheme, entity_types, read_conll, read_conllu, read_delimited,
                                read_fasttext, read_trec, tokenize)


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


# --------------------------------------------------------------------------- tokenizer
def test_tokenize_keeps_inner_apostrophes_and_hyphens_and_splits_punctuation():
    assert tokenize("Don't stop: state-of-the-art, 3.5%!") == [
        "Don't", "stop", ":", "state-of-the-art", ",", "3", ".", "5", "%", "!"]


def test_tokenize_is_unicode_aware():
    assert tokenize("영화 재밌다!! café") == ["영화", "재밌다", "!", "!", "café"]


# --------------------------------------------------------------------------- FastText
def test_fasttext(tmp_path):
    path = write(tmp_path, "a.txt", "__label__pos  Great movie, really!\n\n__label__neg bad\n")
    got = list(read_fasttext(path))
    assert [(e.label, e.tokens, e.line) for e in got] == [
        ("pos", ["Great", "movie", ",", "really", "!"], 1), ("neg", ["bad"], 3)]
    assert got[0].to_json() == {"label": "pos", "text": "Great movie, really!",
                                "tokens": ["Great", "movie", ",", "really", "!"]}


@pytest.mark.parametrize("line, message", [
    ("no label here", "expected '__label__LABEL text'"),
    ("__label__ text", "expected '__label__LABEL text'"),
    ("__label__a __label__b text", "more than one label"),
])
def test_fasttext_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, "bad.txt", f"__label__ok fine\n{line}\n")
    with pytest.raises(DataError, match=message) as err:
        list(read_fasttext(path))
    assert f"{path}:2:" in str(err.value)


def test_invalid_utf8_is_a_data_error_with_the_line(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"__label__a ok\n__label__b caf\xe9\n")
    with pytest.raises(DataError, match=r"latin.txt:2: not valid utf-8"):
        list(read_fasttext(path))


# --------------------------------------------------------------------------- CSV / TSV
def test_csv_without_header_by_column_number_with_label_map_and_quotes(tmp_path):
    path = write(tmp_path, "ag.csv", '"3","Wall St. Bears","Short-sellers, Wall Street\'s dwindling band"\n'
                                     '"1","Title","multi\nline description"\n')
    got = list(read_delimited(path, delimiter=",", header=False, text_columns=("1", "2"), label_column="0",
                              label_map={"1": "World", "3": "Business"}))
    assert [e.label for e in got] == ["Business", "World"]
    assert got[0].text == "Wall St. Bears Short-sellers, Wall Street's dwindling band"
    assert got[1].tokens == ["Title", "multi", "line", "description"]
    assert [e.line for e in got] == [1, 3]


def test_tsv_with_header_and_no_quoting(tmp_path):
    path = write(tmp_path, "nsmc.txt", 'id\tdocument\tlabel\n1\t"quoted" start\t0\n2\t좋아요 ㅎㅎ\t1\n')
    got = list(read_delimited(path, delimiter="\t", header=True, text_columns=("document",),
                              label_column="label", quoting="none", label_map={"0": "negative", "1": "positive"}))
    assert [(e.label, e.text) for e in got] == [("negative", '"quoted" start'), ("positive", "좋아요 ㅎㅎ")]


def test_delimited_too_few_columns(tmp_path):
    path = write(tmp_path, "d.tsv", "text\tlabel\nfine\tA\nno label column\n")
    with pytest.raises(DataError, match=r"d.tsv:3: expected at least 2 columns"):
        list(read_delimited(path, delimiter="\t", quoting="none"))


def test_delimited_empty_and_unmapped_labels(tmp_path):
    path = write(tmp_path, "e.csv", "text,label\nhello,\n")
    with pytest.raises(DataError, match=r"e.csv:2: empty label"):
        list(read_delimited(path))
    path = write(tmp_path, "m.csv", "text,label\nhello,7\n")
    with pytest.raises(DataError, match=r"m.csv:2: label '7' is not one of"):
        list(read_delimited(path, label_map={"0": "neg"}))


def test_delimited_unknown_column_name_is_a_config_error(tmp_path):
    path = write(tmp_path, "c.csv", "sentence,label\nhi,A\n")
    with pytest.raises(ConfigError, match="text_column: column 'text' is not in the header"):
        list(read_delimited(path))
    with pytest.raises(ConfigError, match="has no header"):
        list(read_delimited(path, header=False, text_columns=("sentence",), label_column="1"))


def test_csv_unterminated_quote_is_a_data_error(tmp_path):
    path = write(tmp_path, "q.csv", 'text,label\n"never closed,A\n' + "x,B\n" * 3)
    with pytest.raises(DataError, match=r"q.csv:\d+: (malformed CSV|expected at least)"):
        list(read_delimited(path))


# --------------------------------------------------------------------------- TREC
def test_trec_coarse_and_fine_latin1(tmp_path):
    path = write(tmp_path, "t.label", "DESC:manner How did serfdom develop ?\nLOC:other Where is sister\xf0city ?\n",
                 encoding="latin-1")
    coarse = list(read_trec(path))
    assert [(e.label, e.tokens) for e in coarse] == [
        ("DESC", ["How", "did", "serfdom", "develop", "?"]), ("LOC", ["Where", "is", "sister\xf0city", "?"])]
    assert coarse[0].to_json() == {"label": "DESC", "text": "How did serfdom develop ?",
                                   "tokens": ["How", "did", "serfdom", "develop", "?"]}
    assert [e.label for e in read_trec(path, level="fine")] == ["DESC:manner", "LOC:other"]


@pytest.mark.parametrize("line", ["DESC How did it ?", "desc:manner lower case coarse", "NUM:date"])
def test_trec_malformed(tmp_path, line):
    path = write(tmp_path, "t.label", f"HUM:ind Who ?\n{line}\n")
    with pytest.raises(DataError, match=r"t.label:2:"):
        list(read_trec(path))


def test_trec_real_files_counts(shared_corpora):
    train = Counter(e.label for e in read_trec(shared_corpora / "trec" / "train_5500.label"))
    assert train == {"ABBR": 86, "DESC": 1162, "ENTY": 1250, "HUM": 1223, "LOC": 835, "NUM": 896}
    fine = {e.label for e in read_trec(shared_corpora / "trec" / "train_5500.label", level="fine")}
    assert len(fine) == 50


# --------------------------------------------------------------------------- CoNLL + BIO/BIOES
CONLL = """-DOCSTART-\tO

@paul\tO
Paul\tB-person
Walker\tI-person

Visit\tO
New\tB-location
York\tI-location
"""


def test_conll_sentences_and_docstart(tmp_path):
    path = write(tmp_path, "w.conll", CONLL)
    got = list(read_conll(path, scheme="BIO"))
    assert [s.to_json() for s in got] == [
        {"tokens": ["@paul", "Paul", "Walker"], "tags": ["O", "B-person", "I-person"]},
        {"tokens": ["Visit", "New", "York"], "tags": ["O", "B-location", "I-location"]}]
    assert [s.line for s in got] == [3, 7]


def test_conll_whitespace_columns_and_chosen_columns(tmp_path):
    path = write(tmp_path, "c.txt", "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n")
    got = list(read_conll(path, token_column=0, tag_column=3))
    assert got[0].tags == ["B-ORG", "O"]
    assert [s.tags for s in read_conll(path, tag_column=1, scheme=None)] == [["NNP", "VBZ"]]


def test_conll_missing_tag_column(tmp_path):
    path = write(tmp_path, "m.conll", "a\tO\nlonely\n\n")
    with pytest.raises(DataError, match=r"m.conll:2: expected a token column"):
        list(read_conll(path, tag_column=1))


def test_conll_invalid_bio_sequence_names_the_sentence_line(tmp_path):
    path = write(tmp_path, "b.conll", "a\tO\n\nb\tO\nc\tI-person\n")
    with pytest.raises(DataError, match=r"b.conll:3: .*'I-person' does not continue an entity"):
        list(read_conll(path, scheme="auto"))


def test_bioes_rules():
    assert check_tags(["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"], "BIOES") is None
    assert "must be followed" in check_tags(["B-LOC", "O"], "BIOES")
    assert "ends with" in check_tags(["B-LOC", "I-LOC"], "BIOES")
    assert "is BIOES, but the corpus is BIO" in check_tags(["S-PER"], "BIO")
    assert check_tags(["B-LOC", "O"], "BIO") is None
    assert "not O or B-/I-/E-/S-TYPE" in check_tags(["PER"], "auto")
    assert "does not continue" in check_tags(["B-LOC", "I-PER"], "auto")


def test_detect_scheme_and_entity_types():
    assert detect_scheme({"O", "B-x", "I-x"}) == "BIO"
    assert detect_scheme({"O", "B-x", "E-x", "S-y"}) == "BIOES"
    assert detect_scheme({"NOUN", "VERB", "nmod:poss"}) is None
    assert entity_types(["O", "B-person", "I-person", "S-loc"]) == {"person", "loc"}


def test_wnut_real_files(shared_corpora):
    train = list(read_conll(shared_corpora / "wnut17" / "wnut17train.conll", scheme="BIO"))
    assert len(train) == 3394 and sum(len(s.tokens) for s in train) == 62730
    assert detect_scheme({t for s in train for t in s.tags}) == "BIO"


# --------------------------------------------------------------------------- CoNLL-U
CONLLU = """# sent_id = 1
# text = I can't go.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t3:nsubj\t_
2-3\tcan't\t_\t_\t_\t_\t_\t_\t_\t_
2\tca\tcan\tAUX\tMD\t_\t4\taux\t4:aux\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t4:advmod\t_
3.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t0:root\t_
4\tgo\tgo\tVERB\tVB\t_\t0\troot\t0:root\tSpaceAfter=No
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t4:punct\t_

# sent_id = 2
1\tHi\thi\tINTJ\tUH\t_\t0\troot\t0:root\t_
"""


def test_conllu_skips_comments_ranges_and_empty_nodes(tmp_path):
    path = write(tmp_path, "u.conllu", CONLLU)
    got = list(read_conllu(path))
    assert [s.tokens for s in got] == [["I", "ca", "n't", "go", "."], ["Hi"]]
    assert got[0].tags == ["PRON", "AUX", "PART", "VERB", "PUNCT"]
    assert [s.line for s in got] == [3, 12]
    assert list(read_conllu(path, column="xpos"))[0].tags == ["PRP", "MD", "RB", "VB", "."]
    assert list(read_conllu(path, column="deprel"))[0].tags == ["nsubj", "aux", "advmod", "root", "punct"]


def test_conllu_wrong_column_count_and_bad_id(tmp_path):
    path = write(tmp_path, "u.conllu", "# c\n1\tI\tI\tPRON\n")
    with pytest.raises(DataError, match=r"u.conllu:2: expected 10 tab-separated CoNLL-U columns, got 4"):
        list(read_conllu(path))
    path = write(tmp_path, "v.conllu", "x\tI\tI\tPRON\tPRP\t_\t0\troot\t_\t_\n")
    with pytest.raises(DataError, match=r"v.conllu:1: word ID 'x'"):
        list(read_conllu(path))


def test_conllu_unknown_column_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="label_column"):
        list(read_conllu(write(tmp_path, "u.conllu", CONLLU), column="nope"))


def test_ud_dev_real_file(shared_corpora):
    dev = list(read_conllu(shared_corpora / "ud_english_ewt" / "en_ewt-ud-dev.conllu"))
    assert len(dev) == 2001 and sum(len(s.tokens) for s in dev) == 25147
    assert len({t for s in dev for t in s.tags}) == 17


def test_readers_do_not_import_torch():
    import subprocess

    code = "import sys, kftune.nlp.corpora; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
