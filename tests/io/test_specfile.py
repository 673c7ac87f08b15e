"""Spec loading within limits: hostile YAML is a spec error (exit 2) naming its line, never a hang or a traceback.

A "billion laughs", a recursive alias, 10,000-deep nesting, a NUL byte, a 2 MB file, a 5,000-digit number, a
value YAML cannot build: each is refused before any Python object is built from it (before
``construct_document`` and before the node graph is walked for line numbers), and every command that reads
a spec answers 2 for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import kftune.io.specfile as specfile
from kftune.cli import main as cli_main
from kftune.commands.validate import main
from kftune.core.errors import ConfigError
from kftune.io.specfile import MAX_DEPTH, MAX_NODES, MAX_SPEC_BYTES, load_spec, parse_spec_text

REPO = Path(__file__).resolve().parents[2]
TREC6 = REPO / "examples" / "trec6.yaml"


def billion_laughs(levels: int = 9) -> str:
    lines = ["apiVersion: kftune.dev/v1alpha1", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", '
                                                '"lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


def _validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes) -> str:
    spec = tmp_path / "hostile.yaml"
    if isinstance(text, bytes):
        spec.write_bytes(text)
    else:
        spec.write_text(text, encoding="utf-8")
    assert main([str(spec)]) == 2
    return capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the probes
def test_a_billion_laughs_is_refused_at_the_alias_that_crosses_the_limit(tmp_path, capsys):
    out = _validate(tmp_path, capsys, billion_laughs())
    assert f"more than {MAX_NODES:,} values" in out and "billion laughs" in out
    assert "hostile.yaml:5:" in out and "(line 5)" in out  # a3's aliases cross 5,000 (a2 stands for 111)


@pytest.mark.parametrize("text, line", [
    ("a: &x [*x]\n", 1),
    ("a: 1\nb: &x {c: [1, {d: *x}]}\n", 2),
    ("a: &x\n  - b: 1\n  - *x\n", 3),
], ids=["sequence", "mapping", "block"])
def test_a_recursive_alias_is_refused_with_its_line(tmp_path, capsys, text, line):
    out = _validate(tmp_path, capsys, text)
    assert "recursive alias" in out and f"(line {line})" in out


@pytest.mark.parametrize("text", [
    "a: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "a: " + "{b: " * 10_000 + "1" + "}" * 10_000 + "\n",
    "".join(" " * i + f"k{i}:\n" for i in range(500)) + " " * 500 + "x: 1\n",
    "- " * 10_000 + "x\n",
], ids=["flow-lists", "flow-mappings", "block-mappings", "block-lists"])
def test_deep_nesting_is_refused_with_its_line(tmp_path, capsys, text):
    out = _validate(tmp_path, capsys, text)
    assert f"nested more than {MAX_DEPTH} levels deep" in out and "(line " in out


def test_an_alias_that_expands_too_deep_is_refused():
    deep = "[" * 40 + "]" * 40
    with pytest.raises(ConfigError) as info:
        parse_spec_text(f"a: &d {deep}\nb: {'[' * 30}*d{']' * 30}\n", "deep.yaml")
    assert f"the alias *d expands to more than {MAX_DEPTH} levels deep" in str(info.value)
    assert info.value.source.startswith("deep.yaml:2:")


@pytest.mark.parametrize("char, name", [("\x00", "U+0000"), ("\x07", "U+0007"), ("\x1b", "U+001B"),
                                        ("\x7f", "U+007F"), ("\x9f", "U+009F"), ("\ufffe", "U+FFFE")])
def test_control_characters_are_named_with_line_and_column(tmp_path, capsys, char, name):
    text = TREC6.read_text(encoding="utf-8").replace("name: trec6", f"name: tre{char}c6")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if char in row)
    out = _validate(tmp_path, capsys, text)
    assert f"{name} at line {line}, column 12" in out and f"hostile.yaml:{line}:12" in out


def test_tabs_and_line_breaks_are_not_control_characters():
    text = TREC6.read_text(encoding="utf-8").replace("\n", "\r\n").replace("# TREC-6", "#\tTREC-6")
    assert parse_spec_text(text) == load_spec(TREC6)


def test_a_2_mb_file_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed")
    monkeypatch.setattr(specfile, "_BoundedLoader", no_parsing)
    out = _validate(tmp_path, capsys, TREC6.read_text(encoding="utf-8") + "#" + "x" * 2_000_000 + "\n")
    assert f"a spec is at most {MAX_SPEC_BYTES:,} bytes" in out and "nothing was parsed" in out


def test_size_is_checked_on_text_and_on_streams_that_do_not_say_their_size():
    with pytest.raises(ConfigError, match="at most 262,144 bytes"):
        parse_spec_text("a: 1\n" + "#" * MAX_SPEC_BYTES)
    with pytest.raises(ConfigError, match="at most 262,144 bytes"):
        parse_spec_text("a: 1\n#" + "é" * (MAX_SPEC_BYTES // 2))  # fewer characters than bytes
    if os.path.exists("/dev/zero"):  # st_size 0, and no end
        with pytest.raises(ConfigError, match="more than 262,144 bytes"):
            load_spec("/dev/zero")


@pytest.mark.parametrize("value, fragment", [
    ("9" * 5000, "a number of 5,000 characters"),
    (":".join(["1"] * 20_000), "a number of 39,999 characters"),  # base 60: grows with every part
    ("2001-13-45", "'2001-13-45' is not a valid timestamp (month must be in 1..12)"),
    ("!!int abc", "'abc' is not a valid int"),
    ("!!int ''", "is not a valid int"),
    ("!!float x", "'x' is not a valid float"),
    ("!!bool maybe", "'maybe' is not a valid bool"),
    ("!!timestamp x", "'x' is not a valid timestamp"),
])
def test_values_yaml_cannot_build_are_spec_errors_with_their_line(tmp_path, capsys, value, fragment):
    text = TREC6.read_text(encoding="utf-8").replace("cnn_filters: 100", f"cnn_filters: {value}")
    out = _validate(tmp_path, capsys, text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "cnn_filters:" in row)
    assert fragment in out and f"(line {line})" in out, out


def test_too_many_values_are_refused():
    with pytest.raises(ConfigError, match=f"more than {MAX_NODES:,} values"):
        parse_spec_text("a: [" + ", ".join(["1"] * MAX_NODES) + "]\n")


def test_anchors_and_merge_keys_within_the_limits_still_work():
    text = TREC6.read_text(encoding="utf-8")
    text = text.replace("    seed: 1\n\n  task", "    seed: &seed 1\n\n  task").replace(
        "    trainingRuns: 1              # repeats with seeds 1, 2, ... averaged per trial (Flair's noise handling)\n"
        "    seed: 1", "    trainingRuns: 1\n    seed: *seed")
    text = text.replace("  resources:\n    trialGPU: 1\n    finalGPU: 1",
                        "  resources:\n    <<: &gpus {trialGPU: 1}\n    finalGPU: 1")
    assert parse_spec_text(text) == load_spec(TREC6)


@pytest.mark.parametrize("error", [RecursionError, MemoryError])
def test_recursion_and_memory_errors_never_escape_as_tracebacks(monkeypatch, error):
    def explode(*args, **kwargs):
        raise error()
    monkeypatch.setattr(specfile, "parse_spec", explode)
    with pytest.raises(ConfigError):
        parse_spec_text(TREC6.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------ every command that reads a spec
@pytest.mark.parametrize("argv", [
    ["validate", "{spec}"],
    ["run", "{spec}", "--out", "{tmp}"],
    ["katib", "{spec}"],
    ["submit", "{spec}", "--host", "http://127.0.0.1:9"],
    ["schedule", "{spec}", "--host", "http://127.0.0.1:9", "--cron", "0 0 3 * * *"],
    ["search", "--spec", "{spec}", "--corpus", "{tmp}", "--store", "{tmp}"],
    ["trial", "--spec", "{spec}", "--corpus", "{tmp}", "--store", "{tmp}", "--run-id", "r", "--trial-id", "t",
     "--param", "learning_rate=0.01"],
    ["train", "--spec", "{spec}", "--corpus", "{tmp}", "--out", "{tmp}"],
    ["lr-find", "--spec", "{spec}", "--corpus", "{tmp}", "--out", "{tmp}/out"],
    ["report", "--spec", "{spec}", "--corpus", "{tmp}", "--out", "{tmp}/out"],
], ids=lambda argv: argv[0])
@pytest.mark.parametrize("text", [billion_laughs(), "a: &x [*x]\n", "a: " + "[" * 10_000, "a: \x00\n"],
                         ids=["laughs", "recursive", "deep", "nul"])
def test_every_command_that_reads_a_spec_exits_2_on_hostile_yaml(tmp_path, capsys, argv, text):
    spec = tmp_path / "hostile.yaml"
    spec.write_text(text, encoding="utf-8")
    (tmp_path / "corpus.json").write_text("{}", encoding="utf-8")  # lr-find and report look for one first
    assert cli_main([a.format(spec=spec, tmp=tmp_path) for a in argv]) == 2
    captured = capsys.readouterr()
    assert "hostile.yaml:1:" in captured.out + captured.err or "(line " in captured.out + captured.err
    assert "Traceback" not in captured.err
