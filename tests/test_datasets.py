import os

import numpy as np
import pytest
import soundfile as sf
import torch

from feda2v.data import datasets
from feda2v.io import config as config_mod
from feda2v.io import storage


def _wav(path, seconds=0.2, rate=16000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, np.zeros(int(rate * seconds), dtype=np.float32), rate)


def test_esc50_folds_choose_the_split(demo_data):
    items = datasets.read_esc50(demo_data, [1, 2, 3], [5])
    assert {i.split for i in items} == {"train", "test"}
    assert len([i for i in items if i.split == "train"]) == 4 * 12  # fold 4 is unused
    assert all(i.uri.startswith(demo_data) and i.uri.endswith(".wav") for i in items)


def test_folders_layout_holds_out_a_fraction_per_class(tmp_path):
    for label in ("dog", "rain"):
        for k in range(10):
            _wav(str(tmp_path / label / f"{k}.wav"))
    (tmp_path / "dog" / "notes.txt").write_text("not audio")
    items = datasets.read_folders(str(tmp_path), test_fraction=0.2, seed=0)
    assert len(items) == 20
    assert sum(i.split == "test" and i.label == "dog" for i in items) == 2
    again = datasets.read_folders(str(tmp_path), test_fraction=0.2, seed=0)
    assert items == again


def test_folders_without_audio_is_an_error(tmp_path):
    (tmp_path / "dog").mkdir()
    with pytest.raises(ValueError, match="no audio files in class sub-folders"):
        datasets.read_folders(str(tmp_path), 0.2, 0)


def test_manifest_with_split_fold_or_neither(tmp_path):
    _wav(str(tmp_path / "a.wav"))
    _wav(str(tmp_path / "sub" / "b.wav"))
    m = tmp_path / "m.csv"
    m.write_text("path,label,split\na.wav,dog,train\nsub/b.wav,rain,test\n")
    items = datasets.read_manifest(str(m), [1], [2], 0.5, 0)
    assert items[0] == datasets.Item(f"{tmp_path}/a.wav", "dog", "train")
    assert items[1].split == "test" and items[1].uri == f"{tmp_path}/sub/b.wav"
    m.write_text("path,label,fold\na.wav,dog,1\nsub/b.wav,rain,2\n")
    assert [i.split for i in datasets.read_manifest(str(m), [1], [2], 0.5, 0)] == ["train", "test"]
    m.write_text("path,label\n" + "a.wav,dog\nsub/b.wav,dog\n" * 5)
    assert len(datasets.read_manifest(str(m), [1], [2], 0.2, 0)) == 10


@pytest.mark.parametrize("text, error", [
    ("file,label\na.wav,dog\n", "a manifest needs the columns path,label"),
    ("path,label,split\na.wav,dog,validation\n", "split values must be train or test"),
    ("path,label,fold\na.wav,dog,one\n", "line 2: fold 'one' is not an integer"),
])
def test_bad_manifests_are_named(tmp_path, text, error):
    m = tmp_path / "bad.csv"
    m.write_text(text)
    with pytest.raises(ValueError, match=f"bad.csv: {error}"):
        datasets.read_manifest(str(m), [1], [2], 0.2, 0)


def test_read_items_keeps_configured_classes_and_names_missing_ones(demo_data):
    cfg = config_mod.validate({"data": {"dataset_uri": demo_data, "clients": [["dog"], ["siren"]]}})
    assert {i.label for i in datasets.read_items(cfg)} == {"dog", "siren"}
    assert datasets.class_names(cfg) == ["dog", "siren"]
    bad = config_mod.validate({"data": {"dataset_uri": demo_data, "clients": [["dog", "cat"]]}})
    with pytest.raises(ValueError, match=r"class\(es\) \['cat'\] have no clips"):
        datasets.read_items(bad)
    iid = config_mod.validate({"data": {"dataset_uri": demo_data, "partition": "iid"}})
    assert datasets.class_names(iid) == ["dog", "rain", "rooster", "siren"]  # sorted, all


def test_embeddings_file_is_validated(tmp_path):
    uri = str(tmp_path / "e.safetensors")
    storage.save_tensors(uri, {"embeddings": torch.zeros(3, 4, 8),
                               "labels": torch.tensor([0, 1, 2])}, {"class_names": ["a", "b"]})
    with pytest.raises(ValueError, match="labels must index class_names"):
        datasets.read_embeddings(uri)
    storage.save_tensors(uri, {"embeddings": torch.zeros(3, 8), "labels": torch.tensor([0, 1, 1])},
                         {"class_names": ["a", "b"]})
    with pytest.raises(ValueError, match=r"expected embeddings \[N, S, D\]"):
        datasets.read_embeddings(uri)
    storage.save_tensors(uri, {"embeddings": torch.zeros(3, 4, 8)}, {"class_names": ["a"]})
    with pytest.raises(ValueError, match=r"lacks tensor\(s\) \['labels'\]"):
        datasets.read_embeddings(uri)
