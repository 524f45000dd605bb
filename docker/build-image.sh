#!/usr/bin/env bash
# Build the feda2v image with docker or podman: `make image` (FLAVOUR=cpu|cuda, IMAGE=name).
#
# - Engine: $ENGINE, else docker when its daemon answers, else podman (with
#   docker/podman-containers.conf unless CONTAINERS_CONF is set: the settings podman needs as
#   root on machines without CAP_SYS_RESOURCE or with hybrid cgroups).
# - Base: the Dockerfile's PYTHON_IMAGE, pulled; when it cannot be pulled (no registry access),
#   a Debian bookworm base (Python 3.11, as both Dockerfiles' torch wheels are cp311) made with
#   mmdebstrap from the Debian mirror and imported once as localhost/feda2v-base:bookworm (both
#   flavours: the two images stay twins).
# - pip inputs: a torch wheel of the pin and of the flavour's build (+cpu, or the CUDA
#   Dockerfile's TORCH_CUDA, e.g. +cu126) that pip finds locally ($PIP_FIND_LINKS) and the CA
#   bundle pip uses ($PIP_CERT) go to docker/build-extras/ (builder stage only); with a local
#   wheel and PyTorch's index out of reach, torch's own dependencies come from PyPI instead of
#   retrying that index.
# - CUDA torch without PyTorch's index and without a local wheel: PyPI's default Linux torch,
#   itself a CUDA build (CUDA 13.0 for torch 2.13: $PYPI_TORCH_CUDA / $PYPI_TORCH_CUDA_VERSION;
#   the Dockerfile's version check fails the build if PyPI's build is another one). Such an image
#   needs NVIDIA drivers >= 580, and its NVIDIA_REQUIRE_CUDA says so.
# - Commit: $FEDA2V_GIT_COMMIT, else this checkout's HEAD (-dirty with uncommitted changes to
#   what the image copies), baked into the image for MLflow's git-commit tag.
# Prints the build time and the image size.
set -euo pipefail
cd "$(dirname "$0")/.."

FLAVOUR=${FLAVOUR:-cpu}
IMAGE=${IMAGE:-feda2v:${FLAVOUR}}
DOCKERFILE=docker/Dockerfile.${FLAVOUR}
TORCH_PIN=${TORCH_PIN:-$(sed -n 's/^TORCH_PIN *:*= *//p' Makefile)}
BASE_LOCAL=localhost/feda2v-base:bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# PyPI's default (unlabelled) Linux x86_64 torch of the pin is this CUDA build; change with the pin.
PYPI_TORCH_CUDA=${PYPI_TORCH_CUDA:-cu130}
PYPI_TORCH_CUDA_VERSION=${PYPI_TORCH_CUDA_VERSION:-13.0}

if [ -z "${ENGINE:-}" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
fi
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
  export CONTAINERS_CONF=$PWD/docker/podman-containers.conf
fi
command -v "$ENGINE" >/dev/null || { echo "build-image: neither a docker daemon nor podman found" >&2; exit 2; }

args=()
# Both flavours: the CUDA image is the CPU image's twin on the same base (its CUDA libraries are
# torch's nvidia-* wheels, the driver comes from the node).
if [ "$FLAVOUR" = cpu ] || [ "$FLAVOUR" = cuda ]; then
  base=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$DOCKERFILE" | head -1)
  if ! "$ENGINE" image inspect "$base" >/dev/null 2>&1 && ! timeout 60 "$ENGINE" pull -q "$base" >/dev/null 2>&1; then
    if ! "$ENGINE" image inspect "$BASE_LOCAL" >/dev/null 2>&1; then
      command -v mmdebstrap >/dev/null || { echo "build-image: cannot pull $base and mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 2; }
      echo "build-image: $base cannot be pulled; building $BASE_LOCAL with mmdebstrap"
      tar=$(mktemp --suffix=.tar)
      mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
        bookworm "$tar" "$DEBIAN_MIRROR"
      "$ENGINE" import "$tar" "$BASE_LOCAL" >/dev/null
      rm -f "$tar"
    fi
    base=$BASE_LOCAL
  fi
  args+=(--build-arg "PYTHON_IMAGE=$base")
fi

# pip inputs from this machine (builder stage only).
extras=docker/build-extras
find "$extras" -mindepth 1 ! -name README.md -delete
mkdir -p "$extras/wheels"
cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
[ -n "$cert" ] && [ -s "$cert" ] && cp "$cert" "$extras/ca-certificates.crt"
version=${TORCH_PIN#torch==}
# Only wheels of this flavour's build: the host's +cpu wheel never reaches the CUDA image.
build=cpu
[ "$FLAVOUR" = cuda ] && build=$(sed -n 's/^ARG TORCH_CUDA=//p' "$DOCKERFILE" | head -1)
for dir in ${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true); do
  for wheel in "$dir"/torch-"$version"+"$build"-*.whl; do
    [ -f "$wheel" ] && cp "$wheel" "$extras/wheels/"
  done
done
if ! timeout 10 python3 -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/', timeout=8)" 2>/dev/null; then
  if ls "$extras"/wheels/torch-*.whl >/dev/null 2>&1; then
    echo "build-image: PyTorch's index is out of reach; torch from $(ls "$extras"/wheels), its dependencies from PyPI"
    args+=(--build-arg "TORCH_INDEX_URL=https://pypi.org/simple")
  elif [ "$FLAVOUR" = cuda ]; then
    echo "build-image: PyTorch's index is out of reach; torch $version from PyPI, its default" \
         "Linux build: +$PYPI_TORCH_CUDA (CUDA $PYPI_TORCH_CUDA_VERSION; drivers: docker/README.md)"
    args+=(--build-arg "TORCH_INDEX_URL=https://pypi.org/simple" --build-arg "TORCH_LOCAL="
           --build-arg "TORCH_CUDA=$PYPI_TORCH_CUDA"
           --build-arg "TORCH_CUDA_VERSION=$PYPI_TORCH_CUDA_VERSION")
  fi
fi

# The commit the image reports (FEDA2V_GIT_COMMIT in it, MLflow's git-commit tag of its runs).
commit=${FEDA2V_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || true)}
if [ -n "$commit" ] && [ -z "${FEDA2V_GIT_COMMIT:-}" ] && \
   [ -n "$(git status --porcelain -- "$DOCKERFILE" docker/constraints.txt pyproject.toml README.md feda2v components pipelines 2>/dev/null)" ]; then
  commit=$commit-dirty
fi
args+=(--build-arg "FEDA2V_GIT_COMMIT=$commit")

start=$(date +%s)
"$ENGINE" build --network=host -f "$DOCKERFILE" "${args[@]}" -t "$IMAGE" .
seconds=$(( $(date +%s) - start ))
size=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
echo "image: $IMAGE built in ${seconds} s, ${size} bytes, commit ${commit:-unknown}"
