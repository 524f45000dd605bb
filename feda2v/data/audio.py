"""Audio I/O: decode any soundfile format from an fsspec URL, mono, resample, pad or crop.

Decoding runs in DataLoader worker processes during extraction; a clip that cannot be read is
reported back (not raised) so that one bad file does not stop a whole client.
"""

from __future__ import annotations

import io

import fsspec
import numpy as np
import torch


def decode(uri: str) -> tuple[np.ndarray, int]:
    """(mono float32 waveform, sample rate). Raises ValueError naming the file if unreadable."""
    import soundfile as sf

    with fsspec.open(uri, "rb") as f:
        raw = f.read()
    if not raw:
        raise ValueError(f"{uri}: empty file")
    buf = io.BytesIO(raw)
    try:
        wav, rate = sf.read(buf, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        # libsndfile names the in-memory buffer (<_io.BytesIO object at …>): name the file.
        raise ValueError(f"{uri}: cannot decode audio "
                         f"({str(e).replace(repr(buf), 'the file')})") from None
    if wav.size == 0:
        raise ValueError(f"{uri}: no audio samples")
    return (wav.reshape(-1) if wav.shape[1] == 1 else wav.mean(axis=1)), rate


def resample(wav: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality); a no-op at the same rate."""
    if rate == target:
        return wav
    import soxr

    return soxr.resample(wav, rate, target, quality="HQ").astype(np.float32)


def fit_length(wav: np.ndarray, samples: int) -> np.ndarray:
    """Crop to `samples` from the start, or zero-pad at the end."""
    if len(wav) >= samples:
        return wav[:samples]
    return np.pad(wav, (0, samples - len(wav)))


SHORT = 0.25  # a clip under this share of clip_seconds is mostly padding: say so


def load_clip(uri: str, rate: int, seconds: float) -> np.ndarray:
    wav, source_rate = decode(uri)
    if len(wav) < SHORT * seconds * source_rate:
        from feda2v.io.log import get_logger

        get_logger().warning("  %s is %.2f s long: zero-padded to %.2f s (data.clip_seconds)",
                             uri, len(wav) / source_rate, seconds)
    return fit_length(resample(wav, source_rate, rate), round(rate * seconds))


class ClipDataset(torch.utils.data.Dataset):
    """Items are (index, waveform or None, error text or None)."""

    def __init__(self, uris: list[str], rate: int, seconds: float):
        self.uris, self.rate, self.seconds = uris, rate, seconds

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, i: int):
        try:
            return i, load_clip(self.uris[i], self.rate, self.seconds), None
        except (ValueError, OSError) as e:
            return i, None, str(e)


def clip_batches(uris: list[str], rate: int, seconds: float, batch_size: int, workers: int):
    """Yield lists of (index, waveform | None, error | None), decoded by `workers` processes."""
    loader = torch.utils.data.DataLoader(
        ClipDataset(uris, rate, seconds), batch_size=batch_size, num_workers=workers,
        collate_fn=list, shuffle=False)
    yield from loader
