"""``kftune compile --check``: the committed pipelines are what the code compiles to.

(No ``from __future__ import annotations`` here: KFP reads the changed component's annotations.)
"""

import shutil
from pathlib import Path

import pytest
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from kftune.commands import compile as compile_command
from kftune.pipelines import COMPILED_DIR
from kftune.pipelines import components as C


@pytest.fixture(autouse=True)
def _default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KFTUNE_IMAGE_REGISTRY", raising=False)  # the committed files name ghcr.io/kftune


def test_check_passes_on_the_committed_pipelines_and_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    assert compile_command.default_manifests() is not None  # a source checkout: the manifests are checked too
    assert compile_command.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def trial(job_spec: Input[Artifact], corpus: Input[Dataset], item: str, metrics: Output[Metrics]) -> str:
    """A changed trial component: the compiled YAML embeds each component's source."""
    return item + " (changed)"


def test_check_fails_with_a_diff_after_a_component_changes(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    changed = tuple(trial if f.__name__ == "trial" else f for f in C.FUNCTIONS)
    monkeypatch.setattr(C, "FUNCTIONS", changed)
    assert compile_command.main(["--check", "--no-manifests"]) == 1
    captured = capsys.readouterr()
    assert "kftune-cpu.yaml (committed)" in captured.out and "kftune-gpu.yaml (compiled now)" in captured.out
    assert "(changed)" in "".join(line for line in captured.out.splitlines() if line.startswith("+"))
    assert "run `kftune compile`" in captured.err


def test_check_ignores_the_sdk_version_and_catches_any_other_edit(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compiled"
    shutil.copytree(COMPILED_DIR, out)
    cpu = out / "kftune-cpu.yaml"
    text = cpu.read_text(encoding="utf-8")
    assert "sdkVersion: kfp-" in text
    cpu.write_text(text.replace("sdkVersion: kfp-", "sdkVersion: kfp-0.0.0-other-"), encoding="utf-8")
    assert compile_command.main(["--check", "--no-manifests", "--out", str(out)]) == 0
    cpu.write_text(text.replace("parallelismLimit: 1", "parallelismLimit: 4", 1), encoding="utf-8")
    (out / "kftune-gpu.yaml").unlink()
    assert compile_command.main(["--check", "--no-manifests", "--out", str(out)]) == 1
    diff = capsys.readouterr().out
    assert any(line.startswith("-") and "parallelismLimit: 4" in line for line in diff.splitlines())
    assert f"missing: {out / 'kftune-gpu.yaml'}" in diff


def test_compile_writes_both_variants_and_the_manifests(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path / "p"), "--manifests", str(tmp_path / "m"), "--rounds", "2"]
    assert compile_command.main(args) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["kftune-cpu.yaml", "kftune-gpu.yaml"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["kftune-cpu.yaml", "kftune-gpu.yaml",
                                                                  "kustomization.yaml"]
    assert "suggest-3" in (tmp_path / "p" / "kftune-cpu.yaml").read_text()  # 2 rounds + the finalists
    assert "suggest-4" not in (tmp_path / "p" / "kftune-cpu.yaml").read_text()
