"""Every patch of a third-party library's internals, in one module.

Each was written against the versions in SUPPORTED (and pyproject.toml admits only those);
tests/test_patches.py fails when an installed version, or an internal patched here, changes.
Imports nothing of feda2v, so any layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import sys

SUPPORTED = {"kfp": "2.17", "mlflow": "3.17"}  # major.minor each patch below was checked on


@contextlib.contextmanager
def kfp_local_plain_print():
    """kfp.local indents each task's output by swapping builtins.print for a wrapper around the
    task. With tasks in parallel the swaps interleave and leave wrappers behind, one more layer
    per task, until a long round-execution run spends its time printing (and a stopped run
    waits on that). `feda2v run` sends task output to a log file: leave print alone."""
    from kfp.local import logging_utils

    original = logging_utils.indented_print
    logging_utils.indented_print = lambda num_spaces=4: contextlib.nullcontext()
    try:
        yield
    finally:
        logging_utils.indented_print = original


def kfp_cheap_task_setters() -> None:
    """Each PipelineTask.set_cpu_request/… call asks inspect.stack() for its caller's name (for
    an error message), which reads the source of every frame on the stack: a 50-client,
    80-round pipeline spent 25 s in it under pytest, 1 s otherwise. Ask the frame instead."""
    from kfp.dsl import pipeline_task

    def _ensure_container_spec_exists(self) -> None:
        if self.container_spec is None:
            caller = sys._getframe(1).f_code.co_name
            raise ValueError(f"{caller} can only be used on single-step components, not "
                             "pipelines used as components, or special components like "
                             "importers.")

    pipeline_task.PipelineTask._ensure_container_spec_exists = _ensure_container_spec_exists


def kfp_local_container_runner(run_container) -> None:
    """Make kfp.local's DockerRunner start each task's container with `run_container` (same
    signature as kfp.local.docker_task_handler.run_docker_container)."""
    from kfp.local import docker_task_handler

    docker_task_handler.run_docker_container = run_container


@contextlib.contextmanager
def mlflow_fluent_uris(uri: str):
    """Point MLflow's fluent API (which log_model needs) at `uri` for a while, then put back
    what was there: set_tracking_uri also exports $MLFLOW_TRACKING_URI, which a later run in
    this process would read (an experiment's next variant, a notebook). MLflow's module globals
    are private, but the only way to restore "never set" rather than pin today's default."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as service

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = (service._tracking_uri, registry._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # the registry lives in the tracking store
    try:
        yield
    finally:
        service._tracking_uri, registry._registry_uri = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
