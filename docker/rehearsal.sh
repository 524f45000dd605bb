#!/usr/bin/env bash
# `make rehearsal`: the cluster path rehearsed on one machine (docker/rehearsal.py says what it
# does and checks). Reuses the CPU image `make test-images` built (docker/cpu-image.sh builds it
# when its inputs changed), serves podman's Docker API for kfp.local's DockerRunner, and stops
# what it started. Its last line:
#   rehearsal: N tasks in IMAGE, storage s3://BUCKET/PREFIX, tracking http://HOST:PORT: FINISHED in S s
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

IMAGE=$(docker/cpu-image.sh | tail -1)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/podman-containers.conf}

sock_dir=$(mktemp -d /tmp/feda2v-rehearsal-sock-XXXXXX)
svc=""
cleanup() {
  [ -n "$svc" ] && kill "$svc" 2>/dev/null && wait "$svc" 2>/dev/null || true
  rm -rf "$sock_dir"
}
trap cleanup EXIT
podman system service --time=0 "unix://$sock_dir/podman.sock" & svc=$!
for _ in $(seq 100); do [ -S "$sock_dir/podman.sock" ] && break; sleep 0.1; done

DOCKER_HOST=unix://$sock_dir/podman.sock "$PY" docker/rehearsal.py "$IMAGE"
