"""``pipelines/`` installs as ``kftune.pipelines`` with its compiled YAML, and compiling needs no torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import kftune
import kftune.pipelines

REPO = Path(__file__).resolve().parents[2]


def test_pyproject_lists_every_package_and_maps_the_pipelines() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO / "components").parts)
               for p in (REPO / "components" / "kftune").rglob("__init__.py")}
    assert set(config["packages"]) == on_disk | {"kftune.pipelines"}, "add new packages to [tool.setuptools] packages"
    assert config["package-dir"] == {"": "components", "kftune.pipelines": "pipelines"}
    assert "compiled/*.yaml" in config["package-data"]["kftune.pipelines"]


def test_the_pipelines_package_is_the_repository_folder_with_the_compiled_yaml() -> None:
    assert Path(kftune.pipelines.__file__).resolve() == REPO / "pipelines" / "__init__.py"
    assert sorted(p.name for p in kftune.pipelines.COMPILED_DIR.glob("*.yaml")) == ["kftune-cpu.yaml",
                                                                                    "kftune-gpu.yaml"]


def test_building_and_compiling_the_pipeline_imports_no_torch(tmp_path: Path) -> None:
    code = ("import sys; from kftune.pipelines.build import compile_pipeline; "
            f"compile_pipeline('gpu', {str(tmp_path / 'p.yaml')!r}, search_rounds=1); "
            "bad = [m for m in ('torch', 'kftune.nlp.trainer', 'kftune.steps.trial') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "p.yaml").is_file()


def test_no_kfp_import_under_components() -> None:
    """KFP lives in pipelines/ (the DESIGN's layout): the commands reach it through kftune.pipelines.local_runner
    and kftune.pipelines.client, so that the package under components/ never imports kfp itself."""
    import ast

    root = Path(__file__).resolve().parents[2] / "components"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.relative_to(root)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "kfp"]
    assert offenders == []
