"""Run 1 then Run 2 through kfp.local (the same compiled DAGs a cluster runs), on tiny data."""

import json
import os
import subprocess
import sys

import pytest

from feda2v import tracking


def _run(config_path, pipeline, cwd):
    proc = subprocess.run([sys.executable, "-m", "feda2v.cli", "run", "--config", config_path,
                           "--pipeline", pipeline], check=False, cwd=cwd, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def _runs(cfg):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(cfg))
    exp = client.get_experiment_by_name(cfg["experiment_name"])
    return client, client.search_runs([exp.experiment_id], order_by=["start_time ASC"])


@pytest.mark.slow
def test_run1_then_run2_under_kfp_local(make_config, tmp_path):
    cfg = make_config(feda2v={"generator_save_every": 2, "generator_training_mode": True})
    path = str(tmp_path / "config.json")
    with open(path, "w") as f:
        json.dump(cfg, f)

    out1 = _run(path, "run1", tmp_path)
    assert "[Client 0] Initializing vae generator" in out1
    assert "[Client 1] Saved generator checkpoint to" in out1
    ckpts = sorted(os.listdir(tmp_path / "store" / "checkpoints" / "generators"))
    assert ckpts == ["client_0_generator.pt", "client_0_generator_round_2.pt",
                     "client_1_generator.pt", "client_1_generator_round_2.pt"]

    out2 = _run(path, "run2", tmp_path)
    assert "[Client 1] Loaded VAE generator from round 2" in out2
    assert "[Server] Aggregated 64 synthetic samples across 4 classes" in out2
    assert "global acc" in out2  # the results table

    client, runs = _runs(cfg)
    assert len(runs) == 2  # one MLflow run per pipeline run
    run1, run2 = runs
    assert run1.info.status == run2.info.status == "FINISHED"
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
    artifacts = {a.path for a in client.list_artifacts(run2.info.run_id)}
    assert {"model", "report"} <= artifacts


@pytest.mark.slow
def test_end_to_end_is_one_mlflow_run_with_steps_across_both_phases(make_config, tmp_path):
    cfg = make_config(global_rounds=1, feda2v={"generator_training_rounds": 2,
                                               "generator_training_mode": True})
    path = str(tmp_path / "config.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    out = _run(path, "end_to_end", tmp_path)
    assert " run1      2 " in out and " run2      1 " in out  # the results table rows
    client, runs = _runs(cfg)
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "eval/global_accuracy")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run_id, "train/node_1/generator_loss")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run_id, "server/synthetic_samples_total")] == [3]
    assert runs[0].data.params["feda2v.phases"] == "run1:2,run2:1"


@pytest.mark.slow
def test_ablations_pipeline_under_kfp_local(make_config, tmp_path):
    cfg = make_config(global_rounds=1, feda2v={"generator_training_rounds": 1,
                                               "generator_training_mode": True})
    path = str(tmp_path / "config.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    out = _run(path, "ablations", tmp_path)
    for variant in ("fedavg", "synthetic", "synthetic_only", "centralized"):
        assert f"\n{variant} " in out
    client, runs = _runs(cfg)
    parent = runs[0]  # created first, by `feda2v run`
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/report.html"}
