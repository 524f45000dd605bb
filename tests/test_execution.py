"""The round loop a phase task runs (resume after a failure), run-time parameters and the
structural keys a compiled pipeline fixes, thread settings: in-process, on synthetic data."""

import json
import os

import pytest
import torch

from feda2v.federated import loop as loop_mod
from feda2v.federated.client import ClientData
from feda2v.federated.loop import Federation, run_phase
from feda2v.federated.task import new_adapter
from feda2v.io import config as config_mod
from feda2v.io import runstate, storage
from feda2v.orchestration import runtime

NAMES = ["dog", "rooster", "rain", "siren"]


def _cfg(**top):
    return config_mod.validate({"batch_size": 8, "local_epochs": 1, **top,
                                "feda2v": {"adapter_hidden_dims": [32], "adapter_heads": 4},
                                "data": {"clients": [NAMES[:2], NAMES[2:]]}})


def _federation(cfg):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 4, 16, generator=g) * 2

    def data(classes):
        y = torch.tensor(classes).repeat_interleave(10)
        x = centres[y] + 0.3 * torch.randn(len(y), 4, 16, generator=g)
        return ClientData(x[::2].clone(), y[::2].clone(), x[1::2].clone(), y[1::2].clone())

    targets = torch.randn(4, 16, generator=torch.Generator().manual_seed(7))
    return Federation(cfg, [data([0, 1]), data([2, 3])], targets, NAMES)


def _start(cfg):
    torch.manual_seed(0)
    return new_adapter(cfg, 16, 16).state_dict()


def test_a_retried_phase_resumes_after_its_last_finished_round(tmp_path, monkeypatch):
    cfg = _cfg()
    fed = _federation(cfg)
    clean, clean_history = run_phase(fed, "run1", 3, 1, _start(cfg), str(tmp_path / "clean"))

    calls = []
    real_step = loop_mod.client_step

    def counting(cfg, client_id, r, *args):
        calls.append(r)
        if r == 3 and len(calls) == 5:  # the first try dies in round 3
            raise RuntimeError("pod evicted")
        return real_step(cfg, client_id, r, *args)

    monkeypatch.setattr(loop_mod, "client_step", counting)
    run = str(tmp_path / "retried")
    with pytest.raises(RuntimeError, match="evicted"):
        run_phase(fed, "run1", 3, 1, _start(cfg), run)
    assert runstate.last_round(run, "run1", 3) == 2
    calls.clear()
    state, history = run_phase(fed, "run1", 3, 1, _start(cfg), run)
    assert calls == [3, 3]  # rounds 1 and 2 are not trained again
    assert [h["round"] for h in history] == [1, 2, 3]
    assert [h["accuracy"] for h in history] == [h["accuracy"] for h in clean_history]
    assert all(torch.equal(state[k], v) for k, v in clean.items())
    # Run 1 left every client's class conditions of every round for its generator task.
    for i in (0, 1):
        for r in (1, 2, 3):
            assert runstate.conditions_uri(run, i, r).endswith(f"client_{i}/round_{r}.safetensors")
            t, _ = loop_mod.storage.load_tensors(runstate.conditions_uri(run, i, r))
            assert t["means"].shape == (2, 16)


def test_two_runs_keep_their_state_apart(tmp_path):
    cfg = _cfg(storage_root=str(tmp_path))
    a, b = runstate.run_dir(cfg, "job-a"), runstate.run_dir(cfg, "job-b")
    assert a != b and a.startswith(str(tmp_path))
    fed = _federation(cfg)
    run_phase(fed, "fedavg", 2, 1, _start(cfg), a)
    assert runstate.last_round(a, "fedavg", 2) == 2 and runstate.last_round(b, "fedavg", 2) == 0
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError, match="run key"):
            runstate.run_dir(cfg, bad)


def test_run_time_parameters_take_effect_in_phase_execution():
    cfg = _cfg(global_rounds=5, pipeline="end_to_end")
    compiled = runtime.compiled_values(cfg)
    text = cfg.to_json()
    got = runtime.resolve(text, compiled, 2, 7, [0, 1])
    assert got.global_rounds == 2 and got.feda2v.generator_training_rounds == 7
    assert runtime.plan(got) == [("run1", 7), ("run2", 2)]
    # An edit of config_json alone takes effect too (the form's value is the compiled one) ...
    edited = cfg.replace(global_rounds=4).to_json()
    assert runtime.resolve(edited, compiled, 5, 30, [0, 1]).global_rounds == 4
    # ... but both edited to different values is ambiguous.
    with pytest.raises(config_mod.ConfigError, match="'global_rounds' is 4 in config_json but 3"):
        runtime.resolve(edited, compiled, 3, 30, [0, 1])
    # KFP hands list items over as floats.
    assert runtime.resolve(text, compiled, 5, 30, [0.0, 1.0]).global_rounds == 5


def test_the_run_forms_typed_settings_take_effect_as_their_keys_types():
    """KFP hands a dict parameter's values over as strings: each takes its config key's type;
    the compiled value leaves config_json's standing; two different edits are refused."""
    cfg = _cfg(pipeline="end_to_end")
    compiled = runtime.compiled_values(cfg)
    settings = {"local_epochs": "3.0", "learning_rate": "0.005", "generator_type": "gan",
                "synthetic_samples_per_class": "7.0", "generator_training_epochs": "2.0",
                "generator_learning_rate": "0.01"}
    got = runtime.resolve(cfg.to_json(), compiled, settings=settings)
    assert (got.local_epochs, got.learning_rate) == (3, 0.005)
    f = got.feda2v
    assert (f.generator_type, f.synthetic_samples_per_class) == ("gan", 7)
    assert (f.generator_training_epochs, f.generator_learning_rate) == (2, 0.01)
    edited = cfg.replace(local_epochs=4).to_json()
    same = {"local_epochs": str(float(cfg.local_epochs))}
    assert runtime.resolve(edited, compiled, settings=same).local_epochs == 4
    with pytest.raises(config_mod.ConfigError, match="'local_epochs' is 4 in config_json but 9"):
        runtime.resolve(edited, compiled, settings={"local_epochs": "9"})
    with pytest.raises(config_mod.ConfigError, match="bad value for 'feda2v.generator_type'"):
        runtime.resolve(cfg.to_json(), compiled, settings={"generator_type": "diffusion"})
    with pytest.raises(config_mod.ConfigError, match="run-time parameter 'local_epochs'"):
        runtime.resolve(cfg.to_json(), compiled, settings={"local_epochs": "many"})


def test_the_run_form_offers_the_settings_its_phases_use(make_config, tmp_path):
    import yaml

    from feda2v.cli import main

    def form(pipeline, **f):
        out = tmp_path / f"{pipeline}.yaml"
        path = tmp_path / "c.json"
        path.write_text(make_config(global_rounds=4, local_epochs=2, feda2v=f).to_json())
        main(["compile", "--config", str(path), "--pipeline", pipeline, "--output", str(out),
              "--no-preflight"])
        return next(yaml.safe_load_all(out.read_text()))["root"]["inputDefinitions"]["parameters"]

    both = form("end_to_end")
    assert set(both) == {"config_json", "mlflow_run_id", "global_rounds",
                         "generator_training_rounds", "client_ids", *runtime.SETTINGS}
    assert both["local_epochs"] == {"defaultValue": 2.0, "isOptional": True,
                                    "parameterType": "NUMBER_INTEGER",
                                    "description": both["local_epochs"]["description"]}
    assert both["learning_rate"]["parameterType"] == "NUMBER_DOUBLE"
    assert both["generator_type"]["defaultValue"] == "vae"
    assert "(feda2v.synthetic_samples_per_class)" in both["synthetic_samples_per_class"][
        "description"]
    fedavg = form("run1", use_generator=False, generator_training_mode=False)
    assert set(fedavg) - {"config_json", "mlflow_run_id", "global_rounds", "client_ids"} == {
        "local_epochs", "learning_rate", *runtime.COMMON_SETTINGS, *runtime.STRATEGY_SETTINGS}
    assert fedavg["strategy"]["defaultValue"] == "fedavg"
    assert fedavg["proximal_mu"]["parameterType"] == "NUMBER_DOUBLE"


def test_clients_are_a_run_time_parameter_in_phase_execution():
    cfg = config_mod.validate({"data": {"partition": "iid", "num_clients": 3}})
    compiled = runtime.compiled_values(cfg)
    got = runtime.resolve(cfg.to_json(), compiled, client_ids=[0, 1, 2, 3, 4])
    assert config_mod.num_clients(got) == 5
    split = _cfg()
    more = split.replace(data={"clients": [["dog"], ["rooster"], ["rain", "siren"]]})
    with pytest.raises(config_mod.ConfigError,
                       match=r"'data.clients' gives 3 clients but .* client_ids is \[0, 1\]; "
                             r"set client_ids to \[0, 1, 2\]"):
        runtime.resolve(more.to_json(), runtime.compiled_values(split), client_ids=[0, 1])
    with pytest.raises(config_mod.ConfigError, match="client_ids"):
        runtime.resolve(split.to_json(), runtime.compiled_values(split), client_ids=[1, 2])


@pytest.mark.parametrize("key,change", [
    ("feda2v.use_generator", {"feda2v": {"use_generator": False}}),
    ("pipeline", {"pipeline": "run2"}),
    ("execution", {"execution": "round"}),
])
def test_structural_keys_changed_at_run_time_fail_naming_the_compiled_value(key, change):
    cfg = _cfg(pipeline="end_to_end")
    raw = cfg.to_dict()
    for k, v in change.items():
        raw[k] = dict(raw[k], **v) if isinstance(v, dict) else v
    with pytest.raises(config_mod.ConfigError, match=f"'{key}' is .* compiled with"):
        runtime.resolve(json.dumps(raw), runtime.compiled_values(cfg))


def test_round_execution_names_the_unrolled_keys():
    cfg = _cfg(execution="round", global_rounds=3)
    edited = cfg.replace(global_rounds=9).to_json()
    with pytest.raises(config_mod.ConfigError,
                       match="'global_rounds' is 9 in config_json but this round-execution "
                             "pipeline was compiled with 3"):
        runtime.resolve(edited, runtime.compiled_values(cfg))


def test_the_cores_a_local_run_shares_are_omp_num_threads_when_set(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.available_cores() == 3
    for unset in ("", "0", "many"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert runtime.available_cores() == len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert runtime.available_cores() == len(os.sched_getaffinity(0))


def test_local_tasks_share_the_cores(monkeypatch):
    monkeypatch.setenv(runtime.LOCAL_CORES_ENV, "8")
    monkeypatch.setenv(runtime.LOCAL_PARALLEL_ENV, "2")
    before = torch.get_num_threads()
    try:
        runtime.task_setup(parallel=True)
        assert torch.get_num_threads() == 4
        runtime.task_setup(parallel=False)
        assert torch.get_num_threads() == 8
    finally:
        torch.set_num_threads(before)


def test_prefork_runs_the_task_command_with_its_streams_and_exit_code(tmp_path):
    """The python3 shim hands kfp's executor command to the pre-imported server; what the task
    prints and its exit code reach the caller as if it had run itself. Without a live server
    it falls back to the real interpreter at once."""
    import os
    import subprocess
    import sys
    import time

    from feda2v.localrun import prefork

    shim = os.path.join(prefork.write_shim(str(tmp_path)), "python3")
    env = dict(os.environ)
    run = lambda *args: subprocess.run([shim, *args], env=env, capture_output=True,
                                       text=True, timeout=120, check=False)
    assert run("-c", "print(6 * 7)").stdout.strip() == "42"  # not a task: the real interpreter

    env.update({prefork.SOCKET_ENV: str(tmp_path / "none.sock"), prefork.PID_ENV: "999999999"})
    start = time.monotonic()
    fallback = run("-m", prefork.MODULE, "--help")
    assert fallback.returncode == 0 and "usage" in fallback.stdout
    assert time.monotonic() - start < 20  # no waiting for a server that is gone

    server, path = prefork.start(str(tmp_path), dict(os.environ))
    try:
        env.update({prefork.SOCKET_ENV: path, prefork.PID_ENV: str(server.pid)})
        assert prefork.wait_ready(path)
        ok = run("-m", prefork.MODULE, "--help")
        assert ok.returncode == 0 and "--component_module_path" in ok.stdout
        bad = run("-m", prefork.MODULE, "--no-such-option")
        assert bad.returncode == 2 and "executor_main.py: error" in bad.stderr
        assert server.poll() is None  # one failing task does not take the server down
    finally:
        server.kill()
        server.wait()
    assert sys.executable != shim


def test_run2_goes_on_from_run1s_adapter_when_the_run_has_a_run1(tmp_path):
    from feda2v.orchestration import stages

    cfg = _cfg()
    fed = _federation(cfg)
    run = str(tmp_path / "run")
    final, _ = run_phase(fed, "run1", 2, 1, _start(cfg), run)
    both = [("run1", 2), ("run2", 3)]
    got = stages.phase_start(cfg, fed, both, "run2", run)  # run2_start: auto (the default)
    assert all(torch.equal(got[k], v) for k, v in final.items())
    # Handed the Run 1 phase's adapter artifact, it reads that file, not the run folder.
    artifact = str(tmp_path / "adapter")
    storage.save_tensors(artifact, {k: v + 1 for k, v in final.items()})
    got = stages.phase_start(cfg, fed, both, "run2", run, artifact)
    assert all(torch.equal(got[k], v + 1) for k, v in final.items())
    initial = stages.initial_state(cfg, fed)
    alone = stages.phase_start(cfg, fed, [("run2", 3)], "run2", run)
    assert all(torch.equal(alone[k], v) for k, v in initial.items())
    seed_like = cfg.replace(feda2v={"run2_start": "initial"})
    got = stages.phase_start(seed_like, fed, both, "run2", run)
    assert all(torch.equal(got[k], v) for k, v in initial.items())
    explicit = cfg.replace(feda2v={"run2_start": "run1"})
    with pytest.raises(ValueError, match="run2_start is 'run1' but this run has no Run 1"):
        stages.phase_start(explicit, fed, [("run2", 3)], "run2", run)
    with pytest.raises(config_mod.ConfigError, match="'run1' needs Run 1 in the same run"):
        config_mod.validate({"pipeline": "run2", "feda2v": {"run2_start": "run1"}})


def test_a_phase_reads_the_class_targets_it_is_handed_and_keeps_a_copy(tmp_path):
    """The class-targets task's artifact is what the phase reads; the run folder gets a copy,
    from which the exit handler logs them with the model."""
    from feda2v.orchestration import stages

    cfg = _cfg(storage_root=str(tmp_path / "store"))
    given = str(tmp_path / "targets")
    storage.save_tensors(given, {"targets": torch.ones(2, 16)}, {"class_names": ["a", "b"]})
    assert stages.ensure_targets(cfg, "k1", given) == given
    assert storage.read_bytes(stages.targets_uri(cfg, "k1")) == storage.read_bytes(given)
