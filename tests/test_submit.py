"""`feda2v submit`: compiles with the cluster options and hands the package to kfp.Client."""

import types
from typing import ClassVar

import pytest
import yaml

from feda2v.cli import main


class RecordingClient:
    """Stands in for kfp.Client (no cluster here); records what submit asks of it."""

    calls: ClassVar[list] = []
    final_state = "SUCCEEDED"

    def __init__(self, host, namespace=None):
        self.calls.append(("init", host, namespace))

    def create_run_from_pipeline_package(self, package, arguments, experiment_name, run_name,
                                         enable_caching):
        with open(package) as f:
            spec = next(yaml.safe_load_all(f))
        self.calls.append(("create", spec, arguments, experiment_name, run_name))
        return types.SimpleNamespace(run_id="run-123")

    def wait_for_run_completion(self, run_id, timeout):
        self.calls.append(("wait", run_id, timeout))
        return types.SimpleNamespace(state=self.final_state)


@pytest.fixture
def client(monkeypatch):
    import kfp

    RecordingClient.calls = []
    RecordingClient.final_state = "SUCCEEDED"
    monkeypatch.setattr(kfp, "Client", RecordingClient)
    return RecordingClient


def test_submit_compiles_with_the_options_and_watches(client, capsys):
    main(["submit", "--config", "configs/a2v_use_pretrained_generators.json", "--host",
          "http://kfp.example:8080", "--experiment", "exp-a", "--run-name", "r1", "--image",
          "reg/feda2v:9", "--namespace", "team-a", "--watch", "--timeout", "60"])
    init, create, wait = client.calls
    assert init == ("init", "http://kfp.example:8080", "team-a")
    _, spec, arguments, experiment, run_name = create
    assert spec["pipelineInfo"]["name"] == "feda2v-run2"
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {
        "reg/feda2v:9"}
    assert arguments == {} and experiment == "exp-a" and run_name == "r1"
    assert wait == ("wait", "run-123", 60)
    out = capsys.readouterr().out
    assert "run run-123" in out and "finished: SUCCEEDED" in out


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
