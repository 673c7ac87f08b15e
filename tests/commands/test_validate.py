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
