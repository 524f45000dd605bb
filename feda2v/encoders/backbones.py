"""Audio token encoders (AST, CLAP) behind one interface, and CLIP image embeddings as targets.

The pipeline wants, for each clip, a sequence of tokens [T, D] that it later pools to a few.
The two supported families produce that sequence differently:

- AST (`ASTModel`, e.g. MIT/ast-finetuned-audioset-10-10-0.4593): the transformer's
  `last_hidden_state` [B, T, hidden_size] (two summary tokens, then one per spectrogram patch).
- CLAP's HTSAT audio tower with its projection (`ClapAudioModelWithProjection`, e.g.
  laion/clap-htsat-unfused): one token per position of the final feature map, each passed through
  the audio projection so that tokens live in the same projection_dim space as `audio_embeds`.

Both load with `from_pretrained`, from a hub id or a local folder; `write_tiny_clap` and
`write_tiny_clip_vision` save small random-initialised models for offline tests and demos.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from feda2v.data.fbank import ASTFilterbank, ClapFilterbank

if TYPE_CHECKING:
    from PIL import Image

# config model_type -> family ("clap" is a whole ClapModel, as on the hub; we use its audio side)
FAMILIES = {"audio-spectrogram-transformer": "ast", "clap": "clap", "clap_audio_model": "clap"}


def quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()  # unused-weight notes when loading a full ClapModel
    transformers.logging.disable_progress_bar()
    return transformers


def load_pretrained(what: str, source: str, loader):
    try:
        return loader(source)
    except OSError as e:
        raise OSError(
            f"cannot load {what} from {source!r}: {e}. A hub id needs network access; offline, "
            "point the config at a local folder (`feda2v models tiny --out DIR` writes small "
            "random-initialised ones)") from None


# --- audio tokens --------------------------------------------------------------------------------

class AudioBackbone:
    """A pretrained audio encoder that turns waveforms into token sequences [B, T, dim]."""

    def __init__(self, source: str, device: torch.device | str):
        tf = quiet_transformers()
        self.source, self.device = source, torch.device(device)
        model_type = load_pretrained("audio model", source, tf.AutoConfig.from_pretrained).model_type
        if model_type not in FAMILIES:
            raise ValueError(
                f"audio model {source!r} has model_type {model_type!r}; supported families: AST "
                "('audio-spectrogram-transformer') and CLAP ('clap' or 'clap_audio_model')")
        self.family = FAMILIES[model_type]
        self.features = load_pretrained("audio feature extractor", source,
                              tf.AutoFeatureExtractor.from_pretrained)
        if self.family == "ast":
            # AST checkpoints are usually ASTForAudioClassification; the classifier head is dropped
            self.model = load_pretrained("audio model", source, tf.ASTModel.from_pretrained)
            self.dim = int(self.model.config.hidden_size)
        else:
            # a full ClapModel checkpoint (model_type "clap") loads its audio tower + projection here
            self.model = load_pretrained("audio model", source, tf.ClapAudioModelWithProjection.from_pretrained)
            self.dim = int(self.model.audio_projection.linear2.out_features)
        self.model.to(self.device).eval()
        self.sample_rate = int(self.features.sampling_rate)
        # the extractor's features, computed for the whole batch in torch on `device`
        self.fbank = (ASTFilterbank if self.family == "ast" else ClapFilterbank)(
            self.features, self.device)

    @torch.no_grad()
    def tokens(self, waves: list[np.ndarray]) -> torch.Tensor:
        """Mono waveforms at `sample_rate` -> tokens [B, T, dim] on `device`."""
        if self.family == "ast":
            return self.model(input_values=self.fbank(waves)).last_hidden_state
        return self._clap_tokens(waves)

    def _clap_tokens(self, waves: list[np.ndarray]) -> torch.Tensor:
        # The extractor repeat-pads short clips up to max_length_s but crops longer ones at a
        # random offset ("rand_trunc"); cropping from the start here keeps tokens reproducible.
        window = int(self.features.nb_max_samples)
        features = self.fbank([np.asarray(w)[:window] for w in waves])
        # Fused checkpoints' extractors flag one random clip per batch as "longer" (a training
        # trick); after the crop no clip is longer than the window, so none is.
        is_longer = torch.zeros(len(waves), 1, dtype=torch.bool, device=self.device)
        out = self.model(input_features=features, is_longer=is_longer)
        # HTSAT (a Swin transformer over the mel spectrogram, folded into a square image) ends in
        # a feature map that transformers unfolds back to [B, C, freq_bands, time_steps]: for
        # clap-htsat-unfused, 2 bands of 32 mel bins x 32 steps of ~0.31 s over the 10 s window.
        # A token is one (time step, band) cell, ordered time-major so that pooling the sequence
        # to a few tokens pools consecutive stretches of time. `audio_embeds` is the projection
        # of the mean over these cells; we project each cell instead. The projection is
        # Linear-ReLU-Linear, so the mean of the projected tokens is close to, not equal to,
        # `audio_embeds` (equal if the ReLU were removed).
        grid = out.last_hidden_state                                    # [B, C, F, T]
        cells = grid.permute(0, 3, 2, 1).flatten(1, 2)                  # [B, T*F, C]
        return self.model.audio_projection(cells)                       # [B, T*F, dim]


def write_tiny_clap(out: str, seed: int = 0) -> str:
    """Save a random-initialised CLAP audio tower with projection (64-d features, 32-d tokens)
    and its feature extractor to `out`, loadable by `AudioBackbone(out)`."""
    tf = quiet_transformers()
    torch.manual_seed(seed)
    # Same layout as clap-htsat-unfused scaled down: 48 kHz, 10 ms hop, repeat-pad to the window,
    # "rand_trunc" (a single mel channel, no fusion). The window is 1 s (101 frames) and the
    # spectrogram folds into a 64x64 image (freq_ratio 2) instead of 10 s into 256x256 (ratio 4).
    mel_bins = 32
    config = tf.ClapAudioConfig(
        num_mel_bins=mel_bins, spec_size=2 * mel_bins, patch_size=4, patch_stride=4,
        window_size=4, depths=[1, 1, 1], num_hidden_layers=3, num_attention_heads=[2, 4, 8],
        patch_embeds_hidden_size=16, hidden_size=64, projection_dim=32, enable_fusion=False)
    tf.ClapAudioModelWithProjection(config).save_pretrained(out)
    tf.ClapFeatureExtractor(feature_size=mel_bins, sampling_rate=48000, hop_length=480,
                            max_length_s=1, fft_window_size=1024, frequency_min=50,
                            frequency_max=14000, truncation="rand_trunc",
                            padding="repeatpad").save_pretrained(out)
    return out


# --- CLIP image targets ------------------------------------------------------------------------

@torch.no_grad()
def image_embeddings(source: str, images: list[Image.Image],
                     device: torch.device | str) -> torch.Tensor:
    """Pooled, projected CLIP image embeddings (`image_embeds`) of PIL images, [N, D] float32
    on the CPU (like the text targets)."""
    tf = quiet_transformers()
    # AutoImageProcessor picks the CLIPImageProcessor backend that is installed (torchvision or PIL)
    processor = load_pretrained("image processor", source, tf.AutoImageProcessor.from_pretrained)
    model = load_pretrained("image model", source, tf.CLIPVisionModelWithProjection.from_pretrained)
    model.to(torch.device(device)).eval()
    pixels = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
    return model(**pixels.to(model.device)).image_embeds.float().cpu()


def write_tiny_clip_vision(out: str, seed: int = 0, projection_dim: int = 64) -> str:
    """Save a random-initialised CLIP vision model with projection (32x32 input, 8x8 patches)
    and its image processor to `out`."""
    tf = quiet_transformers()
    torch.manual_seed(seed)
    size = 32
    config = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, image_size=size, patch_size=8,
                                 projection_dim=projection_dim)
    tf.CLIPVisionModelWithProjection(config).save_pretrained(out)
    tf.CLIPImageProcessor(size={"shortest_edge": size},
                          crop_size={"height": size, "width": size}).save_pretrained(out)
    return out
