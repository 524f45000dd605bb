"""A `feda2v run` that stops early: signals (SIGTERM, SIGKILL) while tasks train; and what
kfp.local's internals would do to such runs. (A task failing through the fork server:
test_run_ownership.py's dying MLflow server; the exit handler ending a run FAILED:
test_local_run.py's structural key.)"""

import os
import signal
import subprocess
import sys
import time

import pytest
from test_local_run import _runs, _write

from feda2v.io import runstate, storage
from feda2v.orchestration import stages


def _task_processes(parent_pid):
    """Processes started under `feda2v run` (its tasks carry its pid in their environment)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"FEDA2V_PARENT_PID={parent_pid}".encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_run_stopped_inside_a_client_loop_ends_without_waiting_for_its_tasks(make_config,
                                                                              tmp_path, sig):
    """SIGTERM while the generator tasks of a ParallelFor train (for minutes): kfp.local would
    let them finish before the signal's exception left the loop; the run ends in seconds. The
    lease the generators took on the checkpoint folder is free at once, on either signal. And
    every task left a /tmp/tmp.*/ephemeral_component.py (364 on one machine): a stopped run
    leaves none, nor a folder of its own, under the user's TMPDIR (SIGTERM: `feda2v run`
    removes its tasks' TMPDIR; SIGKILL: the fork server does, when it sees `feda2v run` gone)."""
    cfg = make_config(global_rounds=1, feda2v={"generator_training_mode": True,
                                               "generator_training_rounds": 1,
                                               "generator_training_epochs": 10000})
    path = _write(cfg, tmp_path)
    tmp = tmp_path / "tmp"  # the user's TMPDIR: where `mktemp -d` put them
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "feda2v.cli", "run", "--config", path,
                             "--pipeline", "run1"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, TMPDIR=str(tmp)))
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:  # wait until both clients' generator tasks train
            if "Epoch 10/10000" in line or time.monotonic() > deadline:
                break
        assert _task_processes(proc.pid), "no task was running"
        assert runstate.lease_holder(stages.checkpoint_dir(cfg)) is not None
        assert list(tmp.rglob("ephemeral_component.py"))  # what must go
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (130 if sig == signal.SIGTERM else -9), out[-3000:]
    deadline = time.monotonic() + 30
    while _task_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _task_processes(proc.pid)
    while (list(tmp.rglob("ephemeral_component.py")) or list(tmp.glob("feda2v-*"))) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(tmp.rglob("ephemeral_component.py")) == []
    assert list(tmp.glob("feda2v-*")) == []
    assert runstate.lease_holder(stages.checkpoint_dir(cfg)) is None  # no 2-hour wait
    lease = storage.read_json(storage.join(stages.checkpoint_dir(cfg), runstate.LEASE_NAME))
    deadline = time.monotonic() + 30  # after a SIGKILL the watchdog writes it
    while not lease.get("released") and time.monotonic() < deadline:
        time.sleep(0.5)
        lease = storage.read_json(storage.join(stages.checkpoint_dir(cfg), runstate.LEASE_NAME))
    assert lease["released"] is True  # for hosts that cannot see the process either
    client, runs = _runs(cfg)
    assert client.get_run(runs[0].info.run_id).info.status == "KILLED"


def test_parallel_tasks_leave_print_alone():
    """kfp.local swaps builtins.print around each task; two tasks in parallel interleave the
    swaps and leave a wrapper behind (one more per task, until printing is the run's work).
    Inside feda2v's local runs print stays as it is."""
    import builtins

    from kfp.local import logging_utils

    from feda2v import patches

    real, kfp_indent = builtins.print, logging_utils.indented_print

    def two_tasks():
        a, b = logging_utils.indented_print(), logging_utils.indented_print()
        a.__enter__()
        b.__enter__()
        a.__exit__(None, None, None)
        b.__exit__(None, None, None)

    try:
        two_tasks()
        assert builtins.print is not real  # the leak, as kfp.local does it
    finally:
        builtins.print = real
    with patches.kfp_local_plain_print():
        two_tasks()
        assert builtins.print is real
    assert logging_utils.indented_print is kfp_indent


def test_a_task_container_is_removed_only_after_its_exit_code_is_read():
    """`--runner docker`: podman answers an inspect of an auto-removed container with 500, which
    kfp.local does not expect; our container start reads the exit code, then removes it."""
    from feda2v.localrun import docker

    calls = []

    class Container:
        def logs(self, stream, follow):
            calls.append("logs")
            return iter([b"task output\\n"])

        def wait(self):
            calls.append("wait")
            return {"StatusCode": 3}

        def remove(self, force):
            calls.append("remove")

    class Containers:
        def run(self, **kwargs):
            calls.append(("run", kwargs["image"], "auto_remove" in kwargs))
            return Container()

    client = type("Client", (), {"containers": Containers()})()
    assert docker.run_container(client, "localhost/feda2v", ["x"], {}, user="1:1") == 3
    assert calls == [("run", "localhost/feda2v:latest", False), "logs", "wait", "remove"]
    assert docker.run_container(client, "reg:5000/feda2v:cpu-1", ["x"], {}) == 3
    assert calls[4] == ("run", "reg:5000/feda2v:cpu-1", False)
