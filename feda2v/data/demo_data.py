"""The procedural demo set: acoustically distinct classes written in the ESC-50 layout."""

from __future__ import annotations

import csv
import io
import os

import numpy as np

from feda2v.io.config import REFERENCE_SPLIT
from feda2v.io.log import get_logger, progress

log = get_logger()

# ESC-50's official target index of each reference-split class.
ESC50_TARGETS = {
    "dog": 0, "rooster": 1, "pig": 2, "cow": 3, "frog": 4,
    "rain": 10, "sea_waves": 11, "crackling_fire": 12, "crickets": 13, "chirping_birds": 14,
    "helicopter": 40, "chainsaw": 41, "siren": 42, "car_horn": 43, "engine": 44,
}
ESC50_COLUMNS = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]


def _class_voice(index: int) -> dict[str, float]:
    """Acoustic signature of class `index`: pitch, timbre, rhythm and noise colour all differ."""
    return {
        "f0": 110.0 * 2 ** (index * 0.35),       # ~4 semitones apart, 110 Hz .. 3.3 kHz
        "harmonics": 1 + index % 4,
        "am_rate": (0.0, 2.5, 6.0, 11.0, 17.0)[index % 5],
        "noise_centre": 300.0 * 2 ** ((index * 7) % 15 * 0.3),
        "noise_level": (0.05, 0.3, 0.15)[index % 3],
    }


def _synth_clip(voice: dict[str, float], rng: np.random.Generator, rate: int,
                seconds: float) -> np.ndarray:
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = voice["f0"] * (1 + rng.uniform(-0.03, 0.03))
    tone = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h
               for h in range(1, int(voice["harmonics"]) + 1))
    if voice["am_rate"]:
        tone *= 0.55 + 0.45 * np.sin(2 * np.pi * voice["am_rate"] * t + rng.uniform(0, 2 * np.pi))
    # Band-limited noise: white noise filtered in the frequency domain around the class centre.
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spec *= np.exp(-0.5 * (np.log2(np.maximum(freqs, 1) / voice["noise_centre"]) / 0.4) ** 2)
    noise = np.fft.irfft(spec, n)
    noise /= np.abs(noise).max() + 1e-9
    wav = tone / np.abs(tone).max() + voice["noise_level"] * noise
    wav += 0.01 * rng.standard_normal(n)
    wav *= rng.uniform(0.4, 0.9) / (np.abs(wav).max() + 1e-9)
    return wav.astype(np.float32)


def write_demo_dataset(out: str, classes: list[str] | None = None, clips_per_class: int = 40,
                       folds: int = 5, seconds: float = 1.0, sample_rate: int = 16000,
                       seed: int = 0) -> int:
    """Write a procedural ESC-50-layout dataset; returns the number of clips.

    Deterministic for a seed. Existing files are overwritten; nothing else in `out` is touched.
    """
    import soundfile as sf

    classes = classes or [c for group in REFERENCE_SPLIT for c in group]
    if clips_per_class < folds:
        raise ValueError(f"clips_per_class ({clips_per_class}) must be >= folds ({folds})")
    os.makedirs(os.path.join(out, "audio"), exist_ok=True)
    os.makedirs(os.path.join(out, "meta"), exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    total = len(classes) * clips_per_class
    tick = progress(total, "Writing demo clips")
    for ci, name in enumerate(classes):
        voice = _class_voice(ci)
        target = ESC50_TARGETS.get(name, 100 + ci)
        for k in range(clips_per_class):
            fold = 1 + k % folds
            filename = f"{fold}-{ci * 1000 + k:06d}-A-{target}.wav"
            wav = _synth_clip(voice, rng, sample_rate, seconds)
            buf = io.BytesIO()
            sf.write(buf, wav, sample_rate, format="WAV", subtype="PCM_16")
            with open(os.path.join(out, "audio", filename), "wb") as f:
                f.write(buf.getvalue())
            rows.append([filename, fold, target, name, False, f"{ci * 1000 + k:06d}", "A"])
            tick()
    rows.sort(key=lambda r: r[0])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(ESC50_COLUMNS)
    writer.writerows(rows)
    with open(os.path.join(out, "meta", "esc50.csv"), "w") as f:
        f.write(buf.getvalue())
    log.info("Wrote %d clips of %d classes (%.1f s at %d Hz) to %s",
             len(rows), len(classes), seconds, sample_rate, out)
    return len(rows)
