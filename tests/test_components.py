"""Each KFP component's own Python function (`component.python_func`), called in process with
real `kfp.dsl` artifacts under a temp folder, on the tiny offline dataset and models: what a
task's body promises (files at its output artifacts' paths, their metadata, its return value,
the MLflow run it ends) without compiling a pipeline or starting kfp.local.

The phase-execution tasks run as one chain, as the end_to_end DAG wires them (data config ->
class targets and extraction per client -> Run 1 phase -> generator per client -> samples per
client -> Run 2 phase -> exit handler); the round-execution and ablation tasks feed on its
targets and embeddings.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Markdown,
    Metrics,
    Model,
    PipelineTaskFinalStatus,
)
from safetensors.torch import load_file

import components
from feda2v.io import config as config_mod
from feda2v.io import runstate, storage, tracking
from feda2v.orchestration import runtime, stages

CLIENTS = [0, 1]
SPLIT = [["dog", "rooster"], ["rain", "siren"]]  # conftest's TEST_SPLIT
KEY = "job-components"  # the KFP job id the phase chain runs under
ROUND_KEY = "job-rounds"
ABLATION_KEY = "job-ablations"


def _art(cls, folder, task: str, name: str):
    """An output artifact as the KFP launcher hands it to a task: a local uri (its `path`), the
    parent folder made (the launcher makes it), empty metadata."""
    path = os.path.join(str(folder), task, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return cls(name=name, uri=path, metadata={})


def _floats(value):
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _input(art):
    """An output artifact as the launcher hands it on to a downstream task's input: the same
    uri, its metadata through a protobuf Struct (numbers become floats: client_id 1.0)."""
    return type(art)(name=art.name, uri=art.uri, metadata=_floats(art.metadata))


def _status(state: str, error: str | None = None) -> PipelineTaskFinalStatus:
    return PipelineTaskFinalStatus(state=state, pipeline_job_resource_name="projects/p/jobs/j",
                                   pipeline_task_name="feda2v-run", error_code=None,
                                   error_message=error)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return runstate.sha256(f.read())


def _mlflow_run(cfg, run_id: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking.tracking_uri(cfg)).get_run(run_id)


def _mlflow_run_by_key(cfg, run_key: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(cfg))
    exp = client.get_experiment_by_name(cfg.experiment_name)
    found = client.search_runs([exp.experiment_id],
                               filter_string=f"tags.`feda2v.run_key` = '{run_key}'")
    assert len(found) == 1, (run_key, found)
    return found[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_models, demo_data):
    """The smallest end_to_end config (1 Run 1 round, 1 Run 2 round, 1 epoch each), its compiled
    values and the typed run-time inputs every phase task takes; MLflow in SQLite under the
    storage root (no $MLFLOW_TRACKING_URI)."""
    root = tmp_path_factory.mktemp("components")
    cfg = config_mod.validate({
        "pipeline": "end_to_end", "global_rounds": 1, "batch_size": 32, "local_epochs": 1,
        "seed": 0, "storage_root": str(root / "store"), "experiment_name": "components",
        "data": {"dataset_uri": demo_data, "clients": SPLIT, "clip_seconds": 1.0},
        "models": {"audio_model": tiny_models["audio"], "text_model": tiny_models["text"],
                   "device": "cpu"},
        "feda2v": {"generator_training_rounds": 1, "generator_training_epochs": 2,
                   "generator_hidden_dim": 32, "generator_latent_dim": 8,
                   "adapter_hidden_dims": [32], "synthetic_samples_per_class": 4,
                   "global_model_train": True, "global_model_train_epochs": 1,
                   "quality_metrics": False, "generator_sampling": "prior"}})
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        compiled = runtime.compiled_values(cfg)
        common = {"config_json": cfg.to_json(), "compiled": compiled, "global_rounds": 1,
                  "generator_training_rounds": 1, "client_ids": list(CLIENTS), "settings": {}}
        yield {"cfg": cfg, "root": root / "kfp", "compiled": compiled, "common": common}


@pytest.fixture(scope="module")
def chain(env):
    """The phase-execution tasks of one end_to_end run, in the DAG's order, each fed the
    artifacts the one before wrote. Returns {what: return value or artifact}."""
    root, common = env["root"], env["common"]
    out = {}
    out["data_config"] = components.data_config.python_func(
        config_json=common["config_json"], compiled=env["compiled"], client_ids=list(CLIENTS),
        settings={})
    out["targets"] = _art(Dataset, root, "class-targets", "targets")
    out["num_classes"] = components.class_targets.python_func(
        data_config=out["data_config"], targets=out["targets"])
    out["embeddings"], out["embeddings_uri"] = [], []
    for i in CLIENTS:
        art = _art(Dataset, root, f"extract-{i}", "embeddings")
        out["embeddings_uri"].append(components.extract.python_func(
            data_config=out["data_config"], client_id=i, embeddings=art))
        out["embeddings"].append(art)
    out["run1"] = _phase(env, "run1", [_input(a) for a in out["embeddings"]], out["targets"])
    out["checkpoints"], out["trained"] = [], []
    for i in CLIENTS:
        ckpt = _art(Model, root, f"train-generator-{i}", "checkpoint")
        out["trained"].append(json.loads(components.train_generator.python_func(
            **common, client_id=i, run_key=KEY, mlflow_run_id="", checkpoint=ckpt,
            conditions=_input(out["run1"]["conditions"]))))
        out["checkpoints"].append(ckpt)
    out["samples"], out["generated"] = [], []
    for i in CLIENTS:
        samples = _art(Dataset, root, f"generate-{i}", "samples")
        out["generated"].append(json.loads(components.generate.python_func(
            **common, client_id=i, run_key=KEY, samples=samples,
            checkpoint=_input(out["checkpoints"][i]))))
        out["samples"].append(samples)
    # Run 2 starts from Run 1's adapter (run2_start auto, Run 1 in this run), as the DAG wires it.
    out["run2"] = _phase(env, "run2", [_input(a) for a in out["embeddings"]], out["targets"],
                         synthetic=[_input(a) for a in out["samples"]],
                         start=_input(out["run1"]["adapter"]))
    return out


def _phase(env, phase: str, embeddings: list, targets, run_key: str = KEY, **more) -> dict:
    """One federated_phase task: {adapter, metrics, conditions: its output artifacts,
    accuracy: its return value}."""
    arts = {name: _art(cls, env["root"], f"{phase}-{run_key}", name)
            for name, cls in (("adapter", Model), ("metrics", Metrics), ("conditions", Dataset))}
    accuracy = components.federated_phase.python_func(
        **env["common"], phase=phase, run_key=run_key, mlflow_run_id="",
        embeddings=embeddings, targets=_input(targets), **arts, **more)
    return dict(arts, accuracy=accuracy)


# --- data stages --------------------------------------------------------------------------------

def test_data_config_is_the_data_stages_cut_down_config(env, chain):
    data = json.loads(chain["data_config"])
    assert sorted(data) == ["data", "models", "seed", "storage_root"]
    assert (data["seed"], data["storage_root"]) == (0, env["cfg"].storage_root)
    assert data["data"]["clients"] == SPLIT
    call = {k: env["common"][k] for k in ("config_json", "compiled", "client_ids")}
    # A learning rate given at run time is no part of extraction's cache key; a seed is.
    assert components.data_config.python_func(
        **call, settings={"learning_rate": "0.5"}) == chain["data_config"]
    assert json.loads(components.data_config.python_func(
        **call, settings={"seed": "7.0"}))["seed"] == 7
    with pytest.raises(config_mod.ConfigError, match="'data.clients' gives 2 clients"):
        components.data_config.python_func(**dict(call, client_ids=[0, 1, 2]), settings={})


def test_class_targets_writes_one_target_per_class(chain):
    assert chain["num_classes"] == 4
    path = chain["targets"].path
    targets = load_file(path)["targets"]
    assert targets.shape[0] == 4 and targets.ndim == 2 and torch.isfinite(targets).all()
    names = storage.load_tensors(path)[1]["class_names"]
    assert sorted(names) == sorted(c for group in SPLIT for c in group)


def test_extract_publishes_each_clients_embeddings_with_their_hash(env, chain):
    from feda2v.encoders.extraction import embeddings_uri

    cfg = env["cfg"]
    for i, art in zip(CLIENTS, chain["embeddings"]):
        cache = embeddings_uri(cfg, i)
        assert chain["embeddings_uri"][i] == cache  # the storage-root copy later runs reuse
        with open(art.path, "rb") as f:
            data = f.read()
        assert data == storage.read_bytes(cache)
        assert art.metadata == {"client_id": i, "sha256": runstate.sha256(data),
                                "source": cache}
        tensors = load_file(art.path)
        x, y = tensors["train_x"], tensors["train_y"]
        assert x.ndim == 3 and len(x) == len(y) > 0 and len(tensors["test_x"]) > 0
        names = storage.load_tensors(art.path)[1]["class_names"]
        assert {names[int(c)] for c in y.unique()} == set(SPLIT[i])  # its own classes only


def test_extract_refuses_a_client_the_config_lacks(env, chain):
    art = _art(Dataset, env["root"], "extract-bad", "embeddings")
    with pytest.raises(ValueError, match="client 2 does not exist: the config has 2 clients"):
        components.extract.python_func(data_config=chain["data_config"], client_id=2,
                                       embeddings=art)
    with pytest.raises(config_mod.ConfigError, match="expected an integer, got 0.5"):
        components.extract.python_func(data_config=chain["data_config"], client_id=0.5,
                                       embeddings=art)
    assert not os.path.exists(art.path) and art.metadata == {}


# --- phase execution ----------------------------------------------------------------------------

def test_run1_phase_writes_the_adapter_metrics_and_class_conditions(env, chain):
    run1 = chain["run1"]
    assert isinstance(run1["accuracy"], float) and 0.0 <= run1["accuracy"] <= 1.0
    assert run1["metrics"].metadata == {"accuracy": run1["accuracy"]}
    adapter, meta = storage.load_tensors(run1["adapter"].path)
    assert meta == {"round": 1, "phase": "run1"}
    assert adapter and all(torch.isfinite(v).all() for v in adapter.values())
    # The same adapter as the phase's last round under the run folder (what a retry resumes).
    run = runstate.run_dir(env["cfg"], KEY)
    last = load_file(runstate.round_uri(run, "run1", 1))
    assert set(last) == set(adapter) and all(torch.equal(last[k], adapter[k]) for k in last)
    # Every client's Run 1 class conditions, for the generator tasks.
    folder = run1["conditions"].path
    assert run1["conditions"].metadata == {"phase": "run1", "clients": 2, "rounds": 1}
    for i in CLIENTS:
        means = load_file(runstate.conditions_uri(run, i, 1, folder))["means"]
        assert means.shape[0] == 2 and torch.isfinite(means).all()
    assert sorted(os.listdir(folder)) == ["client_0", "client_1"]


def test_run2_phase_goes_on_from_run1_and_logs_both_phases(env, chain):
    run2 = chain["run2"]
    assert 0.0 <= run2["accuracy"] <= 1.0
    assert run2["metrics"].metadata == {"accuracy": run2["accuracy"]}
    adapter, meta = storage.load_tensors(run2["adapter"].path)
    assert meta == {"round": 1, "phase": "run2"}
    run1 = load_file(chain["run1"]["adapter"].path)
    assert set(adapter) == set(run1) and any(not torch.equal(adapter[k], run1[k]) for k in run1)
    # Only Run 1 hands conditions on: an empty folder here.
    assert run2["conditions"].metadata == {"phase": "run2", "clients": 0, "rounds": 0}
    assert os.listdir(run2["conditions"].path) == []
    from mlflow.tracking import MlflowClient

    run = _mlflow_run_by_key(env["cfg"], KEY)
    client = MlflowClient(tracking.tracking_uri(env["cfg"]))
    history = client.get_metric_history(run.info.run_id, "eval/global_accuracy")
    assert [m.step for m in history] == [1, 2]  # Run 1's round at step 1, Run 2's at step 2
    assert history[-1].value == pytest.approx(run2["accuracy"])
    synthetic = client.get_metric_history(run.info.run_id, "server/synthetic_samples_total")
    assert [m.value for m in synthetic] == [sum(g["samples"] for g in chain["generated"])]


def test_federated_phase_names_a_missing_or_doubled_client_artifact(env, chain):
    one = [_input(chain["embeddings"][0])]
    with pytest.raises(ValueError, match=r"embeddings artifacts for clients \[0\], but the "
                                         r"config has 2 clients \(missing \[1\]\)"):
        _phase(env, "run1", one, chain["targets"], run_key="job-missing-client")
    with pytest.raises(ValueError, match="two embeddings artifacts for client 0"):
        _phase(env, "run1", one + one, chain["targets"], run_key="job-missing-client")
    with pytest.raises(ValueError, match="synthetic samples artifacts for clients"):
        _phase(env, "run2", [_input(a) for a in chain["embeddings"]], chain["targets"],
               run_key="job-missing-client", synthetic=[_input(chain["samples"][1])])


# --- generators ---------------------------------------------------------------------------------

def test_train_generator_publishes_each_clients_checkpoint(env, chain):
    cfg = env["cfg"]
    run = runstate.run_dir(cfg, KEY)
    from mlflow.tracking import MlflowClient

    # Each round's loss reached the pipeline run's MLflow run as the round ended: before Run 2.
    client, run_id = MlflowClient(tracking.tracking_uri(cfg)), _mlflow_run_by_key(cfg, KEY).info.run_id
    run2_first = min(m.timestamp for m in client.get_metric_history(run_id, "eval/global_accuracy")
                     if m.step == 2)
    for i, result in enumerate(chain["trained"]):
        losses = client.get_metric_history(run_id, f"train/node_{i}/generator_loss")
        assert [(m.step, m.value) for m in losses] == [(1, result["generator_loss"])]
        assert losses[0].timestamp <= run2_first
    for i, (result, art) in enumerate(zip(chain["trained"], chain["checkpoints"])):
        assert result["client_id"] == i and result["rounds"] == 1
        assert isinstance(result["generator_loss"], float)
        ckpt = torch.load(art.path, weights_only=True)
        assert (ckpt["client_id"], ckpt["round"], ckpt["generator_type"]) == (i, 1, "vae")
        assert ckpt["class_names"] == SPLIT[i] and ckpt["class_conditions"].shape[0] == 2
        assert ckpt["generator_state_dict"] and ckpt["optimizer_state_dict"]
        own = runstate.generator_state_uri(run, i)
        assert art.metadata == {"client_id": i, "sha256": _sha256(art.path), "source": own,
                                "generator_type": "vae", "name": f"client_{i}_generator.pt"}
        with open(art.path, "rb") as f:
            assert storage.read_bytes(own) == f.read()
        # ... and under the seed's name in the shared checkpoint folder.
        shared = os.path.join(cfg.storage_root, cfg.feda2v.generator_checkpoint_dir,
                              f"client_{i}_generator.pt")
        assert torch.load(shared, weights_only=True)["round"] == 1


def test_generate_samples_from_the_checkpoint_artifact_it_is_given(env, chain):
    for i, (result, art) in enumerate(zip(chain["generated"], chain["samples"])):
        assert result == {"client_id": i, "samples": result["samples"],
                          "sha256": chain["checkpoints"][i].metadata["sha256"],
                          "checkpoint_round": 1}
        tensors, meta = storage.load_tensors(art.path)
        x, y = tensors["x"], tensors["y"]
        assert x.shape[0] == 1 and x.shape[1] == len(y) == result["samples"] > 0  # 1 round
        assert torch.isfinite(x).all()
        assert meta["source"] == chain["checkpoints"][i].path
        assert art.metadata == {"client_id": i, "sha256": _sha256(art.path),
                                "samples": result["samples"],
                                "source": runstate.synthetic_uri(
                                    runstate.run_dir(env["cfg"], KEY), i)}


def test_generate_names_a_missing_checkpoint_artifact(env, chain):
    gone = Model(name="checkpoint", uri=str(env["root"] / "nowhere" / "checkpoint"),
                 metadata={"client_id": 0.0})
    samples = _art(Dataset, env["root"], "generate-missing", "samples")
    with pytest.raises(FileNotFoundError, match=r"\[Client 0\] Generator checkpoint not found "
                                                f"at {gone.path}"):
        components.generate.python_func(**env["common"], client_id=0, run_key="job-missing",
                                        samples=samples, checkpoint=gone)
    assert not os.path.exists(samples.path) and samples.metadata == {}


def test_generator_tasks_fail_for_a_client_the_config_lacks(env, chain):
    """Client 3 of a 2-client run: both generator tasks refuse it by name, as extraction does,
    and publish nothing."""
    ckpt = _art(Model, env["root"], "train-generator-bad", "checkpoint")
    with pytest.raises(ValueError, match="client 3 does not exist: the config has 2 clients"):
        components.train_generator.python_func(
            **env["common"], client_id=3, run_key=KEY, mlflow_run_id="", checkpoint=ckpt,
            conditions=_input(chain["run1"]["conditions"]))
    assert not os.path.exists(ckpt.path) and ckpt.metadata == {}
    samples = _art(Dataset, env["root"], "generate-bad", "samples")
    with pytest.raises(ValueError, match="client 3 does not exist: the config has 2 clients"):
        components.generate.python_func(**env["common"], client_id=3, run_key=KEY,
                                        samples=samples, checkpoint=_input(chain["checkpoints"][0]))
    assert not os.path.exists(samples.path) and samples.metadata == {}


# --- exit handler -------------------------------------------------------------------------------

def _finish_outputs(env, task: str):
    return (_art(HTML, env["root"], task, "figures"),
            _art(ClassificationMetrics, env["root"], task, "confusion"))


def test_finish_run_reports_and_ends_the_mlflow_run_finished(env, chain):
    cfg = env["cfg"]
    report = _art(Markdown, env["root"], "finish-run", "report")
    figures, confusion = _finish_outputs(env, "finish-run")
    text = components.finish_run.python_func(**env["common"], run_key=KEY, mlflow_run_id="",
                                             status=_status("SUCCEEDED"), report=report,
                                             figures=figures, confusion=confusion)
    with open(report.path) as f:
        assert f.read() == text
    assert text.startswith("# FedA2V results (succeeded)")
    assert "| phase | round | global acc |" in text and "| run2 |" in text
    assert storage.read_bytes(storage.join(runstate.run_dir(cfg, KEY), "report.md")) == \
        text.encode()
    assert tracking.tracking_uri(cfg) == "sqlite:///" + os.path.join(cfg.storage_root,
                                                                    "mlflow.db")
    run = _mlflow_run_by_key(cfg, KEY)
    assert run.info.status == "FINISHED"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(cfg))
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "report", "generators"} <= logged
    generators = {a.path for a in client.list_artifacts(run.info.run_id, "generators")}
    assert generators == {"generators/client_0_generator.pt", "generators/client_1_generator.pt"}
    assert run.data.tags["generators.client_1.sha256"] == chain["checkpoints"][1].metadata[
        "sha256"]
    # The report with its figures: the HTML artifact (images inside), the same files in
    # MLflow and under the run folder; the confusion matrix as KFP draws it.
    with open(figures.path) as f:
        page = f.read()
    # (quality metrics are off here: no client draws its projection; test_local_run's do)
    assert page.count('<img src="data:image/png;base64,') == 5 and "No client drew one" in page
    for title in ("Accuracy", "Losses", "Partition", "confusion matrix", "Real vs synthetic"):
        assert title in page, title
    in_mlflow = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    pngs = {p for p in in_mlflow if p.endswith(".png")}
    assert pngs == {"report/accuracy.png", "report/generator_loss.png",
                    "report/adapter_loss.png", "report/partition.png", "report/confusion.png"}
    assert {"report/report.html", "report/partition.json", "report/confusion.json"} <= in_mlflow
    assert storage.read_bytes(storage.join(runstate.run_dir(cfg, KEY), "report",
                                           "report.html")).decode() == page
    matrix = confusion.metadata["confusionMatrix"]
    assert [c for c in matrix["annotationSpecs"]] == [{"displayName": n}
                                                     for g in SPLIT for n in g]
    rows = [r["row"] for r in matrix["rows"]]
    test_rows = sum(len(storage.load_tensors(stages.embeddings_uri(cfg, i))[0]["test_y"])
                    for i in CLIENTS)
    assert sum(map(sum, rows)) == test_rows
    accuracy = client.get_metric_history(run.info.run_id, "eval/global_accuracy")[-1].value
    assert sum(rows[i][i] for i in range(len(rows))) / test_rows == pytest.approx(accuracy)
    # A retried exit handler finds the ended run and leaves it FINISHED.
    again = _art(Markdown, env["root"], "finish-run-retry", "report")
    components.finish_run.python_func(**env["common"], run_key=KEY, mlflow_run_id="",
                                      status=_status("SUCCEEDED"), report=again,
                                      **dict(zip(("figures", "confusion"),
                                                 _finish_outputs(env, "finish-run-retry"))))
    assert _mlflow_run(cfg, run.info.run_id).info.status == "FINISHED"


def test_finish_run_ends_a_failed_run_failed_with_its_error(env):
    cfg = env["cfg"]
    report = _art(Markdown, env["root"], "finish-failed", "report")
    figures, confusion = _finish_outputs(env, "finish-failed")
    text = components.finish_run.python_func(
        **env["common"], run_key="job-failed", mlflow_run_id="",
        status=_status("FAILED", "task run1 failed: pod evicted"), report=report,
        figures=figures, confusion=confusion)
    assert text.startswith("# FedA2V results (failed)") and "pod evicted" in text
    with open(report.path) as f:
        assert f.read() == text
    run = _mlflow_run_by_key(cfg, "job-failed")
    assert run.info.status == "FAILED"
    from mlflow.tracking import MlflowClient

    logged = {a.path for a in MlflowClient(tracking.tracking_uri(cfg)).list_artifacts(
        run.info.run_id)}
    assert "model" not in logged and "report" in logged  # no adapter from a failed run


def test_finish_run_closes_the_run_when_the_config_check_itself_failed(env):
    """A config_json whose structural key contradicts the compiled DAG fails every task's
    resolve; the exit handler still ends that run's MLflow run, naming the error."""
    cfg = env["cfg"]
    bad = dict(env["common"], config_json=cfg.replace(pipeline="run1").to_json())
    report = _art(Markdown, env["root"], "finish-bad-config", "report")
    figures, confusion = _finish_outputs(env, "finish-bad-config")
    text = components.finish_run.python_func(**bad, run_key="job-bad-config", mlflow_run_id="",
                                             status=_status("FAILED"), report=report,
                                             figures=figures, confusion=confusion)
    assert "'pipeline' is \"run1\" in config_json but the pipeline was compiled with " \
           "\"end_to_end\"" in text
    assert _mlflow_run_by_key(cfg, "job-bad-config").info.status == "FAILED"


# --- round execution ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rounds(env, chain):
    """The round-execution tasks of Run 1's one round: init adapter, a client round per client,
    the server round; on the phase chain's targets and embeddings."""
    cfg = env["cfg"].replace(execution="round")
    compiled = runtime.compiled_values(cfg)
    out = {"cfg": cfg, "config_json": cfg.to_json(), "compiled": compiled}
    out["init"] = _art(Model, env["root"], "init-adapter", "adapter")
    out["parameters"] = components.init_adapter.python_func(
        config_json=cfg.to_json(), compiled=compiled, settings={"batch_size": "32.0"},
        run_key=ROUND_KEY, client_data_uris=list(chain["embeddings_uri"]),
        targets=_input(chain["targets"]), adapter=out["init"])
    out["updates"], out["losses"] = [], []
    for i in CLIENTS:
        update = _art(Artifact, env["root"], f"client-run1-round-1-{i}", "update")
        out["losses"].append(components.client_round.python_func(
            config_json=cfg.to_json(), client_id=i, round_num=1, phase="run1",
            global_adapter=_input(out["init"]), targets=_input(chain["targets"]),
            update=update))
        out["updates"].append(update)
    out["adapter"] = _art(Model, env["root"], "server-run1-round-1", "adapter")
    out["metrics"] = _art(Metrics, env["root"], "server-run1-round-1", "metrics")
    out["accuracy"] = components.server_round.python_func(
        config_json=cfg.to_json(), round_num=1, phase="run1",
        updates=[_input(u) for u in out["updates"]], previous=_input(out["init"]),
        targets=_input(chain["targets"]), mlflow_run_id="", adapter=out["adapter"],
        metrics=out["metrics"])
    return out


def test_init_adapter_writes_the_initial_adapter_and_the_round_context(rounds):
    tensors, meta = storage.load_tensors(rounds["init"].path)
    assert meta == {"round": 0}
    assert rounds["parameters"] == sum(t.numel() for t in tensors.values()) > 0
    assert rounds["init"].metadata == {"feda2v_run": {
        "compiled": rounds["compiled"], "settings": {"batch_size": "32.0"},
        "run_key": ROUND_KEY}}


def test_init_adapter_names_a_client_without_embeddings(env, chain, rounds):
    with pytest.raises(ValueError, match="expected one embeddings file for client 1"):
        components.init_adapter.python_func(
            config_json=rounds["config_json"], compiled=rounds["compiled"], settings={},
            run_key=ROUND_KEY, client_data_uris=chain["embeddings_uri"][:1],
            targets=_input(chain["targets"]),
            adapter=_art(Model, env["root"], "init-adapter-bad", "adapter"))


def test_client_round_writes_its_update(rounds):
    for i, (loss, update) in enumerate(zip(rounds["losses"], rounds["updates"])):
        assert isinstance(loss, float) and loss > 0
        tensors, meta = storage.load_tensors(update.path)
        assert (meta["client_id"], meta["round"]) == (i, 1) and meta["num_samples"] > 0
        assert meta["metrics"]["adapter_loss"] == pytest.approx(loss)
        init = load_file(rounds["init"].path)
        assert {k for k in tensors if k.startswith("adapter.")} == {f"adapter.{k}" for k in init}
        assert tensors["synthetic_x"].numel() == 0  # Run 1 sends no synthetic samples


def test_client_round_needs_the_init_tasks_round_context(env, chain, rounds):
    bare = Model(name="adapter", uri=rounds["init"].uri, metadata={})
    with pytest.raises(ValueError, match="has no 'feda2v_run' metadata"):
        components.client_round.python_func(
            config_json=rounds["config_json"], client_id=0, round_num=1, phase="run1",
            global_adapter=bare, targets=_input(chain["targets"]),
            update=_art(Artifact, env["root"], "client-bad", "update"))


def test_server_round_averages_and_gives_the_phase_tasks_numbers(env, chain, rounds):
    assert 0.0 <= rounds["accuracy"] <= 1.0
    assert rounds["metrics"].metadata == {"accuracy": rounds["accuracy"]}
    assert rounds["adapter"].metadata == rounds["init"].metadata  # on to the next round
    tensors, meta = storage.load_tensors(rounds["adapter"].path)
    assert meta == {"round": 1}
    # Round execution runs the same library round loop as the Run 1 phase task: same adapter,
    # same accuracy.
    phase = load_file(chain["run1"]["adapter"].path)
    assert set(tensors) == set(phase)
    assert all(torch.allclose(tensors[k], phase[k], atol=1e-6) for k in phase)
    assert rounds["accuracy"] == pytest.approx(chain["run1"]["accuracy"])
    run = _mlflow_run_by_key(rounds["cfg"], ROUND_KEY)
    assert run.data.metrics["eval/global_accuracy"] == pytest.approx(rounds["accuracy"])


# --- ablations ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ablations(env, chain):
    """The ablations pipeline's tasks for the cheapest variant (fedavg): parent run, variant,
    report, exit handler."""
    keyed = dict(env["common"], mlflow_run_id="", run_key=ABLATION_KEY)
    out = {"keyed": keyed}
    out["parent"] = components.ablation_parent.python_func(**keyed)
    out["result"] = components.ablation_variant.python_func(
        **keyed, variant="fedavg", targets=_input(chain["targets"]))
    out["report"] = _art(HTML, env["root"], "ablation-report", "report")
    out["table"] = components.ablation_report.python_func(
        **keyed, results=[out["result"]], report=out["report"])
    out["finished"] = components.ablation_finish.python_func(**keyed,
                                                              status=_status("SUCCEEDED"))
    return out


def test_ablation_parent_makes_one_run_a_retry_finds_again(env, ablations):
    assert ablations["parent"] == _mlflow_run_by_key(env["cfg"], ABLATION_KEY).info.run_id
    assert components.ablation_parent.python_func(**ablations["keyed"]) == ablations["parent"]


def test_ablation_variant_runs_nested_under_the_parent(env, ablations):
    result = json.loads(ablations["result"])
    assert result["variant"] == "fedavg"
    assert [h["round"] for h in result["history"]] == [1, 2]  # R1 + R2 rounds of FedAvg
    assert 0.0 <= result["final_accuracy"] <= 1.0
    run = _mlflow_run(env["cfg"], result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == ablations["parent"]
    assert run.data.params["feda2v.variant"] == "fedavg"


def test_ablation_variant_refuses_an_unknown_variant(env, chain, ablations):
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        components.ablation_variant.python_func(**ablations["keyed"], variant="nope",
                                                targets=_input(chain["targets"]))


def test_ablation_report_writes_the_html_and_returns_the_table(env, ablations):
    assert "fedavg" in ablations["table"]
    with open(ablations["report"].path) as f:
        html = f.read()
    assert html.lstrip().lower().startswith("<!doctype html") and "fedavg" in html
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.tracking_uri(env["cfg"]))
    logged = {a.path for a in client.list_artifacts(ablations["parent"], "report")}
    assert "report/results.txt" in logged


def test_ablation_finish_ends_the_parent_run_as_the_pipeline_ended(env, ablations):
    assert ablations["finished"] == "FINISHED"
    assert _mlflow_run(env["cfg"], ablations["parent"]).info.status == "FINISHED"
    for key, state, status in (("job-ablations-failed", "FAILED", "FAILED"),
                               ("job-ablations-cancelled", "CANCELLED", "KILLED")):
        keyed = dict(ablations["keyed"], run_key=key)
        assert components.ablation_finish.python_func(**keyed, status=_status(state)) == status
        assert _mlflow_run_by_key(env["cfg"], key).info.status == status
    # A config_json the compiled DAG refuses: the exit handler still ends the parent run.
    bad = dict(ablations["keyed"], run_key="job-ablations-bad-config",
               config_json=env["cfg"].replace(execution="round").to_json())
    with pytest.raises(config_mod.ConfigError, match="'execution' is \"round\""):
        components.ablation_parent.python_func(**bad)
    assert components.ablation_finish.python_func(**bad, status=_status("FAILED")) == "FAILED"
    assert _mlflow_run_by_key(env["cfg"], "job-ablations-bad-config").info.status == "FAILED"
