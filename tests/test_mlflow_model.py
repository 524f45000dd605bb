"""The global adapter as an MLflow model: signature, input example, registry, and a load that
gives what the adapter itself gives."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from feda2v.federated import adapter_model
from feda2v.federated.adapter import Adapter
from feda2v.io import config as config_mod
from feda2v.io import tracking


def _adapter_file(tmp_path, hidden=(32,), heads=4):
    torch.manual_seed(0)
    adapter = Adapter(12, 16, hidden, heads).eval()
    path = str(tmp_path / "global_adapter.safetensors")
    save_file(adapter.state_dict(), path)
    return adapter, path


def _cfg(tmp_path, **top):
    return config_mod.validate({"storage_root": str(tmp_path / "store"),
                                "feda2v": {"adapter_hidden_dims": [32], "adapter_heads": 4},
                                **top})


def test_the_logged_model_has_a_signature_an_example_and_predicts_as_the_adapter(tmp_path,
                                                                                monkeypatch):
    import mlflow

    cfg = _cfg(tmp_path, mlflow_register_model="feda2v-adapter")
    adapter, path = _adapter_file(tmp_path)
    run_id = tracking.create_run(cfg, "model")
    uri = adapter_model.log_adapter_model(cfg, run_id, path)
    uri_again = adapter_model.log_adapter_model(cfg, run_id, path)  # a second run, a new version

    assert "MLFLOW_TRACKING_URI" not in os.environ  # logging the model leaves no trace
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.tracking_uri(cfg))  # undone after
    info = mlflow.models.get_model_info(uri)
    assert tuple(info.signature.inputs.inputs[0].shape) == (-1, -1, 12)  # any sequence length
    assert tuple(info.signature.outputs.inputs[0].shape) == (-1, 16)
    assert info.saved_input_example_info is not None
    assert "python_model.pkl" not in os.listdir(mlflow.artifacts.download_artifacts(uri))

    x = torch.randn(3, 7, 12)  # any sequence length
    got = mlflow.pyfunc.load_model(uri).predict(x.numpy())
    with torch.no_grad():
        assert torch.allclose(torch.as_tensor(got), adapter(x), atol=1e-6)
    store = tracking.tracking_uri(cfg)
    versions = mlflow.MlflowClient(store, store).search_model_versions("name='feda2v-adapter'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert uri != uri_again
    with pytest.raises(Exception, match=r"does not match expected shape \(-1, -1, 12\)"):  # the signature
        mlflow.pyfunc.load_model(uri).predict(x[0].numpy())


def test_without_a_name_nothing_is_registered(tmp_path):
    import mlflow

    cfg = _cfg(tmp_path)
    _, path = _adapter_file(tmp_path)
    adapter_model.log_adapter_model(cfg, tracking.create_run(cfg, "model"), path)
    uri = tracking.tracking_uri(cfg)
    assert uri.startswith("sqlite:///" + str(tmp_path))  # the last test's store is not kept
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.MlflowClient(uri, uri).search_registered_models() == []


def test_system_metrics_land_in_the_run_only_when_asked(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(tracking, "SYSTEM_METRICS_SECONDS", 0.2)
    for on in (True, False):
        cfg = _cfg(tmp_path / str(on), mlflow_system_metrics=on)
        run_id = tracking.create_run(cfg, "system")
        with tracking.system_metrics(cfg, run_id, "run2"):
            time.sleep(1.0)
        _, history = tracking.run_info(cfg, run_id)
        system = {k for k in history if k.startswith("system/")}
        if on:
            assert {"system/run2/cpu_utilization_percentage",
                    "system/run2/system_memory_usage_megabytes"} <= system
        else:
            assert not system


def test_a_model_that_cannot_be_logged_fails_the_run_which_still_ends(tmp_path, monkeypatch):
    """The exit handler logs the adapter as a model; if that fails (a registry that refuses,
    a full artifact store), the MLflow run still ends, FAILED, and the task fails loudly."""
    from feda2v.io import storage
    from feda2v.orchestration import finish, runtime

    cfg = config_mod.validate({"storage_root": str(tmp_path / "store"), "global_rounds": 1,
                               "feda2v": {"adapter_hidden_dims": [32], "adapter_heads": 4,
                                          "use_generator": False,
                                          "generator_training_mode": False}})
    plan = runtime.plan(cfg)
    adapter, _ = _adapter_file(tmp_path)
    storage.save_tensors(finish.final_adapter_uri(cfg, "k1", plan), adapter.state_dict(), {})

    def refuse(*args, **kwargs):
        raise OSError("artifact store full")

    monkeypatch.setattr(adapter_model, "log_adapter_model", refuse)
    with pytest.raises(OSError, match="artifact store full"):
        finish.finish_tracking(cfg.to_json(), "", "k1", "SUCCEEDED",
                               str(tmp_path / "report.md"))
    client = tracking._client(tracking.tracking_uri(cfg))
    [run] = client.search_runs([client.get_experiment_by_name(cfg.experiment_name)
                                .experiment_id])
    assert run.info.status == "FAILED"


def test_the_model_ships_the_feda2v_modules_it_imports_and_no_others(tmp_path, monkeypatch):
    """Loading runs mlflow_model.py, which imports feda2v.federated.adapter: those modules (and
    their packages) ship with the model, and nothing else of feda2v (one upload per file)."""
    import ast

    import mlflow

    from feda2v.federated import mlflow_model

    def feda2v_imports(path):
        tree = ast.parse(Path(path).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and (n.module or "").startswith("feda2v")} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
            if a.name.startswith("feda2v")}

    needed, todo = set(), [mlflow_model.__file__]
    while todo:
        for module in feda2v_imports(todo.pop()) - needed:
            needed.add(module)
            rel = module.removeprefix("feda2v").lstrip(".").replace(".", "/")
            path = os.path.join(adapter_model.package_dir(), rel)
            todo.append(os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py")
    files = {"__init__.py"}
    for module in needed:
        parts = module.split(".")[1:]
        files |= {"/".join(parts[:i]) + "/__init__.py" for i in range(1, len(parts))}
        files.add("/".join(parts) + ".py")
    assert files == set(adapter_model.MODEL_CODE)

    cfg = _cfg(tmp_path)
    _, path = _adapter_file(tmp_path)
    uri = adapter_model.log_adapter_model(cfg, tracking.create_run(cfg, "code"), path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.tracking_uri(cfg))  # for models:/ URIs
    local = mlflow.artifacts.download_artifacts(uri)
    shipped = {os.path.relpath(os.path.join(d, f), os.path.join(local, "code", "feda2v"))
               for d, _, fs in os.walk(os.path.join(local, "code")) for f in fs}
    assert shipped == set(adapter_model.MODEL_CODE)
