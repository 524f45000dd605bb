"""feda2v's storage and model sources against a real S3 server (SeaweedFS, see s3server.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import fsspec
import pytest
import torch
from s3server import s3_env, s3_server  # noqa: F401 - fixtures

from feda2v.encoders import model_source
from feda2v.io import storage


def test_server_checks_credentials(s3_server):  # noqa: F811
    """Guards the other tests: they pass because the keys are right, not because anyone may."""
    bucket = s3_server.create_bucket()
    wrong = s3_server.filesystem()
    wrong.secret = "not-the-secret"
    wrong.connect(refresh=True)
    with pytest.raises(PermissionError):
        wrong.ls(bucket)


def test_storage_round_trips_on_s3(s3_env):  # noqa: F811
    root = f"s3://{s3_env}/runs/one"
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    uri = storage.join(root, "adapter.safetensors")
    assert not storage.exists(uri)
    storage.save_tensors(uri, tensors, meta={"round": 2, "client": "a"})
    assert storage.exists(uri)
    loaded, meta = storage.load_tensors(uri)
    assert meta == {"round": 2, "client": "a"}
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)

    checkpoint = {"step": 7, "state": {"w": torch.randn(4, 4)}, "loss": [0.5, 0.25]}
    storage.save_checkpoint(storage.join(root, "ckpt.pt"), checkpoint)
    back = storage.load_checkpoint(storage.join(root, "ckpt.pt"))
    assert back["step"] == 7 and back["loss"] == [0.5, 0.25]
    assert torch.equal(back["state"]["w"], checkpoint["state"]["w"])

    storage.write_json(storage.join(root, "metrics.json"), {"acc": 0.75, "classes": ["dog"]})
    assert storage.read_json(storage.join(root, "metrics.json")) == {"acc": 0.75,
                                                                     "classes": ["dog"]}
    storage.write_json(storage.join(root, "metrics.json"), {"acc": 0.8})  # overwrite
    assert storage.read_json(storage.join(root, "metrics.json")) == {"acc": 0.8}

    # the objects really are on the server, where another client sees them
    listed = fsspec.filesystem("s3", skip_instance_cache=True).ls(f"{s3_env}/runs/one")
    assert sorted(os.path.basename(p) for p in listed) == [
        "adapter.safetensors", "ckpt.pt", "metrics.json"]
    with pytest.raises(FileNotFoundError, match="missing.json"):
        storage.read_json(storage.join(root, "missing.json"))


def test_subprocesses_reach_the_server_through_the_environment(s3_env):  # noqa: F811
    storage.write_json(f"s3://{s3_env}/hello.json", {"from": "parent"})
    code = "import fsspec, sys; sys.stdout.write(fsspec.open(sys.argv[1]).open().read().decode())"
    out = subprocess.run([sys.executable, "-c", code, f"s3://{s3_env}/hello.json"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"from": "parent"}


# --- model sources -------------------------------------------------------------------------------

@pytest.fixture
def downloads(monkeypatch):
    """Count the remote copies model_source makes."""
    calls = []
    real = model_source._download

    def spy(fs, root, files, out):
        calls.append(sorted(files))
        real(fs, root, files, out)

    monkeypatch.setattr(model_source, "_download", spy)
    return calls


def test_resolve_copies_an_s3_model_once_and_again_when_it_changes(
        s3_server, s3_env, tiny_models, tmp_path, downloads):  # noqa: F811
    import transformers

    fs = fsspec.filesystem("s3")
    fs.put(tiny_models["audio"], f"{s3_env}/models/ast", recursive=True)
    url, cache = f"s3://{s3_env}/models/ast/", str(tmp_path / "cache")

    path = model_source.resolve(url, cache_dir=cache)
    assert os.path.isabs(path) and path.startswith(cache)
    assert len(downloads) == 1
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(downloads[0])
    model = transformers.AutoModel.from_pretrained(path)
    features = transformers.AutoFeatureExtractor.from_pretrained(path)
    original = transformers.AutoModel.from_pretrained(tiny_models["audio"])
    assert type(model).__name__ == "ASTModel" and features.sampling_rate == 16000
    for (name, p), (_, q) in zip(model.state_dict().items(), original.state_dict().items()):
        assert torch.equal(p, q), name
    assert os.listdir(cache) == [os.path.basename(path)]  # no temporary folders left behind

    # unchanged remote: the same copy, nothing downloaded (with or without the trailing slash)
    assert model_source.resolve(url, cache_dir=cache) == path
    assert model_source.resolve(url.rstrip("/"), cache_dir=cache) == path
    assert len(downloads) == 1

    # a file added remotely (by another client, so that this process's listing cache cannot
    # know): copied again, and the copy has it
    s3_server.filesystem().pipe(f"{s3_env}/models/ast/NOTES.md", b"retrained")
    assert model_source.resolve(url, cache_dir=cache) == path
    assert len(downloads) == 2
    with open(os.path.join(path, "NOTES.md")) as f:
        assert f.read() == "retrained"

    # a file removed remotely: the new copy replaces the old one, the file does not linger
    s3_server.filesystem().rm(f"{s3_env}/models/ast/NOTES.md")
    assert model_source.resolve(url, cache_dir=cache) == path
    assert len(downloads) == 3
    assert not os.path.exists(os.path.join(path, "NOTES.md"))
    assert os.path.exists(os.path.join(path, "model.safetensors"))
    assert os.listdir(cache) == [os.path.basename(path)]


def test_a_failed_copy_leaves_no_partial_model(s3_env, tmp_path, monkeypatch):  # noqa: F811
    fs = fsspec.filesystem("s3")
    fs.pipe({f"{s3_env}/m/config.json": b"{}", f"{s3_env}/m/weights.bin": b"0" * 1000})
    cache, url = tmp_path / "cache", f"s3://{s3_env}/m"
    real = model_source._download

    def broken(fs, root, files, out):
        with open(os.path.join(out, "config.json"), "w") as f:
            f.write("{}")
        raise ConnectionError("network went away")

    monkeypatch.setattr(model_source, "_download", broken)
    with pytest.raises(ConnectionError):
        model_source.resolve(url, cache_dir=str(cache))
    assert os.listdir(cache) == []

    monkeypatch.setattr(model_source, "_download", real)
    path = model_source.resolve(url, cache_dir=str(cache))
    assert sorted(f for f in os.listdir(path) if not f.startswith(".")) == [
        "config.json", "weights.bin"]


def test_resolve_uses_the_cache_folder_from_the_environment(
        s3_env, tmp_path, monkeypatch):  # noqa: F811
    fsspec.filesystem("s3").pipe(f"{s3_env}/clap/config.json", b"{}")
    monkeypatch.setenv("FEDA2V_MODEL_CACHE", str(tmp_path / "env-cache"))
    path = model_source.resolve(f"s3://{s3_env}/clap")
    assert os.path.dirname(path) == str(tmp_path / "env-cache")
    assert os.path.basename(path).startswith("clap-")


def test_missing_remote_folders_are_named_in_the_error(s3_env, tmp_path):  # noqa: F811
    for url in (f"s3://{s3_env}/no/such/model", "s3://no-such-bucket-feda2v/model"):
        with pytest.raises(FileNotFoundError, match=url):
            model_source.resolve(url, cache_dir=str(tmp_path))
    fsspec.filesystem("s3").pipe(f"{s3_env}/weights.bin", b"0")
    with pytest.raises(FileNotFoundError, match="not a folder"):  # a file is not a model folder
        model_source.resolve(f"s3://{s3_env}/weights.bin", cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_hub_ids_pass_and_local_folders_become_absolute(tmp_path, monkeypatch):
    hub = "MIT/ast-finetuned-audioset-10-10-0.4593"
    assert model_source.resolve(hub) == hub
    (tmp_path / "models" / "ast").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    expected = str(tmp_path / "models" / "ast")
    assert model_source.resolve("models/ast") == expected  # an existing folder wins over the hub
    assert model_source.resolve("./models/ast") == expected
    assert model_source.resolve(f"file://{expected}") == expected
    assert model_source.resolve(expected) == expected
    assert model_source.resolve("./not-yet") == str(tmp_path / "not-yet")
    assert not (tmp_path / ".cache").exists()


def test_extraction_reads_data_and_model_from_s3_and_writes_there(
        s3_env, make_config, demo_data, tiny_models, tmp_path, monkeypatch):  # noqa: F811
    """The whole extraction stage with every input and output on object storage."""
    from feda2v.encoders import extraction

    fs = fsspec.filesystem("s3")
    fs.put(demo_data, f"{s3_env}/ESC-50", recursive=True)
    fs.put(tiny_models["audio"], f"{s3_env}/models/ast", recursive=True)
    monkeypatch.setenv(model_source.CACHE_ENV, str(tmp_path / "cache"))
    cfg = make_config(storage_root=f"s3://{s3_env}/store",
                      data={"dataset_uri": f"s3://{s3_env}/ESC-50"},
                      models={"audio_model": f"s3://{s3_env}/models/ast"})
    uri = extraction.embeddings_uri(cfg, 1)
    assert uri.startswith(f"s3://{s3_env}/store/embeddings/")
    extraction.extract_client(cfg, 1, uri)
    tensors, meta = storage.load_tensors(uri)
    assert tensors["train_x"].shape == (32, 4, 64)
    assert meta["cache_key"]
    # A rerun sees the same object listing (sizes and stamps): a cache hit.
    calls = []
    monkeypatch.setattr("feda2v.encoders.embed.AudioEncoder.__init__",
                        lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(AssertionError))
    extraction.extract_client(cfg, 1, uri)
    assert calls == []
