import csv
import hashlib
import os

import numpy as np
import soundfile as sf

from feda2v.data import audio, datasets
from feda2v.data import demo_data as demo_mod


def _digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_demo_dataset_has_the_esc50_layout(demo_data):
    with open(os.path.join(demo_data, "meta", "esc50.csv")) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == demo_mod.ESC50_COLUMNS
    assert len(rows) == 4 * 20
    assert {r["category"] for r in rows} == {"dog", "rooster", "rain", "siren"}
    assert {int(r["fold"]) for r in rows} == {1, 2, 3, 4, 5}
    dog = next(r for r in rows if r["category"] == "dog")
    assert dog["target"] == "0"  # ESC-50's own class index
    wav, rate = sf.read(os.path.join(demo_data, "audio", dog["filename"]))
    assert rate == 16000 and wav.shape == (16000,)


def test_demo_dataset_is_deterministic_for_a_seed(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    demo_mod.write_demo_dataset(a, classes=["dog", "rain"], clips_per_class=5, seed=1)
    demo_mod.write_demo_dataset(b, classes=["dog", "rain"], clips_per_class=5, seed=1)
    demo_mod.write_demo_dataset(c, classes=["dog", "rain"], clips_per_class=5, seed=2)
    assert _digest(a) == _digest(b) != _digest(c)


def test_demo_classes_are_acoustically_distinct(tmp_path):
    out = str(tmp_path / "d")
    demo_mod.write_demo_dataset(out, classes=["dog", "rain", "siren"], clips_per_class=5, seed=0)
    clips = datasets.read_esc50(out, [1, 2, 3, 4, 5], [])

    def spectrum(c):
        wav, _ = audio.decode(c.uri)
        s = np.abs(np.fft.rfft(wav))
        return s / np.linalg.norm(s)

    by_class = {}
    for c in clips:
        by_class.setdefault(c.label, []).append(spectrum(c))
    means = {k: np.mean(v, axis=0) for k, v in by_class.items()}
    for name, specs in by_class.items():
        for s in specs:  # every clip is closest to its own class's mean spectrum
            assert max(means, key=lambda k: float(s @ means[k])) == name
