import numpy as np
import pytest
import soundfile as sf

from feda2v.data import audio


def _tone(rate, seconds=1.0, freq=440.0, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    wav = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wav] * channels, axis=1) if channels > 1 else wav


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_to_the_encoder_rate_keeps_the_pitch(tmp_path, rate):
    path = str(tmp_path / f"tone_{rate}.wav")
    sf.write(path, _tone(rate, freq=440.0, channels=2), rate)  # stereo -> mono as well
    wav = audio.load_clip(path, 16000, seconds=1.0)
    assert wav.dtype == np.float32 and wav.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(wav))
    peak_hz = np.argmax(spectrum) * 16000 / len(wav)
    assert abs(peak_hz - 440.0) <= 2.0
    assert 0.3 < np.abs(wav).max() < 0.7  # amplitude preserved, no clipping


def test_pad_and_crop_to_the_configured_length(tmp_path):
    path = str(tmp_path / "short.wav")
    sf.write(path, _tone(16000, seconds=0.5), 16000)
    padded = audio.load_clip(path, 16000, seconds=1.0)
    assert padded.shape == (16000,) and np.all(padded[8000:] == 0)
    cropped = audio.load_clip(path, 16000, seconds=0.25)
    assert cropped.shape == (4000,)


def test_unreadable_files_are_named(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really audio" * 10)
    with pytest.raises(ValueError, match="empty.wav: empty file"):
        audio.decode(str(empty))
    with pytest.raises(ValueError, match="garbage.wav: cannot decode audio"):
        audio.decode(str(garbage))


def test_clip_batches_report_bad_clips_instead_of_raising(tmp_path):
    good = str(tmp_path / "good.wav")
    sf.write(good, _tone(16000), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"junk")
    batches = list(audio.clip_batches([good, str(bad), good], 16000, 1.0, batch_size=2,
                                      workers=0))
    flat = [item for batch in batches for item in batch]
    assert [i for i, _, _ in flat] == [0, 1, 2]
    assert flat[1][1] is None and "bad.wav" in flat[1][2]
    assert flat[0][1].shape == (16000,)
