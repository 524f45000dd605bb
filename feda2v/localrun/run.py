"""`feda2v run`: execute the compiled pipeline locally with kfp.local's SubprocessRunner.

kfp.local echoes every task's executor input and output; the full stream goes to a log file
and the terminal shows only the library's own lines (tagged via FEDA2V_LOG_TAG), then the
results table and where everything was written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone

from feda2v import patches
from feda2v.evaluation import report
from feda2v.io import config as config_mod
from feda2v.io import owner, runstate, storage, tracking
from feda2v.io.config import Config
from feda2v.io.log import PROGRESS_ENV, TAG, TAG_ENV, TerminalEcho
from feda2v.localrun import docker
from feda2v.orchestration import preflight

PYTHON = sys.executable  # the real interpreter (during a run sys.executable is the prefork shim)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def resolve_local_paths(cfg: Config) -> Config:
    """Tasks may run in another folder: make relative local paths absolute. Values that are not
    existing local paths (hub ids, s3:// URLs) are left alone."""
    data = {}
    if storage.is_local(cfg.data.dataset_uri):
        data["dataset_uri"] = storage.absolute(cfg.data.dataset_uri)
    models = {key: os.path.abspath(getattr(cfg.models, key))
              for key in ("audio_model", "text_model") if os.path.exists(getattr(cfg.models, key))}
    return cfg.replace(storage_root=storage.absolute(cfg.storage_root), data=data, models=models)


@contextmanager
def _filtered_output(log_path: str):
    """Send fds 1 and 2 (ours and every task subprocess's) to `log_path`; echo tagged lines."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
    echo = TerminalEcho(terminal) if terminal.isatty() else terminal

    def pump():
        with os.fdopen(read_fd, "r", errors="replace") as src, open(log_path, "w") as log_file:
            for line in src:
                line = tracking.redact(line)  # no user:password@ of any URL reaches a file
                log_file.write(line)
                plain = ANSI.sub("", line)
                if TAG in plain:
                    echo.write(plain.split(TAG, 1)[1])
                elif "finished with status FAILURE" in plain:
                    echo.write(plain.strip() + "\n")

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        thread.join(timeout=10)
        terminal.close()


ERROR_LINE = re.compile(r"^\s*(\w+\.)*\w*(Error|Exception|Interrupt)\b.*: .+")


def first_task_error(log_path: str) -> str:
    """The first failed task and the error it raised, out of kfp.local's verbose log."""
    with open(log_path, errors="replace") as f:
        lines = [ANSI.sub("", line).rstrip() for line in f]
    for i, line in enumerate(lines):
        if "finished with status FAILURE" in line:
            errors = [e.strip() for e in lines[:i] if ERROR_LINE.match(e)]
            task = line.split("Task ", 1)[-1].split(" finished")[0]
            return f"task {task} failed: " + (errors[-1] if errors else "(no error line; see the log)")
    return ""


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (ps works on Linux and macOS alike)."""
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True,
                         check=False).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_descendants(grace_s: float = 5.0) -> int:
    """SIGTERM every task process this one started, SIGKILL what is left after `grace_s`."""
    pids = [p for p in _descendants(os.getpid()) if p != _watchdog_pid]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline:
            alive = [p for p in pids if _alive(p)]
            if not alive:
                return len(pids)
            time.sleep(0.1)
    return len(pids)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


_watchdog_pid = -1


class Stopped(BaseException):
    """SIGTERM (or SIGINT) reached `feda2v run`."""


def _stop_tasks_until(unwound: threading.Event) -> None:
    while not unwound.is_set():
        stop_descendants(grace_s=2.0)
        unwound.wait(0.2)


def _start_watchdog(cfg: Config, run_id: str):
    """A small process that outlives a SIGKILL of this one: when our end of its pipe closes
    without a word, it marks the MLflow run KILLED. (Task processes notice the lost parent
    themselves: feda2v.orchestration.runtime.task_setup.)"""
    global _watchdog_pid
    proc = subprocess.Popen([PYTHON, "-m", "feda2v.localrun.watchdog"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, text=True)
    # The config travels on the pipe, never on a command line (ps shows those to everyone).
    proc.stdin.write(json.dumps({"config": cfg.to_dict(), "run_id": run_id,
                                 "parent": os.getpid(), "owner": owner.token()}) + "\n")
    proc.stdin.flush()
    _watchdog_pid = proc.pid
    return proc


def _stop_watchdog(proc) -> None:
    try:
        proc.stdin.write("done\n")
        proc.stdin.close()
    except (BrokenPipeError, ValueError):
        pass
    proc.wait(timeout=30)


@contextmanager
def _task_tmpdir():
    """A TMPDIR of the run's own for its tasks, removed when the run ends (the prefork server
    removes it should `feda2v run` be SIGKILLed). kfp.local's task command is
    `program_path=$(mktemp -d); printf ... > "$program_path/ephemeral_component.py"; ...`
    (kfp.dsl.component_factory) and nothing removes it: one /tmp/tmp.* folder per task, for ever.
    This process keeps the temporary folder it had (tempfile caches it in mkdtemp below)."""
    folder = tempfile.mkdtemp(prefix="feda2v-tasks-")
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = folder
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before
        shutil.rmtree(folder, ignore_errors=True)


# Unix socket paths hold at most 107 bytes; the server binds FOLDER/prefork.sock.tmp.
SOCKET_FOLDER_MAX = 107 - len("/prefork.sock.tmp")


def _start_prefork(remove: tuple[str, ...] = ()):
    """Pre-imported task processes (feda2v.localrun.prefork). kfp.local's SubprocessRunner puts
    sys.executable in every task command, so for the run sys.executable is the shim."""
    from feda2v.localrun import prefork

    folder = tempfile.mkdtemp(prefix="feda2v-prefork-")
    if len(folder) > SOCKET_FOLDER_MAX:  # a long $TMPDIR: the socket could not be bound there
        os.rmdir(folder)
        folder = tempfile.mkdtemp(prefix="feda2v-prefork-", dir="/tmp")
    shim = os.path.join(prefork.write_shim(folder), "python3")
    proc, path = prefork.start(folder, dict(os.environ), remove=(folder, *remove))
    os.environ[prefork.SOCKET_ENV] = path
    os.environ[prefork.PID_ENV] = str(proc.pid)
    real, sys.executable = sys.executable, shim
    return proc, folder, real


def _stop_prefork(started) -> None:
    from feda2v.localrun import prefork

    if started is None:
        return
    proc, folder, real = started
    sys.executable = real
    proc.kill()
    proc.wait(timeout=30)
    os.environ.pop(prefork.SOCKET_ENV, None)
    os.environ.pop(prefork.PID_ENV, None)
    shutil.rmtree(folder, ignore_errors=True)


def local_state(cfg: Config, pipeline_root: str = "") -> tuple[Config, str, str]:
    """Where a local run keeps what is not the storage root's: (the config, with local paths
    made absolute and, for an object-store root without a tracking URI, a SQLite MLflow store;
    the local folder; kfp.local's pipeline root). With an object-store root that folder is
    ./.feda2v-local: tensors and checkpoints go to the store, the run's tracking stays here."""
    cfg = resolve_local_paths(cfg)
    root = cfg.storage_root
    local_root = storage.local_path(root) if storage.is_local(root) else os.path.abspath(".feda2v-local")
    pipeline_root = os.path.abspath(pipeline_root or os.path.join(local_root, "kfp-local"))
    if not storage.is_local(root) and not (cfg.mlflow_tracking_uri
                                           or os.environ.get("MLFLOW_TRACKING_URI")):
        cfg = cfg.replace(mlflow_tracking_uri="sqlite:///" + os.path.join(local_root, "mlflow.db"))
    return cfg, local_root, pipeline_root


def run_locally(cfg: Config, kind: str, build, pipeline_root: str | None = None,
                execution: str | None = None, prefork: bool = True, runner: str = "subprocess",
                image: str = "") -> int:
    """Run pipeline `kind` under kfp.local. `build(task_cfg, execution)` gives the pipeline
    function (the front builds it: the library does not import pipelines/)."""

    from feda2v.orchestration import runtime

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # retries: the error that follows says it
    execution = execution or cfg.execution
    cfg, local_root, pipeline_root = local_state(cfg, pipeline_root)
    root = cfg.storage_root
    preflight.check(cfg, "local")
    task_cfg, withheld = config_mod.withhold_credentials(cfg)
    if not storage.is_local(root):
        os.makedirs(local_root, exist_ok=True)
    plan = [] if kind == "ablations" else runtime.plan(cfg.replace(pipeline=kind))
    task_env = {TAG_ENV: TAG,
                # A person watches: progress lines every second, drawn as a bar (TerminalEcho).
                **({PROGRESS_ENV: "1"} if sys.stdout.isatty() else {}),
                # Client tasks run two at a time (kfp.local's ParallelFor cap): half the cores.
                runtime.LOCAL_CORES_ENV: str(runtime.available_cores()),
                runtime.LOCAL_PARALLEL_ENV: str(min(2, config_mod.num_clients(cfg))),
                runtime.PARENT_ENV: str(os.getpid()),
                # The lease on the checkpoint folder and the MLflow run name this process as
                # their owner: gone, it frees them (runstate.lease_holder, tracking.end_stale_runs).
                owner.OWNER_ENV: owner.token()}
    if withheld:
        task_env[config_mod.CREDENTIALS_ENV] = json.dumps(withheld)
    os.environ.update(task_env)
    started = None
    try:
        with _task_tmpdir() as task_tmp:
            try:
                # First: the server imports while this process compiles and creates the MLflow
                # run.
                started = (_start_prefork(remove=(task_tmp,))
                           if prefork and runner == "subprocess" else None)
                return _run(cfg, task_cfg, kind, build, plan, local_root, pipeline_root,
                            execution, runner, image)
            finally:
                _stop_prefork(started)  # before the tasks' TMPDIR goes
    finally:
        for key in task_env:
            os.environ.pop(key, None)


def new_run_name(kind: str) -> str:
    """`{kind}-{UTC time}-{4 hex}`: two runs started in the same second are told apart."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{kind}-{stamp}-{os.urandom(2).hex()}"


def _release_lease(cfg: Config) -> None:
    """A run that did not reach its exit handler frees the checkpoint folder it held."""
    try:
        runstate.release(runstate.checkpoint_dir(cfg), owner_token=owner.token())
    except Exception as e:  # noqa: BLE001 - a dead store must not hide the run's own failure
        print(f"feda2v run: could not release the lease on {runstate.checkpoint_dir(cfg)}: {e}",
              file=sys.stderr)


def _end_run(cfg: Config, run_id: str, status: str) -> bool:
    """End the MLflow run of a failed or stopped run; False (and one line) when the server is
    not there to hear it."""
    try:
        tracking.end_run(cfg, run_id, status)
        return True
    except ConnectionError as e:
        print(f"feda2v run: {e}", file=sys.stderr)
        return False


def _run(cfg: Config, task_cfg: Config, kind: str, build, plan: list, local_root: str,
         pipeline_root: str, execution: str, runner: str, image: str) -> int:
    """`cfg` is for this process; the tasks get `task_cfg`, whose credentials travel in their
    environment (config.CREDENTIALS_ENV), not on their command lines."""
    from kfp import local

    root = cfg.storage_root
    run_name = new_run_name(kind)
    run_id = tracking.create_run(cfg, run_name)
    log_path = os.path.join(local_root, "logs", f"{run_name}-{run_id[:8]}.log")
    print(f"FedA2V {kind}: " + (", ".join(f"{p} x {n} rounds" for p, n in plan) or "variants")
          + f", {config_mod.num_clients(cfg)} clients, {execution} execution under kfp.local")
    print(f"  full task log: {log_path}")

    if runner == "docker":
        os.makedirs(pipeline_root, exist_ok=True)
        task_runner = docker.docker_runner(cfg, pipeline_root, run_id)
        docker.install_container_runner()
        print(f"  every task in:  {image}")
    else:
        task_runner = local.SubprocessRunner(use_venv=False)
    pipeline = build(task_cfg, execution)
    local.init(runner=task_runner, pipeline_root=pipeline_root, raise_on_error=True)
    watchdog = _start_watchdog(cfg, run_id)
    start = time.monotonic()
    failure, status = None, "FINISHED"

    unwound = threading.Event()

    def stop(signum, frame):
        # kfp.local lets every running and queued task of a ParallelFor finish before an
        # exception leaves it: end each task process as it starts until the call has unwound.
        threading.Thread(target=_stop_tasks_until, args=(unwound,), daemon=True).start()
        raise Stopped(signal.Signals(signum).name)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _filtered_output(log_path), patches.kfp_local_plain_print(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pipeline(mlflow_run_id=run_id)
            except Stopped as e:
                failure, status = f"stopped by {e}", "KILLED"
            except Exception as e:  # noqa: BLE001 - kfp.local raises on the first failed task
                failure, status = e, "FAILED"
            finally:
                unwound.set()
                if failure is not None:
                    stop_descendants()
                    if runner == "docker":
                        docker.stop_containers(run_id)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        ended = True
        if failure is not None:
            _release_lease(cfg)
            ended = _end_run(cfg, run_id, status)
        _stop_watchdog(watchdog)
    minutes = (time.monotonic() - start) / 60
    if failure is not None:
        cause = first_task_error(log_path)
        if cause:
            print(cause, file=sys.stderr)
        print(f"feda2v run: pipeline {status.lower()} after {minutes:.1f} min: "
              f"{ANSI.sub('', str(failure))}\n"
              f"  MLflow run {run_id} " + (f"marked {status}" if ended else
                                           "left RUNNING: the next feda2v run ends it FAILED")
              + f"\n  full log: {log_path}", file=sys.stderr)
        return 130 if status == "KILLED" else 1
    if kind == "ablations":  # the report task printed the table; its runs nest under run_id
        tracking.end_run(cfg, run_id, "FINISHED")
        print(f"\nFedA2V ablations finished in {minutes:.1f} min (MLflow parent run {run_id}; "
              f"HTML report under {pipeline_root})")
        return 0
    n = config_mod.num_clients(cfg)
    _, history = tracking.run_info(cfg, run_id, report.result_keys(n))
    rows = report.results_rows(plan, history, n)
    print(f"\nFedA2V {kind} finished in {minutes:.1f} min\n")
    print(report.results_table(rows))
    print(f"\n  storage root:       {root}")
    if any(p == "run1" for p, _ in plan):
        print(f"  generator ckpts:    {runstate.checkpoint_dir(cfg)}")
    print(f"  task artifacts:     {pipeline_root}")
    key = tracking.run_record(cfg, run_id)["tags"].get("feda2v.run_key", "")
    page = storage.join(runstate.report_dir(cfg, key), "report.html") if key else ""
    if page and storage.exists(page):
        print(f"  report:             {page}")
    print(f"  MLflow:             {tracking.redact(tracking.tracking_uri(cfg))} "
          f"(experiment '{cfg.experiment_name}', run {run_id})")
    print(f"  task log:           {log_path}")
    return 0
