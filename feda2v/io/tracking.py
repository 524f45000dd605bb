"""MLflow helpers: one MLflow run per pipeline run; tasks log into it by run id.

Only the server-side tasks (which run one after another) write, so a SQLite store is safe.
mlflow is imported lazily: client tasks never pay for it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from typing import Any

from feda2v.io import storage
from feda2v.io.config import Config, leaves, redact  # redact: the one rule, also tracking.redact
from feda2v.io.log import get_logger

log = get_logger()


def tracking_uri(cfg: Config) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else SQLite under a local storage_root."""
    if cfg.mlflow_tracking_uri:
        return cfg.mlflow_tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = cfg.storage_root
    if not storage.is_local(root):
        raise ValueError("mlflow_tracking_uri is empty and storage_root is remote "
                         f"({root}): set mlflow_tracking_uri or $MLFLOW_TRACKING_URI")
    return "sqlite:///" + os.path.join(storage.absolute(root), "mlflow.db")




# MLflow retries an unreachable server for minutes by default; a run should fail in seconds.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_checked: set[str] = set()


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the server, when an http(s) tracking URI does not answer."""
    import socket
    from urllib.parse import urlsplit

    if not uri.startswith(("http://", "https://")) or uri in _checked:
        return
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"MLflow tracking server {redact(uri)} is unreachable ({e}); "
                              "start it or fix mlflow_tracking_uri / $MLFLOW_TRACKING_URI") from None
    _check_credentials(uri, timeout)
    _checked.add(uri)


def _check_credentials(uri: str, timeout: float) -> None:
    """One authenticated read, with the credentials MLflow's client would send: a server with
    authentication (the manifests' basic-auth overlay) that refuses them fails here, naming the
    variables, instead of deep inside the first task."""
    import base64
    import urllib.error
    import urllib.request

    headers = {}
    user, password = (os.environ.get("MLFLOW_TRACKING_USERNAME"),
                      os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    elif user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {pair}"
    request = urllib.request.Request(
        uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1", headers=headers)
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise PermissionError(
                f"MLflow tracking server {redact(uri)} needs a login (401): "
                + ("it refused MLFLOW_TRACKING_USERNAME / _PASSWORD (or MLFLOW_TRACKING_TOKEN)"
                   if headers else "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                   "(or MLFLOW_TRACKING_TOKEN)")) from None
        # Anything else (404 on an old server, 403 for this one read) is for the real
        # requests to report; this check is about logging in.
    except OSError:
        pass  # the socket answered; slow or odd HTTP is for the real requests to report


_clients: dict = {}


def _client(uri: str):
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    check_reachable(uri)
    if uri in _clients:
        return _clients[uri]
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        # Two runs starting at once on a fresh store would both create its tables (and one
        # fails in the schema migration): opening the store is serialised by a lock file.
        import fcntl

        path = uri.removeprefix("sqlite:///")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                client = MlflowClient(tracking_uri=uri)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    else:
        client = _Answering(MlflowClient(tracking_uri=uri), uri)
    _clients[uri] = client
    return client


class _Answering:
    """An MlflowClient whose calls, when the server stops answering mid-run, raise one
    ConnectionError naming the server and the call (MLflow's own is a 145-line chain)."""

    def __init__(self, client, uri: str):
        self._inner, self._uri = client, uri

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except Exception as e:
                if not _unanswered(e):
                    raise
                raise ConnectionError(
                    f"MLflow tracking server {redact(self._uri)} stopped answering ({name}): "
                    "is it still running?") from None
        return call


def _unanswered(e: BaseException) -> bool:
    import requests

    if isinstance(e, (requests.ConnectionError, requests.Timeout)):
        return True
    text = str(e)
    return type(e).__name__ == "MlflowException" and any(
        s in text for s in ("Max retries exceeded", "Connection refused", "Read timed out",
                            "Connection aborted", "RemoteDisconnected"))


def _experiment_id(cfg: Config, client, uri: str) -> str:
    exp = client.get_experiment_by_name(cfg.experiment_name)
    if exp is None:
        artifacts = None
        if storage.is_local(cfg.storage_root) and uri.startswith("sqlite:"):
            artifacts = "file://" + os.path.join(storage.absolute(cfg.storage_root), "mlartifacts")
        return client.create_experiment(cfg.experiment_name, artifact_location=artifacts)
    return exp.experiment_id


def source_tags() -> dict[str, str]:
    return dict(_source_tags())


@functools.lru_cache(maxsize=1)
def _source_tags() -> dict[str, str]:
    """What made a run: the package version and, where known, the git commit (MLflow's own
    tag, shown in its UI). The commit comes from $FEDA2V_GIT_COMMIT or from the git checkout
    the package runs from; looked up once per process (every run creation asks)."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    try:
        tags = {"feda2v.version": version("feda2v")}
    except PackageNotFoundError:
        tags = {}
    tags["mlflow.source.name"] = "feda2v"
    commit = os.environ.get("FEDA2V_GIT_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=5, cwd=os.path.dirname(os.path.abspath(__file__)),
                                    check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


OWNER_TAG = "feda2v.owner"  # the process that created the run (feda2v.io.owner)


def create_run(cfg: Config, run_name: str, parent_run_id: str = "",
               tags: dict[str, str] | None = None) -> str:
    """A new run, owned by this process (OWNER_TAG); a top-level one first ends the
    experiment's stale runs (end_stale_runs)."""
    from feda2v.io import owner

    uri = tracking_uri(cfg)
    client = _client(uri)
    if not parent_run_id:
        end_stale_runs(cfg)
    tags = {**source_tags(), OWNER_TAG: owner.token(), **(tags or {}),
            **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    return client.create_run(_experiment_id(cfg, client, uri), run_name=run_name,
                             tags=tags).info.run_id


def end_stale_runs(cfg: Config) -> list[str]:
    """End FAILED each RUNNING run of the experiment whose owning process is gone from this
    host (a run killed while the server was down could not end its MLflow run). Returns their
    ids."""
    from feda2v.io import owner

    client = _client(tracking_uri(cfg))
    exp = client.get_experiment_by_name(cfg.experiment_name)
    if exp is None:
        return []
    ended = []
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'",
                                  max_results=1000):
        token = run.data.tags.get(OWNER_TAG, "")
        if token and owner.alive(token) is False:
            client.set_tag(run.info.run_id, "feda2v.ended_by",
                           "a later run: the process that ran it was gone")
            client.set_terminated(run.info.run_id, "FAILED")
            ended.append(run.info.run_id)
            log.warning("MLflow run %s (%s) was still RUNNING with its process gone: ended FAILED",
                        run.info.run_id, run.info.run_name)
    return ended


RUN_KEY_TAG = "feda2v.run_key"


def ensure_run(cfg: Config, run_id: str, run_key: str, phases: str) -> str:
    """The MLflow run of pipeline run `run_key`: `run_id` when given (claimed on first use),
    else the run tagged with the key, else a new one. Idempotent, so a retried task or the exit
    handler finds the same run; params (the resolved config) are logged once."""
    uri = tracking_uri(cfg)
    client = _client(uri)
    if run_id:
        run = client.get_run(run_id)
        owner = run.data.tags.get(RUN_KEY_TAG)
        if owner == run_key:
            return run_id
        if owner or run.data.params:
            # Its params belong to another pipeline run: MLflow refuses to change them, and
            # this run's steps would overlay its metrics.
            raise ValueError(f"MLflow run {run_id} already holds another run's params; pass an "
                             "empty mlflow_run_id (a new run) or one created for this pipeline run")
    else:
        exp_id = _experiment_id(cfg, client, uri)
        found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
                                   max_results=1)
        if found:
            return found[0].info.run_id
        run_id = client.create_run(exp_id, run_name=run_key, tags=source_tags()).info.run_id
    log_params(cfg, run_id, {"feda2v.phases": phases})
    for key, value in source_tags().items():  # a run created by `feda2v run` has them already
        client.set_tag(run_id, key, value)
    client.set_tag(run_id, "kfp.run_id", run_key)
    client.set_tag(run_id, RUN_KEY_TAG, run_key)  # last: a claimed run has its params
    return run_id


SYSTEM_METRICS_SECONDS = 10.0


@contextlib.contextmanager
def system_metrics(cfg: Config, run_id: str, node: str):
    """With `mlflow_system_metrics`, CPU, memory, disk, network (and GPU, where pynvml finds
    one) sampled every SYSTEM_METRICS_SECONDS into the run as system/{node}/…, while the block
    runs; `node` tells the tasks apart (one run spans several)."""
    if not cfg.mlflow_system_metrics or not run_id:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    uri = tracking_uri(cfg)
    _client(uri)  # the fail-fast settings
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_SECONDS,
                                   resume_logging=True, node_id=node, tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def final_status(kfp_state: str) -> str:
    """The MLflow status for a KFP pipeline state: FINISHED, KILLED or FAILED."""
    return {"SUCCEEDED": "FINISHED", "CANCELED": "KILLED", "CANCELLED": "KILLED"}.get(
        kfp_state.upper(), "FAILED")


def end_run(cfg: Config, run_id: str, status: str) -> None:
    """End the run unless something else already ended it (a KILLED stays KILLED)."""
    client = _client(tracking_uri(cfg))
    if client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
        client.set_terminated(run_id, status)


def flatten(cfg: Config) -> dict[str, str]:
    """{dotted key: value as text} of a config (strings as they are, the rest as JSON)."""
    return {dotted: value if isinstance(value, str) else json.dumps(value)
            for dotted, _, _, value in leaves(cfg.to_dict())}


def log_params(cfg: Config, run_id: str, extra: dict[str, Any] | None = None) -> None:
    from mlflow.entities import Param

    params = {k: redact(v) for k, v in flatten(cfg).items()}  # no user:password@ in any URI
    params.update({k: str(v) for k, v in (extra or {}).items()})
    _client(tracking_uri(cfg)).log_batch(
        run_id, params=[Param(k, v[:6000]) for k, v in params.items()])


def log_metrics(cfg: Config, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log metrics at `step`; with no run id (a stage run by hand) there is nowhere to log."""
    import time

    if not run_id:
        return
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    _client(tracking_uri(cfg)).log_batch(
        run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def log_text(cfg: Config, run_id: str, text: str, artifact_file: str) -> None:
    _client(tracking_uri(cfg)).log_text(run_id, text, artifact_file)


def log_artifact(cfg: Config, run_id: str, local_file: str, artifact_path: str | None = None) -> None:
    _client(tracking_uri(cfg)).log_artifact(run_id, local_file, artifact_path)


def ready(cfg: Config) -> str:
    """The tracking URI, its server checked and the client's fail-fast settings applied (for
    code that must use MLflow's fluent API)."""
    uri = tracking_uri(cfg)
    _client(uri)
    return uri


def set_tags(cfg: Config, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    _client(tracking_uri(cfg)).log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def set_status(cfg: Config, run_id: str, status: str) -> None:
    _client(tracking_uri(cfg)).set_terminated(run_id, status)


def run_info(cfg: Config, run_id: str, keys=None,
             ) -> tuple[dict[str, str], dict[str, list[tuple[int, float]]]]:
    """(params, metric histories as {key: [(step, value), ...]}) of one run: of every metric,
    or of `keys` only (one request per history, and a server with basic auth spends about half
    a second checking the password of each: a run's hundred quality metrics cost a minute)."""
    client = _client(tracking_uri(cfg))
    run = client.get_run(run_id)
    history = {}
    for key in run.data.metrics if keys is None else set(keys) & set(run.data.metrics):
        history[key] = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    return dict(run.data.params), history


def run_record(cfg: Config, run_id: str) -> dict:
    """One run's name, status, params, tags and latest metric values (one request)."""
    run = _client(tracking_uri(cfg)).get_run(run_id)
    return {"run_id": run_id, "name": run.info.run_name, "status": run.info.status,
            "params": dict(run.data.params), "tags": dict(run.data.tags),
            "metrics": dict(run.data.metrics)}


def download_artifact(cfg: Config, run_id: str, path: str, dst: str) -> str:
    """The run's artifact `path` downloaded under `dst`; returns its local path."""
    return _client(tracking_uri(cfg)).download_artifacts(run_id, path, dst)


def list_artifacts(cfg: Config, run_id: str, folder: str) -> list[str]:
    """The paths of the files directly under the run's artifact `folder`."""
    return [a.path for a in _client(tracking_uri(cfg)).list_artifacts(run_id, folder)
            if not a.is_dir]
