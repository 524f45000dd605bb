"""Which process owns a run, and whether it still lives.

A token names a process by host, process namespace, pid and start time: a pid is the same
process only within one host and namespace, and a reused pid has another start time. From
another host or namespace (a pod, a container) liveness cannot be seen: alive() says None.
"""

from __future__ import annotations

import os

OWNER_ENV = "FEDA2V_RUN_OWNER"  # set by `feda2v run` for its tasks: the token of its process


def _where() -> str:
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{os.uname().nodename}/{namespace}"


def _started(pid: int) -> str:
    """When process `pid` started (clock ticks since boot), "" when it is gone: no such process,
    or a zombie (dead, its exit status not yet collected by its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return "" if len(fields) < 20 or fields[0] in ("Z", "X") else fields[19]


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not; where /proc is missing, it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    return bool(_started(pid)) or not os.path.isdir("/proc")


def token(pid: int | None = None) -> str:
    """The token of process `pid` (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{_where()}|{pid}|{_started(pid)}"


def alive(owner: str) -> bool | None:
    """True or False when the owner's process can be seen from here, None when it cannot."""
    try:
        where, pid, started = owner.rsplit("|", 2)
        number = int(pid)
    except ValueError:
        return None
    if where != _where() or not started:
        return None
    return _started(number) == started
