import json

import pytest
import yaml
from kfp import compiler

import pipelines
from feda2v.io import config as config_mod
from feda2v.orchestration import runtime


def _compile(cfg, kind, tmp_path, options=None):
    """(pipeline spec, path); the platform spec (Kubernetes settings) is the second document."""
    path = tmp_path / f"{kind}.yaml"
    compiler.Compiler().compile(pipelines.build(cfg, kind, options), str(path))
    return next(yaml.safe_load_all(path.read_text())), path


def _tasks_by_component(spec):
    """{component name: [(task name, constant `phase` input or None), ...]} over the root DAG
    and every sub-DAG (loop bodies, the exit handler)."""
    out = {}
    for comp in [spec["root"], *spec["components"].values()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            ref = task["componentRef"]["name"].removeprefix("comp-")
            phase = task.get("inputs", {}).get("parameters", {}).get("phase", {})
            out.setdefault(ref.rstrip("-0123456789") if ref[-1].isdigit() else ref, []).append(
                (name, phase.get("runtimeValue", {}).get("constant")))
    return out


def _tasks(spec):
    """All task names across the root DAG and every sub-DAG (loop bodies)."""
    names = list(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        names += list(comp.get("dag", {}).get("tasks", {}))
    return names


def _phases(spec, component):
    return sorted(p for _, p in _tasks_by_component(spec).get(component, []))


def test_phase_execution_is_one_task_per_phase_plus_per_client_stages(make_config, tmp_path):
    spec, _ = _compile(make_config(global_rounds=3), "end_to_end", tmp_path)
    comps = _tasks_by_component(spec)
    assert _phases(spec, "federated-phase") == ["run1", "run2"]
    for stage in ("extract", "train-generator", "generate", "finish-run"):
        assert len(comps[stage]) == 1, stage  # one task each, fanned out over clients
    assert "client-round" not in comps and "server-round" not in comps
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["global_rounds"]["parameterType"] == "NUMBER_INTEGER"
    assert params["global_rounds"]["defaultValue"] == 3
    assert params["generator_training_rounds"]["defaultValue"] == 2
    assert params["client_ids"]["defaultValue"] == [0, 1]
    # The exit handler closes the MLflow run whatever happened inside.
    finish = spec["root"]["dag"]["tasks"]["finish-run"]
    assert finish["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    default = spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    assert json.loads(default) == dict(cfg_of(make_config(global_rounds=3)),
                                       pipeline="end_to_end")


def cfg_of(cfg):
    return cfg.to_dict()


def test_phase_execution_of_each_pipeline_kind(make_config, tmp_path):
    cfg = make_config()
    assert _phases(_compile(cfg, "run1", tmp_path)[0], "federated-phase") == ["run1"]
    run2 = _compile(cfg, "run2", tmp_path)[0]
    assert _phases(run2, "federated-phase") == ["run2"]
    assert "train-generator" not in _tasks_by_component(run2)  # Run 2 reads published ones
    assert "generate" in _tasks_by_component(run2)
    fedavg = _compile(make_config(feda2v={"use_generator": False}), "end_to_end", tmp_path)[0]
    assert _phases(fedavg, "federated-phase") == ["fedavg"]
    assert "generator_training_rounds" not in fedavg["root"]["inputDefinitions"]["parameters"]


def test_round_execution_unrolls_rounds_and_fans_out_clients(make_config, tmp_path):
    cfg = make_config(global_rounds=3, execution="round")
    spec, _ = _compile(cfg, "run1", tmp_path)
    assert _phases(spec, "server-round") == ["run1"] * 3
    loops = [t for c in [spec["root"], *spec["components"].values()]
             for t in c.get("dag", {}).get("tasks", {}).values() if "parameterIterator" in t]
    assert len(loops) == 1 + 3  # extraction + one client fan-out per round
    assert all(json.loads(t["parameterIterator"]["items"]["raw"]) == [0, 1] for t in loops)
    # Rounds and clients are unrolled (compiled); the settings are typed run-time parameters.
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {
        "config_json", "mlflow_run_id", *runtime.form_settings(["run1"])}
    e2e, _ = _compile(make_config(global_rounds=2, execution="round",
                                  feda2v={"generator_training_rounds": 3}), "end_to_end", tmp_path)
    assert _phases(e2e, "server-round") == ["run1"] * 3 + ["run2"] * 2
    assert len(_tasks_by_component(e2e)["train-generator"]) == 1  # after the last Run 1 round
    assert len(_tasks_by_component(e2e)["generate"]) == 1         # before the first Run 2 round


def test_fedavg_only_when_generators_are_off(make_config):
    cfg = make_config(feda2v={"use_generator": False})
    assert pipelines.phase_plan(cfg, "end_to_end") == [("fedavg", 2)]


def test_phase_yaml_does_not_grow_with_rounds(tmp_path):
    """100 clients, 10+10 and 1000+1000 rounds: the same YAML but for the default values."""
    sizes, texts = {}, {}
    for rounds in (10, 1000):
        cfg = config_mod.validate({"global_rounds": rounds, "data": {"partition": "iid",
                                                                     "num_clients": 100},
                                   "feda2v": {"generator_training_rounds": rounds}})
        (tmp_path / str(rounds)).mkdir()
        _, path = _compile(cfg, "end_to_end", tmp_path / str(rounds))
        sizes[rounds] = path.stat().st_size
        texts[rounds] = path.read_text()
    assert sizes[1000] < 200_000
    # YAML folds long lines differently with longer numbers: compare the parsed documents.
    parsed = {r: json.dumps(list(yaml.safe_load_all(t))) for r, t in texts.items()}
    assert parsed[1000].replace("1000", "10") == parsed[10]


def test_cli_compile_writes_yaml(tmp_path):
    from feda2v.cli import main

    out = tmp_path / "p.yaml"
    main(["compile", "--config", "configs/a2v_generator_training_mode.json", "--output", str(out)])
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["name"] == "feda2v-run1"
    assert config_mod.loads(
        spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    ).global_rounds == 30


@pytest.mark.parametrize("execution", ["phase", "round"])
def test_only_extraction_and_class_targets_are_cacheable(make_config, tmp_path, execution):
    spec, _ = _compile(make_config(global_rounds=1, execution=execution), "run2", tmp_path)
    caching = {}
    for comp in [spec["root"], *spec["components"].values()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            if "componentRef" in task and "parameterIterator" not in task:
                caching[name] = task.get("cachingOptions", {}).get("enableCache", False)
    assert caching.pop("extract") is True
    assert caching.pop("class-targets") is True
    assert caching and not any(caching.values()), caching


def test_ablations_fan_out_one_task_per_variant(make_config, tmp_path):
    from feda2v.orchestration.experiment import VARIANTS

    spec, _ = _compile(make_config(), "ablations", tmp_path)
    # Everything runs inside the exit handler that ends the parent MLflow run.
    assert spec["root"]["dag"]["tasks"]["ablation-finish"]["triggerPolicy"]["strategy"] == (
        "ALL_UPSTREAM_TASKS_COMPLETED")
    group = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    loops = [t["parameterIterator"]["items"] for t in group.values() if "parameterIterator" in t]
    # Clients: the typed client_ids of the run form; variants: compiled.
    items = [json.loads(i["raw"]) if "raw" in i else i["inputParameter"] for i in loops]
    assert "pipelinechannel--client_ids" in items and list(VARIANTS) in items
    assert len(items) == 2
    assert {"ablation-parent", "ablation-report"} <= set(group)


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
    gpu_tasks = ("exec-extract", "exec-federated-phase", "exec-train-generator",
                 "exec-generate", "exec-ablation-variant")
    for name, ex in executors.items():
        container = ex["container"]
        assert container["image"] == "registry.example/feda2v:1.2.3"
        resources = container.get("resources", {})
        # every task requests CPU and memory: pods without requests are evicted first and
        # refused by namespaces with a ResourceQuota
        assert resources.get("resourceCpuRequest") and resources.get("resourceMemoryRequest"), name
        if name.startswith(gpu_tasks):
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "2"
            assert resources["resourceMemoryLimit"] == "32Gi"
        else:
            assert "accelerator" not in resources, name
            if name.startswith("exec-class-targets"):  # loads a CLIP model
                assert resources["resourceMemoryRequest"] == "4Gi"
            else:
                assert resources["resourceMemoryRequest"] == "1Gi", name
        k8s = platform[name]
        assert k8s["secretAsEnv"][0]["secretName"] == "feda2v-s3"
        keys = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        if name.startswith(("exec-federated-phase", "exec-finish-run")):
            keys |= {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
        assert {m["envVar"] for m in k8s["secretAsEnv"][0]["keyToEnv"]} == keys, name
        assert k8s["secretAsEnv"][0]["optional"] is True
        assert k8s["configMapAsEnv"][0]["configMapName"] == "feda2v-config"
        assert k8s["nodeSelector"]["labels"] == {"pool": "gpu"}
        assert k8s["tolerations"][0]["effect"] == "NoSchedule"
    for comp in [spec["root"], *spec["components"].values()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            if "dag" not in spec["components"][task["componentRef"]["name"]]:
                assert task["retryPolicy"]["maxRetryCount"] == 3, name
                assert task["retryPolicy"]["backoffFactor"] == 2.0
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert "fixed at compile time" in params["config_json"]["description"]  # the form says so
    assert "Run 1 rounds" in params["generator_training_rounds"]["description"]
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


def test_full_size_round_execution_yaml_stays_under_1_mb(tmp_path):
    """Round execution, 30 + 50 rounds x 3 clients (the seed's runs), and 50 clients: rounds are
    unrolled, clients are not (ParallelFor), so the size depends on the rounds."""
    from feda2v.io import config as config_mod

    for data in ({"partition": "iid", "num_clients": 50},):  # 3 clients: a few bytes less
        cfg = config_mod.validate({"global_rounds": 50, "data": data, "execution": "round",
                                   "feda2v": {"generator_training_rounds": 30,
                                              "global_model_train": True}})
        path = tmp_path / "round.yaml"  # size only: parsing 1 MB of YAML takes half a minute
        compiler.Compiler().compile(pipelines.build(cfg, "end_to_end"), str(path))
        assert 500_000 < path.stat().st_size < 1_000_000


@pytest.mark.parametrize("kind, execution", [("end_to_end", "round"), ("ablations", "phase")])
def test_every_task_requests_cpu_and_memory(make_config, tmp_path, kind, execution):
    from pipelines import ClusterOptions

    cfg = make_config(global_rounds=1, execution=execution,
                      feda2v={"generator_training_rounds": 1})
    spec, _ = _compile(cfg, kind, tmp_path, ClusterOptions(gpus=0))
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) >= 5
    for name, ex in executors.items():
        resources = ex["container"].get("resources", {})
        assert resources.get("resourceCpuRequest") and resources.get("resourceMemoryRequest"), name
        assert resources.get("resourceCpuLimit") and resources.get("resourceMemoryLimit"), name


def test_the_data_stages_are_fed_only_the_keys_that_decide_their_output(make_config, tmp_path):
    """Extraction's cache key is the data_config task's output: a new learning rate or round
    count leaves it as it was (KFP reuses the embeddings), a data or model change does not."""
    from feda2v.orchestration import runtime

    cfg = make_config()
    compiled = runtime.compiled_values(cfg)

    def data_config(**change):
        changed = cfg.to_dict()
        for dotted, value in change.items():
            section, _, key = dotted.replace("__", ".").rpartition(".")
            (changed[section] if section else changed)[key] = value
        return runtime.data_stage_config(json.dumps(changed), compiled, [0, 1])

    same = data_config()
    assert data_config(learning_rate=0.5, feda2v__generator_learning_rate=0.1) == same
    assert data_config(feda2v__generator_hidden_dim=64, local_epochs=9) == same
    assert data_config(data__test_fraction=0.3) != same
    assert data_config(seed=cfg.seed + 1) != same
    spec, _ = _compile(cfg, "end_to_end", tmp_path)
    loop = next(comp for name, comp in spec["components"].items()
                if "extract" in comp.get("dag", {}).get("tasks", {}))
    inputs = loop["dag"]["tasks"]["extract"]["inputs"]["parameters"]
    assert set(inputs) == {"data_config", "client_id"}


def _artifact_inputs(spec, task_name):
    """{input name: (producer task, output key)} of the artifact inputs of `task_name`s."""
    out = {}
    for comp in [spec["root"], *spec["components"].values()]:
        for name, task in comp.get("dag", {}).get("tasks", {}).items():
            if name.rstrip("-0123456789") == task_name:
                for key, a in task.get("inputs", {}).get("artifacts", {}).items():
                    src = a.get("taskOutputArtifact", {})
                    # From outside a loop, an artifact enters as the loop's input.
                    outer = a.get("componentInputArtifact", "").removeprefix("pipelinechannel--")
                    out.setdefault(name, {})[key] = ((src.get("producerTask"),
                                                      src.get("outputArtifactKey")) if src
                                                     else ("loop input", outer))
    return out


def test_embeddings_checkpoints_and_samples_are_typed_artifacts(make_config, tmp_path):
    """Lineage in the UI: extraction hands on a Dataset, the Run 1 phase the class conditions
    generator training reads, generator training a Model that generation reads, generation a
    Dataset that Run 2 reads; every phase reads the Datasets of every client (collected from
    the client loop)."""
    spec, _ = _compile(make_config(global_rounds=2), "end_to_end", tmp_path)
    comps = spec["components"]

    def outputs(comp):
        return {k: v["artifactType"]["schemaTitle"]
                for k, v in comps[comp]["outputDefinitions"].get("artifacts", {}).items()}

    assert outputs("comp-extract") == {"embeddings": "system.Dataset"}
    assert outputs("comp-train-generator") == {"checkpoint": "system.Model"}
    assert outputs("comp-federated-phase") == {"adapter": "system.Model",
                                               "metrics": "system.Metrics",
                                               "conditions": "system.Dataset"}
    assert outputs("comp-generate") == {"samples": "system.Dataset"}
    inputs = comps["comp-federated-phase"]["inputDefinitions"]["artifacts"]
    assert inputs["embeddings"]["isArtifactList"] and inputs["synthetic"]["isOptional"]
    generate = _artifact_inputs(spec, "generate")
    assert list(generate.values()) == [{"checkpoint": ("train-generator", "checkpoint")}]
    trained = _artifact_inputs(spec, "train-generator")
    assert list(trained.values()) == [{"conditions": ("loop input", "federated-phase-conditions")}]
    phases = _artifact_inputs(spec, "federated-phase")
    assert len(phases) == 2
    for name, edges in phases.items():
        assert edges["embeddings"][0].startswith("for-loop-"), name  # the collected loop output
        assert edges["targets"] == ("class-targets", "targets"), name
    name1, name2 = sorted(phases, key=lambda n: "synthetic" in phases[n])
    run1, run2 = phases[name1], phases[name2]
    assert "synthetic" not in run1 and "start" not in run1
    assert run2["start"] == (name1, "adapter")  # Run 2 goes on from Run 1's adapter artifact
    assert run2["synthetic"][0].startswith("for-loop-")
    spec, _ = _compile(make_config(global_rounds=2, feda2v={"run2_start": "initial"}),
                       "end_to_end", tmp_path)
    assert not any("start" in e for e in _artifact_inputs(spec, "federated-phase").values())


def test_phase_tasks_map_collected_artifacts_by_client():
    from types import SimpleNamespace

    from feda2v.orchestration import tasks

    def art(i, path):
        return SimpleNamespace(metadata={"client_id": float(i)}, path=path)

    assert tasks.by_client([art(1, "b"), art(0, "a")], "embeddings", 2) == {0: "a", 1: "b"}
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        tasks.by_client([art(0, "a")], "embeddings", 2)
    with pytest.raises(ValueError, match="two embeddings artifacts for client 0"):
        tasks.by_client([art(0, "a"), art(0, "b")], "embeddings", 2)


# --- the run form and the task names the KFP UI shows ---------------------------------------

FORMS = [("run1", "phase"), ("run1", "round"), ("run2", "phase"), ("run2", "round"),
         ("end_to_end", "phase"), ("end_to_end", "round"), ("ablations", "phase")]


def _form_config():
    """Values that differ from every key's default: the form must show the compiled ones."""
    return config_mod.validate({
        "global_rounds": 3, "seed": 7, "batch_size": 8, "storage_root": "s3://bucket/root",
        "local_epochs": 2, "learning_rate": 0.005,
        "data": {"dataset_uri": "s3://bucket/esc50", "partition": "iid", "num_clients": 3},
        "feda2v": {"generator_training_rounds": 2, "generator_type": "gan",
                   "generator_training_epochs": 4, "generator_learning_rate": 0.002,
                   "synthetic_samples_per_class": 6}})


@pytest.mark.parametrize("kind, execution", FORMS)
def test_every_pipeline_has_a_typed_run_form_with_the_compiled_defaults(tmp_path, kind,
                                                                        execution):
    cfg = _form_config()
    spec, _ = _compile(cfg.replace(execution=execution), kind, tmp_path)
    params = spec["root"]["inputDefinitions"]["parameters"]
    phases = ["run1", "run2"] if kind in ("end_to_end", "ablations") else [kind]
    settings = runtime.form_settings(phases)
    assert {"seed", "storage_root", "dataset_uri", "batch_size"} <= set(settings)
    run_time_counts = {"global_rounds": 3, "client_ids": [0, 1, 2]}
    if phases == ["run1", "run2"]:
        run_time_counts["generator_training_rounds"] = 2
    expected = {"config_json", "mlflow_run_id", *settings}
    if execution == "phase":  # rounds and clients are unrolled in round execution
        expected |= set(run_time_counts)
    assert set(params) == expected
    types = {int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", str: "STRING"}
    for name in settings:
        key = runtime.SETTINGS[name]
        value = runtime.config_value(cfg, key)
        assert params[name]["defaultValue"] == value, name
        assert params[name]["parameterType"] == types[type(value)], name
        doc = config_mod.key_spec(key).doc
        assert params[name]["description"] == f"{doc} ({key})", name  # the form's help
    assert params["seed"]["defaultValue"] == 7
    assert params["storage_root"]["defaultValue"] == "s3://bucket/root"
    assert params["dataset_uri"]["defaultValue"] == "s3://bucket/esc50"
    assert params["batch_size"]["defaultValue"] == 8
    if execution == "phase":
        for name, value in run_time_counts.items():
            assert params[name]["defaultValue"] == value and params[name]["description"], name
    assert "typed run-time parameters" in params["config_json"]["description"]


def _all_tasks(spec):
    """(task key, task) over the root DAG and every sub-DAG."""
    for comp in [spec["root"], *spec["components"].values()]:
        yield from comp.get("dag", {}).get("tasks", {}).items()


@pytest.mark.parametrize("kind, execution", FORMS)
def test_every_task_that_reads_the_config_gets_the_run_forms_settings(tmp_path, kind,
                                                                      execution):
    """Every task given config_json is also given the settings dict, built from the form's
    typed fields; the round tasks read them from the global adapter their init-adapter or
    server-round task wrote (its metadata), so each round task's adapter comes from one."""
    spec, _ = _compile(_form_config().replace(execution=execution), kind, tmp_path)
    settings = runtime.form_settings(["run1", "run2"] if kind in ("end_to_end", "ablations")
                                     else [kind])
    seen, rounds = set(), 0
    for name, task in _all_tasks(spec):
        params = task.get("inputs", {}).get("parameters", {})
        component = task["componentRef"]["name"].removeprefix("comp-").rstrip("-0123456789")
        if "config_json" not in params:
            continue
        seen.add(component)
        if component in ("client-round", "server-round"):
            rounds += 1
            edge = task["inputs"]["artifacts"]["global_adapter" if component == "client-round"
                                               else "previous"]
            producer = edge.get("taskOutputArtifact", {}).get("producerTask") or edge[
                "componentInputArtifact"].removeprefix("pipelinechannel--")
            assert producer.startswith(("init-adapter", "server-round")), name
            continue
        value = params["settings"]["runtimeValue"]["constant"]
        assert set(value) == set(settings), name
        for field, placeholder in value.items():  # each the pipeline parameter of that name
            assert placeholder == f"{{{{$.inputs.parameters['pipelinechannel--{field}']}}}}"
    assert {"data-config", "finish-run" if kind != "ablations" else "ablation-finish"} <= seen
    if execution == "round" and kind != "ablations":
        assert rounds == 2 * (3 + (2 if kind == "end_to_end" else 0))
        assert {"init-adapter", "client-round", "server-round"} <= seen


def test_phase_tasks_are_named_by_their_phase(make_config, tmp_path):
    """The KFP UI shows taskInfo.name: run1 and run2 (fedavg without generators), not
    federated-phase and federated-phase-2; round tasks show their phase and round."""

    def names(spec, component):
        return sorted(t["taskInfo"]["name"] for n, t in _all_tasks(spec)
                      if t["componentRef"]["name"].removeprefix("comp-").rstrip("-0123456789")
                      == component)

    spec, _ = _compile(make_config(), "end_to_end", tmp_path)
    assert names(spec, "federated-phase") == ["run1", "run2"]
    fedavg = make_config(feda2v={"use_generator": False})
    assert names(_compile(fedavg, "run1", tmp_path)[0], "federated-phase") == ["fedavg"]
    rounds, _ = _compile(make_config(global_rounds=2, execution="round",
                                     feda2v={"generator_training_rounds": 1}), "end_to_end",
                         tmp_path)
    assert names(rounds, "client-round") == ["client-run1-round-1", "client-run2-round-1",
                                             "client-run2-round-2"]
    assert names(rounds, "server-round") == ["server-run1-round-1", "server-run2-round-1",
                                             "server-run2-round-2"]


def test_run_time_settings_reach_the_round_execution_tasks(tmp_path, monkeypatch):
    """In process, through the components' own functions: init-adapter resolves the config
    with the form's settings and hands them (with the compiled values and the run key) on in
    the adapter's metadata; a client round and a server round resolve with them, and the
    server's adapter carries them to the next round. A conflicting config_json fails there."""
    from kfp.dsl import Artifact, Dataset, Metrics, Model

    import components
    from feda2v.orchestration import stages

    cfg = config_mod.validate({"execution": "round", "pipeline": "run1", "seed": 3,
                               "data": {"partition": "iid", "num_clients": 2}})
    compiled = runtime.compiled_values(cfg)
    form = {"seed": "11.0", "batch_size": "4.0", "storage_root": str(tmp_path / "root"),
            "dataset_uri": "s3://bucket/esc50", "local_epochs": "2.0"}
    got = {}

    def capture(stage, result):
        def fake(config, *args, **kwargs):
            got[stage] = (config, args)
            return result
        monkeypatch.setattr(stages, stage, fake)

    capture("init_adapter", {"parameters": 5})
    capture("ensure_targets", "")  # the targets' copy for the exit handler
    capture("client_round", {"adapter_loss": 0.5})
    capture("server_round", {"accuracy": 0.25})

    def art(cls, name):
        return cls(uri=str(tmp_path / name), metadata={})

    adapter = art(Model, "init")
    assert components.init_adapter.python_func(
        config_json=cfg.to_json(), compiled=compiled, settings=form, run_key="job-1",
        client_data_uris=[], targets=art(Dataset, "t"), adapter=adapter) == 5
    client = components.client_round.python_func(
        config_json=cfg.to_json(), client_id=1, round_num=1, phase="run1",
        global_adapter=adapter, targets=art(Dataset, "t"), update=art(Artifact, "u"))
    assert client == 0.5
    new = art(Model, "round1")
    server = components.server_round.python_func(
        config_json=cfg.to_json(), round_num=1, phase="run1", updates=[art(Artifact, "u")],
        previous=adapter, targets=art(Dataset, "t"), mlflow_run_id="", adapter=new,
        metrics=art(Metrics, "m"))
    assert server == 0.25
    for stage in ("init_adapter", "client_round", "server_round"):
        resolved = got[stage][0]
        assert (resolved.seed, resolved.batch_size, resolved.local_epochs) == (11, 4, 2), stage
        assert resolved.storage_root == str(tmp_path / "root"), stage
        assert resolved.data.dataset_uri == "s3://bucket/esc50", stage
    assert got["client_round"][1][-1] == "job-1" and got["server_round"][1][-1] == "job-1"
    assert new.metadata == adapter.metadata  # on to the next round
    with pytest.raises(config_mod.ConfigError, match="'seed' is 5 in config_json but 11"):
        components.client_round.python_func(
            config_json=cfg.replace(seed=5).to_json(), client_id=0, round_num=2, phase="run1",
            global_adapter=new, targets=art(Dataset, "t"), update=art(Artifact, "u"))


def test_run_time_settings_reach_the_data_and_ablation_tasks(tmp_path, monkeypatch):
    """The data stages' config (extraction's cache key) holds a seed, storage root and dataset
    given at run time; an ablation variant runs with the form's values."""
    import components
    from feda2v.orchestration import experiment

    cfg = config_mod.validate({"pipeline": "run1", "data": {"partition": "iid",
                                                            "num_clients": 2}})
    compiled = runtime.compiled_values(cfg)
    form = {"seed": "11", "storage_root": "s3://bucket/root", "dataset_uri": "/data/other",
            "batch_size": "4"}
    data = json.loads(components.data_config.python_func(
        config_json=cfg.to_json(), compiled=compiled, client_ids=[0, 1], settings=form))
    assert (data["seed"], data["storage_root"], data["data"]["dataset_uri"]) == (
        11, "s3://bucket/root", "/data/other")
    same = components.data_config.python_func(config_json=cfg.to_json(), compiled=compiled,
                                              client_ids=[0, 1], settings={})
    assert components.data_config.python_func(
        config_json=cfg.to_json(), compiled=compiled, client_ids=[0, 1],
        settings={"learning_rate": "0.5", "batch_size": "4"}) == same  # the cache key stands
    from kfp.dsl import Dataset

    seen = {}
    monkeypatch.setattr(experiment, "run_variant_task",
                        lambda config, variant, *a: seen.setdefault(variant, config) and {})
    components.ablation_variant.python_func(
        config_json=cfg.to_json(), compiled=compiled, global_rounds=4,
        generator_training_rounds=1, client_ids=[0, 1, 2], settings=form, variant="fedavg",
        targets=Dataset(uri=str(tmp_path / "t"), metadata={}), mlflow_run_id="", run_key="job")
    got = seen["fedavg"]
    assert (got.seed, got.storage_root, got.data.dataset_uri, got.batch_size) == (
        11, "s3://bucket/root", "/data/other", 4)
    assert (got.global_rounds, got.feda2v.generator_training_rounds) == (4, 1)
    assert config_mod.num_clients(got) == 3


@pytest.mark.parametrize("execution", ["phase", "round"])
def test_the_exit_handler_gives_the_kfp_ui_an_html_report_and_a_confusion_matrix(
        make_config, tmp_path, execution):
    cfg = make_config(global_rounds=1, execution=execution,
                      feda2v={"generator_training_rounds": 1})
    spec, _ = _compile(cfg, "end_to_end", tmp_path)
    outputs = spec["components"]["comp-finish-run"]["outputDefinitions"]["artifacts"]
    assert outputs["figures"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outputs["confusion"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"
    # The generator tasks log their losses live: they are handed the run form's MLflow run.
    generator = [t for c in [spec["root"], *spec["components"].values()]
                 for t in c.get("dag", {}).get("tasks", {}).values()
                 if t["componentRef"]["name"].startswith("comp-train-generator")]
    assert generator and all("mlflow_run_id" in t["inputs"]["parameters"] for t in generator)
