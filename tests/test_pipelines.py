import json

import yaml
from kfp import compiler

import pipelines
from feda2v import config as config_mod


def _compile(cfg, kind, tmp_path, options=None):
    """(pipeline spec, path); the platform spec (Kubernetes settings) is the second document."""
    path = tmp_path / f"{kind}.yaml"
    compiler.Compiler().compile(pipelines.build(cfg, kind, options), str(path))
    return next(yaml.safe_load_all(path.read_text())), path


def _server_phases(spec):
    """The `phase` constant of every server-round task, in round order."""
    out = []
    for name, task in spec["root"]["dag"]["tasks"].items():
        if name.startswith("server-round"):  # server-round, server-round-2, ...
            order = int(name.rsplit("-", 1)[1]) if name != "server-round" else 1
            out.append((order, task["inputs"]["parameters"]["phase"]["runtimeValue"]["constant"]))
    return [phase for _, phase in sorted(out)]


def _tasks(spec):
    """All task names across the root DAG and every sub-DAG (loop bodies)."""
    names = list(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        names += list(comp.get("dag", {}).get("tasks", {}))
    return names


def test_run1_unrolls_rounds_and_fans_out_clients(make_config, tmp_path):
    cfg = make_config(global_rounds=3)
    spec, _ = _compile(cfg, "run1", tmp_path)
    tasks = _tasks(spec)
    assert sum(t.startswith("server-round") for t in tasks) == 3
    assert _server_phases(spec) == ["run1"] * 3
    loops = [t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t]
    assert len(loops) == 1 + 3  # extraction + one client fan-out per round
    assert all(json.loads(t["parameterIterator"]["items"]["raw"]) == [0, 1] for t in loops)
    default = spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    assert json.loads(default) == cfg


def test_run2_trains_the_global_adapter_each_round(make_config, tmp_path):
    spec, _ = _compile(make_config(global_rounds=2), "run2", tmp_path)
    assert _server_phases(spec) == ["run2", "run2"]


def test_end_to_end_runs_both_phases(make_config, tmp_path):
    cfg = make_config(global_rounds=2, feda2v={"generator_training_rounds": 3})
    spec, _ = _compile(cfg, "end_to_end", tmp_path)
    tasks = _tasks(spec)
    assert sum(t.startswith("server-round") for t in tasks) == 5
    assert _server_phases(spec) == ["run1"] * 3 + ["run2"] * 2


def test_fedavg_only_when_generators_are_off(make_config):
    cfg = make_config(feda2v={"use_generator": False})
    assert pipelines.phase_plan(cfg, "end_to_end") == [("fedavg", 2)]


def test_cli_compile_writes_yaml(tmp_path):
    from feda2v.cli import main

    out = tmp_path / "p.yaml"
    main(["compile", "--config", "configs/a2v_generator_training_mode.json", "--output", str(out)])
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["name"] == "feda2v-run1"
    assert config_mod.loads(
        spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    )["global_rounds"] == 30


def test_only_extraction_and_class_targets_are_cacheable(make_config, tmp_path):
    spec, _ = _compile(make_config(global_rounds=1), "run2", tmp_path)
    caching = {}
    for comp in [spec["root"], *spec["components"].values()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            if "componentRef" in task and "parameterIterator" not in task:
                caching[name] = task.get("cachingOptions", {}).get("enableCache", False)
    assert caching.pop("extract") is True and caching.pop("class-targets") is True
    assert caching and not any(caching.values()), caching


def test_ablations_fan_out_one_task_per_variant(make_config, tmp_path):
    from feda2v.experiment import VARIANTS

    spec, _ = _compile(make_config(), "ablations", tmp_path)
    loops = [t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t]
    items = [json.loads(t["parameterIterator"]["items"]["raw"]) for t in loops]
    assert [0, 1] in items and list(VARIANTS) in items and len(items) == 2
    assert "ablation-report" in spec["root"]["dag"]["tasks"]


def _platform(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_cluster_settings_in_the_compiled_yaml(make_config, tmp_path, monkeypatch):
    from pipelines import ClusterOptions

    # A credential in the compiling environment must not leak into the YAML.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sentinel-secret-value-123")
    options = ClusterOptions(image="registry.example/feda2v:1.2.3", gpus=2,
                             node_selector={"pool": "gpu"},
                             tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists",
                                           "effect": "NoSchedule"}])
    spec, path = _compile(make_config(global_rounds=2), "end_to_end", tmp_path, options)
    text = path.read_text()
    assert "sentinel-secret-value-123" not in text
    executors = spec["deploymentSpec"]["executors"]
    platform = _platform(path)
    gpu_tasks = ("exec-extract", "exec-client-round", "exec-server-round",
                 "exec-ablation-variant")
    for name, ex in executors.items():
        container = ex["container"]
        assert container["image"] == "registry.example/feda2v:1.2.3"
        resources = container.get("resources", {})
        if name.startswith(gpu_tasks):
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "2"
            assert resources["resourceMemoryLimit"] == "32Gi"
        else:
            assert "accelerator" not in resources, name
        k8s = platform[name]
        assert k8s["secretAsEnv"][0]["secretName"] == "feda2v-s3"
        keys = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        if name.startswith(("exec-server-round", "exec-start-tracking", "exec-finish-tracking")):
            keys |= {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
        assert {m["envVar"] for m in k8s["secretAsEnv"][0]["keyToEnv"]} == keys, name
        assert k8s["secretAsEnv"][0]["optional"] is True
        assert k8s["configMapAsEnv"][0]["configMapName"] == "feda2v-config"
        assert k8s["nodeSelector"]["labels"] == {"pool": "gpu"}
        assert k8s["tolerations"][0]["effect"] == "NoSchedule"
    for comp in [spec["root"], *spec["components"].values()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            if "componentRef" in task and "parameterIterator" not in task:
                assert task["retryPolicy"]["maxRetryCount"] == 3, name
                assert task["retryPolicy"]["backoffFactor"] == 2.0
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert "Rounds and" in params["config_json"]["description"]  # the UI form explains it
    assert "MLflow" in params["mlflow_run_id"]["description"]


def test_cpu_clusters_request_no_gpu(make_config, tmp_path):
    from pipelines import ClusterOptions

    spec, _ = _compile(make_config(), "run1", tmp_path, ClusterOptions(gpus=0))
    for ex in spec["deploymentSpec"]["executors"].values():
        assert "accelerator" not in ex["container"].get("resources", {})


def test_credentials_in_the_config_are_refused_at_compile(tmp_path, capsys):
    import pytest

    from feda2v.cli import main

    cfg = tmp_path / "c.json"
    for raw, key in (('{"mlflow_tracking_uri": "https://user:pw@mlflow.example"}',
                      "mlflow_tracking_uri"),
                     ('{"data": {"dataset_uri": "https://user:tok@data.example/esc50"}}',
                      "data.dataset_uri")):
        cfg.write_text(raw)
        with pytest.raises(SystemExit):
            main(["compile", "--config", str(cfg), "--output", str(tmp_path / "p.yaml")])
        assert f"{key} contains credentials" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def test_full_size_end_to_end_yaml_stays_under_1_mb(tmp_path):
    """30 + 50 rounds x 3 clients (the seed's runs), and 50 clients: rounds are unrolled, clients
    are not (ParallelFor), so the size depends on the rounds."""
    from feda2v import config as config_mod

    for data in ({}, {"partition": "iid", "num_clients": 50}):
        cfg = config_mod.validate({"global_rounds": 50, "data": data,
                                   "feda2v": {"generator_training_rounds": 30,
                                              "global_model_train": True}})
        _, path = _compile(cfg, "end_to_end", tmp_path)
        assert path.stat().st_size < 1_000_000
