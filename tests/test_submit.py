"""`feda2v submit`: compiles with the cluster options and hands the package to kfp.Client."""

import types
from typing import ClassVar

import pytest
import yaml

from feda2v.cli import main


class RecordingClient:
    """Stands in for kfp.Client (no cluster here): records what submit asks of it and answers
    as the KFP v2beta1 API does."""

    calls: ClassVar[list] = []
    final_state = "SUCCEEDED"
    pipelines: ClassVar[dict] = {}

    def __init__(self, host, namespace=None):
        self.calls.append(("init", host, namespace))
        self.polls = 0

    def create_run_from_pipeline_package(self, package, arguments, experiment_name, run_name,
                                         namespace, enable_caching):
        with open(package) as f:
            spec = next(yaml.safe_load_all(f))
        self.calls.append(("create", spec, arguments, experiment_name, run_name, enable_caching))
        return types.SimpleNamespace(run_id="run-123")

    def get_pipeline_id(self, name):
        return self.pipelines.get(name)

    def upload_pipeline(self, package, pipeline_name, namespace):
        self.pipelines[pipeline_name] = f"p-{len(self.pipelines)}"
        self.calls.append(("upload", pipeline_name))
        return types.SimpleNamespace(pipeline_id=self.pipelines[pipeline_name])

    def upload_pipeline_version(self, package, name, pipeline_id):
        self.calls.append(("version", pipeline_id, name))
        return types.SimpleNamespace(pipeline_version_id=f"v-{name}")

    def get_experiment(self, experiment_name, namespace):
        raise ValueError(f"No experiment is found with name {experiment_name}")

    def create_experiment(self, name, namespace):
        self.calls.append(("experiment", name))
        return types.SimpleNamespace(experiment_id="e-1")

    def run_pipeline(self, experiment_id, job_name, pipeline_id, version_id, enable_caching):
        self.calls.append(("run", experiment_id, job_name, pipeline_id, version_id,
                           enable_caching))
        return types.SimpleNamespace(run_id="run-456")

    def get_run(self, run_id):
        """Three polls: two tasks start, one ends, then the run ends."""
        self.polls += 1
        tasks = [("class-targets", "RUNNING"), ("run1", "PENDING")]
        if self.polls >= 2:
            tasks = [("class-targets", "SUCCEEDED"), ("run1", "RUNNING")]
        state = "RUNNING" if self.polls < 3 else self.final_state
        if self.polls >= 3:
            tasks = [("class-targets", "SUCCEEDED"), ("run1", self.final_state)]
        self.calls.append(("poll", run_id))
        return types.SimpleNamespace(state=state, run_details=types.SimpleNamespace(
            task_details=[types.SimpleNamespace(display_name=n, state=s) for n, s in tasks]))


@pytest.fixture
def client(monkeypatch):
    import kfp

    RecordingClient.calls = []
    RecordingClient.final_state = "SUCCEEDED"
    RecordingClient.pipelines = {}
    monkeypatch.setattr(kfp, "Client", RecordingClient)
    return RecordingClient


def test_submit_compiles_with_the_options_and_watches(client, capsys):
    main(["submit", "--config", "configs/a2v_use_pretrained_generators.json", "--host",
          "http://kfp.example:8080", "--experiment", "exp-a", "--run-name", "r1", "--image",
          "reg/feda2v:9", "--namespace", "team-a", "--watch", "--poll", "0", "--timeout", "60"])
    init, create, *polls = client.calls
    assert init == ("init", "http://kfp.example:8080", "team-a")
    _, spec, arguments, experiment, run_name, caching = create
    assert spec["pipelineInfo"]["name"] == "feda2v-run2"
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {
        "reg/feda2v:9"}
    assert arguments == {} and experiment == "exp-a" and run_name == "r1"
    assert caching is None  # as compiled
    assert polls == [("poll", "run-123")] * 3
    out = capsys.readouterr().out
    assert "run run-123" in out and "finished: SUCCEEDED" in out
    # each task's state change, once
    assert out.count("class-targets: running") == 1 and out.count("class-targets: succeeded") == 1
    assert out.index("run1: pending") < out.index("run1: running") < out.index("run1: succeeded")


def test_param_overrides_caching_and_a_versioned_pipeline(client, capsys):
    args = ["submit", "--config", "configs/demo.json", "--host", "http://kfp.example",
            "--no-preflight", "--pipeline-name", "feda2v-demo", "--caching", "off",
            "--param", "global_rounds=7", "--param", "feda2v.generator_type=gan",
            "--register-model", "demo-adapter"]
    main(args)
    main(args + ["--version-name", "mine"])
    calls = [c for c in client.calls if c[0] != "init"]
    assert calls[0] == ("upload", "feda2v-demo")  # created once, then versioned
    first, second = (c for c in calls if c[0] == "version")
    assert first[1] == second[1] == "p-0" and second[2] == "mine"
    assert first[2].startswith(f"{_feda2v_version()}-") and len(first[2].split("-")[-1]) == 8
    runs = [c for c in calls if c[0] == "run"]
    assert runs[0] == ("run", "e-1", f"feda2v-demo {first[2]}", "p-0", f"v-{first[2]}", False)
    assert "pipeline 'feda2v-demo' version" in capsys.readouterr().out


def test_param_overrides_reach_the_compiled_defaults(tmp_path):
    out = tmp_path / "p.yaml"
    main(["compile", "--config", "configs/demo.json", "--output", str(out), "--no-preflight",
          "--param", "global_rounds=7", "--param", "feda2v.generator_type=gan",
          "--register-model", "demo-adapter"])
    spec = next(yaml.safe_load_all(out.read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["global_rounds"]["defaultValue"] == 7
    import json

    compiled = json.loads(params["config_json"]["defaultValue"])
    assert compiled["feda2v"]["generator_type"] == "gan"
    assert compiled["mlflow_register_model"] == "demo-adapter"


@pytest.mark.parametrize("param, message", [
    ("global_rounds", "expected KEY=VALUE"),
    ("feda2v.generator_tipe=gan", "unknown config key 'feda2v.generator_tipe'"),
    ("fedav.generator_type=gan", "unknown config section 'fedav'"),
    ("global_rounds=-1", "bad value for 'global_rounds'"),
])
def test_a_bad_param_is_named(tmp_path, capsys, param, message):
    with pytest.raises(SystemExit) as e:
        main(["compile", "--config", "configs/demo.json", "--output", str(tmp_path / "p.yaml"),
              "--no-preflight", "--param", param])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def _feda2v_version():
    from importlib.metadata import version

    return version("feda2v")


def test_a_failed_run_exits_non_zero_with_watch(client):
    client.final_state = "FAILED"
    with pytest.raises(SystemExit) as e:
        main(["submit", "--config", "configs/a2v_generator_training_mode.json", "--host",
              "http://kfp.example", "--watch"])
    assert e.value.code == 1


def test_unreachable_endpoint_is_named(capsys):
    with pytest.raises(SystemExit) as e:
        main(["submit", "--config", "configs/a2v_generator_training_mode.json", "--host",
              "http://127.0.0.1:9"])
    assert e.value.code == 2
    assert "cannot reach Kubeflow Pipelines at http://127.0.0.1:9" in capsys.readouterr().err
