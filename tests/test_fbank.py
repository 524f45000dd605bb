"""The batched torch filterbank must give AST the same input as ASTFeatureExtractor."""

import numpy as np
import pytest
import torch
import transformers

from feda2v.audio_models import AudioBackbone
from feda2v.fbank import ASTFilterbank


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


def test_ast_tokens_match_the_transformers_recipe(tiny_models):
    backbone = AudioBackbone(tiny_models["audio"], "cpu")
    waves = _waves()[:3]
    inputs = backbone.features(waves, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        expected = backbone.model(**inputs).last_hidden_state
    torch.testing.assert_close(backbone.tokens(waves), expected, atol=1e-3, rtol=1e-3)
