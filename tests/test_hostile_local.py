"""Hostile and unlucky peers of a local run (issue 21, failures 8 and 11): the fork server of
`feda2v run` survives a peer that connects and closes, sends a garbled or oversized request or
says nothing, names it in one line, and serves the other tasks meanwhile; a run leaves no
kfp.local `ephemeral_component.py` folder behind."""

import json
import os
import socket
import struct
import subprocess
import time

import pytest

from feda2v.localrun import prefork

TIMEOUT_S = 2  # the server's request timeout in these tests


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One fork server (its imports take seconds), its log, and a way to run a task through it."""
    folder = tmp_path_factory.mktemp("prefork")
    log_path = folder / "server.log"
    env = dict(os.environ, **{prefork.TIMEOUT_ENV: str(TIMEOUT_S)})
    with open(log_path, "w") as log:
        proc, path = prefork.start(str(folder), env, stderr=log)
    shim = os.path.join(prefork.write_shim(str(folder / "shim")), "python3")
    task_env = dict(os.environ, **{prefork.SOCKET_ENV: path, prefork.PID_ENV: str(proc.pid)})

    def task(*args):
        return subprocess.run([shim, "-m", prefork.MODULE, *args], env=task_env,
                              capture_output=True, text=True, timeout=60, check=False)

    try:
        assert prefork.wait_ready(path)
        yield proc, path, task, log_path
    finally:
        proc.kill()
        proc.wait()


def _connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def _logged(log_path, text, wait_s=10.0):
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        lines = [line for line in log_path.read_text().splitlines() if text in line]
        if lines:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in the server log:\n{log_path.read_text()}")


def _tasks_still_run(server):
    proc, _, task, _ = server
    ok, bad = task("--help"), task("--no-such-option")
    assert ok.returncode == 0 and "--component_module_path" in ok.stdout, ok.stderr
    assert bad.returncode == 2 and "executor_main.py: error" in bad.stderr
    assert proc.poll() is None


def test_a_peer_that_connects_and_closes_does_not_kill_the_server(server):
    """It was `struct.error` in the server's loop: the server died, and every later task with
    it. Now: one line naming the peer, and the next task runs."""
    _, path, _, log_path = server
    _connect(path).close()
    short = _connect(path)
    short.sendall(b"\x00\x01")  # half a header
    short.close()
    _tasks_still_run(server)
    line = _logged(log_path, "closed the connection without sending a request")[0]
    assert line.startswith(f"feda2v prefork: dropped a connection from pid {os.getpid()}")
    _logged(log_path, "closed the connection after 2 bytes of a request")


def _with_streams(s, head):
    socket.send_fds(s, [head], [0, 1, 2])


@pytest.mark.parametrize("case, expected", [
    ("oversized", "sent a header announcing 4294967295 bytes"),
    ("not json", "sent a request that is not JSON"),
    ("wrong shape", "sent a request that is not {argv: [-m, kfp.dsl.executor_main, ...]"),
    ("no streams", "sent 0 file descriptors, not the 3 standard streams"),
])
def test_a_garbled_or_oversized_request_is_dropped_by_name(server, case, expected):
    """The connection stays open on our side: the server must not wait on it (it read all
    4 GiB a header announced, holding up every task meanwhile)."""
    _, path, _, log_path = server
    s = _connect(path)
    try:
        if case == "oversized":
            _with_streams(s, struct.pack("!I", 2**32 - 1) + b"{" * 1000)
        elif case == "not json":
            body = b"\xff{not json"
            _with_streams(s, struct.pack("!I", len(body)) + body)
        elif case == "wrong shape":
            body = json.dumps(["-m", prefork.MODULE]).encode()
            _with_streams(s, struct.pack("!I", len(body)) + body)
        else:
            body = json.dumps({"argv": ["-m", prefork.MODULE, "--help"], "env": {},
                               "cwd": "/"}).encode()
            s.sendall(struct.pack("!I", len(body)) + body)
        _tasks_still_run(server)
        line = _logged(log_path, expected)[-1]
        assert f"pid {os.getpid()}" in line
        s.settimeout(10)
        assert s.recv(4) == b""  # dropped: no exit code for a request that never ran
    finally:
        s.close()


def test_a_silent_peer_holds_up_no_task_and_is_dropped_after_the_timeout(server):
    """A connection that says nothing blocked the server: a finished task's exit code never
    came, and the run failed. Now tasks run beside it with their own exit codes, and it is
    dropped after the request timeout."""
    _, path, _, log_path = server
    silent = _connect(path)
    try:
        start = time.monotonic()
        _tasks_still_run(server)
        assert time.monotonic() - start < 30
        silent.settimeout(TIMEOUT_S + 10)
        assert silent.recv(1) == b""  # the server let it go
        line = _logged(log_path, f"sent no whole request within {TIMEOUT_S} s (nothing came)")[-1]
        assert f"pid {os.getpid()}" in line
    finally:
        silent.close()


def test_the_tasks_tmpdir_is_the_runs_own_and_goes_with_it():
    """kfp.local's task command runs `mktemp -d` for its ephemeral_component.py: under
    `feda2v run` that lands in a folder of the run's own, removed when the run ends, however."""
    from feda2v.localrun import run as local_run

    before = os.environ.get("TMPDIR")
    with pytest.raises(RuntimeError), local_run._task_tmpdir() as folder:
        script = 'd=$(mktemp -d) && touch "$d/ephemeral_component.py" && echo "$d"'
        made = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert os.path.dirname(made) == folder
        raise RuntimeError("the run failed")
    assert not os.path.exists(folder)
    assert os.environ.get("TMPDIR") == before


def test_the_fork_server_starts_under_a_long_tmpdir(tmp_path, monkeypatch):
    """A $TMPDIR too long for a Unix socket's name (pytest-xdist's are) made the fork server
    die at bind(), and every task fall back to a fresh interpreter, and nothing cleaned up
    after a SIGKILL: the server's folder moves to /tmp."""
    import tempfile

    from feda2v.localrun import run as local_run

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    started = local_run._start_prefork()
    proc, folder, _ = started
    try:
        assert len(folder) <= local_run.SOCKET_FOLDER_MAX
        assert prefork.wait_ready(os.environ[prefork.SOCKET_ENV], timeout=120)
        assert proc.poll() is None
    finally:
        local_run._stop_prefork(started)
    assert not os.path.exists(folder)
