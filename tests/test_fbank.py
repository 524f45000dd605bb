"""The batched torch filterbanks must give AST and CLAP the same input as their extractors."""

import numpy as np
import pytest
import torch
import transformers

from feda2v.data.fbank import ASTFilterbank, ClapFilterbank
from feda2v.encoders.backbones import AudioBackbone


def _waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(80000) / 16000
    return [
        (0.1 * rng.standard_normal(80000)).astype(np.float32),              # 5 s of noise
        (0.5 * np.sin(2 * np.pi * 440 * t[:50000])).astype(np.float32),     # a tone, 3.1 s
        (0.01 * rng.standard_normal(3000)).astype(np.float32),              # 18 frames
        np.zeros(80000, dtype=np.float32),                                  # silence: the floor
        (0.1 * rng.standard_normal(300)).astype(np.float32),                # shorter than a frame
    ]


@pytest.mark.parametrize("options", [
    {},                                                   # the full-size AST's extractor
    {"num_mel_bins": 64, "max_length": 100},              # the tiny demo model's
    {"num_mel_bins": 32, "max_length": 700, "do_normalize": False},
])
def test_filterbank_equals_the_extractor(options):
    extractor = transformers.ASTFeatureExtractor(**options)
    waves = _waves()
    expected = extractor(waves, sampling_rate=16000, return_tensors="np")["input_values"]
    got = ASTFilterbank(extractor)(waves)
    assert got.shape == expected.shape == (len(waves), extractor.max_length, extractor.num_mel_bins)
    np.testing.assert_allclose(got.numpy(), expected, atol=5e-4, rtol=0)


def test_a_batch_gives_each_clip_what_it_gets_alone():
    fbank = ASTFilterbank(transformers.ASTFeatureExtractor(num_mel_bins=64, max_length=300))
    waves = _waves()
    together = fbank(waves)
    for i, w in enumerate(waves):
        torch.testing.assert_close(together[i], fbank([w])[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("truncation", ["rand_trunc", "fusion"])
@pytest.mark.parametrize("padding", ["repeatpad", "repeat", "pad"])
def test_clap_filterbank_equals_the_extractor(truncation, padding):
    extractor = transformers.ClapFeatureExtractor(max_length_s=2, truncation=truncation,
                                                  padding=padding)
    window, rng = extractor.nb_max_samples, np.random.default_rng(1)
    waves = [(0.1 * rng.standard_normal(window)).astype(np.float32),        # exactly the window
             (0.1 * rng.standard_normal(window // 3 + 17)).astype(np.float32),  # repeated/padded
             np.zeros(window // 2, dtype=np.float32)]                       # silence: the floor
    expected = extractor(waves, sampling_rate=48000, return_tensors="np")["input_features"]
    got = ClapFilterbank(extractor)(waves)
    assert got.shape == expected.shape == (3, 4 if truncation == "fusion" else 1, 201, 64)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-3, rtol=0)


def test_clap_filterbank_refuses_a_clip_longer_than_its_window():
    extractor = transformers.ClapFeatureExtractor(max_length_s=1)
    with pytest.raises(ValueError, match="48001 samples is longer than CLAP's window"):
        ClapFilterbank(extractor)([np.zeros(48001, dtype=np.float32)])


def test_cpu_batches_are_cut_in_cache_sized_chunks(monkeypatch):
    fbank = ASTFilterbank(transformers.ASTFeatureExtractor(num_mel_bins=64, max_length=100))
    sizes = []
    real = fbank._batch
    monkeypatch.setattr(fbank, "_batch", lambda waves: sizes.append(len(waves)) or real(waves))
    monkeypatch.setattr("feda2v.data.fbank.CPU_CHUNK_BYTES", fbank.frame_bytes * 2)
    out = fbank(_waves())
    assert sizes == [2, 2, 1] and out.shape[0] == 5


@pytest.mark.parametrize("family", ["audio", "clap"])
def test_tokens_match_the_transformers_recipe(tiny_models, family):
    backbone = AudioBackbone(tiny_models[family], "cpu")
    rate, rng = backbone.sample_rate, np.random.default_rng(2)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (rate, rate // 2)]
    inputs = backbone.features(waves, sampling_rate=rate, return_tensors="pt")
    if family == "clap":
        inputs["is_longer"] = torch.zeros_like(inputs["is_longer"])
    with torch.no_grad():
        out = backbone.model(**inputs)
    if family == "clap":   # per-cell projected tokens, as AudioBackbone builds them
        cells = out.last_hidden_state.permute(0, 3, 2, 1).flatten(1, 2)
        expected = backbone.model.audio_projection(cells)
    else:
        expected = out.last_hidden_state
    torch.testing.assert_close(backbone.tokens(waves), expected, atol=1e-3, rtol=1e-3)
