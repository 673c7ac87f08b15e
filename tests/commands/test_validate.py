"""``kftune validate``: every problem with its field path and line, exit 2; the examples validate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kftune.cli import main as cli_main
from kftune.commands.validate import main
from kftune.core.errors import ConfigError
from kftune.io.specfile import dump_spec, load_spec, model_hooks, parse_spec_text

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
TREC6 = REPO / "examples" / "trec6.yaml"


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_three_planted_mistakes_are_all_reported_with_paths_and_lines(tmp_path, capsys):
    text = TREC6.read_text(encoding="utf-8")
    planted = (text.replace("    maxEpochs: 6 ", "    maxEpoch: 6 ")                       # unknown field
               .replace('{min: "0.1", max: "0.6"}', '{min: "abc", max: "0.6"}')           # not a number
               .replace("algorithmName: coarse-to-fine", "algorithmName: bayesianopt"))   # unknown algorithm
    assert planted.count("maxEpoch:") == 1 and '"abc"' in planted and "bayesianopt" in planted
    spec = tmp_path / "bad.yaml"
    spec.write_text(planted, encoding="utf-8")

    assert main([str(spec)]) == 2
    out = capsys.readouterr().out
    assert f"{spec}: 3 problems" in out
    expected = [
        ("spec.search.algorithm.algorithmName", '"bayesianopt" is not one of: random, grid, tpe, coarse-to-fine',
         _line_of(planted, "bayesianopt")),
        ("spec.search.parameters[1].feasibleSpace.min", '"abc" is not a number', _line_of(planted, '"abc"')),
        ("spec.train.maxEpoch", 'unknown field; did you mean "maxEpochs"?', _line_of(planted, "maxEpoch:")),
    ]
    lines = [line for line in out.splitlines() if line.startswith("  - ")]
    assert len(lines) == 3
    for (path, message, line), printed in zip(expected, lines):  # in line order
        assert printed.startswith(f"  - {path}: {message}"), printed
        assert printed.endswith(f"(line {line})"), printed


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(path, capsys):
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: ok (TuningJob ")


def test_examples_are_checked_by_the_model_hooks():
    validator, names = model_hooks()
    assert validator is not None and names is not None and "learning_rate" in names


def test_several_files_exit_2_when_any_is_bad(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TREC6.read_text(encoding="utf-8").replace("maxTrialCount: 8", "maxTrialCount: 1"), encoding="utf-8")
    assert main([str(TREC6), str(bad)]) == 2
    out = capsys.readouterr().out
    assert f"{TREC6}: ok" in out
    assert "spec.search.parallelTrialCount: 2 is more than maxTrialCount 1" in out


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    spec = tmp_path / "broken.yaml"
    spec.write_text("apiVersion: kftune.dev/v1alpha1\nkind: TuningJob\nmetadata: {name: x\nspec: {}\n", encoding="utf-8")
    assert main([str(spec)]) == 2
    out = capsys.readouterr().out
    assert f"{spec}:4:" in out and "YAML syntax error" in out
    assert "starts at line 3" in out


def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main([str(missing)]) == 2
    assert f"{missing}: 1 problem\n  - no such file" in capsys.readouterr().out


def test_empty_file_and_directory(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n", encoding="utf-8")
    assert main([str(empty), str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "the file is empty" in out and "is a directory" in out


def test_duplicate_keys_are_reported(tmp_path):
    text = TREC6.read_text(encoding="utf-8").replace("    patience: 2 ", "    patience: 2\n    patience: 4 ")
    spec = tmp_path / "dup.yaml"
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_spec(spec)
    [problem] = info.value.problems
    assert problem.path == "spec.train.patience" and "set twice" in problem.message


def test_print_writes_the_spec_with_defaults_that_reads_back(capsys):
    assert main(["--print", str(TREC6)]) == 0
    out = capsys.readouterr().out
    document = out.split("---\n", 1)[1]
    assert parse_spec_text(document) == load_spec(TREC6)
    assert yaml.safe_load(document)["spec"]["train"]["minLearningRate"] == 1e-7  # a default spelled out
    assert dump_spec(load_spec(TREC6)) == document


def test_usage_error_without_arguments(capsys):
    assert main([]) == 2


def test_dispatched_by_the_cli(capsys):
    assert cli_main(["validate", str(TREC6)]) == 0
    assert "ok (TuningJob trec6" in capsys.readouterr().out


def test_console_entry_point_runs(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TREC6.read_text(encoding="utf-8").replace("kind: TuningJob", "kind: Experiment"), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "kftune", "validate", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert 'kind: "Experiment" is not TuningJob' in result.stdout


# --------------------------------------------------------------------------- corpus.tokenizer
def _with_corpus(tmp_path, corpus_lines: str, name: str = "tok.yaml") -> Path:
    text = TREC6.read_text(encoding="utf-8")
    head, _, rest = text.partition("  corpus:\n")
    _, _, tail = rest.partition("    seed: 1\n")
    spec = tmp_path / name
    spec.write_text(head + "  corpus:\n" + corpus_lines + tail, encoding="utf-8")
    return spec


def test_a_tokenizer_choice_validates_and_prints_back(tmp_path, capsys):
    spec = _with_corpus(tmp_path, "    name: NSMC\n    tokenizer: {type: subword, vocabSize: 4000}\n")
    assert main([str(spec), "--print"]) == 0
    out = capsys.readouterr().out
    assert "vocabSize: 4000" in out and "type: subword" in out
    job = load_spec(spec)
    assert job.spec.corpus.tokenizer.type == "subword" and job.spec.corpus.tokenizer.options["vocab_size"] == 4000


def test_an_unknown_tokenizer_exits_2_listing_the_choices(tmp_path, capsys):
    spec = _with_corpus(tmp_path, "    name: NSMC\n    tokenizer: mecab\n")
    assert main([str(spec)]) == 2
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "spec.corpus.tokenizer" in line)
    assert "'mecab' is not a tokenizer" in line and "regex, whitespace, char, morpheme, subword" in line
    assert line.endswith(f"(line {_line_of(spec.read_text(encoding='utf-8'), 'mecab')})")


def test_a_bad_tokenizer_option_is_named_by_its_path(tmp_path, capsys):
    spec = _with_corpus(tmp_path, "    name: TREC_6\n    tokenizer: {type: subword, vocabSize: 5, modelTyp: bpe}\n")
    assert main([str(spec)]) == 2
    out = capsys.readouterr().out
    assert "spec.corpus.tokenizer.vocabSize: 5 is out of range" in out
    assert 'spec.corpus.tokenizer.modelTyp: not an option of tokenizer subword; did you mean "modelType"?' in out


def test_a_tagged_corpus_takes_only_whitespace(tmp_path, capsys):
    text = (REPO / "examples" / "wnut17.yaml").read_text(encoding="utf-8")
    spec = tmp_path / "wnut.yaml"
    spec.write_text(text.replace("    name: WNUT_17", "    name: WNUT_17\n    tokenizer: morpheme", 1), encoding="utf-8")
    assert "tokenizer: morpheme" in spec.read_text(encoding="utf-8")
    assert main([str(spec)]) == 2
    assert "spec.corpus.tokenizer: format conll comes tokenized" in capsys.readouterr().out


@pytest.mark.parametrize("corpus, module, package, extra", [
    ("    name: NSMC\n", "kiwipiepy", "kiwipiepy", "korean"),  # NSMC's default tokenizer is morpheme
    ("    name: TREC_6\n    tokenizer: morpheme\n", "kiwipiepy_model", "kiwipiepy-model", "korean"),
    ("    name: TREC_6\n    tokenizer: {type: subword}\n", "sentencepiece", "sentencepiece", "subword"),
])
def test_a_missing_tokenizer_package_exits_2_before_any_work(tmp_path, capsys, monkeypatch, corpus, module,
                                                              package, extra):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == module else real(name, *a, **k))
    spec = _with_corpus(tmp_path, corpus)
    assert main([str(spec)]) == 2
    out = capsys.readouterr().out
    assert f"needs the Python package {package}, which is not installed: run pip install 'kftune[{extra}]'" in out
    # `kftune run` parses the same spec first: exit 2 before the pipeline starts
    from kftune.commands import run as run_command

    started = []
    monkeypatch.setattr(run_command, "run_pipeline", lambda *a, **k: started.append(a), raising=False)
    assert cli_main(["run", str(spec), "--out", str(tmp_path / "run"), "--store", str(tmp_path / "store")]) == 2
    assert package in capsys.readouterr().err and not started
