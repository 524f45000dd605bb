"""The patches of kfp and MLflow internals (feda2v/patches.py): pinned to the versions they were
written for, each internal they touch still there in the shape they expect, each put back, and
no other module reaching into those internals."""

from __future__ import annotations

import ast
import inspect
import os
from importlib.metadata import version
from pathlib import Path

import pytest

from feda2v import patches

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("package", sorted(patches.SUPPORTED))
def test_the_installed_version_is_the_one_the_patches_were_written_for(package):
    installed = ".".join(version(package).split(".")[:2])
    assert installed == patches.SUPPORTED[package], (
        f"{package} {version(package)} is installed; feda2v/patches.py was checked on "
        f"{patches.SUPPORTED[package]}.x: check each patch, then update SUPPORTED and "
        "pyproject.toml")


def test_pyproject_admits_only_the_supported_versions():
    text = (ROOT / "pyproject.toml").read_text()
    for package, minor in patches.SUPPORTED.items():
        major, low = minor.split(".")
        assert f'"{package}>={minor},<{major}.{int(low) + 1}"' in text, package


def test_kfp_local_print_is_left_alone_and_put_back():
    import builtins

    from kfp.local import logging_utils

    assert list(inspect.signature(logging_utils.indented_print).parameters) == ["num_spaces"]
    original, real = logging_utils.indented_print, builtins.print
    with patches.kfp_local_plain_print(), logging_utils.indented_print():
        assert builtins.print is real
    assert logging_utils.indented_print is original


def test_the_container_runner_has_kfp_locals_signature():
    from kfp.local import docker_task_handler

    from feda2v.localrun import docker

    kfp_params = list(inspect.signature(docker_task_handler.run_docker_container).parameters)
    assert kfp_params == ["client", "image", "command", "volumes", "container_run_args"]
    assert list(inspect.signature(docker.run_container).parameters) == [
        "client", "image", "command", "volumes", "run_args"]
    original = docker_task_handler.run_docker_container
    try:
        patches.kfp_local_container_runner(docker.run_container)
        assert docker_task_handler.run_docker_container is docker.run_container
    finally:
        docker_task_handler.run_docker_container = original


def test_mlflow_fluent_uris_are_set_for_a_while_then_as_they_were(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as service

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = (service._tracking_uri, registry._registry_uri)
    uri = f"sqlite:///{tmp_path}/m.db"
    with patches.mlflow_fluent_uris(uri):
        assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
    assert (service._tracking_uri, registry._registry_uri) == before
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


def test_no_other_module_reaches_into_kfp_or_mlflow_internals():
    private = ("kfp.local.logging_utils", "kfp.local.docker_task_handler")
    found = []
    for path in [*(ROOT / "feda2v").rglob("*.py"), *(ROOT / "components").glob("*.py"),
                 *(ROOT / "pipelines").glob("*.py")]:
        if path.name == "patches.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if name in private or (parts[0] in ("kfp", "mlflow")
                                       and any(p.startswith("_") for p in parts)):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert not found, found


def test_task_setters_name_their_caller_without_reading_the_stack(monkeypatch):
    """kfp's check reads every frame's source through inspect.stack(); ours asks the frame. The
    message stays kfp's: the setter named, on a task without a container."""
    import inspect as inspect_mod

    from kfp import dsl
    from kfp.dsl import pipeline_task

    import pipelines  # noqa: F401 - applies the patch

    assert pipeline_task.PipelineTask._ensure_container_spec_exists.__module__ == patches.__name__
    assert "inspect.stack()" in inspect_mod.getsource(pipeline_task)  # what it replaces

    @dsl.component
    def leaf():
        pass

    @dsl.pipeline
    def inner():
        leaf()

    monkeypatch.setattr(inspect_mod, "stack", lambda *a: pytest.fail("inspect.stack() called"))

    @dsl.pipeline
    def outer():
        leaf().set_cpu_request("1")
        with pytest.raises(ValueError, match="^set_cpu_limit can only be used on single-step"):
            inner().set_cpu_limit("1")

    assert outer.pipeline_spec is not None
