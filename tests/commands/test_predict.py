"""`kftune predict`: texts from flags, files and stdin; JSONL out; errors with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kftune.commands.predict import main
from tests.fixtures.models import NEGATIVE, POSITIVE


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_texts_from_flags(korean_model, capsys):
    assert main(["--model", str(korean_model), "--text", POSITIVE, "--text", NEGATIVE, "--top-k", "1"]) == 0
    out = lines(capsys.readouterr().out)
    assert [r["label"] for r in out] == ["긍정", "부정"] and [r["raw_label"] for r in out] == ["1", "0"]
    assert out[0]["text"] == POSITIVE and len(out[0]["probabilities"]) == 1


def test_a_plain_file_and_a_jsonl_file_keep_order_and_ids(korean_model, tmp_path, capsys):
    plain = tmp_path / "reviews.txt"
    plain.write_text(f"{POSITIVE}\n\n{NEGATIVE}\n", encoding="utf-8")
    out_file = tmp_path / "out.jsonl"
    assert main(["--model", str(korean_model), "--input", str(plain), "--output", str(out_file)]) == 0
    out = lines(out_file.read_text(encoding="utf-8"))
    assert [r["label"] for r in out] == ["긍정", None, "부정"]  # an empty line: an empty-text record
    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "review": t}, ensure_ascii=False)
                               for i, t in enumerate([NEGATIVE, POSITIVE])) + "\n", encoding="utf-8")
    assert main(["--model", str(korean_model), "--input", str(jsonl), "--text-field", "review"]) == 0
    out = lines(capsys.readouterr().out)
    assert [(r["id"], r["label"]) for r in out] == [(0, "부정"), (1, "긍정")]


def test_stdin_in_a_fresh_process(korean_model):
    proc = subprocess.run([sys.executable, "-m", "kftune", "predict", "--model", str(korean_model)],
                          input=f'{{"text": "{NEGATIVE}"}}\n', capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout)[0]["label"] == "부정"


def test_a_tagger_gives_tags_and_spans(tagger_model, capsys):
    assert main(["--model", str(tagger_model), "--text", "Barack Obama visited New York"]) == 0
    record = lines(capsys.readouterr().out)[0]
    assert record["tokens"] == ["Barack", "Obama", "visited", "New", "York"]
    assert len(record["tags"]) == 5 and isinstance(record["spans"], list)


@pytest.mark.integration
def test_a_model_in_the_object_store(korean_model, s3_env, capsys):
    from kftune.io.store import open_store

    open_store(s3_env).put_file("m/model.pt", korean_model)
    assert main(["--model", f"{s3_env}/m/model.pt", "--text", POSITIVE]) == 0
    assert lines(capsys.readouterr().out)[0]["label"] == "긍정"


def test_errors(korean_model, tmp_path, capsys):
    assert main(["--model", str(tmp_path / "none.pt"), "--text", "a"]) == 1
    assert "no such artifact" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "좋아"}\n{"text": \n', encoding="utf-8")
    assert main(["--model", str(korean_model), "--input", str(bad)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert main(["--model", str(korean_model), "--input", str(tmp_path / "missing.txt")]) == 2
    assert main(["--model", str(korean_model), "--text", "a", "--top-k", "0"]) == 2
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café\n".encode("latin-1"))
    assert main(["--model", str(korean_model), "--input", str(latin)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
