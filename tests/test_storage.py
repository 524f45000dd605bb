import os

import pytest
import torch

from feda2v.io import storage


class NotAllowed:
    pass


def test_tensors_round_trip_with_metadata(tmp_path):
    uri = str(tmp_path / "a" / "t.safetensors")
    storage.save_tensors(uri, {"x": torch.arange(6.0).reshape(2, 3)}, {"client_id": 3, "k": [1]})
    tensors, meta = storage.load_tensors(uri)
    assert torch.equal(tensors["x"], torch.arange(6.0).reshape(2, 3))
    assert meta == {"client_id": 3, "k": [1]}
    assert storage.read_meta(uri) == meta  # header only, same answer


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    uri = f"file://{tmp_path}/ckpt.pt"
    ckpt = {"client_id": 0, "round": 5, "generator_state_dict": {"w": torch.ones(2)},
            "class_names": ["dog"], "dims": {"seq_len": 4}}
    storage.save_checkpoint(uri, ckpt)
    loaded = storage.load_checkpoint(uri)
    assert loaded["round"] == 5 and torch.equal(loaded["generator_state_dict"]["w"], torch.ones(2))


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    uri = str(tmp_path / "evil.pt")
    torch.save({"payload": NotAllowed()}, uri)
    with pytest.raises(ValueError, match="holds pickled Python objects"):
        storage.load_checkpoint(uri)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    uri = str(tmp_path / "f.json")
    storage.write_json(uri, {"v": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        storage.write_json(uri, {"v": 2})
    monkeypatch.undo()
    assert storage.read_json(uri) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["f.json"]  # no temp file left behind


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        storage.load_tensors(str(tmp_path / "nope.safetensors"))


def test_join_keeps_url_schemes():
    assert storage.join("s3://bucket/root/", "a", "b.pt") == "s3://bucket/root/a/b.pt"
    assert storage.join("/tmp/x", "a") == "/tmp/x/a"


def test_copy_tree_copies_every_file_and_names_a_missing_source(tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "weights.bin").write_bytes(b"\x00" * 1000)
    (src / ".cache" / "huggingface").mkdir(parents=True)  # hf download's bookkeeping
    (src / ".cache" / "huggingface" / "x.metadata").write_text("etag")
    seen = []
    files, size = storage.copy_tree(str(src), str(tmp_path / "out"), say=seen.append)
    assert (files, size) == (2, 1002) and len(seen) == 2
    assert (tmp_path / "out" / "sub" / "weights.bin").read_bytes() == b"\x00" * 1000
    assert not (tmp_path / "out" / ".cache").exists()
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        storage.copy_tree(str(tmp_path / "nothing"), str(tmp_path / "out2"))


def test_models_push_and_data_push_refuse_what_the_pipeline_could_not_read(tmp_path, capsys):
    from feda2v.cli import main

    (tmp_path / "empty").mkdir()
    for what, needs in (("models", "config.json"), ("data", "meta/esc50.csv")):
        with pytest.raises(SystemExit) as e:
            main([what, "push", str(tmp_path / "empty"), str(tmp_path / "dest")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert str(tmp_path / "empty") in err and needs in err
    assert not (tmp_path / "dest").exists()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(SystemExit):  # a download without its weights fails here, not in a pod
        main(["models", "push", str(tmp_path / "empty"), str(tmp_path / "dest")])
    assert "*.safetensors" in capsys.readouterr().err
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"w")
    main(["models", "push", str(tmp_path / "empty"), str(tmp_path / "dest")])
    assert (tmp_path / "dest" / "config.json").read_text() == "{}"
    assert "Copied 2 files" in capsys.readouterr().out
