"""AST's and CLAP's input features (log-mel spectrograms) for a whole batch at once, in torch.

The transformers extractors compute them one clip, and inside a clip one frame, at a time in
numpy: about 6 ms per 5 s clip for AST and 12-19 ms per 10 s window for CLAP, more than a tiny
model's forward pass and, on a GPU host, a CPU ceiling of a few hundred clips/s per core. Here
the batch is framed with `unfold`, transformed with one `rfft` and projected with one matmul on
the model's device. Steps and constants are the extractors' own; tests/test_fbank.py checks
equality with them.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

FRAME, HOP, FFT = 400, 160, 512           # AST: 25 ms frames every 10 ms at 16 kHz
PREEMPHASIS, MEL_FLOOR = 0.97, 1.192092955078125e-07


def _mel_filters(**options) -> np.ndarray:
    from transformers.audio_utils import mel_filter_bank

    with warnings.catch_warnings():  # AST's 128 bins leave some triangles empty, by design
        warnings.filterwarnings("ignore", message="At least one mel filter")
        return mel_filter_bank(**options)


# The transforms are memory-bound: on the CPU a batch whose frames outgrow the cache is slower
# per clip than one clip alone (measured: CLAP 9.7 ms per clip in a batch of 16 vs 2.4 ms alone),
# so there clips go in chunks of about this many bytes of frames; a GPU takes the whole batch.
CPU_CHUNK_BYTES = 4 << 20


@torch.inference_mode()
def _in_chunks(batch_features, waves: list[np.ndarray], device: torch.device,
               frame_bytes: int) -> torch.Tensor:
    """`batch_features(waves)` over the whole batch on a GPU, in cache-sized chunks on the CPU."""
    if device.type != "cpu":
        # the encoder's bf16 autocast would round the mel matmul; features stay float32
        with torch.autocast(device.type, enabled=False):
            return batch_features(waves)
    step = max(1, CPU_CHUNK_BYTES // frame_bytes)
    return torch.cat([batch_features(waves[i:i + step]) for i in range(0, len(waves), step)])


class ASTFilterbank:
    """Callable: list of mono waveforms at the extractor's rate -> input_values [B, frames, mels].

    Kaldi's fbank as the extractor computes it: per-frame DC removal, pre-emphasis 0.97, a
    symmetric Hann window of 400 samples, a 512-point FFT, power, Kaldi-mel triangles from 20 Hz,
    log with a float32-epsilon floor, zero rows past the clip's end, then the AudioSet mean/std.
    """

    def __init__(self, extractor, device: torch.device | str = "cpu"):
        rate = int(extractor.sampling_rate)
        mel = _mel_filters(num_frequency_bins=FFT // 2 + 1,
                           num_mel_filters=int(extractor.num_mel_bins), min_frequency=20,
                           max_frequency=rate // 2, sampling_rate=rate, norm=None,
                           mel_scale="kaldi", triangularize_in_mel_space=True)
        self.device = torch.device(device)
        self.mel = torch.tensor(mel, dtype=torch.float32, device=self.device)   # [257, mels]
        self.window = torch.hann_window(FRAME, periodic=False, dtype=torch.float32,
                                        device=self.device)
        self.frames = int(extractor.max_length)
        self.frame_bytes = self.frames * FRAME * 4
        self.normalize = bool(extractor.do_normalize)
        self.mean, self.std = float(extractor.mean), float(extractor.std)

    def __call__(self, waves: list[np.ndarray]) -> torch.Tensor:
        return _in_chunks(self._batch, waves, self.device, self.frame_bytes)

    def frame_count(self, samples: int) -> int:
        return 1 + (samples - FRAME) // HOP if samples >= FRAME else 0

    def _batch(self, waves: list[np.ndarray]) -> torch.Tensor:
        # Frames past max_length are cropped by the extractor anyway: never compute them.
        keep = (self.frames - 1) * HOP + FRAME
        clips = [torch.as_tensor(np.asarray(w, dtype=np.float32)[:keep]) for w in waves]
        counts = torch.tensor([self.frame_count(len(c)) for c in clips], device=self.device)
        longest = max(max(len(c) for c in clips), FRAME)
        batch = torch.zeros(len(clips), longest)
        for i, c in enumerate(clips):
            batch[i, :len(c)] = c
        frames = batch.to(self.device).unfold(1, FRAME, HOP)            # [B, T, 400]
        frames = frames - frames.mean(dim=2, keepdim=True)
        frames = torch.cat([frames[..., :1] * (1 - PREEMPHASIS),
                            frames[..., 1:] - PREEMPHASIS * frames[..., :-1]], dim=2)
        power = torch.fft.rfft(frames * self.window, n=FFT).abs().square()  # [B, T, 257]
        logmel = (power @ self.mel).clamp_min(MEL_FLOOR).log()           # [B, T, mels]
        out = torch.zeros(len(clips), self.frames, self.mel.shape[1], device=self.device)
        t = min(logmel.shape[1], self.frames)
        out[:, :t] = logmel[:, :t]
        # rows past each clip's own end stay 0 before normalising, as the extractor pads
        out[torch.arange(self.frames, device=self.device)[None, :] >= counts[:, None]] = 0.0
        if self.normalize:
            out = (out - self.mean) / (self.std * 2)
        return out


class ClapFilterbank:
    """Callable: list of mono waveforms at the extractor's rate, each at most its window long ->
    input_features [B, 1 or 4, frames, mels].

    As `ClapFeatureExtractor` computes it for clips that fit the window: pad by its `padding`
    rule, a centred (reflect-padded) STFT with a periodic Hann window, power, mel filters
    (Slaney-normalised for "rand_trunc" models, HTK for "fusion" ones, which also get the
    spectrogram four times), then 10·log10 with a 1e-10 floor.
    """

    def __init__(self, extractor, device: torch.device | str = "cpu"):
        self.window_samples = int(extractor.nb_max_samples)
        self.frame_bytes = (self.window_samples // int(extractor.hop_length) + 1) \
            * int(extractor.fft_window_size) * 4
        self.padding, self.fusion = extractor.padding, extractor.truncation == "fusion"
        if self.padding not in ("repeatpad", "repeat", "pad"):
            raise ValueError(f"CLAP extractor padding {self.padding!r}: expected repeatpad, "
                             "repeat or pad")
        self.fft, self.hop = int(extractor.fft_window_size), int(extractor.hop_length)
        mel = extractor.mel_filters if self.fusion else extractor.mel_filters_slaney
        self.device = torch.device(device)
        self.mel = torch.tensor(np.asarray(mel), dtype=torch.float32, device=self.device)
        self.hann = torch.hann_window(self.fft, periodic=True, dtype=torch.float32,
                                      device=self.device)

    def __call__(self, waves: list[np.ndarray]) -> torch.Tensor:
        return _in_chunks(self._batch, waves, self.device, self.frame_bytes)

    def _fill(self, wav: np.ndarray) -> np.ndarray:
        """One clip padded to the window by the extractor's rule."""
        wav = np.asarray(wav, dtype=np.float32)
        if len(wav) > self.window_samples:
            raise ValueError(f"clip of {len(wav)} samples is longer than CLAP's window "
                             f"({self.window_samples}); crop it first")
        if 0 < len(wav) < self.window_samples and self.padding != "pad":
            times = self.window_samples // len(wav) + (self.padding == "repeat")
            wav = np.tile(wav, times)[:self.window_samples]
        return np.pad(wav, (0, self.window_samples - len(wav)))

    def _batch(self, waves: list[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack([self._fill(w) for w in waves])).to(self.device)
        half = self.fft // 2
        padded = torch.nn.functional.pad(batch[:, None], (half, half), mode="reflect")[:, 0]
        frames = padded.unfold(1, self.fft, self.hop)                    # [B, T, fft]
        power = torch.fft.rfft(frames * self.hann).abs().square()      # [B, T, fft/2+1]
        db = 10.0 * (power @ self.mel).clamp_min(1e-10).log10()        # [B, T, mels]
        return db[:, None].expand(-1, 4 if self.fusion else 1, -1, -1).contiguous()
