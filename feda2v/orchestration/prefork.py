"""Pre-imported task processes for `feda2v run`: the tasks of a local run start in milliseconds.

kfp.local starts every task as `sh -c '... python3 -m kfp.dsl.executor_main ...'`, and each such
process spends seconds importing kfp, torch, mlflow and feda2v before it does any work. For a
local run, `feda2v run` puts a `python3` shim first on the tasks' PATH and starts this server,
which imports all of that once and then forks one child per task. The child runs the very same
`kfp.dsl.executor_main` with the task's arguments, environment, working folder and standard
streams (passed over a Unix socket), so a task is still its own process, with its own state,
reading and writing what kfp.local gives it; only the imports are shared (copy-on-write).

The server is single-threaded (a fork from a multi-threaded process can inherit held locks),
exits with `feda2v run`, and the shim falls back to the real interpreter when the server is gone.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

SOCKET_ENV = "FEDA2V_PREFORK_SOCKET"
PID_ENV = "FEDA2V_PREFORK_PID"
MODULE = "kfp.dsl.executor_main"

# The shim: stdlib only, run with -I -S so it starts in a few milliseconds.
SHIM = """#!{python} -IS
import json, os, socket, struct, sys, time
REAL = {python!r}
path = os.environ.get({env!r}, "")
if sys.argv[1:3] == ["-m", {module!r}] and path:
    server = int(os.environ.get({pid_env!r}, "0"))
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        try:
            os.kill(server, 0)  # still importing, or gone (then: the real interpreter)
        except OSError:
            break
        time.sleep(0.02)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
    except OSError:
        s = None
    if s is not None:
        body = json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ),
                           "cwd": os.getcwd()}}).encode()
        sys.stdout.flush(); sys.stderr.flush()
        socket.send_fds(s, [struct.pack("!I", len(body))], [0, 1, 2])
        s.sendall(body)
        code = s.recv(4)
        sys.exit(struct.unpack("!i", code)[0] if len(code) == 4 else 1)
os.execv(REAL, [REAL] + sys.argv[1:])
"""


def write_shim(folder: str) -> str:
    """A `python3` for the tasks' PATH; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "python3")
    with open(path, "w") as f:
        f.write(SHIM.format(python=sys.executable, env=SOCKET_ENV, pid_env=PID_ENV,
                            module=MODULE))
    os.chmod(path, 0o755)
    return folder


# Imported before the server takes tasks: what every task needs.
CORE = ("kfp.dsl.executor", "kfp.dsl.kfp_config", "torch", "feda2v.orchestration.stages",
        "feda2v.federated.loop")
# Imported one at a time while tasks run (extraction needs none of them): what some tasks need.
# torch._dynamo: torch imports it on the first optimizer (1.6 s here); the SQLAlchemy store:
# what opening MLflow's SQLite store imports (its tables are checked in the task, not here).
LATER = ("torch._dynamo", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store",
         "feda2v.federated.generator", "feda2v.evaluation.metrics", "feda2v.evaluation.experiment",
         "feda2v.encoders.extraction", "transformers")


def _import(name: str) -> None:
    import importlib

    try:
        importlib.import_module(name)
    except ImportError:  # an optional part missing here: the task that needs it will say so
        pass


def _recv_request(conn: socket.socket):
    head, fds, _, _ = socket.recv_fds(conn, 4, 3)
    (size,) = struct.unpack("!I", head)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("shim went away")
        body += chunk
    return json.loads(body), fds


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the task process, run kfp's executor, exit."""
    import runpy
    import traceback

    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv = request["argv"]  # ["-m", MODULE, *args]
        sys.argv = [MODULE, *argv[2:]]
        runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - report it as the interpreter would
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(path: str, parent: int) -> None:
    # Ctrl-C reaches the whole process group: feda2v run stops the tasks, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in CORE:
        _import(name)
    later = list(LATER)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path + ".tmp"
    server.bind(tmp)
    server.listen(64)
    os.rename(tmp, path)  # the shims wait for the final name: ready means imported
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    running: dict[int, socket.socket] = {}
    while True:
        ready = sel.select(timeout=0 if later else 0.05)
        if not ready and later:
            _import(later.pop(0))  # idle: warm up the next module for the tasks to come
        for _key, _ in ready:
            conn, _ = server.accept()
            try:
                request, fds = _recv_request(conn)
            except (OSError, ValueError):
                conn.close()
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                server.close()
                conn.close()
                _run_child(request, fds)
            for fd in fds:
                os.close(fd)
            running[pid] = conn
        while running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = running.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(struct.pack("!i", os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass
                conn.close()
        try:
            os.kill(parent, 0)
        except ProcessLookupError:  # feda2v run is gone: so are we (tasks watch it themselves)
            os._exit(0)


def start(folder: str, env: dict) -> tuple[object, str]:
    """Start the server for a local run; returns (process, socket path)."""
    import subprocess

    path = os.path.join(folder, "prefork.sock")
    proc = subprocess.Popen([sys.executable, "-m", "feda2v.orchestration.prefork", path, str(os.getpid())],
                            env=env)
    return proc, path


def wait_ready(path: str, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
