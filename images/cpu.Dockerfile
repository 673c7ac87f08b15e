# kftune, CPU images: Python 3.11 (Debian slim), torch from the PyTorch CPU wheel index, the kftune wheel.
#
# Two targets: `runtime` (the default) is the kftune image that runs the pipeline steps and Katib
# trials; `serving` adds the `serve` extra (KServe) and runs the model server (`kftune serve`).
# Build them with images/build.sh, which passes KFTUNE_VERSION (read from components/kftune/_version.py)
# and tags them <registry>/kftune:<version>-cpu and <registry>/kftune-serving:<version>-cpu. By hand,
# from the repository root:
#
#   docker build -f images/cpu.Dockerfile --build-arg KFTUNE_VERSION=<version> --target runtime \
#       -t ghcr.io/kftune/kftune:<version>-cpu .
#   docker build -f images/cpu.Dockerfile --build-arg KFTUNE_VERSION=<version> --target serving \
#       -t ghcr.io/kftune/kftune-serving:<version>-cpu .
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

# ---- runtime: the kftune image; runtime only (no compiler, no build backend, no sources) -------------
FROM ${PYTHON_IMAGE} AS runtime
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
    && python -m pip install --use-pep517 --constraint /tmp/torch-constraint.txt "$(echo /tmp/wheels/kftune-*.whl)[korean,subword,transformers]" \
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

# ---- serving: the runtime plus the `serve` extra (KServe's model server), running `kftune serve` ------
# KServe runs it as an InferenceService's predictor container: its storage initializer downloads the
# storageUri (e.g. s3://kftune/tuning/runs/<run>/final/model.pt) into /mnt/models first. The default
# command serves what is there on 0.0.0.0:8080 (the InferenceService passes its own arguments).
FROM runtime AS serving
ARG KFTUNE_VERSION

LABEL org.opencontainers.image.title="kftune-serving" \
      org.opencontainers.image.description="Serve a model tuned by kftune over HTTP: KServe V1/V2 protocols and POST /predict (CPU image)" \
      org.opencontainers.image.version="${KFTUNE_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# The same wheel again, now with the serve extra: kftune itself is already installed (pip keeps it), so
# this adds KServe and its dependencies, with torch pinned as above. Then check the server starts.
USER 0:0
COPY --from=builder /wheels/ /tmp/wheels/
RUN python -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' > /tmp/torch-constraint.txt \
    && python -m pip install --use-pep517 --constraint /tmp/torch-constraint.txt "$(echo /tmp/wheels/kftune-*.whl)[korean,subword,transformers,serve]" \
    && rm -r /tmp/torch-constraint.txt /tmp/wheels \
    && python -m pip check \
    && kftune serve --help > /dev/null

USER 10001:10001
WORKDIR /home/kftune
EXPOSE 8080

ENTRYPOINT ["kftune", "serve"]
CMD ["--model", "/mnt/models", "--host", "0.0.0.0", "--port", "8080"]

# ---- the default target: the kftune image (what a build without --target makes) ---------------------
FROM runtime
