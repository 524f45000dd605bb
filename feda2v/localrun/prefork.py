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
It reads every connection without blocking, so a peer that connects and closes, sends a short,
garbled or oversized request, or says nothing at all is dropped with one line naming it (pid
and uid from SO_PEERCRED) and never holds up or takes down the other tasks: a request must be
whole within REQUEST_TIMEOUT_S and at most MAX_REQUEST bytes, with exactly the three streams.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time

from feda2v.io.owner import pid_alive

SOCKET_ENV = "FEDA2V_PREFORK_SOCKET"
PID_ENV = "FEDA2V_PREFORK_PID"
MODULE = "kfp.dsl.executor_main"
# A request is the task's argv, environment and folder: kilobytes, a few MB at the very most.
MAX_REQUEST = 64 << 20
# The shim sends its request the moment it connects; a peer still silent after this is dropped.
TIMEOUT_ENV = "FEDA2V_PREFORK_REQUEST_TIMEOUT"
REQUEST_TIMEOUT_S = 30.0
# Connections still sending their request; past this the oldest (the likely silent one) goes.
MAX_PENDING = 128

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
        code = b""
        while len(code) < 4:
            chunk = s.recv(4 - len(code))
            if not chunk:
                break
            code += chunk
        if len(code) == 4:
            sys.exit(struct.unpack("!i", code)[0])
        sys.stderr.write("feda2v prefork: the task server closed the connection without "
                         "the task's exit code\\n")
        sys.exit(1)
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
CORE = ("kfp.dsl.executor", "kfp.dsl.kfp_config", "torch", "feda2v.orchestration.tasks",
        "feda2v.federated.loop")
# Imported one at a time while tasks run (extraction needs none of them): what some tasks need.
# torch._dynamo: torch imports it on the first optimizer (1.6 s here); the SQLAlchemy store:
# what opening MLflow's SQLite store imports (its tables are checked in the task, not here).
LATER = ("torch._dynamo", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store",
         "feda2v.federated.generators.training", "feda2v.federated.generators.sampling",
         "feda2v.evaluation.metrics", "feda2v.orchestration.experiment",
         "feda2v.encoders.extraction", "transformers")


def _import(name: str) -> None:
    import importlib

    try:
        importlib.import_module(name)
    except ImportError:  # an optional part missing here: the task that needs it will say so
        pass


class BadRequest(Exception):
    """What a peer sent (or did not send) that is not a task request; the message says what."""


def _peer(conn: socket.socket) -> tuple[str, int | None]:
    """'pid 123 (python3), uid 1000' from SO_PEERCRED where the system has it; and the uid."""
    try:
        pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
    except (AttributeError, OSError):  # not Linux: no SO_PEERCRED
        return "an unidentified peer", None
    try:
        with open(f"/proc/{pid}/comm") as f:
            name = f" ({f.read().strip()})"
    except OSError:
        name = ""
    return f"pid {pid}{name}, uid {uid}", uid


def _parse_request(body: bytes) -> dict:
    try:
        request = json.loads(body)
    except ValueError as e:  # also not UTF-8
        raise BadRequest(f"sent a request that is not JSON ({e})") from None
    if not (isinstance(request, dict)
            and isinstance(request.get("argv"), list)
            and all(isinstance(a, str) for a in request["argv"])
            and request["argv"][:2] == ["-m", MODULE]
            and isinstance(request.get("env"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in request["env"].items())
            and isinstance(request.get("cwd"), str)):
        raise BadRequest(f"sent a request that is not {{argv: [-m, {MODULE}, ...], env, cwd}}")
    return request


class _Pending:
    """A connection whose request is still arriving: read without blocking, as it comes."""

    def __init__(self, conn: socket.socket, timeout: float):
        self.conn = conn
        self.peer, self.uid = _peer(conn)
        self.data = bytearray()
        self.fds: list[int] = []
        self.deadline = time.monotonic() + timeout

    def read(self):
        """The request and its three streams once whole; None while more is to come.
        Raises BadRequest."""
        try:
            chunk, fds, flags, _ = socket.recv_fds(self.conn, 1 << 16, 3)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            raise BadRequest(f"could not be read ({e})") from None
        self.fds.extend(fds)
        if flags & getattr(socket, "MSG_CTRUNC", 0):
            raise BadRequest("sent more than 3 file descriptors")
        if not chunk:
            raise BadRequest("closed the connection without sending a request" if not self.data
                             else f"closed the connection after {len(self.data)} bytes of a request")
        self.data += chunk
        if len(self.data) < 4:
            return None
        (size,) = struct.unpack("!I", self.data[:4])
        if size > MAX_REQUEST:
            raise BadRequest(f"sent a header announcing {size} bytes (the most is {MAX_REQUEST})")
        if len(self.data) > 4 + size:
            raise BadRequest(f"sent more than the {size} bytes its header announced")
        if len(self.data) < 4 + size:
            return None
        if len(self.fds) != 3:
            raise BadRequest(f"sent {len(self.fds)} file descriptors, not the 3 standard streams")
        return _parse_request(bytes(self.data[4:]))

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        self.conn.close()


def _drop(pending: _Pending, reason: str) -> None:
    print(f"feda2v prefork: dropped a connection from {pending.peer}: {reason}", file=sys.stderr,
          flush=True)
    pending.close()


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
        if "tempfile" in sys.modules:  # the task's TMPDIR, not the one the server saw first
            sys.modules["tempfile"].tempdir = None
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


def _exit_with(parent: int, remove: tuple[str, ...]) -> None:
    """When `feda2v run` is gone, so are we (its tasks watch it themselves), and so are the
    folders it would have removed."""
    import shutil

    while pid_alive(parent):
        time.sleep(0.2)
    # kfp.local's task shells outlive it by a moment and may still `mktemp -d` in there: sweep
    # until the folders have stayed gone for a second.
    gone_since = deadline = time.monotonic()
    deadline += 10
    while time.monotonic() < deadline and time.monotonic() - gone_since < 1:
        if any(os.path.exists(folder) for folder in remove):
            for folder in remove:
                shutil.rmtree(folder, ignore_errors=True)
            gone_since = time.monotonic()
        time.sleep(0.1)
    os._exit(0)


def serve(path: str, parent: int, remove: tuple[str, ...] = ()) -> None:
    """Serve task requests on `path` until process `parent` is gone; then remove the folders
    in `remove` (what `feda2v run` would have removed, had it not been SIGKILLed)."""

    # Ctrl-C reaches the whole process group: feda2v run stops the tasks, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Watched from the start: a feda2v run SIGKILLed while we still import (seconds on a busy
    # machine) must not leave its folders behind.
    threading.Thread(target=_exit_with, args=(parent, remove), daemon=True).start()
    timeout = float(os.environ.get(TIMEOUT_ENV) or REQUEST_TIMEOUT_S)
    for name in CORE:
        _import(name)
    later = list(LATER)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path + ".tmp"
    server.bind(tmp)
    server.listen(64)
    server.setblocking(False)
    os.rename(tmp, path)  # the shims wait for the final name: ready means imported
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    pending: dict[socket.socket, _Pending] = {}  # in arrival order
    running: dict[int, socket.socket] = {}

    def forget(p: _Pending) -> None:
        sel.unregister(p.conn)
        del pending[p.conn]

    while True:
        ready = sel.select(timeout=0 if later else 0.05)
        if not ready and later:
            _import(later.pop(0))  # idle: warm up the next module for the tasks to come
        for key, _ in ready:
            if key.fileobj is server:
                try:
                    conn, _ = server.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:  # out of file descriptors: the next turn may do better
                    print(f"feda2v prefork: could not accept a connection: {e}", file=sys.stderr,
                          flush=True)
                    continue
                conn.setblocking(False)
                p = _Pending(conn, timeout)
                if p.uid is not None and p.uid != os.getuid():
                    _drop(p, "another user's process")
                    continue
                if len(pending) >= MAX_PENDING:
                    oldest = next(iter(pending.values()))
                    forget(oldest)
                    _drop(oldest, f"{MAX_PENDING} connections were already waiting; "
                                  "this one was the oldest")
                pending[conn] = p
                sel.register(conn, selectors.EVENT_READ)
                continue
            p = pending.get(key.fileobj)
            if p is None:
                continue
            try:
                request = p.read()
            except BadRequest as e:
                forget(p)
                _drop(p, str(e))
                continue
            if request is None:
                continue
            forget(p)
            fds, p.fds = p.fds, []
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                server.close()
                p.conn.close()
                for other in pending.values():  # nobody else's streams stay open in a task
                    other.close()
                for other in running.values():
                    other.close()
                _run_child(request, fds)
            for fd in fds:
                os.close(fd)
            running[pid] = p.conn
        now = time.monotonic()
        for p in [p for p in pending.values() if p.deadline < now]:
            forget(p)
            _drop(p, f"sent no whole request within {timeout:g} s"
                     + (f" ({len(p.data)} bytes came)" if p.data else " (nothing came)"))
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
                    conn.send(struct.pack("!i", os.waitstatus_to_exitcode(status)))
                except OSError:  # the shim is gone (or not reading): nobody to tell
                    pass
                conn.close()


def start(folder: str, env: dict, remove: tuple[str, ...] = (), stderr=None) -> tuple[object, str]:
    """Start the server for a local run; returns (process, socket path). The folders in `remove`
    are removed by the server should this process die without doing so (SIGKILL)."""
    import subprocess

    path = os.path.join(folder, "prefork.sock")
    proc = subprocess.Popen([sys.executable, "-m", "feda2v.localrun.prefork", path,
                             str(os.getpid()), *remove], env=env, stderr=stderr)
    return proc, path


def wait_ready(path: str, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), tuple(sys.argv[3:]))
