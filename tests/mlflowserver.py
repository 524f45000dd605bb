"""A real MLflow tracking server on 127.0.0.1 for the tests (SQLite backend, proxied artifacts),
started once per session and stopped at the end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """Yields the tracking URI (http://127.0.0.1:PORT)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed in the teardown below
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", f"file://{root}/artifacts", "--serve-artifacts"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            tail = (root / "server.log").read_text()[-3000:]
            raise RuntimeError(f"mlflow server did not come up on {uri}:\n{tail}")
        time.sleep(0.5)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
