"""Real MLflow tracking servers on 127.0.0.1 for the tests (SQLite backend, proxied artifacts),
started once per session and stopped at the end: a plain one, and one with MLflow's basic-auth
app (the manifests' auth overlay)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ADMIN = ("admin", "test-admin-password-7")  # the auth server's first admin (a test value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_mlflow_server(root: Path, extra_args: list[str] = (), extra_env: dict | None = None):
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # MLflow 3's job runner (a huey consumer, ten workers) serves GenAI jobs feda2v never
    # submits: two more processes importing MLflow per server, for nothing.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", f"file://{root}/artifacts", "--serve-artifacts",
         *extra_args],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
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
            _stop(proc)
            log.close()
            tail = (root / "server.log").read_text()[-3000:]
            raise RuntimeError(f"mlflow server did not come up on {uri}:\n{tail}")
        time.sleep(0.5)
    try:
        yield uri
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """The server and its workers (one process group): SIGTERM, then SIGKILL after 2 s. A
    graceful stop of the parent alone waited 5-9 s for its workers."""
    for sig, wait in ((signal.SIGTERM, 2), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """Yields the tracking URI (http://127.0.0.1:PORT)."""
    with run_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture(scope="session")
def mlflow_auth_server(tmp_path_factory):
    """Yields the tracking URI of a basic-auth server whose admin is ADMIN."""
    with run_mlflow_auth_server(tmp_path_factory.mktemp("mlflow-auth-server")) as uri:
        yield uri


@contextlib.contextmanager
def run_mlflow_auth_server(root: Path, admin: tuple[str, str] = ADMIN):
    """A basic-auth server whose first admin is `admin`; yields its tracking URI. Used by the
    `mlflow_auth_server` fixture and by `make rehearsal`."""
    (root / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root}/basic_auth.db\nadmin_username = {admin[0]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
           "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"}
    with run_mlflow_server(root, ["--app-name", "basic-auth"], env) as uri:
        yield uri


class TcpProxy:
    """127.0.0.1:port forwarding to `target` (host, port) until stop(): then every connection
    is cut and new ones are refused, as when a server dies, while the server behind lives on."""

    def __init__(self, target: tuple[str, int]):
        import threading

        self.target, self._conns, self._lock = target, [], threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.target)
            except OSError:
                return
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accept() and stops listening (Linux)
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
