"""MLflow helpers: one MLflow run per pipeline run; tasks log into it by run id.

Only the server-side tasks (which run one after another) write, so a SQLite store is safe.
mlflow is imported lazily: client tasks never pay for it.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from feda2v import storage


def tracking_uri(cfg: dict) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else SQLite under a local storage_root."""
    if cfg["mlflow_tracking_uri"]:
        return cfg["mlflow_tracking_uri"]
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = cfg["storage_root"]
    if not storage.is_local(root):
        raise ValueError("mlflow_tracking_uri is empty and storage_root is remote "
                         f"({root}): set mlflow_tracking_uri or $MLFLOW_TRACKING_URI")
    return "sqlite:///" + os.path.join(storage.absolute(root), "mlflow.db")


def redact(uri: str) -> str:
    """Drop user:password@ from a URI before it is logged or printed."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def create_run(cfg: dict, run_name: str, parent_run_id: str = "") -> str:
    uri = tracking_uri(cfg)
    client = _client(uri)
    exp = client.get_experiment_by_name(cfg["experiment_name"])
    if exp is None:
        artifacts = None
        if storage.is_local(cfg["storage_root"]) and uri.startswith("sqlite:"):
            artifacts = "file://" + os.path.join(storage.absolute(cfg["storage_root"]), "mlartifacts")
        exp_id = client.create_experiment(cfg["experiment_name"], artifact_location=artifacts)
    else:
        exp_id = exp.experiment_id
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
    return client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id


def flatten(cfg: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return out


def log_params(cfg: dict, run_id: str, extra: dict[str, Any] | None = None) -> None:
    from mlflow.entities import Param

    params = {k: redact(v) for k, v in flatten(cfg).items()}  # no user:password@ in any URI
    params.update({k: str(v) for k, v in (extra or {}).items()})
    _client(tracking_uri(cfg)).log_batch(
        run_id, params=[Param(k, v[:6000]) for k, v in params.items()])


def log_metrics(cfg: dict, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log metrics at `step`; with no run id (a stage run by hand) there is nowhere to log."""
    import time

    if not run_id:
        return
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    _client(tracking_uri(cfg)).log_batch(
        run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def log_artifact(cfg: dict, run_id: str, local_file: str, artifact_path: str | None = None) -> None:
    _client(tracking_uri(cfg)).log_artifact(run_id, local_file, artifact_path)


def set_status(cfg: dict, run_id: str, status: str) -> None:
    _client(tracking_uri(cfg)).set_terminated(run_id, status)


def run_info(cfg: dict, run_id: str) -> tuple[dict[str, str], dict[str, list[tuple[int, float]]]]:
    """(params, metric histories as {key: [(step, value), ...]}) of one run."""
    client = _client(tracking_uri(cfg))
    run = client.get_run(run_id)
    history = {}
    for key in run.data.metrics:
        history[key] = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    return dict(run.data.params), history
