"""MLflow with authentication (the manifests' basic-auth overlay), against a real basic-auth
server: a run logs with the credentials MLflow's client reads from the environment, and without
them (or with wrong ones) fails at once, naming the variables and never printing a password."""

import pytest
from mlflowserver import ADMIN, mlflow_auth_server  # noqa: F401 - fixture

from feda2v.federated import adapter_model
from feda2v.io import config as config_mod
from feda2v.io import tracking


@pytest.fixture
def fresh_checks(monkeypatch):
    """Each test probes the server again (the check is cached per URI and process)."""
    monkeypatch.setattr(tracking, "_checked", set())
    monkeypatch.setattr(tracking, "_clients", {})
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)


def _cfg(uri, tmp_path):
    return config_mod.validate({"mlflow_tracking_uri": uri, "storage_root": str(tmp_path),
                                "experiment_name": "auth"})


def test_with_the_credentials_a_run_logs_params_metrics_and_the_model(
        mlflow_auth_server, tmp_path, fresh_checks, monkeypatch):  # noqa: F811
    from test_mlflow_model import _adapter_file

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    cfg = _cfg(mlflow_auth_server, tmp_path)
    run_id = tracking.create_run(cfg, "auth")
    tracking.log_params(cfg, run_id)
    tracking.log_metrics(cfg, run_id, {"eval/global_accuracy": 0.5}, 1)
    _, path = _adapter_file(tmp_path)
    adapter_model.log_adapter_model(cfg, run_id, path)
    tracking.end_run(cfg, run_id, "FINISHED")
    params, history = tracking.run_info(cfg, run_id)
    assert params["global_rounds"] == str(cfg.global_rounds)
    assert history["eval/global_accuracy"] == [(1, 0.5)]


@pytest.mark.parametrize("password, says", [
    (None, "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    ("not-the-password-1", "it refused MLFLOW_TRACKING_USERNAME / _PASSWORD"),
])
def test_without_valid_credentials_the_first_call_names_the_variables(
        mlflow_auth_server, tmp_path, fresh_checks, monkeypatch, password, says):  # noqa: F811
    if password:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    with pytest.raises(PermissionError) as e:
        tracking.create_run(_cfg(mlflow_auth_server, tmp_path), "auth")
    assert f"MLflow tracking server {mlflow_auth_server} needs a login (401)" in str(e.value)
    assert says in str(e.value)
    assert "not-the-password" not in str(e.value)
