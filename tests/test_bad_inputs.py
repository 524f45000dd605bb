"""Bad and hostile input: a clear error naming the file, key or client, nothing poisoned, nothing
written half. One test per row of the "Bad input → what happens" table in docs/bad-input.md."""

import io
import json
import os
import pickle
import stat
import zipfile

import pytest
import torch
from mlflowserver import mlflow_server  # noqa: F401 - fixture
from s3server import s3_server  # noqa: F401 - fixture

from feda2v.federated.client import ClientData, ClientUpdate, client_step
from feda2v.federated.generators import checkpoints, sampling, training
from feda2v.federated.server import server_step
from feda2v.federated.task import new_adapter
from feda2v.io import config as config_mod
from feda2v.io import storage

NAMES = ["dog", "rooster", "rain", "siren"]


def _cfg(**feda2v):
    return config_mod.validate({"batch_size": 8, "local_epochs": 1,
                                "data": {"clients": [NAMES[:2], NAMES[2:]]},
                                "feda2v": {"adapter_hidden_dims": [32], "adapter_heads": 4,
                                           "generator_hidden_dim": 32, "generator_latent_dim": 8,
                                           "generator_training_epochs": 2, **feda2v}})


def _data(poison=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, 16, generator=g)
    if poison:
        x[3, 1, 2] = float("nan")
    y = torch.tensor([0, 1] * 8)
    return ClientData(x, y, x.clone(), y.clone())


def _state(cfg):
    torch.manual_seed(0)
    return new_adapter(cfg, 16, 16).state_dict()


TARGETS = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))


# --- embeddings, targets, updates: non-finite values never travel ----------------------------

def test_nan_in_stored_embeddings_is_refused_naming_file_and_key(tmp_path):
    from feda2v.orchestration import stages

    cfg = _cfg()
    uri = str(tmp_path / "client_0.safetensors")
    d = _data(poison=True)
    storage.save_tensors(uri, {"train_x": d.train_x, "train_y": d.train_y,
                               "test_x": d.test_x, "test_y": d.test_y})
    with pytest.raises(ValueError, match=r"client_0.safetensors: 'train_x' holds 1 non-finite"):
        stages.client_data(cfg, 0, uri)


def test_nan_in_precomputed_embeddings_is_refused(tmp_path):
    from feda2v.data.datasets import read_embeddings

    uri = str(tmp_path / "own.safetensors")
    x = torch.zeros(4, 2, 8)
    x[0, 0, 0] = float("inf")
    storage.save_tensors(uri, {"embeddings": x, "labels": torch.tensor([0, 1, 0, 1])},
                         {"class_names": ["a", "b"]})
    with pytest.raises(ValueError, match=r"own.safetensors: 'embeddings' holds 1 non-finite"):
        read_embeddings(uri)


def test_nan_in_class_targets_is_refused(tmp_path):
    from feda2v.orchestration import stages

    uri = str(tmp_path / "targets.safetensors")
    storage.save_tensors(uri, {"targets": torch.full((2, 4), float("nan"))},
                         {"class_names": ["a", "b"]})
    with pytest.raises(ValueError, match=r"targets.safetensors: 'targets' holds 8 non-finite"):
        stages._load_targets(uri)


def test_a_diverging_client_round_sends_nothing_and_names_client_and_round():
    cfg = _cfg()
    d = _data()
    huge = ClientData(d.train_x * 1e30, d.train_y, d.test_x, d.test_y)  # overflows at once
    with pytest.raises(ValueError, match=r"client 1, round 4 \(fedavg\): the adapter's training "
                                         r"loss is (nan|inf)"):
        client_step(cfg, 1, 4, "fedavg", _state(cfg), huge, TARGETS, NAMES)


def test_the_server_refuses_a_non_finite_update_naming_the_client():
    cfg = _cfg()
    good = ClientUpdate(0, _state(cfg), 16, {})
    bad_state = {k: v.clone() for k, v in _state(cfg).items()}
    bad_state["query"][0, 0, 0] = float("nan")
    bad = ClientUpdate(1, bad_state, 16, {})
    d = _data()
    with pytest.raises(ValueError, match=r"round 2: client 1's update: 'query' holds 1"):
        server_step(cfg, 2, 2, "fedavg", [good, bad], _state(cfg), TARGETS, NAMES,
                    [(d.test_x, d.test_y)])


def test_a_generator_checkpoint_with_nan_weights_is_refused(tmp_path):
    cfg = _cfg()
    vae = checkpoints.new_generator(cfg, 4, 16, 16)
    state = vae.state_dict()
    state["decoder.0.weight"][0, 0] = float("nan")
    vae.load_state_dict(state)
    uri = str(tmp_path / "client_0_generator.pt")
    checkpoints.save(uri, cfg, vae, checkpoints.new_optimizer(cfg, vae), 0, 1, ["dog"],
                   torch.zeros(1, 16))
    with pytest.raises(ValueError, match=r"client_0_generator.pt: 'decoder.0.weight' holds 1"):
        checkpoints.load(uri, cfg, {})


def test_a_generator_round_that_diverges_writes_no_checkpoint():
    cfg = _cfg(generator_learning_rate=10.0)  # the most a config allows; the conditions overflow
    d = _data()
    with pytest.raises(ValueError, match=r"client 0, generator round 3: the training loss is"):
        training.generator_round(cfg, 0, 3, None, d.train_x, d.train_y, torch.tensor([0, 1]),
                                  torch.randn(2, 16) * 1e30)


# --- checkpoints ------------------------------------------------------------------------------

def test_a_truncated_checkpoint_is_named(tmp_path):
    uri = str(tmp_path / "client_0_generator.pt")
    buf = io.BytesIO()
    torch.save({"w": torch.ones(1000)}, buf)
    storage.write_bytes(uri, buf.getvalue()[:500])
    with pytest.raises(ValueError, match=r"client_0_generator.pt: not a readable checkpoint"):
        storage.load_checkpoint(uri)


class Hostile:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_checkpoint_holding_pickled_objects_is_refused_without_suggesting_unsafe_loading(
        tmp_path):
    uri = str(tmp_path / "evil.pt")
    buf = io.BytesIO()
    torch.save({"payload": Hostile()}, buf, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    storage.write_bytes(uri, buf.getvalue())
    with pytest.raises(ValueError, match=r"evil.pt: holds pickled Python objects") as e:
        storage.load_checkpoint(uri)
    assert "weights_only=False" not in str(e.value)


# --- config, archives, stored files -------------------------------------------------------------

def test_an_empty_config_file_says_empty(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("\n")
    with pytest.raises(config_mod.ConfigError, match=r"c.json: the config file is empty"):
        config_mod.load(path)


def test_an_archive_member_outside_the_target_is_refused(tmp_path, monkeypatch):
    from feda2v.data import download

    archive = tmp_path / "esc.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ESC-50-master/meta/esc50.csv", "filename,fold,target,category\n")
        zf.writestr("ESC-50-master/audio/../../../escaped.txt", "x")
    monkeypatch.setattr(download, "_fetch",
                        lambda url, dest: (os.replace(archive, dest),
                                           {"sha256": "0" * 64, "md5": download.ESC50_MD5})[1])
    out = tmp_path / "out" / "ESC-50"
    with pytest.raises(ValueError, match=r"would be written outside"):
        download.download_esc50(str(out), "https://mirror.example/esc50.zip")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out").exists()


def test_stored_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        uri = str(tmp_path / "shared" / "x.json")
        storage.write_json(uri, {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(uri).st_mode) == 0o644
    assert storage.read_json(uri) == {"a": 1}


# --- preflight, secrets -----------------------------------------------------------------------

def _dead_port() -> int:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("bad", ["dataset", "tracking server", "object store"])
def test_run_checks_its_inputs_before_any_task_starts(make_config, tmp_path, bad, monkeypatch):
    """A missing dataset or an unreachable MLflow server fails `feda2v run` in seconds with exit
    code 2 naming it, before any MLflow store, kfp-local folder or task exists."""
    import subprocess
    import sys
    import time

    if bad == "dataset":
        cfg = make_config(data={"dataset_uri": str(tmp_path / "no-such-data")})
        expected = f"data.dataset_uri {tmp_path / 'no-such-data'} does not exist"
    elif bad == "tracking server":
        uri = f"http://127.0.0.1:{_dead_port()}"
        cfg = make_config(mlflow_tracking_uri=uri)
        expected = f"MLflow tracking server {uri} is unreachable"
    else:
        endpoint = f"http://127.0.0.1:{_dead_port()}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the subprocess inherits it
        cfg = make_config(storage_root=str(tmp_path / "store"),
                          data={"dataset_uri": "s3://data/ESC-50"})
        expected = (f"data.dataset_uri s3://data/ESC-50: the object store (AWS_ENDPOINT_URL): "
                    f"{endpoint} does not answer")
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "feda2v.cli", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert time.monotonic() - start < 30
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert not os.path.exists(cfg.storage_root)  # no MLflow store, no kfp-local folder


def test_credentials_in_any_config_value_travel_by_environment_not_config():
    """Any string with user:password@ (dataset, model, storage or tracking URL) is redacted in
    the config the tasks get on their command line, and put back from their environment."""
    raw = {"mlflow_tracking_uri": "http://u:pw1@mlflow:5000",
           "models": {"audio_model": "https://u:pw2@models.example/ast/"},
           "data": {"dataset_uri": "https://u:pw3@data.example/ESC-50"}}
    cfg = config_mod.validate(raw)
    task_cfg, withheld = config_mod.withhold_credentials(cfg)
    text = task_cfg.to_json()
    assert not any(pw in text for pw in ("pw1", "pw2", "pw3"))
    assert task_cfg.models.audio_model == "https://***@models.example/ast/"
    assert set(withheld) == {"mlflow_tracking_uri", "models.audio_model", "data.dataset_uri"}
    os.environ[config_mod.CREDENTIALS_ENV] = json.dumps(withheld)
    try:
        assert config_mod.loads(text) == cfg
    finally:
        del os.environ[config_mod.CREDENTIALS_ENV]
    assert config_mod.loads(text) == task_cfg  # without the environment: nothing to put back


def _command_lines(seen: set, stop) -> None:
    """Collect every process's command line until `stop` is set (what `ps` shows anyone)."""
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        seen.add(f.read().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    pass
        stop.wait(0.05)


@pytest.mark.slow
def test_planted_secrets_reach_no_file_object_mlflow_entry_or_command_line(
        make_config, tmp_path, mlflow_server, s3_server, monkeypatch):  # noqa: F811
    """Secrets planted everywhere a user puts one: a password in the MLflow URI, an MLflow
    token and the S3 keys in the environment, a password in a model URL. A whole run writes
    none of them into a log, report, stored object, MLflow param or tag, or any process's
    command line. (Also the whole run with an S3 storage root: its objects are checked.)"""
    import subprocess
    import sys
    import threading

    from mlflow.tracking import MlflowClient

    pw, token = "s3cr3t-pa55word", "mlfl0w-t0ken-xyz"
    secrets = [pw, token, s3_server.secret_key, "m0del-secret"]
    _point_s3_at(monkeypatch, s3_server.env())
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "feda2v")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", token)
    bucket = s3_server.create_bucket()
    uri = mlflow_server.replace("http://", f"http://feda2v:{pw}@")
    cfg = make_config(global_rounds=1, mlflow_tracking_uri=uri,
                      storage_root=f"s3://{bucket}/store", experiment_name="secrets",
                      models={"image_model": "https://feda2v:m0del-secret@models.example/clip/"},
                      feda2v={"generator_training_rounds": 1, "generator_training_mode": True,
                              "generator_save_every": 1})
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    seen: set = set()
    stop = threading.Event()
    sampler = threading.Thread(target=_command_lines, args=(seen, stop), daemon=True)
    sampler.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "feda2v.cli", "run", "--config", str(path),
                               "--pipeline", "end_to_end"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600, check=False)
    finally:
        stop.set()
        sampler.join()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the tasks were seen, with the config (its credentials redacted) on their command lines
    assert any("executor_main" in line and "//***@" in line for line in seen)
    places = {"output": proc.stdout + proc.stderr}
    places.update({f"argv: {line[:80]}": line for line in seen})
    for folder, _, files in os.walk(tmp_path):
        for name in files:
            if os.path.join(folder, name) != str(path):  # the user's own config file
                with open(os.path.join(folder, name), "rb") as f:
                    places[os.path.join(folder, name)] = f.read().decode(errors="replace")
    fs = s3_server.filesystem()
    for key in fs.find(bucket):
        places[f"s3://{key}"] = fs.cat_file(key).decode(errors="replace")
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("secrets")
    runs = client.search_runs([experiment.experiment_id])
    assert runs
    for run in runs:
        places[f"mlflow {run.info.run_id}"] = json.dumps([run.data.params, run.data.tags])
    names = {name.rsplit("/", 1)[-1] for name in places if name.startswith("s3://")}
    assert {"client_0.safetensors", "client_0_generator.pt", "client_1_generator_round_1.pt",
            "global.safetensors"} <= names, names
    assert not os.path.exists(tmp_path / "s3:")
    leaks = [name for name, text in places.items() if any(secret in text for secret in secrets)]
    assert leaks == []


# --- storage ----------------------------------------------------------------------------------

def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    uri = str(tmp_path / "store" / "state.json")
    storage.write_json(uri, {"round": 1})
    real = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real(fd, mode)))
    with pytest.raises(storage.StorageError, match=r"cannot write .*state.json: .*No space left "
                                                   r"on device; the disk is full"):
        storage.write_json(uri, {"round": 2})
    monkeypatch.undo()
    assert storage.read_json(uri) == {"round": 1}
    assert os.listdir(tmp_path / "store") == ["state.json"]  # no temporary file left


def test_refused_s3_credentials_name_the_uri_and_what_to_check(s3_server, monkeypatch):  # noqa: F811
    env = dict(s3_server.env(), AWS_SECRET_ACCESS_KEY="wrong-secret")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import fsspec

    fsspec.config.conf.clear()
    fsspec.filesystem("s3").clear_instance_cache()
    bucket = s3_server.create_bucket()
    with pytest.raises(storage.StorageError,
                       match=rf"cannot (write|look up) s3://{bucket}/x.json: .*not allowed: check"):
        storage.write_json(f"s3://{bucket}/x.json", {"a": 1})


def _point_s3_at(monkeypatch, env: dict) -> None:
    import fsspec

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore would retry a dead port for 12 s
    fsspec.config.conf.clear()
    fsspec.filesystem("s3").clear_instance_cache()


def test_an_object_store_that_does_not_answer_is_named(monkeypatch):
    _point_s3_at(monkeypatch, {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_dead_port()}",
                               "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    with pytest.raises(storage.StorageError, match=r"cannot write s3://b/x.json: .*the object "
                                                   r"store does not answer: check AWS_ENDPOINT_URL"):
        storage.write_json("s3://b/x.json", {"a": 1})


def _as_nobody(call):
    """Run `call` in a forked child without root's right to write anywhere; return its error
    text ('' when it succeeded)."""
    import multiprocessing

    def child(queue):
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        try:
            call()
            queue.put("")
        except Exception as e:  # noqa: BLE001 - the test reads the message
            queue.put(f"{type(e).__name__}: {e}")

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(queue,))
    proc.start()
    proc.join(60)
    return queue.get(timeout=5)


def test_a_read_only_folder_is_named_before_and_during_a_run(make_config):
    import tempfile

    from feda2v.orchestration import preflight

    top = tempfile.mkdtemp(prefix="feda2v-ro-")
    try:
        os.chmod(top, 0o555)  # readable and traversable by everyone, writable by no one
        cfg = make_config(storage_root=os.path.join(top, "store"))
        error = _as_nobody(lambda: preflight.check(cfg, "local"))
        if os.geteuid() == 0:  # the test's dataset lies under root's 0700 pytest folder
            assert error.startswith(f"PermissionError: data.dataset_uri {cfg.data.dataset_uri}: ")
            assert error.endswith(" is not readable by this user")
        cfg = cfg.replace(data={"dataset_uri": top},
                          models={"audio_model": "org/audio", "text_model": "org/text"})
        error = _as_nobody(lambda: preflight.check(cfg, "local"))
        assert f"PermissionError: storage_root {top}/store: {top} is not writable" == error
        error = _as_nobody(lambda: storage.write_json(os.path.join(top, "x.json"), {}))
        assert error.startswith(f"StorageError: cannot write {top}/x.json: ")
        assert "not allowed: check the folder's permissions" in error
        assert os.listdir(top) == []
    finally:
        os.chmod(top, 0o755)
        os.rmdir(top)


# --- compile and submit: locations checked from here before anything is built ----------------

def _compile(cfg: dict, tmp_path, env: dict | None = None):
    import subprocess
    import sys
    import time

    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    out = tmp_path / "p.yaml"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "feda2v.cli", "compile", "--config", str(path),
                           "--output", str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "AWS_MAX_ATTEMPTS": "1", **(env or {})}, check=False)
    return proc, out.exists(), time.monotonic() - start


def test_compile_refuses_an_object_store_that_does_not_answer(make_config, tmp_path):
    port = _dead_port()
    cfg = make_config(data={"dataset_uri": "s3://data/ESC-50"})
    proc, wrote, seconds = _compile(cfg, tmp_path, {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    assert proc.returncode == 2 and not wrote and seconds < 30
    assert (f"data.dataset_uri s3://data/ESC-50: the object store (AWS_ENDPOINT_URL): "
            f"http://127.0.0.1:{port} does not answer") in proc.stderr


def test_compile_refuses_a_missing_bucket_and_a_missing_dataset(make_config, tmp_path,
                                                                 s3_server):  # noqa: F811
    bucket = s3_server.create_bucket()
    cfg = make_config(storage_root="s3://no-such-bucket-y/store",
                      data={"dataset_uri": f"s3://{bucket}/ESC-50"})
    proc, wrote, _ = _compile(cfg, tmp_path, s3_server.env())
    assert proc.returncode == 2 and not wrote
    assert f"data.dataset_uri s3://{bucket}/ESC-50 does not exist" in proc.stderr
    s3_server.filesystem().pipe_file(f"{bucket}/ESC-50/meta/esc50.csv", b"filename\n")
    proc, wrote, _ = _compile(cfg, tmp_path, s3_server.env())
    assert proc.returncode == 2 and not wrote
    assert ("storage_root s3://no-such-bucket-y/store: bucket s3://no-such-bucket-y does not "
            "exist; create it first") in proc.stderr


def test_compile_notes_what_it_cannot_see_from_here(make_config, tmp_path):
    """An in-cluster endpoint name and laptop paths are noted, not refused: the pods may see them."""
    cfg = make_config(data={"dataset_uri": "s3://data/ESC-50"}, storage_root="s3://store/x",
                      mlflow_tracking_uri="http://mlflow.feda2v.svc.cluster.local:5000")
    proc, wrote, _ = _compile(cfg, tmp_path,
                              {"AWS_ENDPOINT_URL": "http://minio-service.kubeflow.invalid:9000"})
    assert proc.returncode == 0 and wrote, proc.stderr
    assert "note: data.dataset_uri s3://data/ESC-50: the object store (AWS_ENDPOINT_URL): host " \
           "minio-service.kubeflow.invalid does not resolve from here; not checked" in proc.stderr
    assert "note: mlflow_tracking_uri: host mlflow.feda2v.svc.cluster.local does not " \
           "resolve from here; not checked" in proc.stderr
    assert f"note: models.audio_model {cfg.models.audio_model} is a path on this " \
           "machine" in proc.stderr


# --- a rerun after a fault equals a clean run --------------------------------------------------

def _fault(kind: str, monkeypatch):
    """Make round 2 of a phase fail once, as `kind` does; returns the error it raises."""
    import errno

    from feda2v.federated import loop as loop_mod

    fired = []
    if kind in ("disk full", "object store gone"):
        real = storage._write_bytes

        def write(uri, data):
            if "round_2" in uri and not fired:
                fired.append(uri)
                if kind == "disk full":
                    raise OSError(errno.ENOSPC, "No space left on device")
                raise ConnectionError("Could not connect to the endpoint URL")
            return real(uri, data)

        monkeypatch.setattr(storage, "_write_bytes", write)
        return storage.StorageError
    real_step = loop_mod.client_step

    def step(cfg, client_id, r, *args):
        update = real_step(cfg, client_id, r, *args)
        if r == 2 and client_id == 1 and not fired:
            fired.append(r)
            update.adapter_state = {k: v * float("nan") for k, v in update.adapter_state.items()}
        return update

    monkeypatch.setattr(loop_mod, "client_step", step)
    return ValueError


@pytest.mark.parametrize("kind", ["disk full", "object store gone", "non-finite update"])
def test_a_rerun_after_a_fault_ends_where_a_clean_run_does(tmp_path, monkeypatch, kind):
    """Round 2 fails (a full disk or a dead store while its state is written, or a client that
    sends NaN); the rerun resumes after round 1 and ends with the clean run's adapter and
    accuracies: nothing half-written is trusted, nothing finished is redone."""
    from feda2v.federated.loop import Federation, run_phase
    from feda2v.io import runstate

    cfg = _cfg()
    fed = Federation(cfg, [_data(), _data()], TARGETS, NAMES)
    clean, clean_history = run_phase(fed, "fedavg", 3, 1, _state(cfg), str(tmp_path / "clean"))
    run = str(tmp_path / "faulty")
    with monkeypatch.context() as patch:
        error = _fault(kind, patch)
        with pytest.raises(error):
            run_phase(fed, "fedavg", 3, 1, _state(cfg), run)
    assert runstate.last_round(run, "fedavg", 3) == 1
    assert not [n for _, _, files in os.walk(run) for n in files if n.startswith(".tmp-")]
    state, history = run_phase(fed, "fedavg", 3, 1, _state(cfg), run)
    assert [h["accuracy"] for h in history] == [h["accuracy"] for h in clean_history]
    assert all(torch.equal(state[k], v) for k, v in clean.items())


# --- audio --------------------------------------------------------------------------------------

def test_an_undecodable_clip_is_named_not_its_buffer(tmp_path):
    from feda2v.data.audio import decode

    bad = tmp_path / "dog_1.wav"
    bad.write_bytes(b"RIFF not really a wave file at all")
    with pytest.raises(ValueError, match=r"dog_1.wav: cannot decode audio") as e:
        decode(str(bad))
    assert "BytesIO" not in str(e.value)


def test_a_very_short_clip_is_padded_with_a_warning(tmp_path, caplog):
    import logging

    import numpy as np
    import soundfile as sf

    from feda2v.data.audio import load_clip

    clip = tmp_path / "tiny.wav"
    sf.write(clip, np.ones(160, dtype=np.float32) * 0.1, 16000)  # 0.01 s
    logging.getLogger("feda2v").propagate = True
    try:
        with caplog.at_level(logging.WARNING, logger="feda2v"):
            wav = load_clip(str(clip), 16000, 1.0)
    finally:
        logging.getLogger("feda2v").propagate = False
    assert len(wav) == 16000 and wav[159] != 0 and wav[160] == 0
    assert "tiny.wav is 0.01 s long: zero-padded to 1.00 s" in caplog.text


# --- config, data and checkpoints that were already refused (kept in one place) ---------------

@pytest.mark.parametrize("raw,message", [
    ({"feda2v": {"generator_tipe": "vae"}},
     r"unknown config key 'feda2v.generator_tipe' \(did you mean 'generator_type'\?\)"),
    ({"feda2v": {"generator_type": "diffusion"}}, r"bad value for 'feda2v.generator_type'"),
    ({"global_rounds": -3}, r"bad value for 'global_rounds': must be >= 1, got -3"),
    ({"batch_size": "16"}, r"bad value for 'batch_size': expected an integer"),
    ({"data": {"train_folds": [1, 5], "test_folds": [5]}}, r"fold\(s\) \[5\] are also"),
    ({"feda2v": {"use_generator": False, "generator_training_mode": True}},
     r"bad value for 'feda2v.use_generator'"),
])
def test_a_bad_config_value_is_named(raw, message):
    with pytest.raises(config_mod.ConfigError, match=message):
        config_mod.validate(raw)


def test_a_config_that_is_not_json_says_where(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"global_rounds": 3,}')
    with pytest.raises(config_mod.ConfigError, match=r"c.json: not valid JSON \(.*line 1"):
        config_mod.load(path)


def test_a_client_that_does_not_exist_is_named():
    from feda2v.orchestration import stages

    with pytest.raises(ValueError, match=r"client 5 does not exist: the config has 2 clients"):
        stages.extract(_cfg().to_json(), 5)


def test_a_precomputed_embeddings_file_without_labels_is_named(tmp_path):
    from feda2v.data.datasets import read_embeddings

    uri = str(tmp_path / "own.safetensors")
    storage.save_tensors(uri, {"embeddings": torch.zeros(2, 2, 4)}, {"class_names": ["a"]})
    with pytest.raises(ValueError, match=r"own.safetensors: embeddings file lacks tensor\(s\) "
                                         r"\['labels'\]"):
        read_embeddings(uri)


def test_labels_outside_the_class_list_are_named(tmp_path):
    from feda2v.data.datasets import read_embeddings

    uri = str(tmp_path / "own.safetensors")
    storage.save_tensors(uri, {"embeddings": torch.zeros(2, 2, 4), "labels": torch.tensor([0, 3])},
                         {"class_names": ["a", "b"]})
    with pytest.raises(ValueError, match=r"labels must index class_names \(2 classes\)"):
        read_embeddings(uri)


def test_a_checkpoint_of_another_generator_type_or_size_is_refused(tmp_path):
    cfg = _cfg()
    vae = checkpoints.new_generator(cfg, 4, 16, 16)
    uri = str(tmp_path / "client_0_generator.pt")
    checkpoints.save(uri, cfg, vae, checkpoints.new_optimizer(cfg, vae), 0, 1, ["dog"],
                   torch.zeros(1, 16))
    with pytest.raises(ValueError, match=r"generator_type is 'vae' in the checkpoint but 'gan'"):
        checkpoints.load(uri, _cfg(generator_type="gan"), {})
    with pytest.raises(ValueError, match=r"latent_dim is 8 in the checkpoint but 64 in this run"):
        checkpoints.load(uri, cfg, {"latent_dim": 64})


def test_run2_without_a_checkpoint_fails_naming_the_client(tmp_path):
    d = _data()
    with pytest.raises(FileNotFoundError, match=r"\[Client 1\] Generator checkpoint not found"):
        sampling.generate_client(_cfg(), 1, d, NAMES, 2, str(tmp_path / "none.pt"),
                                  str(tmp_path / "out.safetensors"))
    assert not os.path.exists(tmp_path / "out.safetensors")


def test_a_download_that_is_not_a_zip_or_has_the_wrong_checksum_is_refused(tmp_path, monkeypatch):
    from feda2v.data import download

    def fetch(url, dest):
        with open(dest, "wb") as f:
            f.write(b"<html>not an archive</html>")
        return {"sha256": "ab" * 32, "md5": "cd" * 16}

    monkeypatch.setattr(download, "_fetch", fetch)
    out = str(tmp_path / "ESC-50")
    with pytest.raises(ValueError, match=r"mirror.example/x.zip: not a zip archive"):
        download.download_esc50(out, "https://mirror.example/x.zip", "ab" * 32)
    with pytest.raises(ValueError, match=r"sha256 is abab.*, expected 0000"):
        download.download_esc50(out, "https://mirror.example/x.zip", "0" * 64)
    assert not os.path.exists(out)


def test_an_archive_that_is_not_the_known_esc50_release_is_refused_by_default(tmp_path,
                                                                              monkeypatch):
    """No --sha256: the archive must be the known release (its published MD5)."""
    from feda2v.data import download

    archive = tmp_path / "esc.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ESC-50-master/meta/esc50.csv", "filename,fold,target,category\n")
    real_fetch = download._fetch
    monkeypatch.setattr(download, "_fetch", lambda url, dest: real_fetch(archive.as_uri(), dest))
    out = str(tmp_path / "ESC-50")
    with pytest.raises(ValueError, match=r"not the known ESC-50 release \(md5 [0-9a-f]{32}, "
                                         r"expected 7771e4b9d86d0945acce719c7a59305a\); nothing "
                                         r"was unpacked.*pass --sha256 [0-9a-f]{64}"):
        download.download_esc50(out)
    assert not os.path.exists(out)
    assert download.download_esc50(out, verify=False) == 0  # --no-verify: unpacked, warned
