"""``kftune compile [--check]``: compile the pipelines to YAML, or check the committed YAML is current.

Writes the CPU and GPU pipelines (:mod:`kftune.pipelines.build`) as KFP pipeline packages to
``--out`` (default: the package's ``pipelines/compiled/``, the files to upload in the KFP UI) and,
in a source checkout (or with ``--manifests DIR``), as ``Pipeline`` + ``PipelineVersion`` manifests to
``manifests/base/pipeline/``.

``--check`` compiles into a temporary directory and compares with those files, ignoring the
``sdkVersion`` line; on any difference (or a missing file) it prints a unified diff and exits 1.
A test runs it, so a change to a component or to the DAG without recompiling fails the build.

Images: ``--registry`` (else ``$KFTUNE_IMAGE_REGISTRY``, else ``ghcr.io/kftune``) names where the
kftune images are; the committed files use the default.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from kftune.steps._common import EXIT_FAILURE, EXIT_OK, add_common_arguments, run_main

#: The repository's manifests folder for the pipelines, relative to the repository root.
MANIFESTS_SUBDIR = Path("manifests") / "base" / "pipeline"


def default_out() -> Path:
    """Where the committed pipeline packages are: ``kftune.pipelines.COMPILED_DIR``."""
    from kftune.pipelines import COMPILED_DIR

    return COMPILED_DIR


def default_manifests() -> Path | None:
    """``<repo>/manifests/base/pipeline`` when the package runs from a source checkout, else ``None``."""
    repo = default_out().parent.parent
    if (repo / "pyproject.toml").is_file() and (repo / "manifests").is_dir():
        return repo / MANIFESTS_SUBDIR
    return None


def diff_trees(expected_dir: Path, actual_dir: Path, names: Sequence[str], label: str) -> list[str]:
    """Unified-diff lines between ``expected_dir/name`` (freshly compiled) and ``actual_dir/name``
    (committed) for each name, ignoring ``sdkVersion`` lines; empty when they agree."""
    from kftune.pipelines.build import strip_sdk_version

    out: list[str] = []
    for name in names:
        new = strip_sdk_version((expected_dir / name).read_text(encoding="utf-8")).splitlines(keepends=True)
        committed_path = actual_dir / name
        old = (strip_sdk_version(committed_path.read_text(encoding="utf-8")).splitlines(keepends=True)
               if committed_path.is_file() else [])
        if new != old:
            if not committed_path.is_file():
                out.append(f"missing: {committed_path} (run `kftune compile`)\n")
            out.extend(difflib.unified_diff(old, new, f"{label}/{name} (committed)", f"{label}/{name} (compiled now)"))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kftune compile",
        description="Compile the kftune pipelines (CPU and GPU) to KFP YAML and Pipeline/PipelineVersion manifests; "
                    "--check fails (exit 1, with a diff) when the committed files differ from a fresh compile.")
    p.add_argument("--out", type=Path, help="folder for the pipeline packages (default: pipelines/compiled/)")
    p.add_argument("--manifests", type=Path,
                   help=f"folder for the Kubernetes manifests (default: {MANIFESTS_SUBDIR} in a source checkout)")
    p.add_argument("--no-manifests", action="store_true", help="do not write or check the manifests")
    p.add_argument("--rounds", type=int,
                   help="search rounds of the compiled pipelines (default: as many as the committed ones have)")
    p.add_argument("--registry", help="image registry (default $KFTUNE_IMAGE_REGISTRY, else ghcr.io/kftune)")
    p.add_argument("--check", action="store_true",
                   help="compile to a temporary folder and compare with the files in place (ignoring sdkVersion)")
    add_common_arguments(p)
    return p


def _body(args: argparse.Namespace) -> int:
    from kftune.pipelines.build import FILES, KUSTOMIZATION, compile_all
    from kftune.pipelines.pipeline import DEFAULT_SEARCH_ROUNDS

    out = args.out or default_out()
    manifests = None if args.no_manifests else (args.manifests or default_manifests())
    rounds = args.rounds if args.rounds is not None else DEFAULT_SEARCH_ROUNDS
    if rounds < 1:
        print("kftune compile: --rounds must be at least 1", file=sys.stderr)
        return 2
    if not args.check:
        for path in compile_all(out, manifests, search_rounds=rounds, registry=args.registry):
            print(f"wrote {path}")
        return EXIT_OK
    with tempfile.TemporaryDirectory(prefix="kftune-compile-") as tmp:
        fresh_pipelines = Path(tmp) / "pipelines"
        fresh_manifests = Path(tmp) / "manifests" if manifests is not None else None
        compile_all(fresh_pipelines, fresh_manifests, search_rounds=rounds, registry=args.registry)
        lines = diff_trees(fresh_pipelines, out, list(FILES.values()), str(out))
        if manifests is not None and fresh_manifests is not None:
            lines += diff_trees(fresh_manifests, manifests, [*FILES.values(), KUSTOMIZATION], str(manifests))
    if lines:
        sys.stdout.writelines(lines)
        print("kftune compile --check: the committed pipelines differ from a fresh compile; run `kftune compile` "
              "and commit the result", file=sys.stderr)
        return EXIT_FAILURE
    checked = f"{out}" + (f" and {manifests}" if manifests is not None else "")
    print(f"kftune compile --check: {checked} are up to date")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
