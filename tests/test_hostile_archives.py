"""`feda2v data esc50` against hostile archives: a member or a total over the unpack caps, a
zip bomb, headers that lie about sizes. Each is refused with one line naming the archive, the
member and the limit, exit code 2, and nothing of the archive written; members are streamed."""

import os
import struct
import tracemalloc
import zipfile

import pytest

from feda2v.cli import main

PREFIX = "ESC-50-master/"


def _zip(path, demo_data, extra, compression=zipfile.ZIP_STORED):
    """An ESC-50-shaped zip: meta/esc50.csv, two real clips, then `extra` (name -> bytes)."""
    clips = sorted(os.listdir(os.path.join(demo_data, "audio")))[:2]
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(os.path.join(demo_data, "meta", "esc50.csv"), PREFIX + "meta/esc50.csv")
        for name in clips:
            zf.write(os.path.join(demo_data, "audio", name), PREFIX + "audio/" + name)
        for name, data in extra.items():
            zf.writestr(PREFIX + "audio/" + name, data, compress_type=compression)
    return f"file://{path}"


def _lie_about_size(path, member, size):
    """Rewrite the uncompressed size of `member` in its local and central headers."""
    raw = bytearray(path.read_bytes())
    name = (PREFIX + "audio/" + member).encode()
    local = raw.index(b"PK\x03\x04")  # first local header
    while True:
        n, m = struct.unpack("<HH", raw[local + 26:local + 30])
        if raw[local + 30:local + 30 + n] == name:
            raw[local + 22:local + 26] = struct.pack("<I", size)
            break
        local = raw.index(b"PK\x03\x04", local + 30 + n + m)
    central = raw.index(b"PK\x01\x02")
    while True:
        n, m, k = struct.unpack("<HHH", raw[central + 28:central + 34])
        if raw[central + 46:central + 46 + n] == name:
            raw[central + 24:central + 28] = struct.pack("<I", size)
            break
        central = raw.index(b"PK\x01\x02", central + 46 + n + m + k)
    path.write_bytes(bytes(raw))


def _refused(out, url, capsys, *flags):
    with pytest.raises(SystemExit) as e:
        main(["data", "esc50", "--out", str(out), "--url", url, "--no-verify", *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    # nothing of the archive was published: no clip, no metadata, no temporary file
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []
    return err


def test_a_member_over_the_member_cap_is_refused(tmp_path, demo_data, capsys):
    url = _zip(tmp_path / "a.zip", demo_data, {"big.wav": os.urandom(3_000_000)})
    err = _refused(tmp_path / "out", url, capsys, "--max-member-mb", "1")
    assert "a.zip: archive member 'ESC-50-master/audio/big.wav'" in err
    assert "per-member limit of 1 MB" in err and "--max-member-mb" in err


def test_a_header_that_understates_the_size_is_refused(tmp_path, demo_data, capsys):
    # declares 1000 bytes, holds 3 MB: never trusted, and nothing before it is written
    path = tmp_path / "small-lie.zip"
    url = _zip(path, demo_data, {"liar.wav": b"\0" * 3_000_000}, zipfile.ZIP_DEFLATED)
    _lie_about_size(path, "liar.wav", 1000)
    err = _refused(tmp_path / "out", url, capsys, "--max-ratio", "1e9")
    assert "small-lie.zip: archive member 'ESC-50-master/audio/liar.wav'" in err
    assert "header lies about its size" in err


def test_a_header_that_overstates_the_size_is_refused(tmp_path, demo_data, capsys):
    path = tmp_path / "big-lie.zip"
    url = _zip(path, demo_data, {"liar.wav": os.urandom(1000)})
    _lie_about_size(path, "liar.wav", 3_000_000_000)
    err = _refused(tmp_path / "out", url, capsys)
    assert "'ESC-50-master/audio/liar.wav' declares 3000.0 MB" in err and "--max-member-mb" in err


def test_a_zip_bomb_is_refused_by_its_ratio(tmp_path, demo_data, capsys):
    # 20 MB of zeros deflate to ~20 KB: a ratio near 1000, under every size cap
    url = _zip(tmp_path / "bomb.zip", demo_data, {"bomb.wav": b"\0" * 20_000_000},
               zipfile.ZIP_DEFLATED)
    assert os.path.getsize(tmp_path / "bomb.zip") < 200_000
    err = _refused(tmp_path / "out", url, capsys)
    assert "'ESC-50-master/audio/bomb.wav' expands" in err
    assert "compression ratio over the limit of 100" in err and "--max-ratio" in err


def test_many_members_past_the_total_cap_are_refused(tmp_path, demo_data, capsys):
    extra = {f"m{i:02d}.wav": os.urandom(100_000) for i in range(30)}
    url = _zip(tmp_path / "many.zip", demo_data, extra)
    err = _refused(tmp_path / "out", url, capsys, "--max-unpacked-mb", "2")
    assert "many.zip: archive member 'ESC-50-master/audio/m" in err
    assert "over the limit of 2 MB unpacked (--max-unpacked-mb)" in err


def test_a_bad_limit_is_refused(tmp_path, demo_data, capsys):
    url = _zip(tmp_path / "ok.zip", demo_data, {})
    err = _refused(tmp_path / "out", url, capsys, "--max-unpacked-mb", "0")
    assert "--max-unpacked-mb must be > 0" in err


def test_members_are_streamed_in_bounded_memory(tmp_path, demo_data):
    """A 24 MB member unpacks with a Python heap peak of a few MB (it was read whole)."""
    data = os.urandom(24_000_000)
    url = _zip(tmp_path / "large.zip", demo_data, {"large.wav": data})
    del data
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        main(["data", "esc50", "--out", str(out), "--url", url, "--no-verify"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (out / "audio" / "large.wav").stat().st_size == 24_000_000
    assert (out / "meta" / "esc50.csv").exists()
    assert not [p for p in out.rglob(".tmp-*")]
    assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB for a 24 MB member"
