#!/usr/bin/env bash
# Build (and optionally push) the kftune images, tagged from the package version.
#
#   images/build.sh                      # build all four: <registry>/kftune:<version>-{cpu,cuda}
#                                        #   and <registry>/kftune-serving:<version>-{cpu,cuda}
#   images/build.sh --kind cpu --push    # build the CPU images and push them
#   images/build.sh --target serving     # only the model-server images (kftune-serving)
#   images/build.sh --print              # only print the image references it would build
#   images/build.sh -- --build-arg TORCH_VERSION=2.13.0   # anything after -- goes to the builder
#
# The version comes from components/kftune/_version.py (the single source of truth); the registry
# from --registry, else $KFTUNE_IMAGE_REGISTRY, else ghcr.io/kftune: exactly what
# kftune._image.image() computes in Python. The builder is --builder, else $CONTAINER_BUILDER, else
# docker when it is installed, else podman. There is no `latest` tag.
set -euo pipefail

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
options:
  --kind cpu|cuda|all   which kind(s) to build: CPU, CUDA or both (default: all)
  --target runtime|serving|all
                        which image(s) of each kind: runtime (kftune, the pipeline steps and
                        trials), serving (kftune-serving, the model server) or both (default: all)
  --registry REGISTRY   registry and path, e.g. ghcr.io/kftune or localhost:5000 (default: see above)
  --builder docker|podman
  --push                push each image after building it
  --print               print the image references and exit (nothing is built)
  --dry-run             print the build and push commands instead of running them
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION_FILE="$ROOT/components/kftune/_version.py"

KIND=all
TARGET=all
REGISTRY="${KFTUNE_IMAGE_REGISTRY:-}"
BUILDER="${CONTAINER_BUILDER:-}"
PUSH=0
PRINT=0
DRY_RUN=0
EXTRA=()

while [ $# -gt 0 ]; do
    case "$1" in
        --kind) KIND="${2:?--kind needs cpu, cuda or all}"; shift 2 ;;
        --target) TARGET="${2:?--target needs runtime, serving or all}"; shift 2 ;;
        --registry) REGISTRY="${2:?--registry needs a value}"; shift 2 ;;
        --builder) BUILDER="${2:?--builder needs docker or podman}"; shift 2 ;;
        --push) PUSH=1; shift ;;
        --print) PRINT=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "build.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done

VERSION="$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$VERSION_FILE")"
if [ -z "$VERSION" ]; then
    echo "build.sh: no __version__ = \"...\" line in $VERSION_FILE" >&2
    exit 1
fi
# A Docker tag holds [A-Za-z0-9_.-]; anything else becomes '-' (as in kftune._image.version_tag).
TAG_VERSION="${VERSION//[^A-Za-z0-9_.-]/-}"

REGISTRY="${REGISTRY:-ghcr.io/kftune}"
REGISTRY="${REGISTRY%/}"

case "$KIND" in
    all) KINDS=(cpu cuda) ;;
    cpu|cuda) KINDS=("$KIND") ;;
    *) echo "build.sh: --kind must be cpu, cuda or all, not '$KIND'" >&2; exit 2 ;;
esac

case "$TARGET" in
    all) TARGETS=(runtime serving) ;;
    runtime|serving) TARGETS=("$TARGET") ;;
    *) echo "build.sh: --target must be runtime, serving or all, not '$TARGET'" >&2; exit 2 ;;
esac

# The repository of each Dockerfile target (as kftune._image.image_name does).
image_ref() {
    local name=kftune
    if [ "$2" = serving ]; then name=kftune-serving; fi
    echo "$REGISTRY/$name:$TAG_VERSION-$1"
}

if [ "$PRINT" = 1 ]; then
    for kind in "${KINDS[@]}"; do
        for target in "${TARGETS[@]}"; do image_ref "$kind" "$target"; done
    done
    exit 0
fi

if [ -z "$BUILDER" ]; then
    if command -v docker >/dev/null 2>&1; then BUILDER=docker
    elif command -v podman >/dev/null 2>&1; then BUILDER=podman
    else
        echo "build.sh: neither docker nor podman found; install one or pass --builder" >&2
        exit 1
    fi
fi
case "$BUILDER" in
    docker|podman) ;;
    *) echo "build.sh: --builder must be docker or podman, not '$BUILDER'" >&2; exit 2 ;;
esac

run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '%q ' "$@"; echo
    else
        "$@"
    fi
}

# Runtime before serving: the serving target starts from the runtime stage, which the builder's
# cache then holds already.
for kind in "${KINDS[@]}"; do
    for target in "${TARGETS[@]}"; do
        ref="$(image_ref "$kind" "$target")"
        echo "build.sh: building $ref (kftune $VERSION, target $target) with $BUILDER" >&2
        run "$BUILDER" build \
            --file "$ROOT/images/$kind.Dockerfile" \
            --target "$target" \
            --build-arg "KFTUNE_VERSION=$VERSION" \
            --tag "$ref" \
            "${EXTRA[@]}" \
            "$ROOT"
        if [ "$PUSH" = 1 ]; then
            run "$BUILDER" push "$ref"
        fi
    done
done
