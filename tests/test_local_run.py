"""Whole pipelines through kfp.local (the same compiled DAGs a cluster runs), on tiny data:
what only a real run shows — the DAG wiring, both execution modes giving the same numbers,
MLflow runs that always end, concurrent runs, an S3 storage root. Runs stopped early:
test_local_stop.py."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from feda2v.io import runstate, storage, tracking
from feda2v.orchestration import finish, stages


@pytest.fixture(scope="module")
def preforked():
    """Tasks of an in-process kfp.local run forked from a pre-imported server, as under
    `feda2v run`: a fresh interpreter per task spends seconds importing torch, kfp and mlflow.
    One server for the module's runs (each task is a fresh fork of it)."""
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
def test_two_run1_at_once_then_run2_under_kfp_local(make_config, tmp_path, monkeypatch):
    """The seed's two separate runs, Run 1 started twice at once on one storage root: each
    trains its own generators, one of them publishes (the lease), and Run 2 loads what it
    published. Run 2 starts from the initial adapter, so its 2 rounds learn through the
    server's whole training step (the seed's mix of 1)."""
    cfg = make_config(feda2v={"generator_save_every": 1, "generator_training_mode": True,
                              "global_model_train_mix": 1.0})
    path = _write(cfg, tmp_path)

    procs = [subprocess.Popen([sys.executable, "-m", "feda2v.cli", "run", "--config", path,
                               "--pipeline", "run1"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert all("[Client 0] Initializing vae generator" in out for out in outs)
    assert not any("Resuming" in out for out in outs)  # neither took the other's generator
    assert any("[Client 1] Saved generator checkpoint to" in out for out in outs)
    folder = tmp_path / "store" / "checkpoints" / "generators"
    assert sorted(f for f in os.listdir(folder) if f.endswith(".pt")) == [
        f"client_{i}_generator{r}.pt" for i in (0, 1) for r in ("", "_round_1", "_round_2")]
    # Round snapshots and latest in the shared folder all come from one and the same run.
    owners = {storage.load_checkpoint(str(folder / f))["run"]
              for f in os.listdir(folder) if f.endswith(".pt")}
    assert len(owners) == 1
    client, run1s = _runs(cfg)
    keys = [r.data.tags["feda2v.run_key"] for r in run1s]
    assert len(run1s) == 2 and owners <= set(keys)
    for key in keys:  # each run trained its own generators for exactly its 2 rounds
        own = storage.load_checkpoint(os.path.join(cfg.storage_root, "runs", key,
                                                   "generators", "client_0.pt"))
        assert own["round"] == 2 and own["run"] == key

    root = tmp_path / "store" / "kfp-local"
    for embedded in _artifacts(root, 1, "extract", "embeddings", runs=2):
        assert embedded.read_bytes() == storage.read_bytes(stages.embeddings_uri(cfg, 1))
    published = (folder / "client_1_generator.pt").read_bytes()
    assert [a.read_bytes() == published
            for a in _artifacts(root, 1, "train-generator", "checkpoint", runs=2)].count(True) == 1

    out2 = _run(path, "run2", tmp_path)
    assert "[Client 1] Loaded VAE generator from round 2" in out2
    assert "Generator checkpoint loaded successfully" in out2 and "sha256" in out2
    assert "[Server] Aggregated 64 synthetic samples across 4 classes" in out2
    assert "global acc" in out2  # the results table

    client, runs = _runs(cfg)
    assert len(runs) == 3  # one MLflow run per pipeline run
    run2 = runs[-1]
    assert {r.info.status for r in runs} == {"FINISHED"}
    from feda2v.io.tracking import source_tags

    for run in runs:  # what made it, and which KFP run it tracks
        assert {k: run.data.tags.get(k) for k in source_tags()} == source_tags()
        assert run.data.tags["kfp.run_id"] == run.data.tags["feda2v.run_key"]
        # the exit handler's results table, beside the run's state in storage
        table = storage.read_bytes(finish.report_uri(cfg, run.data.tags["feda2v.run_key"]))
        assert table.decode().startswith("# FedA2V results (succeeded)")
        assert "| phase | round | global acc |" in table.decode()
    for run1 in run1s:
        gen = client.get_metric_history(run1.info.run_id, "train/node_0/generator_loss")
        assert [m.step for m in gen] == [1, 2]
        assert gen[-1].value < gen[0].value
        generators = {a.path for a in client.list_artifacts(run1.info.run_id, "generators")}
        assert generators == {"generators/client_0_generator.pt",
                              "generators/client_1_generator.pt"}
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
    import mlflow

    logged = {m.source_run_id: m for m in client.search_logged_models([run2.info.experiment_id])}
    assert set(logged) == {r.info.run_id for r in runs}  # each run's global adapter
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # for models:/ URIs
    info = mlflow.models.get_model_info(f"models:/{logged[run2.info.run_id].model_id}")
    assert info.signature is not None and info.saved_input_example_info is not None


def _artifacts(root, client_id, task, name, runs=1):
    """The `name` output artifacts of client `client_id`'s `task` in the `runs` kfp.local runs
    under root."""
    import glob

    found = glob.glob(f"{root}/*/for-loop-*-iteration-{client_id}/{task}/{name}")
    assert len(found) == runs, (task, name, found)
    return [Path(f) for f in found]


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
    final adapter, same metrics at every step. The strategy is FedAdam, whose server state
    round execution carries from one server task to the next through the run folder, and half
    the clients train in each round (the same ones, drawn from the seed, in every execution)."""
    from kfp import local

    import pipelines
    from feda2v.orchestration.experiment import run_experiment

    cfg = make_config(global_rounds=1, strategy="fedadam", client_fraction=0.5,
                      feda2v={"generator_training_rounds": 2, "generator_training_mode": True})
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
                "server/synthetic_samples_total", "train/node_0/adapter_loss",
                "train/node_1/adapter_loss"):
        seen = [_history(client, r, key) for r in (round_run.info.run_id, phase_id, child)]
        assert seen[0] and seen[0] == seen[1], key
        assert [s for s, _ in seen[2]] == [s for s, _ in seen[0]], key
        assert [v for _, v in seen[2]] == pytest.approx([v for _, v in seen[0]], abs=1e-4), key
    pooled = _history(client, round_run.info.run_id, "server/synthetic_samples_total")
    assert [v for _, v in pooled] == [32]  # one client of two: 2 classes x 16 samples
    # Lineage: embeddings, class conditions, generator checkpoints and synthetic samples are
    # typed artifacts holding the storage-root copies' bytes; the samples' source shows that
    # generation read the checkpoint artifact (the other reads: unit tests).
    root = tmp_path / "kfp"
    for i in range(2):
        embedded = _artifacts(root, i, "extract", "embeddings")[0]
        assert embedded.read_bytes() == storage.read_bytes(stages.embeddings_uri(cfg, i))
        checkpoint = _artifacts(root, i, "train-generator", "checkpoint")[0]
        own = runstate.generator_state_uri(runstate.run_dir(cfg, keys[1]), i)
        assert checkpoint.read_bytes() == storage.read_bytes(own)
        for r in (1, 2):  # the Run 1 phase's class conditions, which the generators read
            copy = runstate.conditions_uri("", i, r, str(_phase_artifact(root, "conditions")))
            assert storage.read_bytes(copy) == storage.read_bytes(
                runstate.conditions_uri(runstate.run_dir(cfg, keys[1]), i, r))
        samples = _artifacts(root, i, "generate", "samples")[0]
        assert storage.read_meta(str(samples))["source"] == str(checkpoint)
    # Each run's report: the figures beside the HTML under the run folder and in MLflow; the
    # generator losses logged live (before Run 2's first round), by the generator tasks.
    for run_id, key in zip((round_run.info.run_id, phase_id), keys):
        folder = os.path.join(store, "runs", key, "report")
        assert {"report.html", "accuracy.png", "generator_loss.png", "partition.png",
                "confusion.png", "projection_client_0.png",
                "projection_client_1.png"} <= set(os.listdir(folder))
        page = Path(folder, "report.html").read_text()
        assert page.count('<img src="data:image/png;base64,') == 7  # 5 + a client's each
        pngs = [a.path for a in client.list_artifacts(run_id, "report") if a.path.endswith(".png")]
        assert len(pngs) >= 4
        loss = client.get_metric_history(run_id, "train/node_0/generator_loss")
        run2 = [m.timestamp for m in client.get_metric_history(run_id, "eval/global_accuracy")
                if m.step == 3]
        assert [m.step for m in loss] == [1, 2] and loss[0].timestamp < run2[0]
    for key in keys:  # Run 1's second round stepped from the first round's moments
        assert storage.exists(runstate.strategy_uri(runstate.run_dir(cfg, key), "run1", 2))
    phase = client.get_run(phase_id)
    assert phase.info.status == "FINISHED"
    assert phase.data.params["strategy"] == "fedadam"
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


def test_with_an_s3_storage_root_kfp_local_and_mlflow_stay_on_disk(make_config, tmp_path,
                                                                   monkeypatch):
    """Tensors and checkpoints go to the object store (a whole such run:
    test_bad_inputs.py's planted secrets); kfp.local's own folder and, without a tracking URI,
    the run's MLflow store stay in ./.feda2v-local."""
    from feda2v.localrun.run import local_state

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_config(storage_root="s3://bucket/feda2v")
    got, local_root, pipeline_root = local_state(cfg)
    assert local_root == str(tmp_path / ".feda2v-local")
    assert pipeline_root == str(tmp_path / ".feda2v-local" / "kfp-local")
    assert got.mlflow_tracking_uri == f"sqlite:///{tmp_path}/.feda2v-local/mlflow.db"
    assert got.storage_root == "s3://bucket/feda2v"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert local_state(cfg)[0].mlflow_tracking_uri == cfg.mlflow_tracking_uri  # the env's
    on_disk, local_root, _ = local_state(make_config())
    assert local_root == cfg.storage_root.replace("s3://bucket/feda2v", str(tmp_path / "store"))
    assert on_disk.mlflow_tracking_uri == make_config().mlflow_tracking_uri


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
