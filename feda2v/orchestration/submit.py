"""`feda2v submit`: hand a compiled package to a Kubeflow Pipelines endpoint (kfp.Client), as a
one-off run or as a new version of a named pipeline, and optionally follow it task by task."""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Callable

FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED")


def version_name(package: str, feda2v_version: str) -> str:
    """Sortable and traceable: the package version, the UTC time, the YAML's digest."""
    with open(package, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:8]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{feda2v_version}-{stamp}-{digest}"


def _experiment_id(client, name: str, namespace: str | None) -> str:
    try:
        return client.get_experiment(experiment_name=name, namespace=namespace).experiment_id
    except ValueError:  # kfp: "No experiment is found with name ..."
        return client.create_experiment(name, namespace=namespace).experiment_id


def submit(client, package: str, *, experiment: str, run_name: str | None,
           namespace: str | None, caching: bool | None, pipeline_name: str | None,
           version: str | None) -> tuple[str, str]:
    """Start a run; returns (run id, what was run). With `pipeline_name`, the package is
    uploaded first as version `version` of that pipeline (the pipeline is created on first
    use), so the UI lists every version and its runs."""
    if not pipeline_name:
        run = client.create_run_from_pipeline_package(
            package, arguments={}, experiment_name=experiment, run_name=run_name,
            namespace=namespace, enable_caching=caching)
        return run.run_id, "a one-off package"
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(package, pipeline_name=pipeline_name,
                                             namespace=namespace).pipeline_id
    ver = client.upload_pipeline_version(package, version, pipeline_id=pipeline_id)
    run = client.run_pipeline(_experiment_id(client, experiment, namespace),
                              run_name or f"{pipeline_name} {version}", pipeline_id=pipeline_id,
                              version_id=ver.pipeline_version_id, enable_caching=caching)
    return run.run_id, f"pipeline {pipeline_name!r} version {version!r}"


def watch(client, run_id: str, timeout: float, poll: float = 10.0,
          say: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep) -> str:
    """Poll the run until it ends, saying each task's state changes; returns the run's state."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while True:
        run = client.get_run(run_id)
        details = getattr(run, "run_details", None)
        for task in (getattr(details, "task_details", None) or []):
            name, state = task.display_name, str(task.state)
            if name and seen.get(name) != state:
                seen[name] = state
                say(f"  {name}: {state.lower()}")
        state = str(run.state).upper()
        if state in FINAL_STATES:
            return state
        if time.monotonic() >= deadline:
            raise TimeoutError(f"run {run_id} still {state.lower()} after {timeout:.0f} s")
        sleep(poll)
