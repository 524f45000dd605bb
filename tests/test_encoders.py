import os

import pytest
import torch

from feda2v.data.datasets import read_esc50
from feda2v.encoders import embed


def test_tiny_models_load_through_from_pretrained(tiny_models):
    from transformers import (
        ASTFeatureExtractor,
        ASTModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    assert isinstance(ASTModel.from_pretrained(tiny_models["audio"]), ASTModel)
    assert isinstance(ASTFeatureExtractor.from_pretrained(tiny_models["audio"]), ASTFeatureExtractor)
    assert isinstance(CLIPTextModelWithProjection.from_pretrained(tiny_models["text"]),
                      CLIPTextModelWithProjection)
    tok = CLIPTokenizer.from_pretrained(tiny_models["text"])
    assert tok("a photo of dog")["input_ids"][-1] == tok.eos_token_id


def test_audio_embeddings_are_pooled_to_tokens(tiny_models, demo_data):
    enc = embed.AudioEncoder(tiny_models["audio"], tokens=4, device="cpu")
    uris = [c.uri for c in read_esc50(demo_data, [1], [5])[:5]]
    x, kept, bad = embed.embed_clips(enc, uris, 1.0, batch_size=2)
    assert x.shape == (5, 4, enc.dim) and enc.dim == 64
    assert kept == [0, 1, 2, 3, 4] and bad == []
    # batching and decoding workers do not change the result
    again, _, _ = embed.embed_clips(enc, uris, 1.0, batch_size=5, workers=2)
    assert torch.allclose(x, again, atol=1e-5)


def test_text_targets_differ_per_prompt(tiny_models):
    t = embed.text_targets(tiny_models["text"], ["a photo of dog", "a photo of rain"], "cpu")
    assert t.shape == (2, 64)
    assert not torch.allclose(t[0], t[1])


def test_missing_model_folder_gives_an_offline_hint(tmp_path):
    with pytest.raises(OSError, match="cannot load audio model.*feda2v models tiny"):
        embed.AudioEncoder(os.path.join(str(tmp_path), "absent"))


def test_image_targets_average_each_class_images(tiny_models, tmp_path):
    import numpy as np
    from PIL import Image

    from feda2v.data import datasets
    from feda2v.io import config as config_mod

    rng = np.random.default_rng(0)
    for label, colour in (("dog", (200, 30, 30)), ("rain", (30, 30, 200))):
        (tmp_path / label).mkdir()
        for k in range(2):
            pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype("uint8")).save(tmp_path / label / f"{k}.png")
    cfg = config_mod.validate({"data": {"format": "folders", "dataset_uri": str(tmp_path),
                                        "targets": "images", "clients": [["dog"], ["rain"]]}})
    images = datasets.read_images(cfg)
    assert sorted(images) == ["dog", "rain"] and len(images["dog"]) == 2
    t = embed.image_targets(tiny_models["vision"], images, ["dog", "rain"], "cpu")
    assert t.shape == (2, 64) and not torch.allclose(t[0], t[1])
    with pytest.raises(ValueError, match=r"class\(es\) \['siren'\] have no image"):
        embed.image_targets(tiny_models["vision"], images, ["dog", "siren"], "cpu")
