"""Check a run's locations before any task, MLflow run or folder exists, and fail in seconds.

`feda2v run` checks everything from this machine, where its tasks will run. `compile` and
`submit` build a pipeline whose pods run elsewhere: a laptop path means nothing to a pod, and an
in-cluster host name (`minio-service.kubeflow`) does not resolve here. So for them a location
that cannot be seen from here is a note, not an error; one that is seen and is wrong (a refused
port, a missing bucket or dataset) is an error.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from feda2v.io import config as config_mod
from feda2v.io import runstate, storage, tracking
from feda2v.io.config import Config

PROBE_TIMEOUT_S = 3.0


class Unseen(Exception):
    """The location cannot be checked from this machine (its host does not resolve)."""


def _s3_endpoint() -> str:
    return (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            or "https://s3.amazonaws.com")


def _probe(url: str, what: str) -> None:
    """TCP-connect to the server behind `url`: botocore and MLflow would otherwise retry a dead
    endpoint for a minute or more before saying anything."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if (parts.hostname, port) in _answered:  # the dataset, storage root… share one endpoint
        return
    try:
        socket.getaddrinfo(parts.hostname, port)
    except OSError:
        raise Unseen(f"{what}: host {parts.hostname} does not resolve from here") from None
    try:
        socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise ConnectionError(f"{what}: {tracking.redact(url)} does not answer ({e})") from None
    _answered.add((parts.hostname, port))


_answered: set[tuple[str, int]] = set()


def _remote(uri: str, key: str) -> None:
    """The server behind a URI answers (the object store's endpoint for s3://, the host itself
    for http(s)://); then the caller may look the URI up."""
    if uri.startswith(("s3://", "s3a://")):
        _probe(_s3_endpoint(), f"{key} {uri}: the object store (AWS_ENDPOINT_URL)")
    elif uri.startswith(("http://", "https://")):
        _probe(uri, f"{key} {tracking.redact(uri)}")


def _exists(uri: str, key: str, hint: str = "") -> None:
    try:
        found = storage.exists(uri)
    except storage.StorageError as e:
        raise ValueError(f"{key}: {e}") from None
    if not found and storage.is_local(uri):
        parent = _nearest_existing(uri)
        if not os.access(parent, os.R_OK | os.X_OK):  # os.path.exists says False here too
            raise PermissionError(f"{key} {uri}: {parent} is not readable by this user")
    if not found:
        raise FileNotFoundError(f"{key} {tracking.redact(uri)} does not exist{hint}")


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(storage.local_path(path))
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _bucket(uri: str, key: str) -> None:
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    scheme = uri.split("://", 1)[0]
    _exists(f"{scheme}://{bucket}", f"{key} {uri}: bucket", "; create it first")


def _writable(path: str, key: str) -> None:
    parent = _nearest_existing(path)
    if not os.path.isdir(parent):
        raise NotADirectoryError(f"{key} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{key} {path}: {parent} is not writable")


def _local_model(value: str) -> bool:
    """A models.* value that names a local folder rather than a hub id (`org/name`)."""
    return storage.is_local(value) and (value.startswith((".", "/", "~"))
                                        or value.count("/") > 1)


def _checks(cfg: Config) -> list[tuple[str, str, callable]]:
    """(key, location, check) for every location of the config; a check raises on a problem."""
    out = []
    data = cfg.data.dataset_uri
    out.append(("data.dataset_uri", data, lambda: _exists(
        data, "data.dataset_uri", " (`feda2v data demo --out DIR` writes a procedural dataset)")))
    real = cfg.feda2v.server_real_data_uri
    if real:
        out.append(("feda2v.server_real_data_uri", real,
                    lambda: _exists(real, "feda2v.server_real_data_uri")))
    for key in ("audio_model", "text_model", "image_model"):
        if key == "image_model" and cfg.data.targets != "images":
            continue
        value = getattr(cfg.models, key)
        if not storage.is_local(value) or _local_model(value):
            out.append((f"models.{key}", value, lambda v=value, k=key: _exists(
                v, f"models.{k}", " (`feda2v models tiny --out DIR` writes tiny offline models)")))
    places = [("storage_root", cfg.storage_root)]
    checkpoints = runstate.checkpoint_dir(cfg)
    if not checkpoints.startswith(storage.join(cfg.storage_root, "")):
        places.append(("feda2v.generator_checkpoint_dir", checkpoints))
    for key, value in places:
        if storage.is_local(value):
            out.append((key, value, lambda v=value, k=key: _writable(v, k)))
        else:
            out.append((key, value, lambda v=value, k=key: _bucket(v, k)))
    return out


def _class_names(cfg: Config) -> None:
    """The dataset's class names, read now: each must be safe as an MLflow metric-key segment
    and a path segment, and each configured class must be in the dataset (a task would
    otherwise find out after the MLflow run and the first tasks)."""
    from feda2v.data import datasets

    if cfg.data.format != "embeddings":
        datasets.read_items(cfg)  # checks the names it uses, and that the configured ones exist
        return
    try:
        names = storage.read_meta(cfg.data.dataset_uri).get("class_names")
    except (ValueError, AttributeError) as e:  # a header that is no JSON object
        raise ValueError(f"data.dataset_uri {tracking.redact(cfg.data.dataset_uri)}: not a "
                         f"safetensors embeddings file ({type(e).__name__})") from None
    if isinstance(names, list):
        if config_mod.configured_classes(cfg) is None:
            datasets.check_class_names(names, cfg)
        return
    raise ValueError(f"data.dataset_uri {tracking.redact(cfg.data.dataset_uri)}: embeddings "
                     "file lacks the class_names metadata")


def check(cfg: Config, where: str = "local") -> list[str]:
    """Raise on the first location that is wrong; return notes on those not checked.

    where="local": every location is checked from here (the tasks run here).
    where="cluster": local paths and hosts that do not resolve here are noted, not checked.
    """
    notes: list[str] = []
    checked = set()
    for key, value, run_check in _checks(cfg):
        if where == "cluster" and storage.is_local(value):
            notes.append(f"{key} {value} is a path on this machine: every pod must see it at "
                         "that path (a mounted volume); not checked")
            continue
        try:
            if not storage.is_local(value):
                _remote(value, key)
            run_check()
            checked.add(key)
        except Unseen as e:
            if where == "local":
                raise ConnectionError(str(e)) from None
            notes.append(f"{e}; not checked")
    if "data.dataset_uri" in checked:
        _class_names(cfg)
    if where == "local" and not cfg.mlflow_tracking_uri:
        env = os.environ.get("MLFLOW_TRACKING_URI", "")
        error = config_mod.uri_error(env)
        if error:
            raise config_mod.ConfigError(f"bad value for $MLFLOW_TRACKING_URI: {error}")
    uri = cfg.mlflow_tracking_uri  # a cluster's pods get theirs from the ConfigMap otherwise
    if where == "local":
        tracking.check_reachable(tracking.tracking_uri(cfg))
    elif uri.startswith(("http://", "https://")):
        try:
            _probe(uri, "mlflow_tracking_uri")
        except Unseen as e:
            notes.append(f"{e}; not checked")
        except ConnectionError as e:
            raise ConnectionError(f"MLflow tracking server {e}") from None
    return notes
