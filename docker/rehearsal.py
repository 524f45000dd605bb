"""`make rehearsal`: the cluster path on one machine, with nothing shared between the tasks but
an S3 server and an MLflow server over HTTP, as pods on a cluster share them.

1. SeaweedFS (S3) and MLflow with basic auth start on 127.0.0.1 (tests/s3server.py,
   tests/mlflowserver.py); a pipeline user is created on MLflow.
2. The demo data and the tiny models go to the bucket with the documented commands
   (`feda2v data push`, `feda2v models push`).
3. A config shaped like configs/cluster.json (storage, data and models on s3://, tracking from
   the environment) is compiled by `feda2v compile --image IMAGE`, exactly as for a cluster.
4. That YAML runs under kfp.local's DockerRunner over podman: every task in the image, the
   credentials only in the task environment (what the Secret feda2v-s3 and the ConfigMap
   feda2v-config give a pod), no host folder mounted but kfp.local's pipeline root.
5. Checks: the MLflow run FINISHED over HTTP with the model logged; checkpoints, samples and
   the report in the bucket; no secret in any log, task command, file or object.

Usage: python docker/rehearsal.py IMAGE (DOCKER_HOST pointing at podman's Docker API).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
BUCKET, PREFIX = "feda2v", "runs"
# The pod environment: Secret feda2v-s3 (keys, MLflow user) + ConfigMap feda2v-config.
POD_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL",
                "AWS_DEFAULT_REGION")


_START = time.monotonic()


def say(text: str) -> None:
    print(f"rehearsal: [{time.monotonic() - _START:4.0f} s] {text}", flush=True)


def feda2v(*args: str, env: dict, log: Path) -> str:
    """Run the CLI as a user types it; its output goes to `log`, and is returned."""
    cmd = [str(Path(sys.executable).parent / "feda2v"), *args]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, cwd=ROOT)
    with open(log, "a") as f:
        f.write(f"$ feda2v {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode:
        raise SystemExit(f"rehearsal: `feda2v {' '.join(args)}` failed:\n{proc.stdout}"
                         f"{proc.stderr}")
    return proc.stdout + proc.stderr


def create_mlflow_user(uri: str, admin: tuple[str, str], user: tuple[str, str]) -> None:
    """The pipeline's MLflow user, created by the admin as an operator would."""
    body = json.dumps({"username": user[0], "password": user[1]}).encode()
    auth = base64.b64encode(f"{admin[0]}:{admin[1]}".encode()).decode()
    req = urllib.request.Request(f"{uri}/api/2.0/mlflow/users/create", data=body, method="POST",
                                 headers={"Authorization": f"Basic {auth}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30):
        pass


def cluster_shaped_config(models: dict) -> dict:
    """configs/cluster.json with the tiny models and a budget that fits CI: the cluster's
    shape (everything on s3://, tracking from the environment), the demo's sizes."""
    cfg = json.loads((ROOT / "configs" / "cluster.json").read_text())
    demo = json.loads((ROOT / "configs" / "demo.json").read_text())
    cfg.update(global_rounds=2, batch_size=16, local_epochs=2,
               storage_root=f"s3://{BUCKET}/{PREFIX}", experiment_name="feda2v-rehearsal")
    cfg["data"].update(dataset_uri=f"s3://{BUCKET}/data/ESC-50", clip_seconds=1.0)
    cfg["models"] = {"audio_model": models["audio"], "text_model": models["text"],
                     "device": "cpu", "extract_batch_size": 16, "extract_workers": 0}
    cfg["feda2v"] = dict(demo["feda2v"], generator_training_rounds=2,
                         generator_training_epochs=5, generator_save_every=2)
    return cfg


def run_yaml(package: Path, image: str, pipeline_root: Path, log: Path, env: dict) -> None:
    """This script again, in a process whose environment holds only what a pod's would (plus
    DOCKER_HOST), running the YAML under kfp.local; its output goes to `log` and the screen."""
    cmd = [sys.executable, __file__, "--run", str(package), image, str(pipeline_root)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=ROOT)
        for line in proc.stdout:
            out.write(line)
            text = line.decode(errors="replace")
            if "Task '" in text or "finished with status" in text or "rehearsal" in text:
                print("  " + text.rstrip(), flush=True)
        code = proc.wait()
    if code:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"rehearsal: the pipeline failed (exit {code}); last lines of {log}:\n"
                         f"{tail}")


def _run_in_kfp_local(package: str, image: str, pipeline_root: str) -> None:
    """The child: kfp.local's DockerRunner with the pod environment, host networking (the
    servers are on 127.0.0.1) and no mount but the pipeline root (DockerRunner's own)."""
    from kfp import components, local

    from feda2v import patches
    from feda2v.localrun import docker

    env = {k: os.environ[k] for k in POD_ENV_KEYS}
    commands: list[list[str]] = []

    def counted(client, image, command, volumes, **kwargs):
        commands.append(list(command))
        mounts = sorted(volumes) + [m["Source"] for m in kwargs.get("mounts") or []]
        outside = [m for m in mounts if os.path.commonpath([m, pipeline_root]) != pipeline_root]
        assert not outside, f"a task would mount {outside}, outside the pipeline root"
        return docker.run_container(client, image, command, volumes, **kwargs)

    patches.kfp_local_container_runner(counted)
    local.init(runner=local.DockerRunner(environment=env, network_mode="host",
                                         user=f"{os.getuid()}:{os.getgid()}"),
               pipeline_root=pipeline_root, raise_on_error=True,
               # kfp.local mounts a workspace too: keep it inside the pipeline root
               workspace_root=os.path.join(pipeline_root, "workspace"))
    components.load_component_from_file(package)()
    with open(os.path.join(pipeline_root, "task-commands.json"), "w") as f:
        json.dump(commands, f)
    print(f"rehearsal: kfp.local ran {len(commands)} task containers", flush=True)


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"rehearsal: FAILED: {what}")


def main(image: str) -> None:
    from mlflowserver import ADMIN, run_mlflow_auth_server
    from s3server import seaweedfs

    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="feda2v-rehearsal-"))
    (work / "s3").mkdir()
    (work / "mlflow").mkdir()
    log = work / "commands.log"
    admin = (ADMIN[0], secrets.token_hex(16))
    user = ("feda2v-pipeline", secrets.token_hex(16))
    try:
        with seaweedfs(work / "s3") as s3, run_mlflow_auth_server(work / "mlflow", admin) as uri:
            say(f"S3 at {s3.endpoint_url}, MLflow (basic auth) at {uri}")
            create_mlflow_user(uri, admin, user)
            s3.filesystem().mkdir(BUCKET)
            clean = {k: v for k, v in os.environ.items()
                     if not k.startswith(("AWS_", "MLFLOW_", "FEDA2V_"))}
            # The user's machine: S3 keys and the tracking server in the environment.
            user_env = dict(clean, **s3.env(), MLFLOW_TRACKING_URI=uri,
                            MLFLOW_TRACKING_USERNAME=user[0], MLFLOW_TRACKING_PASSWORD=user[1])
            feda2v("data", "demo", "--out", str(work / "ESC-50"), "--clips-per-class", "8",
                   env=clean, log=log)
            feda2v("-q", "data", "push", str(work / "ESC-50"), f"s3://{BUCKET}/data/ESC-50",
                   env=user_env, log=log)
            feda2v("models", "tiny", "--out", str(work / "models"), env=clean, log=log)
            models = {}
            for name in ("audio", "text"):
                models[name] = f"s3://{BUCKET}/models/tiny-{name}/"
                feda2v("-q", "models", "push", str(work / "models" / name), models[name],
                       env=user_env, log=log)
            say("demo data and tiny models are in the bucket")

            config = work / "rehearsal.json"
            config.write_text(json.dumps(cluster_shaped_config(models), indent=2))
            package = work / "feda2v.yaml"
            # As for a cluster, but retries off: a failure should end the rehearsal at once.
            out = feda2v("compile", "--config", str(config), "--image", image, "--output",
                         str(package), "--retries", "0", env=user_env, log=log)
            say(out.strip().splitlines()[0])

            pod_env = dict(clean, **s3.env(), MLFLOW_TRACKING_URI=uri,
                           MLFLOW_TRACKING_USERNAME=user[0], MLFLOW_TRACKING_PASSWORD=user[1])
            pipeline_root = work / "kfp-root"
            pipeline_root.mkdir()
            run_yaml(package, image, pipeline_root, work / "pipeline.log", pod_env)

            tasks = verify(s3, uri, user, work, package, pipeline_root,
                           secrets_=(s3.secret_key, user[1], admin[1]))
        seconds = time.monotonic() - start
        print(f"rehearsal: {tasks} tasks in {image}, storage s3://{BUCKET}/{PREFIX}, "
              f"tracking {uri}: FINISHED in {seconds:.0f} s", flush=True)
    finally:
        if os.environ.get("FEDA2V_REHEARSAL_KEEP"):
            print(f"rehearsal: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def verify(s3, uri: str, user: tuple[str, str], work: Path, package: Path,
           pipeline_root: Path, secrets_: tuple[str, ...]) -> int:
    """What must exist after a finished run, and what must not exist anywhere."""
    from mlflow.tracking import MlflowClient

    os.environ.update(MLFLOW_TRACKING_USERNAME=user[0], MLFLOW_TRACKING_PASSWORD=user[1])
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("feda2v-rehearsal")
    check(exp is not None, "no MLflow experiment feda2v-rehearsal on the server")
    runs = client.search_runs([exp.experiment_id])
    check(len(runs) == 1, f"{len(runs)} MLflow runs, expected 1")
    run = runs[0]
    check(run.info.status == "FINISHED", f"the MLflow run is {run.info.status}")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    check({"model", "report"} <= artifacts, f"the MLflow run's artifacts are {artifacts}")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/global_accuracy")]
    check(steps == [1, 2, 3, 4], f"eval/global_accuracy steps {steps}")
    say(f"MLflow run {run.info.run_id} FINISHED over HTTP, artifacts {sorted(artifacts)}")

    fs = s3.filesystem()
    objects = fs.find(f"{BUCKET}/{PREFIX}")
    names = {o.rsplit("/", 1)[-1] for o in objects}
    want = {f"client_{i}_generator{s}.pt" for i in range(3) for s in ("", "_round_2")}
    check(want <= names, f"seed-named checkpoints missing from the bucket: {want - names}")
    samples = [o for o in objects if "synthetic" in o]
    check(len(samples) >= 3, f"synthetic samples in the bucket: {samples}")
    reports = [o for o in objects if o.rsplit("/", 1)[-1].startswith("report")]
    check(bool(reports), "no report in the bucket")
    say(f"{len(objects)} objects under s3://{BUCKET}/{PREFIX}: checkpoints, "
        f"{len(samples)} sample files, {reports[0].rsplit('/', 1)[-1]}")

    # No secret anywhere: logs, task commands, the YAML, files, objects, MLflow params.
    commands = json.loads((pipeline_root / "task-commands.json").read_text())
    places = {"task commands": json.dumps(commands), "the compiled YAML": package.read_text()}
    for path in [*work.glob("*.log"), *pipeline_root.rglob("*")]:
        if path.is_file():
            places[str(path)] = path.read_bytes().decode(errors="replace")
    for obj in fs.find(BUCKET):
        places[f"s3://{obj}"] = fs.cat_file(obj).decode(errors="replace")
    places["MLflow params"] = json.dumps(run.data.params) + json.dumps(run.data.tags)
    for secret in secrets_:
        leaks = [where for where, text in places.items() if secret in text]
        check(not leaks, f"a secret appears in {leaks}")
    say(f"no secret in {len(places)} logs, commands, files and objects")
    return len(commands)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run"]:
        _run_in_kfp_local(*sys.argv[2:5])
    else:
        main(sys.argv[1])
