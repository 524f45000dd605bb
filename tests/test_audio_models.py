import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from feda2v.encoders.backbones import (
    AudioBackbone,
    image_embeddings,
    write_tiny_clap,
    write_tiny_clip_vision,
)
from feda2v.encoders.embed import write_tiny_models

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_models")
    return {
        "ast": write_tiny_models(str(root / "ast"), hidden=48)["audio"],
        "clap": write_tiny_clap(str(root / "clap")),
        "vision": write_tiny_clip_vision(str(root / "vision"), projection_dim=40),
    }


@pytest.fixture(scope="module")
def backbones(tiny):
    return {family: AudioBackbone(tiny[family], CPU) for family in ("ast", "clap")}


def _saved(folder: str, name: str) -> dict:
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


def _waves(rate: int, n: int, seconds: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(rate * seconds)) / rate
    tones = [0.5 * np.sin(2 * np.pi * (200 + 300 * i) * t) for i in range(n)]
    return [(w + 0.05 * rng.standard_normal(len(t))).astype(np.float32) for w in tones]


def test_family_rate_and_dim_come_from_the_saved_model(tiny, backbones):
    ast, clap = backbones["ast"], backbones["clap"]
    assert ast.family == "ast" and clap.family == "clap"
    assert ast.dim == _saved(tiny["ast"], "config.json")["hidden_size"] == 48
    clap_config = _saved(tiny["clap"], "config.json")
    assert clap.dim == clap_config["projection_dim"] != clap_config["hidden_size"]
    for family, backbone in backbones.items():
        assert backbone.sample_rate == _saved(tiny[family], "preprocessor_config.json")[
            "sampling_rate"]
    assert (ast.sample_rate, clap.sample_rate) == (16000, 48000)


@pytest.mark.parametrize("family", ["ast", "clap"])
def test_tokens_shape_and_batching(backbones, family):
    backbone = backbones[family]
    waves = _waves(backbone.sample_rate, 3)
    tokens = backbone.tokens(waves)
    assert tokens.ndim == 3 and tokens.shape[0] == 3 and tokens.shape[2] == backbone.dim
    assert tokens.shape[1] > 4 and tokens.device.type == "cpu" and torch.isfinite(tokens).all()
    assert not torch.allclose(tokens[0], tokens[1])
    one_at_a_time = torch.cat([backbone.tokens([w]) for w in waves])
    assert torch.allclose(tokens, one_at_a_time, atol=1e-5)


def test_clap_tokens_average_to_audio_embeds_when_the_projection_is_affine(tiny):
    # audio_embeds = projection(mean of the final feature-map cells). Without the projection's
    # ReLU, the projection is affine, so the mean of the projected tokens must equal audio_embeds
    # exactly: this pins down that tokens are those cells, each passed through the projection.
    backbone = AudioBackbone(tiny["clap"], CPU)
    backbone.model.audio_projection.activation = torch.nn.Identity()
    waves = _waves(backbone.sample_rate, 2)
    inputs = backbone.features(waves, sampling_rate=backbone.sample_rate, return_tensors="pt")
    with torch.no_grad():
        audio_embeds = backbone.model(**inputs).audio_embeds
    tokens = backbone.tokens(waves)
    assert audio_embeds.shape == (2, backbone.dim)
    assert torch.allclose(tokens.mean(dim=1), audio_embeds, atol=1e-5)


def test_clap_tokens_are_time_major_cells(backbones):
    # Token t*F + f is the final feature map's cell at time step t, frequency band f: a tone burst
    # in one stretch of the window moves that step's tokens most, a low (high) tone band 0 (F-1).
    backbone = backbones["clap"]
    rate, window = backbone.sample_rate, int(backbone.features.nb_max_samples)
    inputs = backbone.features([np.zeros(window)], sampling_rate=rate, return_tensors="pt")
    with torch.no_grad():
        bands = backbone.model(**inputs).last_hidden_state.shape[2]
    t = np.arange(window) / rate
    base = (0.05 * np.random.default_rng(0).standard_normal(window)).astype(np.float32)
    reference = backbone.tokens([base])
    steps = reference.shape[1] // bands
    assert steps * bands == reference.shape[1] and steps > 2 and bands > 1

    def change(wave):  # [steps, bands]: how far each token moved
        return (backbone.tokens([wave.astype(np.float32)]) - reference)[0].norm(dim=-1).view(
            steps, bands)

    for k in range(steps):
        burst = base.copy()
        stretch = slice(k * window // steps, (k + 1) * window // steps)
        burst[stretch] += 0.5 * np.sin(2 * np.pi * 1000 * t[stretch])
        assert int(change(burst).sum(1).argmax()) == k
    assert int(change(base + 0.3 * np.sin(2 * np.pi * 150 * t)).sum(0).argmax()) == 0
    assert int(change(base + 0.3 * np.sin(2 * np.pi * 9000 * t)).sum(0).argmax()) == bands - 1


def test_clap_clips_longer_than_the_window_are_cropped_from_the_start(backbones):
    # The extractor alone would take a random crop ("rand_trunc"); tokens must be reproducible.
    backbone = backbones["clap"]
    window = int(backbone.features.nb_max_samples)
    long_clip = _waves(backbone.sample_rate, 1, seconds=2.5 * window / backbone.sample_rate)[0]
    long_clip[:window] *= np.linspace(0.0, 1.0, window, dtype=np.float32)  # no two crops alike
    tokens = backbone.tokens([long_clip])
    assert torch.equal(tokens, backbone.tokens([long_clip]))
    assert torch.allclose(tokens, backbone.tokens([long_clip[:window]]), atol=1e-6)


def test_fused_clap_tokens_do_not_depend_on_the_batch(tiny, tmp_path):
    # A fused checkpoint's extractor marks one random clip of each batch as "longer"
    # (truncation="fusion"), which would change that clip's tokens.
    import transformers as tf

    config = tf.ClapAudioConfig.from_pretrained(tiny["clap"], enable_fusion=True,
                                                fusion_type="aff_2d")
    tf.ClapAudioModelWithProjection(config).save_pretrained(str(tmp_path))
    tf.ClapFeatureExtractor.from_pretrained(tiny["clap"], truncation="fusion").save_pretrained(
        str(tmp_path))
    backbone = AudioBackbone(str(tmp_path), CPU)
    waves = _waves(backbone.sample_rate, 4)
    one_at_a_time = torch.cat([backbone.tokens([w]) for w in waves])
    assert torch.allclose(backbone.tokens(waves), one_at_a_time, atol=1e-5)


def test_a_full_clap_checkpoint_loads_its_audio_tower(tiny, tmp_path):
    # Hub CLAP checkpoints (laion/clap-htsat-unfused) are whole ClapModels, model_type "clap".
    import transformers as tf

    audio = tf.ClapAudioConfig.from_pretrained(tiny["clap"])
    text = tf.ClapTextConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=32)
    config = tf.ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(),
                           projection_dim=24)
    full = tf.ClapModel(config)
    full.save_pretrained(str(tmp_path))
    tf.ClapFeatureExtractor.from_pretrained(tiny["clap"]).save_pretrained(str(tmp_path))

    backbone = AudioBackbone(str(tmp_path), CPU)
    assert backbone.family == "clap" and backbone.dim == 24
    assert torch.equal(backbone.model.audio_projection.linear2.weight,
                       full.audio_projection.linear2.weight)
    assert torch.equal(backbone.model.audio_model.audio_encoder.patch_embed.proj.weight,
                       full.audio_model.audio_encoder.patch_embed.proj.weight)
    assert backbone.tokens(_waves(backbone.sample_rate, 2)).shape[::2] == (2, 24)


def test_missing_folder_names_the_source_and_the_offline_fix(tmp_path):
    absent = str(tmp_path / "absent")
    with pytest.raises(OSError, match=f"{absent}.*feda2v models tiny --out DIR"):
        AudioBackbone(absent, CPU)
    with pytest.raises(OSError, match=f"{absent}.*feda2v models tiny --out DIR"):
        image_embeddings(absent, [Image.new("RGB", (8, 8))], CPU)


def test_unknown_model_type_is_refused(tiny):
    with pytest.raises(ValueError, match="clip_vision_model.*AST.*CLAP"):
        AudioBackbone(tiny["vision"], CPU)


def test_image_embeddings_shape_and_distinctness(tiny):
    rng = np.random.default_rng(0)
    red = Image.new("RGB", (40, 30), (255, 0, 0))
    noise = Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8))
    ramp = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)))  # grayscale
    embeds = image_embeddings(tiny["vision"], [red, noise, ramp, red], CPU)
    assert embeds.shape == (4, 40) and embeds.dtype == torch.float32
    assert torch.allclose(embeds[0], embeds[3], atol=1e-5)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(embeds[i], embeds[j], atol=1e-3)
