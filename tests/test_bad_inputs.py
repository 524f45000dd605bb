"""Bad and hostile input: a clear error naming the file, key or client, nothing poisoned, nothing
written half. One test per row of the README's "Bad input → what happens" table."""

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

from feda2v import config as config_mod
from feda2v import storage
from feda2v.federated import generator
from feda2v.federated.client import ClientData, ClientUpdate, client_step
from feda2v.federated.server import server_step
from feda2v.federated.task import new_adapter

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
    from feda2v import stages

    cfg = _cfg()
    uri = str(tmp_path / "client_0.safetensors")
    d = _data(poison=True)
    storage.save_tensors(uri, {"train_x": d.train_x, "train_y": d.train_y,
                               "test_x": d.test_x, "test_y": d.test_y})
    with pytest.raises(ValueError, match=r"client_0.safetensors: 'train_x' holds 1 non-finite"):
        stages.client_data(cfg, 0, uri)


def test_nan_in_precomputed_embeddings_is_refused(tmp_path):
    from feda2v.datasets import read_embeddings

    uri = str(tmp_path / "own.safetensors")
    x = torch.zeros(4, 2, 8)
    x[0, 0, 0] = float("inf")
    storage.save_tensors(uri, {"embeddings": x, "labels": torch.tensor([0, 1, 0, 1])},
                         {"class_names": ["a", "b"]})
    with pytest.raises(ValueError, match=r"own.safetensors: 'embeddings' holds 1 non-finite"):
        read_embeddings(uri)


def test_nan_in_class_targets_is_refused(tmp_path):
    from feda2v import stages

    uri = str(tmp_path / "targets.safetensors")
    storage.save_tensors(uri, {"targets": torch.full((2, 4), float("nan"))},
                         {"class_names": ["a", "b"]})
    with pytest.raises(ValueError, match=r"targets.safetensors: 'targets' holds 8 non-finite"):
        stages._load_targets(uri)


def test_a_diverging_client_round_sends_nothing_and_names_client_and_round():
    cfg = _cfg()
    cfg["learning_rate"] = 1e30  # diverges at once
    with pytest.raises(ValueError, match=r"client 1, round 4 \(fedavg\): the adapter's training "
                                         r"loss is (nan|inf)"):
        client_step(cfg, 1, 4, "fedavg", _state(cfg), _data(), TARGETS, NAMES)


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
    vae = generator.new_generator(cfg, 4, 16, 16)
    state = vae.state_dict()
    state["decoder.0.weight"][0, 0] = float("nan")
    vae.load_state_dict(state)
    uri = str(tmp_path / "client_0_generator.pt")
    generator.save(uri, cfg, vae, generator.new_optimizer(cfg, vae), 0, 1, ["dog"],
                   torch.zeros(1, 16))
    with pytest.raises(ValueError, match=r"client_0_generator.pt: 'decoder.0.weight' holds 1"):
        generator.load(uri, cfg, {})


def test_a_generator_round_that_diverges_writes_no_checkpoint():
    cfg = _cfg(generator_learning_rate=1e30)
    d = _data()
    with pytest.raises(ValueError, match=r"client 0, generator round 3: the training loss is"):
        generator.generator_round(cfg, 0, 3, None, d.train_x, d.train_y, torch.tensor([0, 1]),
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
    from feda2v import download

    archive = tmp_path / "esc.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ESC-50-master/meta/esc50.csv", "filename,fold,target,category\n")
        zf.writestr("ESC-50-master/audio/../../../escaped.txt", "x")
    monkeypatch.setattr(download, "_fetch",
                        lambda url, dest: (os.replace(archive, dest), "0" * 64)[1])
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


@pytest.mark.parametrize("bad", ["dataset", "tracking server"])
def test_run_checks_its_inputs_before_any_task_starts(make_config, tmp_path, bad):
    """A missing dataset or an unreachable MLflow server fails `feda2v run` in seconds with exit
    code 2 naming it, before any MLflow store, kfp-local folder or task exists."""
    import subprocess
    import sys
    import time

    if bad == "dataset":
        cfg = make_config(data={"dataset_uri": str(tmp_path / "no-such-data")})
        expected = f"data.dataset_uri {tmp_path / 'no-such-data'} does not exist"
    else:
        uri = f"http://127.0.0.1:{_dead_port()}"
        cfg = make_config(mlflow_tracking_uri=uri)
        expected = f"MLflow tracking server {uri} is unreachable"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "feda2v.cli", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert time.monotonic() - start < 30
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert not os.path.exists(cfg["storage_root"])  # no MLflow store, no kfp-local folder


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_reaches_no_log_and_no_command_line(
        make_config, tmp_path, mlflow_server):  # noqa: F811
    """The password travels to the tasks in their environment, not in the config that kfp.local
    puts on every task's command line; no log, report or artifact file of the run holds it."""
    import subprocess
    import sys

    secret = "s3cr3t-pa55word"
    uri = mlflow_server.replace("http://", f"http://feda2v:{secret}@")
    cfg = make_config(global_rounds=1, mlflow_tracking_uri=uri,
                      feda2v={"generator_training_rounds": 1, "generator_training_mode": True})
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "feda2v.cli", "run", "--config", str(path),
                           "--pipeline", "run1"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert secret not in proc.stdout + proc.stderr
    for folder, _, files in os.walk(cfg["storage_root"]):
        for name in files:
            if name.endswith((".log", ".json", ".md", ".txt", ".yaml")):
                with open(os.path.join(folder, name), errors="replace") as f:
                    assert secret not in f.read(), os.path.join(folder, name)


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


# --- audio --------------------------------------------------------------------------------------

def test_an_undecodable_clip_is_named_not_its_buffer(tmp_path):
    from feda2v.audio import decode

    bad = tmp_path / "dog_1.wav"
    bad.write_bytes(b"RIFF not really a wave file at all")
    with pytest.raises(ValueError, match=r"dog_1.wav: cannot decode audio") as e:
        decode(str(bad))
    assert "BytesIO" not in str(e.value)


def test_a_very_short_clip_is_padded_with_a_warning(tmp_path, caplog):
    import logging

    import numpy as np
    import soundfile as sf

    from feda2v.audio import load_clip

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
    from feda2v import stages

    with pytest.raises(ValueError, match=r"client 5 does not exist: the config has 2 clients"):
        stages.extract(json.dumps(_cfg()), 5)


def test_a_precomputed_embeddings_file_without_labels_is_named(tmp_path):
    from feda2v.datasets import read_embeddings

    uri = str(tmp_path / "own.safetensors")
    storage.save_tensors(uri, {"embeddings": torch.zeros(2, 2, 4)}, {"class_names": ["a"]})
    with pytest.raises(ValueError, match=r"own.safetensors: embeddings file lacks tensor\(s\) "
                                         r"\['labels'\]"):
        read_embeddings(uri)


def test_labels_outside_the_class_list_are_named(tmp_path):
    from feda2v.datasets import read_embeddings

    uri = str(tmp_path / "own.safetensors")
    storage.save_tensors(uri, {"embeddings": torch.zeros(2, 2, 4), "labels": torch.tensor([0, 3])},
                         {"class_names": ["a", "b"]})
    with pytest.raises(ValueError, match=r"labels must index class_names \(2 classes\)"):
        read_embeddings(uri)


def test_a_checkpoint_of_another_generator_type_or_size_is_refused(tmp_path):
    cfg = _cfg()
    vae = generator.new_generator(cfg, 4, 16, 16)
    uri = str(tmp_path / "client_0_generator.pt")
    generator.save(uri, cfg, vae, generator.new_optimizer(cfg, vae), 0, 1, ["dog"],
                   torch.zeros(1, 16))
    with pytest.raises(ValueError, match=r"generator_type is 'vae' in the checkpoint but 'gan'"):
        generator.load(uri, _cfg(generator_type="gan"), {})
    with pytest.raises(ValueError, match=r"latent_dim is 8 in the checkpoint but 64 in this run"):
        generator.load(uri, cfg, {"latent_dim": 64})


def test_run2_without_a_checkpoint_fails_naming_the_client(tmp_path):
    d = _data()
    with pytest.raises(FileNotFoundError, match=r"\[Client 1\] Generator checkpoint not found"):
        generator.generate_client(_cfg(), 1, d, NAMES, 2, str(tmp_path / "none.pt"),
                                  str(tmp_path / "out.safetensors"))
    assert not os.path.exists(tmp_path / "out.safetensors")


def test_a_download_that_is_not_a_zip_or_has_the_wrong_checksum_is_refused(tmp_path, monkeypatch):
    from feda2v import download

    def fetch(url, dest):
        with open(dest, "wb") as f:
            f.write(b"<html>not an archive</html>")
        return "ab" * 32

    monkeypatch.setattr(download, "_fetch", fetch)
    out = str(tmp_path / "ESC-50")
    with pytest.raises(ValueError, match=r"mirror.example/x.zip: not a zip archive"):
        download.download_esc50(out, "https://mirror.example/x.zip")
    with pytest.raises(ValueError, match=r"sha256 is abab.*, expected 0000"):
        download.download_esc50(out, "https://mirror.example/x.zip", "0" * 64)
    assert not os.path.exists(out)
