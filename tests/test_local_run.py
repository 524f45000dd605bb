"""Whole pipelines through kfp.local (the same compiled DAGs a cluster runs), on tiny data:
what only a real run shows — the DAG wiring, both execution modes giving the same numbers,
MLflow runs that always end, killed and concurrent runs, an S3 storage root."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from s3server import s3_env, s3_server  # noqa: F401 - fixtures

from feda2v.io import runstate, storage, tracking
from feda2v.orchestration import finish, stages


@pytest.fixture
def preforked():
    """Tasks of an in-process kfp.local run forked from a pre-imported server, as under
    `feda2v run`: a fresh interpreter per task spends seconds importing torch, kfp and mlflow."""
    from feda2v.localrun import prefork
    from feda2v.localrun import run as local_run

    started = local_run._start_prefork()
    try:
        prefork.wait_ready(os.environ[prefork.SOCKET_ENV])
        yield
    finally:
        local_run._stop_prefork(started)


def _write(cfg, tmp_path, name="config.json"):
    path = str(tmp_path / name)
    with open(path, "w") as f:
        json.dump(cfg.to_dict(), f)
    return path


def _run(config_path, pipeline, cwd, *extra, env=None):
    proc = subprocess.run([sys.executable, "-m", "feda2v.cli", "run", "--config", config_path,
                           "--pipeline", pipeline, *extra], check=False, cwd=cwd,
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def _runs(cfg):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(cfg))
    exp = client.get_experiment_by_name(cfg.experiment_name)
    return client, client.search_runs([exp.experiment_id], order_by=["start_time ASC"])


def _history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


@pytest.mark.slow
def test_run1_then_run2_under_kfp_local(make_config, tmp_path, monkeypatch):
    # The seed's two separate runs: Run 2 starts from the initial adapter, so its 2 rounds learn
    # through the server's whole training step (the seed's mix of 1).
    cfg = make_config(feda2v={"generator_save_every": 2, "generator_training_mode": True,
                              "global_model_train_mix": 1.0})
    path = _write(cfg, tmp_path)

    out1 = _run(path, "run1", tmp_path)
    assert "[Client 0] Initializing vae generator" in out1
    assert "[Client 1] Saved generator checkpoint to" in out1
    ckpts = sorted(f for f in os.listdir(tmp_path / "store" / "checkpoints" / "generators")
                   if f.endswith(".pt"))
    assert ckpts == ["client_0_generator.pt", "client_0_generator_round_2.pt",
                     "client_1_generator.pt", "client_1_generator_round_2.pt"]

    embedded = _artifact(tmp_path / "store" / "kfp-local", 1, "extract", "embeddings")
    assert embedded.read_bytes() == storage.read_bytes(stages.embeddings_uri(cfg, 1))
    checkpoint = _artifact(tmp_path / "store" / "kfp-local", 1, "train-generator", "checkpoint")
    assert checkpoint.read_bytes() == (tmp_path / "store" / "checkpoints" / "generators" /
                                       "client_1_generator.pt").read_bytes()

    out2 = _run(path, "run2", tmp_path)
    assert "[Client 1] Loaded VAE generator from round 2" in out2
    assert "Generator checkpoint loaded successfully" in out2 and "sha256" in out2
    assert "[Server] Aggregated 64 synthetic samples across 4 classes" in out2
    assert "global acc" in out2  # the results table

    client, runs = _runs(cfg)
    assert len(runs) == 2  # one MLflow run per pipeline run
    run1, run2 = runs
    assert run1.info.status == run2.info.status == "FINISHED"
    from feda2v.io.tracking import source_tags

    for run in (run1, run2):  # what made it, and which KFP run it tracks
        assert {k: run.data.tags.get(k) for k in source_tags()} == source_tags()
        assert run.data.tags["kfp.run_id"] == run.data.tags["feda2v.run_key"]
        # the exit handler's results table, beside the run's state in storage
        table = storage.read_bytes(finish.report_uri(cfg, run.data.tags["feda2v.run_key"]))
        assert table.decode().startswith("# FedA2V results (succeeded)")
        assert "| phase | round | global acc |" in table.decode()
    gen = client.get_metric_history(run1.info.run_id, "train/node_0/generator_loss")
    assert [m.step for m in gen] == [1, 2]
    assert gen[-1].value < gen[0].value
    total = client.get_metric_history(run2.info.run_id, "server/synthetic_samples_total")
    assert [m.value for m in total] == [64, 64]
    classes = client.get_metric_history(run2.info.run_id, "server/synthetic_samples_classes")
    assert classes[-1].value == 4
    acc = client.get_metric_history(run2.info.run_id, "eval/global_accuracy")
    assert [m.step for m in acc] == [1, 2]
    assert acc[-1].value >= 0.5  # chance is 1/4
    assert run2.data.params["feda2v.global_model_train"] == "true"
    assert any(k.startswith("quality/node_1/") for k in run2.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run2.info.run_id)}
    assert {"model", "report"} <= artifacts
    generators = {a.path for a in client.list_artifacts(run1.info.run_id, "generators")}
    assert generators == {"generators/client_0_generator.pt", "generators/client_1_generator.pt"}
    import mlflow

    logged = {m.source_run_id: m for m in client.search_logged_models([run2.info.experiment_id])}
    assert set(logged) == {run1.info.run_id, run2.info.run_id}  # each run's global adapter
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # for models:/ URIs
    info = mlflow.models.get_model_info(f"models:/{logged[run2.info.run_id].model_id}")
    assert info.signature is not None and info.saved_input_example_info is not None


def _artifact(root, client_id, task, name):
    """The `name` output artifact of client `client_id`'s `task` in a kfp.local run under root."""
    import glob

    found = glob.glob(f"{root}/*/for-loop-*-iteration-{client_id}/{task}/{name}")
    assert len(found) == 1, (task, name, found)
    return Path(found[0])


def _phase_artifact(root, name):
    """The `name` output of the Run 1 phase task of the one kfp.local run under root."""
    import glob

    found = [p for p in glob.glob(f"{root}/*/federated-phase*/{name}")
             if json.loads(Path(p).parent.joinpath("executor_output.json").read_text())
             ["artifacts"][name]["artifacts"][0]["metadata"]["phase"] == "run1"]
    assert len(found) == 1, found
    return Path(found[0])


def _final_adapter(root, key, phase, rounds):
    return storage.load_tensors(os.path.join(root, "runs", key, phase, f"round_{rounds}",
                                             "global.safetensors"))[0]


@pytest.mark.slow
def test_phase_round_and_experiment_give_the_same_numbers(make_config, tmp_path, preforked):
    """One config and seed, three ways: a phase-execution pipeline compiled for 3 Run 2 rounds
    and other client epochs but run with the run-time parameters global_rounds=1 and
    local_epochs, a round-execution pipeline compiled for 1, and `feda2v experiment`. Same
    final adapter, same metrics at every step."""
    from kfp import local

    import pipelines
    from feda2v.orchestration.experiment import run_experiment

    cfg = make_config(global_rounds=1, feda2v={"generator_training_rounds": 2,
                                               "generator_training_mode": True})
    store = cfg.storage_root
    _run(_write(cfg, tmp_path), "end_to_end", tmp_path, "--execution", "round")
    client, (round_run,) = _runs(cfg)

    # Compiled for other rounds and epochs, run with the form's typed fields set back.
    compiled_for_3 = cfg.replace(global_rounds=3, local_epochs=cfg.local_epochs + 2)
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "kfp"), raise_on_error=True)
    phase_id = tracking.create_run(cfg, "phase")
    pipelines.build(compiled_for_3, "end_to_end", pipelines.ClusterOptions.local(), "phase")(
        mlflow_run_id=phase_id, global_rounds=1, local_epochs=cfg.local_epochs)
    experiment = run_experiment(cfg, ["synthetic"], "same")

    keys = [client.get_run(r).data.tags["feda2v.run_key"] for r in (round_run.info.run_id,
                                                                    phase_id)]
    finals = [_final_adapter(store, key, "run2", 1) for key in keys]
    finals.append(storage.load_tensors(os.path.join(experiment["dir"], "synthetic", "run2",
                                                    "round_1", "global.safetensors"))[0])
    for other in finals[1:]:
        assert all(torch.allclose(finals[0][k], v, atol=1e-5) for k, v in other.items())
    child = experiment["results"][0]["run_id"]
    for key in ("eval/global_accuracy", "train/node_1/generator_loss",
                "server/synthetic_samples_total"):
        seen = [_history(client, r, key) for r in (round_run.info.run_id, phase_id, child)]
        assert seen[0] and seen[0] == seen[1], key
        assert [s for s, _ in seen[2]] == [s for s, _ in seen[0]], key
        assert [v for _, v in seen[2]] == pytest.approx([v for _, v in seen[0]], abs=1e-4), key
    # Lineage: embeddings, class conditions, generator checkpoints and synthetic samples are
    # typed artifacts holding the storage-root copies' bytes; the samples' source shows that
    # generation read the checkpoint artifact (the other reads: unit tests).
    root = tmp_path / "kfp"
    for i in range(2):
        embedded = _artifact(root, i, "extract", "embeddings")
        assert embedded.read_bytes() == storage.read_bytes(stages.embeddings_uri(cfg, i))
        checkpoint = _artifact(root, i, "train-generator", "checkpoint")
        own = runstate.generator_state_uri(runstate.run_dir(cfg, keys[1]), i)
        assert checkpoint.read_bytes() == storage.read_bytes(own)
        for r in (1, 2):  # the Run 1 phase's class conditions, which the generators read
            copy = runstate.conditions_uri("", i, r, str(_phase_artifact(root, "conditions")))
            assert storage.read_bytes(copy) == storage.read_bytes(
                runstate.conditions_uri(runstate.run_dir(cfg, keys[1]), i, r))
        samples = _artifact(root, i, "generate", "samples")
        assert storage.read_meta(str(samples))["source"] == str(checkpoint)
    phase = client.get_run(phase_id)
    assert phase.info.status == "FINISHED"
    assert phase.data.params["global_rounds"] == "1"  # MLflow records what took effect
    assert phase.data.params["local_epochs"] == str(cfg.local_epochs)
    assert phase.data.params["feda2v.phases"] == "run1:2,run2:1"


@pytest.mark.slow
def test_a_structural_key_changed_at_run_time_fails_the_first_tasks(make_config, tmp_path,
                                                                    preforked):
    """The run form's config_json turns generators off, but the DAG has generator tasks: the
    first tasks fail naming the key and its compiled value, the exit handler still ends the
    MLflow run, and nothing was trained."""
    from kfp import local

    import pipelines

    cfg = make_config(feda2v={"generator_training_mode": True})
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "kfp"), raise_on_error=False)
    run_id = tracking.create_run(cfg, "edited")
    edited = cfg.to_dict()
    edited["feda2v"].update(use_generator=False, generator_training_mode=False)
    start = time.monotonic()
    task = pipelines.build(cfg, "run1", pipelines.ClusterOptions.local())(
        config_json=json.dumps(edited), mlflow_run_id=run_id)
    assert time.monotonic() - start < 120
    client, _ = _runs(cfg)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert task is not None
    assert not os.path.exists(os.path.join(cfg.storage_root, "checkpoints"))
    with open(client.download_artifacts(run_id, "report/results.md", str(tmp_path))) as f:
        report = f.read()
    assert "failed" in report, report
    assert "'feda2v.use_generator' is false in config_json but the pipeline was compiled " \
           "with true" in report


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
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_run_leaves_no_task_and_no_running_mlflow_run(make_config, tmp_path, sig):
    cfg = make_config(global_rounds=40, local_epochs=1,
                      feda2v={"generator_training_mode": True})
    path = _write(cfg, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "feda2v.cli", "run", "--config", path,
                             "--pipeline", "run1"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # wait until the federated phase task is training
        if "=== Round 2/40 (run1) ===" in line or time.monotonic() > deadline:
            break
    assert _task_processes(proc.pid), "no task was running"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _task_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _task_processes(proc.pid)
    client, runs = _runs(cfg)
    deadline = time.monotonic() + 60  # after a SIGKILL the watchdog ends the run
    while client.get_run(runs[0].info.run_id).info.status == "RUNNING" and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.get_run(runs[0].info.run_id).info.status == "KILLED"
    if sig == signal.SIGTERM:
        assert proc.returncode == 130


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_run_stopped_inside_a_client_loop_ends_without_waiting_for_its_tasks(make_config,
                                                                              tmp_path, sig):
    """SIGTERM while the generator tasks of a ParallelFor train (for minutes): kfp.local would
    let them finish before the signal's exception left the loop; the run ends in seconds. The
    lease the generators took on the checkpoint folder is free at once, on either signal."""
    cfg = make_config(global_rounds=1, feda2v={"generator_training_mode": True,
                                               "generator_training_rounds": 1,
                                               "generator_training_epochs": 10000})
    path = _write(cfg, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "feda2v.cli", "run", "--config", path,
                             "--pipeline", "run1"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:  # wait until both clients' generator tasks train
            if "Epoch 10/10000" in line or time.monotonic() > deadline:
                break
        assert _task_processes(proc.pid), "no task was running"
        assert runstate.lease_holder(stages.checkpoint_dir(cfg)) is not None
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


@pytest.mark.slow
def test_two_concurrent_runs_on_one_storage_root_stay_apart(make_config, tmp_path):
    cfg = make_config(feda2v={"generator_training_mode": True, "generator_save_every": 1})
    path = _write(cfg, tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "feda2v.cli", "run", "--config", path,
                               "--pipeline", "run1"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert not any("Resuming" in out for out in outs)  # neither took the other's generator
    _, runs = _runs(cfg)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    keys = [r.data.tags["feda2v.run_key"] for r in runs]
    for key in keys:  # each run trained its own generators for exactly its 2 rounds
        own = storage.load_checkpoint(os.path.join(cfg.storage_root, "runs", key,
                                                   "generators", "client_0.pt"))
        assert own["round"] == 2 and own["run"] == key
    published = storage.load_checkpoint(os.path.join(cfg.storage_root, "checkpoints",
                                                     "generators", "client_0_generator.pt"))
    assert published["run"] in keys and published["round"] == 2
    # Round snapshots and latest in the shared folder all come from one and the same run.
    folder = os.path.join(cfg.storage_root, "checkpoints", "generators")
    owners = {storage.load_checkpoint(os.path.join(folder, f))["run"]
              for f in os.listdir(folder) if f.endswith(".pt")}
    assert len(owners) == 1


@pytest.mark.slow
def test_run_with_an_s3_storage_root(make_config, tmp_path, s3_env):  # noqa: F811
    """Tensors and checkpoints go through the object store; kfp.local's own folder and the
    local run's MLflow store stay on disk."""
    bucket = s3_env
    cfg = make_config(global_rounds=1, storage_root=f"s3://{bucket}/feda2v",
                      feda2v={"generator_training_rounds": 1, "generator_training_mode": True,
                              "generator_save_every": 1})
    out = _run(_write(cfg, tmp_path), "end_to_end", tmp_path)
    assert "global acc" in out
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    names = {p.rsplit("/", 1)[-1] for p in fs.find(f"{bucket}/feda2v")}
    assert {"client_0.safetensors", "client_0_generator.pt", "client_1_generator_round_1.pt",
            "global.safetensors"} <= names
    assert os.path.exists(tmp_path / ".feda2v-local" / "mlflow.db")
    assert not os.path.exists(tmp_path / "s3:")


@pytest.mark.slow
def test_ablations_pipeline_nests_under_one_parent_with_an_empty_run_id(make_config, tmp_path,
                                                                       preforked):
    """As on a cluster, where the run form's mlflow_run_id is empty: the pipeline makes its own
    parent run (named by the KFP job), nests the four variants under it, logs the report and the
    table there, and its exit handler ends it."""
    from kfp import local

    import pipelines

    cfg = make_config(global_rounds=1, feda2v={"generator_training_rounds": 1,
                                               "generator_training_mode": True})
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "kfp"), raise_on_error=True)
    pipelines.build(cfg, "ablations", pipelines.ClusterOptions.local())(mlflow_run_id="")
    client, runs = _runs(cfg)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(
        f"ablation/{v}" for v in ("fedavg", "synthetic", "synthetic_only", "centralized"))
    assert all(r.info.status == "FINISHED" for r in children + [parent])
    assert parent.data.tags["kfp.run_id"]  # found again by its job id on a retry
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/report.html", "report/results.txt"}


@pytest.mark.slow
def test_a_failing_task_fails_the_run_through_the_prefork_server(make_config, tmp_path,
                                                                 demo_data):
    """Tasks are forked from a pre-imported server: a task's failure must still reach kfp.local
    (exit code through the shim), the exit handler, and `feda2v run`'s exit code."""
    import shutil

    # Whole enough for the preflight (metadata, class names), but every clip is unreadable:
    # extraction is the task that fails.
    shutil.copytree(demo_data, tmp_path / "nowhere")
    for wav in (tmp_path / "nowhere" / "audio").glob("*.wav"):
        wav.write_bytes(b"RIFF")
    cfg = make_config(data={"dataset_uri": str(tmp_path / "nowhere")})
    proc = subprocess.run([sys.executable, "-m", "feda2v.cli", "run", "--config",
                           _write(cfg, tmp_path), "--pipeline", "run1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Task 'extract' finished with status FAILURE" in proc.stdout + proc.stderr
    assert "clips are unreadable" in proc.stdout + proc.stderr  # the task's own error
    client, runs = _runs(cfg)
    assert client.get_run(runs[0].info.run_id).info.status == "FAILED"


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
