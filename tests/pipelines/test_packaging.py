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


#: What kftune.nlp may not import (DESIGN.md: arrows point inward, (steps, serving) -> (nlp, io) -> core, and
#: "nlp is handed stores; it does not open them").
NLP_FORBIDDEN = ("kftune.io", "kftune.steps", "kftune.serving", "kftune.commands", "kftune.pipelines", "kftune.cli")


def _forbidden_imports(source: str, where: str, forbidden: tuple[str, ...]) -> list[str]:
    """``where:line name`` for every import statement in ``source`` (at any depth: in functions, under ``if
    TYPE_CHECKING``) that names a module under one of ``forbidden`` (``from kftune import io`` too)."""
    import ast

    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out += [f"{where}:{node.lineno} {n}" for n in names
                if any(n == f or n.startswith(f + ".") for f in forbidden)]
    return sorted(set(out))


def test_nlp_imports_nothing_from_io_steps_or_the_edges_above_it() -> None:
    root = REPO / "components" / "kftune" / "nlp"
    offenders = [o for path in sorted(root.rglob("*.py"))
                 for o in _forbidden_imports(path.read_text(encoding="utf-8"), path.name, NLP_FORBIDDEN)]
    assert offenders == [], "nlp takes stores (kftune.nlp.storage.BlobStore / StoreOpener) from its callers"


def test_the_nlp_import_check_finds_every_form_of_import() -> None:
    source = ("import kftune.io.store\nfrom kftune.io.store import open_store\nfrom kftune import io\n"
              "def f():\n    from kftune.steps import train\n"
              "if TYPE_CHECKING:\n    from kftune.io.journal import RunJournal\n"
              "import kftune.iox\nfrom kftune.nlp.storage import BlobStore\n")
    assert _forbidden_imports(source, "x.py", NLP_FORBIDDEN) == [
        "x.py:1 kftune.io.store", "x.py:2 kftune.io.store", "x.py:2 kftune.io.store.open_store", "x.py:3 kftune.io",
        "x.py:5 kftune.steps", "x.py:5 kftune.steps.train", "x.py:7 kftune.io.journal",
        "x.py:7 kftune.io.journal.RunJournal"]


def test_importing_every_nlp_module_loads_no_io_module() -> None:
    """The same at run time, imports of imports included (core, which nlp imports, must not reach io either)."""
    names = sorted(f"kftune.nlp.{p.stem}" for p in (REPO / "components" / "kftune" / "nlp").glob("*.py")
                   if p.stem != "__init__")
    code = (f"import importlib, sys\nfor n in {names!r}:\n    importlib.import_module(n)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[:2] in (['kftune', 'io'], ['kftune', 'steps']))\n"
            "sys.exit(f'loaded {bad}' if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
