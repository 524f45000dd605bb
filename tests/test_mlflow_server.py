"""Tracking against a real MLflow server over HTTP, artifacts through its proxy."""

from mlflowserver import mlflow_server  # noqa: F401 - fixture

from feda2v.io import tracking
from feda2v.orchestration.experiment import run_experiment


def test_experiment_logs_runs_metrics_and_artifacts_to_a_tracking_server(
        make_config, mlflow_server):  # noqa: F811
    cfg = make_config(global_rounds=1, mlflow_tracking_uri=mlflow_server,
                      feda2v={"generator_training_rounds": 1, "generator_training_mode": True})
    result = run_experiment(cfg, ["fedavg", "synthetic"], name="server")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["feda2v.ablations"] == "fedavg,synthetic"
    assert parent.data.params["mlflow_tracking_uri"] == mlflow_server
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    synthetic = next(r for r in children if r.info.run_name == "server/synthetic")
    assert [m.step for m in client.get_metric_history(synthetic.info.run_id,
                                                      "eval/global_accuracy")] == [1, 2]
    assert "server/synthetic_samples_total" in synthetic.data.metrics
    # artifacts went through the server's proxy (mlflow-artifacts:/), not a local path
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in names
    local = client.download_artifacts(parent.info.run_id, "report/report.html")
    with open(local) as f:
        assert "synthetic" in f.read()
    assert tracking.tracking_uri(cfg) == mlflow_server
