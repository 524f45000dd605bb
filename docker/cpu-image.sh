#!/usr/bin/env bash
# The CPU image of this checkout, built once and reused while its inputs are unchanged (keyed by
# everything its build reads): `make test-images` and `make rehearsal` run the same image.
# Installs podman, mmdebstrap and runc when missing (CI machines start fresh, as root). Keeps one
# such image: building a new one removes the others and their builder stages.
# Prints the image's name as its last line; FEDA2V_CPU_BUILD_S=<seconds> before it (0: reused).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v runc >/dev/null; then
  echo "cpu-image: installing podman, mmdebstrap and runc" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q podman mmdebstrap runc >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q podman mmdebstrap runc >/dev/null; }
fi
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/podman-containers.conf}

key=$(find docker/Dockerfile.cpu pyproject.toml README.md feda2v components pipelines \
        -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z \
      | xargs -0 sha256sum | sha256sum | cut -c1-12)
IMAGE=localhost/feda2v:cpu-$key
build_s=0
if podman image exists "$IMAGE"; then
  echo "cpu-image: reusing $IMAGE (its inputs have not changed)" >&2
else
  # Earlier builds' images (another key) and their untagged builder stages go first: about
  # 4.6 GB a build, and a CI machine keeps podman's store from one run to the next (a store full
  # of them once failed a build with "no space left on device"). This build starts uncached.
  for old in $(podman images --format '{{.Repository}}:{{.Tag}}' --filter 'reference=localhost/feda2v:cpu-*'); do
    podman rmi "$old" >/dev/null || echo "cpu-image: could not remove $old (in use?)" >&2
  done
  podman image prune -f --filter label=org.feda2v.stage=builder >/dev/null
  start=$(date +%s)
  ENGINE=podman FLAVOUR=cpu IMAGE=$IMAGE TORCH_PIN=${TORCH_PIN:-} docker/build-image.sh >&2
  build_s=$(( $(date +%s) - start ))
fi
echo "FEDA2V_CPU_BUILD_S=$build_s"
echo "$IMAGE"
