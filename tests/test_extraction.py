import shutil

import pytest
import torch

from feda2v.data import datasets
from feda2v.encoders import backbones, embed, extraction
from feda2v.encoders.extraction import extract_client
from feda2v.io import storage


@pytest.fixture
def copy_of_data(tmp_path, demo_data):
    """A private copy of the demo set that a test may damage."""
    return str(shutil.copytree(demo_data, tmp_path / "esc50"))


def test_extraction_partitions_and_embeds(make_config):
    cfg = make_config()
    uri = extract_client(cfg, 1, extraction.embeddings_uri(cfg, 1))
    t, meta = storage.load_tensors(uri)
    assert t["train_x"].shape == (32, 4, 64) and t["test_x"].shape == (8, 4, 64)
    assert set(t["train_y"].tolist()) == {2, 3}  # rain, siren in class order
    assert meta["class_names"] == ["dog", "rooster", "rain", "siren"]


def test_rerun_with_same_inputs_is_a_cache_hit_without_any_model(make_config, monkeypatch):
    cfg = make_config()
    uri = extraction.embeddings_uri(cfg, 0)
    extract_client(cfg, 0, uri)
    first = storage.load_tensors(uri)[0]

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded on a cache hit")

    monkeypatch.setattr(embed.AudioEncoder, "__init__", no_model)
    extract_client(cfg, 0, uri)
    assert torch.equal(storage.load_tensors(uri)[0]["train_x"], first["train_x"])


def test_changed_clip_or_settings_miss_the_cache(make_config, copy_of_data, monkeypatch):
    cfg = make_config(data={"dataset_uri": copy_of_data})
    uri = extraction.embeddings_uri(cfg, 0)
    extract_client(cfg, 0, uri)
    calls = []
    real = embed.AudioEncoder.embed
    monkeypatch.setattr(embed.AudioEncoder, "embed",
                        lambda self, w: calls.append(len(w)) or real(self, w))
    item = next(i for i in datasets.read_items(cfg) if i.label == "dog")
    with open(item.uri, "ab") as f:
        f.write(b"\0\0")  # one clip changed size
    extract_client(cfg, 0, uri)
    assert calls, "a changed clip must be re-extracted"
    shorter = make_config(data={"dataset_uri": copy_of_data, "clip_seconds": 0.5})
    assert extraction.embeddings_uri(shorter, 0) != uri  # settings get their own folder


def test_corrupt_clips_are_skipped_with_a_warning(make_config, copy_of_data):
    cfg = make_config(data={"dataset_uri": copy_of_data, "max_bad_fraction": 0.1})
    victim = next(i for i in datasets.read_items(cfg) if i.label == "dog" and i.split == "train")
    with open(victim.uri, "wb") as f:
        f.write(b"broken")
    uri = extract_client(cfg, 0, extraction.embeddings_uri(cfg, 0))
    t, meta = storage.load_tensors(uri)
    assert t["train_x"].shape[0] == 31
    assert meta["skipped"] == [victim.uri]


def test_too_many_corrupt_clips_fail_naming_them(make_config, copy_of_data):
    cfg = make_config(data={"dataset_uri": copy_of_data, "max_bad_fraction": 0.05})
    victims = [i for i in datasets.read_items(cfg) if i.label == "dog"][:5]
    for v in victims:
        open(v.uri, "wb").close()
    out = extraction.embeddings_uri(cfg, 0)
    with pytest.raises(ValueError, match=r"client 0: 5 of 40 clips are unreadable"):
        extract_client(cfg, 0, out)
    assert not storage.exists(out)


def test_clap_encoder_gives_its_projection_dim(make_config, tmp_path):
    clap = backbones.write_tiny_clap(str(tmp_path / "clap"))
    cfg = make_config(models={"audio_model": clap}, data={"clip_seconds": 1.0})
    t, _ = storage.load_tensors(extract_client(cfg, 0, extraction.embeddings_uri(cfg, 0)))
    enc = embed.AudioEncoder(clap, device="cpu")
    assert enc.backbone.family == "clap"
    assert t["train_x"].shape[1:] == (4, enc.dim)


def test_float16_storage(make_config):
    cfg = make_config(models={"embeddings_dtype": "float16"})
    t, _ = storage.load_tensors(extract_client(cfg, 0, extraction.embeddings_uri(cfg, 0)))
    assert t["train_x"].dtype == torch.float16


def test_precomputed_embeddings_skip_extraction(make_config, tmp_path, monkeypatch):
    uri = str(tmp_path / "byo.safetensors")
    labels = torch.arange(3).repeat_interleave(10)
    storage.save_tensors(uri, {"embeddings": torch.randn(30, 4, 8), "labels": labels,
                               "split": (torch.arange(30) % 5 == 0).long(),
                               "class_targets": torch.eye(3, 16)},
                         {"class_names": ["a", "b", "c"]})
    monkeypatch.setattr(embed.AudioEncoder, "__init__",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    cfg = make_config(data={"format": "embeddings", "dataset_uri": uri,
                            "clients": [["a", "b"], ["c"]]})
    t, _ = storage.load_tensors(extract_client(cfg, 0, extraction.embeddings_uri(cfg, 0)))
    assert t["train_x"].shape == (16, 4, 8) and t["test_x"].shape == (4, 4, 8)
    assert set(t["train_y"].tolist()) == {0, 1}
