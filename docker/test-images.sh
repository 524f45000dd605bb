#!/usr/bin/env bash
# `make test-images`: the CPU image, built (or reused) and run for real with podman.
#   1. build it, unless an image of the same inputs exists;
#   2. `--help`, a `sh -c` pass-through and real stages (`data demo`, `models tiny`, `extract`)
#      with `podman run` on a volume;
#   3. the demo pipeline with every task in the image: `feda2v run --runner docker` through
#      kfp.local's DockerRunner over podman's Docker API (`podman system service`).
# Asserts on what the run must write (kfp.local can report a failed container as SUCCESS under
# podman): seed-named checkpoints, MLflow metrics, the report. Installs podman, mmdebstrap and
# runc when missing (CI machines start fresh; run as root there), stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

# 1. The image, keyed by everything its build reads (docker/cpu-image.sh).
out=$(docker/cpu-image.sh)
IMAGE=$(tail -1 <<<"$out")
build_s=$(sed -n 's/^FEDA2V_CPU_BUILD_S=//p' <<<"$out")
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/podman-containers.conf}
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
# One image of ours in the store: cpu-image.sh removes earlier builds (CI keeps the store).
kept=$(podman images --format '{{.Repository}}:{{.Tag}}' --filter 'reference=localhost/feda2v:cpu-*')
[ "$kept" = "$IMAGE" ] || { echo "test-images: earlier CPU images were kept: $kept" >&2; exit 1; }

work=$(mktemp -d /tmp/feda2v-images-XXXXXX)
svc=""
cleanup() {
  [ -n "$svc" ] && kill "$svc" 2>/dev/null && wait "$svc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# 2. Stages with `podman run`, as a user runs them: the image's user (uid 10001) must be able
# to write the mounted folder.
chown 10001 "$work"
run() { podman run --rm -v "$work:/work" "$IMAGE" "$@"; }
run --help | grep -q "usage: feda2v"
[ "$(run sh -c 'echo pass-through')" = pass-through ]
# The commit baked in at build time is what the image reports (and its runs tag in MLflow).
baked=$(podman image inspect --format '{{index .Labels "org.opencontainers.image.revision"}}' "$IMAGE")
[[ "$baked" =~ ^[0-9a-f]{7,40}(-dirty)?$ ]] || { echo "test-images: no commit baked into $IMAGE: '$baked'" >&2; exit 1; }
[ "$(run sh -c 'echo $FEDA2V_GIT_COMMIT')" = "$baked" ]
[ "$(run sh -c "python3 -c 'from feda2v.io.tracking import source_tags; print(source_tags()[\"mlflow.source.git.commit\"])'")" = "$baked" ]
run data demo --out /work/ESC-50 --clips-per-class 10 >/dev/null
run models tiny --out /work/models >/dev/null
cat > "$work/stage.json" <<EOF
{"storage_root": "/work/store", "data": {"dataset_uri": "/work/ESC-50", "clip_seconds": 1.0},
 "models": {"audio_model": "/work/models/audio", "text_model": "/work/models/text", "device": "cpu"}}
EOF
run extract --config /work/stage.json --client 0 >/dev/null
ls "$work"/store/embeddings/*/client_0.safetensors >/dev/null
echo "test-images: commit $baked, --help, sh -c, data demo, models tiny and extract ran in $IMAGE"

# 3. The demo pipeline, every task in the image.
sock=$work/podman.sock
podman system service --time=0 "unix://$sock" & svc=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
# The demo's paths moved under $work, and 3 + 3 rounds: the image must run the pipeline and give
# the host's numbers, which needs no converged budget.
$PY - "$work" <<'EOF' > "$work/demo.json"
import json, sys
work = sys.argv[1]
cfg = json.load(open("configs/demo.json"))
cfg.update(storage_root=f"{work}/run", global_rounds=3)
cfg["data"]["dataset_uri"] = f"{work}/ESC-50"
cfg["models"].update(audio_model=f"{work}/models/audio", text_model=f"{work}/models/text")
cfg["feda2v"].update(generator_training_rounds=3, generator_save_every=3)
print(json.dumps(cfg))
EOF
DOCKER_HOST=unix://$sock $PY -m feda2v.cli run --config "$work/demo.json" --runner docker \
  --image "$IMAGE" | tee "$work/run.log"
# The same run with every task a local process: the image must give the same numbers.
sed -e "s#$work/run#$work/host#" "$work/demo.json" > "$work/host.json"
$PY -m feda2v.cli run --config "$work/host.json" > "$work/host.log"

tasks=$($PY - "$work" <<'EOF'
import glob, json, os, sys
from mlflow.tracking import MlflowClient
work = sys.argv[1]
ckpts = sorted(os.path.basename(p) for p in glob.glob(f"{work}/run/checkpoints/generators/*.pt"))
want = [f"client_{i}_generator{s}.pt" for i in range(3) for s in ("", "_round_3")]
assert sorted(want) == ckpts, f"seed-named checkpoints missing: {ckpts}"
client = MlflowClient(f"sqlite:///{work}/run/mlflow.db")
exp = client.get_experiment_by_name("feda2v-demo")
run, = client.search_runs([exp.experiment_id])
assert run.info.status == "FINISHED", run.info.status
steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/global_accuracy")]
assert steps == [1, 2, 3, 4, 5, 6], steps
assert client.get_metric_history(run.info.run_id, "train/node_2/generator_loss")
assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model", "report"}
host = MlflowClient(f"sqlite:///{work}/host/mlflow.db")
exp_host = host.get_experiment_by_name("feda2v-demo")
host_run, = host.search_runs([exp_host.experiment_id])
for key in ("eval/global_accuracy", "train/node_0/generator_loss"):
    here = [round(m.value, 5) for m in client.get_metric_history(run.info.run_id, key)]
    there = [round(m.value, 5) for m in host.get_metric_history(host_run.info.run_id, key)]
    assert here == there, f"{key}: {here} in the image, {there} on the host"
outputs = glob.glob(f"{work}/run/kfp-local/*/**/executor_output.json", recursive=True)
print(len(outputs))
EOF
)
echo "images: $tasks tasks ran in $IMAGE (build $build_s s, size $size bytes)"
