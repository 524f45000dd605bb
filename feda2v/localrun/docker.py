"""`feda2v run --runner docker`: every task of the local run in our image, through kfp.local's
DockerRunner (podman's Docker API works too)."""

from __future__ import annotations

import os
import threading

from feda2v import patches
from feda2v.io import config as config_mod
from feda2v.io import owner, storage
from feda2v.io.config import Config
from feda2v.io.log import TAG, TAG_ENV


def docker_runner(cfg: Config, pipeline_root: str, run_id: str):
    """kfp.local's DockerRunner with what our image needs: the host user (files in the mounted
    folders stay the user's; the image's own user could not write a root-owned pipeline root),
    every local folder the config names mounted at the same path (DockerRunner mounts only the
    pipeline root), a writable HOME, the log tag, S3 and MLflow settings, and a label to find
    the run's containers when it is stopped."""
    from docker.types import Mount
    from kfp import local

    paths = {storage.local_path(cfg.storage_root)}
    if storage.is_local(cfg.data.dataset_uri):
        paths.add(storage.local_path(cfg.data.dataset_uri))
    for key in ("audio_model", "text_model", "image_model"):
        if os.path.isdir(getattr(cfg.models, key)):
            paths.add(os.path.abspath(getattr(cfg.models, key)))
    paths = {p for p in paths if os.path.exists(p) and not p.startswith(pipeline_root + os.sep)}
    env = {TAG_ENV: TAG, "HOME": "/tmp", "FEDA2V_MODEL_CACHE": "/tmp/feda2v-models"}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", config_mod.CREDENTIALS_ENV, owner.OWNER_ENV):
        if key in os.environ:
            env[key] = os.environ[key]
    return local.DockerRunner(
        user=f"{os.getuid()}:{os.getgid()}", environment=env, network_mode="host",
        labels={DOCKER_LABEL: run_id},
        mounts=[Mount(target=p, source=p, type="bind") for p in sorted(paths)])


DOCKER_LABEL = "feda2v.mlflow_run"


_CREATING = threading.Lock()


def run_container(client, image: str, command: list[str], volumes: dict,
                  **run_args) -> int:
    """A task's container, started as kfp.local's DockerRunner does, with two changes for
    podman's Docker API, which answers some inspects with 500 "no such container" (not the 404
    kfp.local expects) and so failed 1 `--runner docker` run in 4 here: containers are created
    one at a time (kfp.local runs a loop's tasks in threads, and an inspect right after a
    concurrent create lost the container), and a container is removed only after its exit code
    is read (no auto-removal racing the log stream). Installed by `install_container_runner`."""
    image = image if ":" in image.rsplit("/", 1)[-1] else f"{image}:latest"
    with _CREATING:
        container = client.containers.run(image=image, command=command, detach=True,
                                          stdout=True, stderr=True, volumes=volumes, **run_args)
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return container.wait()["StatusCode"]
    finally:
        container.remove(force=True)


def install_container_runner() -> None:
    patches.kfp_local_container_runner(run_container)


def stop_containers(run_id: str) -> int:
    """Kill the containers of a `--runner docker` run (they are not our child processes)."""
    import docker

    client = docker.from_env()
    try:
        found = client.containers.list(filters={"label": f"{DOCKER_LABEL}={run_id}"})
        for container in found:
            container.kill()
        return len(found)
    finally:
        client.close()
