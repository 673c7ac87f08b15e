# kftune, CPU image: Python 3.11 (Debian slim), torch from the PyTorch CPU wheel index, the kftune wheel.
#
# Build it with images/build.sh, which passes KFTUNE_VERSION (read from components/kftune/_version.py)
# and tags the result <registry>/kftune:<version>-cpu. By hand, from the repository root:
#
#   docker build -f images/cpu.Dockerfile --build-arg KFTUNE_VERSION=<version> \
#       -t ghcr.io/kftune/kftune:<version>-cpu .
#
# The build fails when KFTUNE_VERSION differs from the version inside the wheel, so a tag can never
# name a different release than the one it contains.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: the kftune wheel (pure Python). Nothing of this stage reaches the final image. --------
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
# The context is filtered by the repository's .dockerignore (an allow-list: pyproject.toml, README.md,
# components/, pipelines/).
COPY . .
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- final: runtime only (no compiler, no build backend, no sources) ---------------------------------
FROM ${PYTHON_IMAGE}
ARG KFTUNE_VERSION
# The CPU build of torch: the default PyPI wheel would pull in several GiB of CUDA libraries.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

LABEL org.opencontainers.image.title="kftune" \
      org.opencontainers.image.description="Tune PyTorch NLP models as Kubeflow Pipelines (CPU image)" \
      org.opencontainers.image.version="${KFTUNE_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# Install the wheel from the builder stage. (COPY rather than `RUN --mount=type=bind,from=builder`: older
# buildah/podman releases cannot bind-mount a stage, and newer ones may reuse a stale cached layer.)
# The constraint keeps the torch installed above: kftune's dependencies must not replace it.
# --use-pep517: a dependency published only as an sdist (seqeval) is built in an isolated
# environment, whatever setuptools the base image has (no compiler needed: it is pure Python).
# Then check that the tag's version is the wheel's version and that the dependencies are consistent.
COPY --from=builder /wheels/ /tmp/wheels/
RUN if [ -z "${KFTUNE_VERSION}" ]; then \
        echo "pass --build-arg KFTUNE_VERSION=<version> (images/build.sh does)" >&2; exit 1; \
    fi \
    && python -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' > /tmp/torch-constraint.txt \
    && python -m pip install --use-pep517 --constraint /tmp/torch-constraint.txt "$(echo /tmp/wheels/kftune-*.whl)[korean,subword]" \
    && rm -r /tmp/torch-constraint.txt /tmp/wheels \
    && python -m pip check \
    && installed="$(kftune --version)" \
    && if [ "${installed}" != "kftune ${KFTUNE_VERSION}" ]; then \
        echo "the wheel says '${installed}', the tag says ${KFTUNE_VERSION}" >&2; exit 1; \
    fi

RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin kftune
USER 10001:10001
WORKDIR /home/kftune

ENTRYPOINT ["kftune"]
CMD ["--help"]
