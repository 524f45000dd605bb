"""Runs that share a storage root and an MLflow experiment own their state: each logs the
generators it trained, a dead run's lease on the checkpoint folder is free at once, and a run
left RUNNING by a dead process is ended by the next one."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

import pytest
from mlflowserver import mlflow_server  # noqa: F401 - fixture

from feda2v.io import config as config_mod
from feda2v.io import owner, runstate, storage, tracking
from feda2v.localrun import run as local_run
from feda2v.orchestration import finish, stages


def _dead_owner() -> str:
    """The token of a process taken while it lived; the process is gone when this returns."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    token = owner.token(proc.pid)
    proc.kill()
    proc.wait()
    return token


def _cfg(tmp_path):
    return config_mod.validate({"storage_root": str(tmp_path / "store"), "global_rounds": 1,
                                "experiment_name": "owners",
                                "feda2v": {"generator_training_mode": True,
                                           "generator_training_rounds": 1}})


# --- 1: each run logs its own generators ------------------------------------------------------

def test_each_run_logs_the_generators_it_trained_not_the_shared_folders(tmp_path):
    """Runs a and b trained at once; b published last. a's MLflow run holds a's files."""
    from mlflow.artifacts import download_artifacts

    from feda2v.federated.generators.checkpoints import checkpoint_uri

    cfg = _cfg(tmp_path)
    mine = {}
    for key in ("a", "b"):
        for i in range(config_mod.num_clients(cfg)):
            data = f"{key} generator of client {i}".encode()
            storage.write_bytes(runstate.generator_state_uri(runstate.run_dir(cfg, key), i), data)
            storage.write_bytes(checkpoint_uri(stages.checkpoint_dir(cfg), i), data)  # b wins
            mine[key, i] = data
    run_id = tracking.create_run(cfg, "a")
    finish.finish_tracking(cfg.to_json(), run_id, "a", "SUCCEEDED", str(tmp_path / "r.md"))
    tags = tracking._client(tracking.tracking_uri(cfg)).get_run(run_id).data.tags
    for i in range(config_mod.num_clients(cfg)):
        local = download_artifacts(run_id=run_id, artifact_path=f"generators/client_{i}_generator.pt",
                                   tracking_uri=tracking.tracking_uri(cfg),
                                   dst_path=str(tmp_path / "dl"))
        with open(local, "rb") as f:
            assert f.read() == mine["a", i]
        assert tags[f"generators.client_{i}.sha256"] == runstate.sha256(mine["a", i])


def test_two_runs_started_in_the_same_second_get_different_names():
    names = {local_run.new_run_name("run1") for _ in range(20)}
    assert len(names) == 20
    assert all(n.startswith("run1-") for n in names)


# --- 2: a lease is held while its holder lives ------------------------------------------------

def test_owner_tokens_tell_live_dead_and_out_of_sight_processes():
    assert owner.alive(owner.token()) is True
    assert owner.alive(_dead_owner()) is False
    here, pid, started = owner.token().rsplit("|", 2)
    assert owner.alive(f"{here}|{pid}|{int(started) + 1}") is False  # the pid, reused
    assert owner.alive(f"elsewhere/pid:[1]|{pid}|{started}") is None   # another host or pod
    assert owner.alive("") is None and owner.alive("garbage|x|y") is None


def test_a_killed_process_not_yet_reaped_counts_as_gone():
    """A SIGKILLed `feda2v run` whose parent has not collected it yet is a zombie: its tasks,
    its fork server and its lease must not wait for the reaping."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    token = owner.token(proc.pid)
    assert owner.pid_alive(proc.pid) and owner.alive(token) is True
    proc.kill()
    deadline = time.monotonic() + 10
    while owner.pid_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not owner.pid_alive(proc.pid)
        assert owner.alive(token) is False
    finally:
        proc.wait()


def test_a_lease_whose_owner_is_dead_is_free_at_once(tmp_path, monkeypatch):
    folder = str(tmp_path / "ckpt")
    monkeypatch.setenv(owner.OWNER_ENV, _dead_owner())
    assert runstate.acquire(folder, "killed")
    assert runstate.lease_holder(folder) is None  # the 2-hour wait is gone
    monkeypatch.delenv(owner.OWNER_ENV)
    assert runstate.publish(folder, "rerun", "client_0_generator.pt", b"rerun")
    assert runstate.lease_holder(folder)["run"] == "rerun"


def _race(folder: str, key: str, barrier, wins) -> None:
    barrier.wait()
    if runstate.acquire(folder, key):
        wins.put(key)
    barrier.wait()  # a winner that exited would free the lease (its owner gone) for the next


def test_runs_racing_for_a_free_folder_leave_it_to_exactly_one(tmp_path):
    """Two `feda2v run` whose generator tasks start together once both took the folder (the
    shared round snapshots then held both runs' files)."""
    ctx = multiprocessing.get_context("fork")
    for attempt in range(4):
        folder = str(tmp_path / f"ckpt{attempt}")
        barrier, wins = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(folder, f"run{i}", barrier, wins))
                 for i in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        winners = [wins.get(timeout=5) for _ in range(wins.qsize())]
        assert len(winners) == 1, (attempt, winners)


def test_a_live_owner_holds_the_lease_past_its_heartbeat(tmp_path, monkeypatch):
    folder = str(tmp_path / "ckpt")
    monkeypatch.setattr(runstate, "LEASE_SECONDS", -1)  # expired at once
    assert runstate.acquire(folder, "alive")
    assert runstate.lease_holder(folder)["run"] == "alive"
    assert not runstate.publish(folder, "other", "client_0_generator.pt", b"other")


def test_an_out_of_sight_owner_holds_the_lease_until_its_heartbeat_expires(tmp_path,
                                                                           monkeypatch):
    folder = str(tmp_path / "ckpt")
    monkeypatch.setenv(owner.OWNER_ENV, "a-pod/pid:[9]|7|12345")
    assert runstate.acquire(folder, "pod")
    assert runstate.lease_holder(folder)["run"] == "pod"
    lease = storage.read_json(storage.join(folder, runstate.LEASE_NAME))
    storage.write_json(storage.join(folder, runstate.LEASE_NAME),
                       dict(lease, expires=time.time() - 1))
    assert runstate.lease_holder(folder) is None


def test_releasing_by_owner_frees_only_that_owners_lease(tmp_path, monkeypatch):
    folder = str(tmp_path / "ckpt")
    monkeypatch.setenv(owner.OWNER_ENV, "a-pod/pid:[9]|7|12345")
    runstate.acquire(folder, "pod")
    assert not runstate.release(folder, owner_token=owner.token())
    assert runstate.lease_holder(folder)["run"] == "pod"
    assert runstate.release(folder, owner_token="a-pod/pid:[9]|7|12345")
    assert runstate.lease_holder(folder) is None


def test_a_killed_runs_lease_is_marked_released_for_hosts_that_cannot_see_it(tmp_path,
                                                                             monkeypatch):
    """What the watchdog does after a SIGKILL: the dead owner's lease is written released, so
    a pod (which cannot see the process) does not wait for the heartbeat either."""
    folder = str(tmp_path / "ckpt")
    dead = _dead_owner()
    monkeypatch.setenv(owner.OWNER_ENV, dead)
    runstate.acquire(folder, "killed")
    assert runstate.release(folder, owner_token=dead)
    assert storage.read_json(storage.join(folder, runstate.LEASE_NAME))["released"] is True


# --- 3: a run left RUNNING by a dead process --------------------------------------------------

def test_the_next_run_ends_a_run_whose_process_is_gone(tmp_path):
    cfg = _cfg(tmp_path)
    stale = tracking.create_run(cfg, "killed", tags={tracking.OWNER_TAG: _dead_owner()})
    client = tracking._client(tracking.tracking_uri(cfg))
    assert client.get_run(stale).info.status == "RUNNING"
    live = tracking.create_run(cfg, "alive", tags={tracking.OWNER_TAG: owner.token()})
    assert client.get_run(stale).info.status == "FAILED"
    assert client.get_run(stale).data.tags["feda2v.ended_by"].startswith("a later run")
    pod = tracking.create_run(cfg, "pod", tags={tracking.OWNER_TAG: "a-pod/pid:[9]|7|12345"})
    tracking.create_run(cfg, "next")
    assert client.get_run(live).info.status == "RUNNING"
    assert client.get_run(pod).info.status == "RUNNING"  # its exit handler ends it


@pytest.mark.parametrize("status", ["FINISHED", "KILLED"])
def test_ended_runs_are_left_as_they_are(tmp_path, status):
    cfg = _cfg(tmp_path)
    run = tracking.create_run(cfg, "done", tags={tracking.OWNER_TAG: _dead_owner()})
    tracking.end_run(cfg, run, status)
    assert tracking.end_stale_runs(cfg) == []
    assert tracking._client(tracking.tracking_uri(cfg)).get_run(run).info.status == status


# --- 3: the MLflow server dies mid-run ----------------------------------------------------------

@pytest.mark.slow
def test_a_run_whose_mlflow_server_dies_fails_in_one_line_and_is_ended_later(
        make_config, tmp_path, mlflow_server):  # noqa: F811
    """The server goes while the federated phase logs its rounds: the user reads which server
    stopped answering and that the pipeline failed, no traceback; once the server is back, the
    next run ends the one left RUNNING. (The run talks to the server through a proxy that
    dies; the server behind it lives on, standing for the server back.)"""
    import json
    from urllib.parse import urlparse

    from mlflowserver import TcpProxy

    proxy = TcpProxy(("127.0.0.1", urlparse(mlflow_server).port))
    uri = f"http://127.0.0.1:{proxy.port}"
    try:
        cfg = make_config(global_rounds=40, mlflow_tracking_uri=uri, experiment_name="dying",
                          feda2v={"use_generator": False, "generator_training_mode": False})
        path = tmp_path / "config.json"
        path.write_text(json.dumps(cfg.to_dict()))
        proc = subprocess.Popen([sys.executable, "-m", "feda2v.cli", "run", "--config", str(path)],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "=== Round 3/40" in line:
                break
    finally:
        proxy.stop()
    try:
        out = "".join(seen) + proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out and "Max retries" not in out, out[-3000:]
    # The phase task's own error, through the fork server's shim to kfp.local and the exit
    # code of `feda2v run` (tasks are forked from a pre-imported server).
    assert f"MLflow tracking server {uri} stopped answering" in out
    assert "Task 'federated-phase' finished with status FAILURE" in out
    assert "feda2v run: pipeline failed" in out
    assert "left RUNNING: the next feda2v run ends it FAILED" in out
    cfg = cfg.replace(mlflow_tracking_uri=mlflow_server)  # the server, back
    client = tracking._client(mlflow_server)
    exp = client.get_experiment_by_name(cfg.experiment_name)
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "RUNNING"
    tracking.create_run(cfg, "next")
    assert client.get_run(run.info.run_id).info.status == "FAILED"


def test_an_mlflow_call_to_a_server_that_is_gone_is_one_line_naming_it(tmp_path):
    import socket

    from mlflow.tracking import MlflowClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        uri = f"http://alice:secret@127.0.0.1:{s.getsockname()[1]}"
    client = tracking._Answering(MlflowClient(tracking_uri=uri), uri)
    with pytest.raises(ConnectionError) as e:
        client.get_run("0" * 32)
    assert str(e.value) == ("MLflow tracking server http://***@127.0.0.1:"
                            f"{uri.rsplit(':', 1)[1]} stopped answering (get_run): "
                            "is it still running?")
    with pytest.raises(Exception, match="RESOURCE_DOES_NOT_EXIST|not found|No such") as e:
        tracking._Answering(MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db"),
                            "sqlite").get_run("0" * 32)  # other errors pass as they are
    assert not isinstance(e.value, ConnectionError)


def test_a_run_refused_the_folder_once_never_publishes_into_it(tmp_path):
    """Run b's generators start while live run a holds the shared folder; a is done (its lease
    released) by b's second round. b publishes nothing, then or later, on any client: the
    folder's latest and round snapshots all stay a's."""
    import torch

    from feda2v.federated.generators import training

    cfg = config_mod.validate({
        "storage_root": str(tmp_path / "store"), "seed": 0,
        "feda2v": {"generator_training_mode": True, "generator_training_rounds": 2,
                   "generator_training_epochs": 1, "generator_hidden_dim": 8,
                   "generator_latent_dim": 2, "generator_save_every": 1}})
    folder = stages.checkpoint_dir(cfg)
    torch.manual_seed(0)
    x, y = torch.randn(8, 2, 4), torch.tensor([0] * 4 + [1] * 4)
    runs = {key: runstate.run_dir(cfg, key) for key in ("a", "b")}
    for run in runs.values():
        for r in (1, 2):
            storage.save_tensors(runstate.conditions_uri(run, 0, r),
                                 {"ids": torch.tensor([0, 1]), "means": torch.randn(2, 6)})
    training.train_client(cfg, 0, runs["a"], "a", x, y, ["zero", "one"], 2, folder)
    assert runstate.lease_holder(folder)["run"] == "a"  # a is live (this process) and holds it
    published = {f: storage.read_bytes(storage.join(folder, f)) for f in os.listdir(folder)
                 if f.endswith(".pt")}
    assert len(published) == 3  # latest and two round snapshots

    def release_after_round_1(r, loss):
        if r == 1:
            runstate.release(folder, "a")  # a's exit handler

    training.train_client(cfg, 0, runs["b"], "b", x, y, ["zero", "one"], 2, folder,
                          on_round=release_after_round_1)
    assert storage.read_json(runstate.publish_refused_uri(runs["b"]))["held_by"] == "a"
    assert {f: storage.read_bytes(storage.join(folder, f)) for f in os.listdir(folder)
            if f.endswith(".pt")} == published
    assert storage.load_checkpoint(runstate.generator_state_uri(runs["b"], 0))["run"] == "b"
