"""Property-based tests (hypothesis) of the readers of stored files and of the config loader:
any input gives a valid object or a named error (one line naming the file or the config),
never a traceback, never a hang.

Covered: config.loads / config.load on arbitrary JSON documents (built over the real key names),
text and bytes; storage.load_tensors / storage.read_meta on random bytes and on spoilt
safetensors files; storage.load_checkpoint on random bytes, spoilt real generator checkpoints
and pickles of arbitrary objects (nothing is ever unpickled); the ESC-50 unpack on random and
hostile zip archives (nothing is ever written outside --out).

Deterministic (derandomize, no example database) and sized to run in seconds."""

from __future__ import annotations

import functools
import io
import json
import math
import pickle
import re
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from feda2v.data import download
from feda2v.federated.generators import checkpoints
from feda2v.io import config as config_mod
from feda2v.io import storage
from feda2v.io.config import Config, ConfigError


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A module-wide folder (hypothesis runs many examples per test: no function fixtures);
    each example writes under a fresh name in it."""
    return tmp_path_factory.mktemp("properties")


_counter = iter(range(10**9))
SLOW_S = 5  # one read of a few hundred bytes taking this long is a hang in the making


def _fresh(folder: Path, name: str) -> Path:
    """A new, empty folder for one example, holding `name` later."""
    path = folder / f"ex{next(_counter)}"
    path.mkdir()
    return path / name


# What str.splitlines() (and a terminal) breaks a line at: repr() escapes each of them.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _one_line(text: str) -> None:
    assert text and len(text.splitlines()) == 1 and "Traceback" not in text, repr(text)


def _timed(call):
    """call(), failing the test when it takes SLOW_S or more (whatever it returns or raises)."""
    start = time.perf_counter()
    try:
        return call()
    finally:
        assert time.perf_counter() - start < SLOW_S, f"{call} took over {SLOW_S} s"


def _flip(draw, raw: bytes, most: int = 4) -> bytes:
    """`raw` with up to `most` bytes (drawn) set to drawn values."""
    out = bytearray(raw)
    for at, byte in draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)),
                                  min_size=1, max_size=most)):
        out[at] = byte
    return bytes(out)


# --- the config loader ---------------------------------------------------------------------------

KEYS = sorted({*config_mod.TOP_LEVEL, *config_mod.SECTIONS,
               *(k for spec in config_mod.SECTIONS.values() for k in spec)})

# The JSON leaves a hostile or careless config holds: integers past every bound (but not past
# json.dumps's 4,300 digits), non-finite floats, any text (lone surrogates included).
json_leaves = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(10**40), 10**40),
    st.sampled_from([0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**63, config_mod.MAX_ROUNDS,
                     config_mod.MAX_ROUNDS + 1, config_mod.MAX_DIM + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(exclude_categories=[]), max_size=20),
    st.sampled_from(["", " ", "{label}", "a photo of {label}", "dog", "..", "a/b", "s3://b/x",
                     "s3://u:p/w@h/x", "s3://u:p@h:99999/x", "file:///tmp/x", "x" * 3000]),
)
# Unknown keys of any text but line breaks (those: test_an_unknown_key_with_a_line_break_...).
stranger_keys = st.text(st.characters(exclude_characters=LINE_BREAKS), max_size=12)
json_keys = st.one_of(st.sampled_from(KEYS), stranger_keys)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(json_keys, children, max_size=5)),
    max_leaves=24,
)


# Values that pass some key's own check: drawn for the keys they pass, they make configs that
# reach the cross-key checks (images targets, overlapping folds, DP with a GAN, …) and load.
VALID_POOL = [
    0, 1, 2, 5, 16, 80, 81, 1000, 0.0, 0.05, 0.5, 1.0, 1e-5, 5.0, True, False, "", "x",
    "auto", "run1", "run2", "end_to_end", "phase", "round", "esc50", "folders", "manifest",
    "embeddings", "classes", "pathological", "dirichlet", "iid", "text", "images", "vae", "gan",
    "fail", "real_only", "posterior", "calibrated", "prior", "initial", "float16", "cpu", "cuda",
    "s3://bucket/store", "a photo of {label}", [1], [2], [5], [1, 2], [64, 64],
    ["dog", "rain"], [["dog", "rain"], ["siren"]], [["dog"], ["dog", "rain"]],
]


def _valid_values(k: config_mod.Key) -> list:
    return [k.default, *(v for v in VALID_POOL if k.check(v) is None and v != k.default)]


def _section(spec: dict[str, config_mod.Key]):
    """A section: its real keys with a value valid for the key (mostly) or any JSON value, and
    sometimes a stranger; valid configs come out too."""
    valid = st.sampled_from(sorted(spec)).flatmap(
        lambda name: st.tuples(st.just(name), st.sampled_from(_valid_values(spec[name]))))
    any_value = st.tuples(st.one_of(st.sampled_from(sorted(spec)), stranger_keys), json_values)
    return st.lists(st.one_of(valid, valid, any_value), max_size=6).map(dict)


config_documents = st.one_of(
    json_values,
    st.builds(lambda top, sections: {**top, **sections},
              _section(config_mod.TOP_LEVEL),
              st.fixed_dictionaries({}, optional={name: _section(spec)
                                                  for name, spec in config_mod.SECTIONS.items()})),
    st.builds(lambda top, sections: {**top, **sections},
              _section(config_mod.TOP_LEVEL),
              st.fixed_dictionaries({}, optional={name: st.one_of(_section(spec), json_values)
                                                  for name, spec in config_mod.SECTIONS.items()})),
)


def _config_or_error(call, name: str | None = None) -> Config | None:
    """Run `call`: a Config, or a ConfigError in one line (starting with the file's `name`)
    or the list of every bad key, one per line. Anything else fails the test."""
    try:
        cfg = _timed(call)
    except ConfigError as e:
        text = str(e)
        if name is not None:
            assert text.startswith(f"{name}: "), text
            text = text[len(name) + 2:]
        lines = text.splitlines()
        assert "Traceback" not in text and all(line.strip() for line in lines), text
        if len(lines) > 1:  # "N bad keys:" then "  - …" per key, at most 20 and a "more"
            assert re.fullmatch(r"\d+ bad keys:", lines[0]), text
            count = int(lines[0].split()[0])
            assert count > 1 and all(line.startswith("  - ") for line in lines[1:]), text
            assert len(lines) - 1 == min(count, 20) + (count > 20), text
        assert all(len(line) < 1000 for line in lines), text
        return None
    assert isinstance(cfg, Config)
    assert config_mod.loads(cfg.to_json()) == cfg  # a config that loads round-trips
    return cfg


@_settings(400)
@given(config_documents)
@example({})
@example({"data": {"clients": [["dog"], ["dog", "dog"]], "classes": 5}, "seed": -1})
def test_any_json_document_gives_a_config_or_a_config_error(doc):
    _config_or_error(lambda: config_mod.loads(json.dumps(doc)))


@_settings(30)
@given(key=st.text(min_size=1, max_size=8).filter(lambda k: len(k.splitlines()) > 1
                                                 or k[-1] in LINE_BREAKS),
       section=st.sampled_from(["", *config_mod.SECTIONS]))
@example(key="\n", section="")
def test_an_unknown_key_with_a_line_break_is_named_in_one_line(key, section):
    doc = {section: {key: 30}} if section else {key: 30}
    with pytest.raises(ConfigError) as e:
        config_mod.loads(json.dumps(doc))
    _one_line(str(e.value))


json_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet='{}[]":,0123456789.eE+- truefalsnulNaInfiy\\u\n', max_size=80),
    config_documents.map(json.dumps).flatmap(
        lambda text: st.integers(0, len(text)).map(lambda cut: text[:cut])),  # truncated
)


@_settings(300)
@given(json_text)
@example("")
@example("[" * 5000)
@example('{"seed": 1e999}')
def test_any_text_gives_a_config_or_a_config_error(text):
    _config_or_error(lambda: config_mod.loads(text))


@_settings(100)
@given(text=json_text)
@example(text="")
@example(text=" \n")
def test_any_config_file_gives_a_config_or_an_error_naming_it(folder, text):
    path = _fresh(folder, "config.json")
    path.write_text(text, encoding="utf-8")
    _config_or_error(lambda: config_mod.load(path), str(path))


@_settings(60)
@given(data=st.binary(max_size=200))
@example(data=b"\xff")
def test_any_config_file_of_bytes_gives_a_config_or_an_error_naming_it(folder, data):
    path = _fresh(folder, "config.json")
    path.write_bytes(data)
    _config_or_error(lambda: config_mod.load(path), str(path))


# --- safetensors files ---------------------------------------------------------------------------

@functools.cache
def _good_safetensors() -> bytes:
    """A valid safetensors file, as feda2v writes them (tensors, and metadata in the header)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "good.safetensors")
        storage.save_tensors(str(path),
                             {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                              "y": torch.tensor([1, 2], dtype=torch.int64)},
                             {"class_names": ["dog", "rain"], "cache_key": "k"})
        return path.read_bytes()


@st.composite
def spoilt_safetensors(draw, good: bytes):
    """A valid safetensors file spoilt one way: another length prefix, another JSON header,
    cut short, or bytes flipped."""
    header_len = int.from_bytes(good[:8], "little")
    body = good[8 + header_len:]
    how = draw(st.sampled_from(["prefix", "header", "json", "truncate", "flip"]))
    if how == "prefix":
        prefix = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, len(good) + 16)))
        return prefix.to_bytes(8, "little") + good[8:]
    if how == "header":
        new = draw(st.binary(max_size=200))
    elif how == "json":  # a JSON header of any shape; sometimes with a spoilt __metadata__
        value = draw(st.one_of(json_values, st.fixed_dictionaries(
            {"__metadata__": st.one_of(json_values, st.fixed_dictionaries(
                {"feda2v": st.one_of(json_values.map(json.dumps), json_values)}))})))
        new = json.dumps(value).encode()
    elif how == "truncate":
        return good[:draw(st.integers(0, len(good) - 1))]
    else:
        return _flip(draw, good)
    return len(new).to_bytes(8, "little") + new + body


def _tensors_or_named_error(read, uri: str):
    try:
        out = _timed(lambda: read(uri))
    except (ValueError, storage.StorageError) as e:
        assert uri in str(e), str(e)
        _one_line(str(e))
        return None
    return out


def _safetensors_inputs():
    return st.one_of(st.binary(max_size=300),
                     st.just(None).flatmap(lambda _: spoilt_safetensors(_good_safetensors())))


def _with_meta(text: str) -> bytes:
    """A valid safetensors file whose 'feda2v' header metadata is `text`."""
    from safetensors.torch import save

    return save({"x": torch.ones(2)}, metadata={"feda2v": text})


@_settings(150)
@given(data=_safetensors_inputs())
@example(data=b"\xff" * 16)
@example(data=_with_meta("nope"))
@example(data=_with_meta("[1]"))
def test_load_tensors_gives_tensors_or_an_error_naming_the_file(folder, data):
    path = _fresh(folder, "x.safetensors")
    path.write_bytes(data)
    out = _tensors_or_named_error(storage.load_tensors, str(path))
    if out is not None:
        tensors, meta = out
        assert isinstance(tensors, dict) and isinstance(meta, dict)
        assert all(isinstance(t, torch.Tensor) for t in tensors.values())


@_settings(150)
@given(data=_safetensors_inputs())
@example(data=(5).to_bytes(8, "little") + b"[1,2]")
@example(data=b"\xff" * 16)
@example(data=_with_meta("[1]"))
def test_read_meta_gives_a_dict_or_an_error_naming_the_file(folder, data):
    path = _fresh(folder, "x.safetensors")
    path.write_bytes(data)
    meta = _tensors_or_named_error(storage.read_meta, str(path))
    assert meta is None or isinstance(meta, dict)


# --- checkpoints ---------------------------------------------------------------------------------

@functools.cache
def _good_checkpoint() -> bytes:
    """A real (tiny) generator checkpoint, as Run 1 writes it."""
    cfg = config_mod.validate({"feda2v": {"generator_hidden_dim": 16, "generator_latent_dim": 4}})
    torch.manual_seed(0)
    vae = checkpoints.new_generator(cfg, 2, 4, 8)
    return checkpoints.checkpoint_bytes(checkpoints.checkpoint_dict(
        cfg, vae, checkpoints.new_optimizer(cfg, vae), 0, 3, ["dog", "rain"], torch.randn(2, 8)))


UNPICKLED: list[str] = []


def _unpickled(what: str) -> str:
    UNPICKLED.append(what)
    return what


class Hostile:
    """Unpickling it calls _unpickled: the test sees whether any reader ran a pickle."""

    def __init__(self, what: str = "hostile") -> None:
        self.what = what

    def __reduce__(self):
        return (_unpickled, (self.what,))


class Plain:
    def __init__(self, value) -> None:
        self.value = value


python_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8),
    st.binary(max_size=8), st.builds(Hostile, st.text(max_size=4)), st.builds(Plain, st.integers()),
    st.lists(st.floats(width=32), max_size=4).map(lambda v: torch.tensor(v, dtype=torch.float32)),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4).map(torch.tensor),
)
python_values = st.recursive(
    python_leaves,
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.lists(children, max_size=3).map(tuple),
                               st.dictionaries(st.one_of(st.text(max_size=6), st.integers()),
                                               children, max_size=3)),
    max_leaves=10,
)


def _torch_save(value, protocol: int) -> bytes:
    buf = io.BytesIO()
    torch.save(value, buf, pickle_protocol=protocol)
    return buf.getvalue()


@st.composite
def checkpoint_inputs(draw):
    how = draw(st.sampled_from(["random", "truncate", "flip", "pickle", "torch.save"]))
    good = _good_checkpoint()
    if how == "random":
        return draw(st.binary(max_size=400))
    if how == "truncate":
        return good[:draw(st.integers(0, len(good) - 1))]
    if how == "flip":
        return _flip(draw, good)
    value = draw(python_values)
    protocol = draw(st.integers(2, pickle.HIGHEST_PROTOCOL))
    if how == "pickle":
        return pickle.dumps(value, protocol=protocol)
    return _torch_save(value, protocol)


@_settings(400)
@given(data=checkpoint_inputs())
@example(data=b"")
@example(data=pickle.dumps(Hostile()))
@example(data=_torch_save({"a": Hostile(), "w": torch.ones(2)}, 2))
@example(data=_torch_save({"w": torch.ones(2), "n": 3, "s": "x"}, 2))
def test_load_checkpoint_gives_a_dict_or_an_error_naming_the_file(folder, data):
    UNPICKLED.clear()
    path = _fresh(folder, "client_0_generator.pt")
    path.write_bytes(data)
    try:
        ckpt = _timed(lambda: storage.load_checkpoint(str(path)))
    except ValueError as e:
        assert not isinstance(e, UnicodeError)
        assert str(e).startswith(f"{path}: "), str(e)
        _one_line(str(e))
        assert "weights_only" not in str(e)
    else:
        assert isinstance(ckpt, dict)
        assert _all_finite({k: v for k, v in ckpt.items() if k != "config"}), ckpt
    assert UNPICKLED == [], "a checkpoint reader unpickled a Python object"


def _all_finite(value) -> bool:
    """No NaN or inf in any tensor or float of a loaded checkpoint (what it promises)."""
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    return not isinstance(value, float) or math.isfinite(value)


def test_the_good_checkpoint_loads():
    """The fixture of the spoilt ones: untouched, it reads as a dict."""
    ckpt = storage.load_checkpoint("good.pt", _good_checkpoint())
    assert ckpt["round"] == 3 and ckpt["class_names"] == ["dog", "rain"]


# --- archives ------------------------------------------------------------------------------------

PREFIX = "ESC-50-master/"
DEPTH = 5  # --out sits this deep below the example's own folder: '../' x DEPTH stays inside it
HEALTHY = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
ALL_METHODS = (*HEALTHY, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)

# Path segments of a member's name: climbing, empty, long (past NAME_MAX), odd unicode
# (right-to-left override), backslashes, and any text without '/' (line breaks: see below).
segments = st.one_of(
    st.just(".."),  # often: two in a row climb out of --out/audio/
    st.sampled_from([".", "", "a", "clip.wav", "meta", "esc50.csv", "\\..", "..\\..",
                     "x" * 300, "\u00fc" * 130, "\u202e.wav", " ", "~"]),
    st.text(st.characters(exclude_characters="/\0" + LINE_BREAKS), min_size=1, max_size=10),
)


@st.composite
def member_names(draw, ascii_only: bool = False):
    """A member's name below the archive's prefix: climbing, absolute, long, odd; mostly an
    audio member (what is unpacked), else anything."""
    parts = draw(st.lists(segments, min_size=1, max_size=DEPTH))
    name = ("/" if draw(st.booleans()) else "") + "/".join(parts)
    name = ("audio/" if draw(st.integers(0, 3)) else "") + name
    return name.encode("ascii", "backslashreplace").decode() if ascii_only else name


def _zip(members, prefix: str = PREFIX, meta: bool = True) -> bytes:
    """A zip of `members` ([(name, bytes, method)]) below `prefix`, with an ESC-50
    meta/esc50.csv when `meta`."""
    buf = io.BytesIO()
    with warnings.catch_warnings():  # a name drawn twice: zipfile's "Duplicate name"
        warnings.simplefilter("ignore", UserWarning)
        with zipfile.ZipFile(buf, "w") as zf:
            if meta:
                zf.writestr(prefix + "meta/esc50.csv", "filename,fold,target,category\n")
            for name, data, method in members:
                zf.writestr(prefix + name, data, compress_type=method)
    return buf.getvalue()


@st.composite
def archives(draw, methods=HEALTHY, ascii_only: bool = False):
    """Zip bytes: an ESC-50 shaped archive (mostly) of hostile member names below a hostile
    prefix."""
    members = draw(st.lists(st.tuples(member_names(ascii_only=ascii_only),
                                      st.binary(max_size=64), st.sampled_from(methods)),
                            max_size=4))
    return _zip(members, draw(st.sampled_from([PREFIX, "", "../", "/", "a/../../"])),
                meta=draw(st.integers(0, 9)) > 0)


@st.composite
def spoilt(draw, raws):
    """Those zip bytes with a few bytes flipped."""
    return _flip(draw, draw(raws), most=3)


def _unpack_inside_out_or_named(folder: Path, data: bytes) -> None:
    """Unpack `data` with `feda2v data esc50 --no-verify`: it unpacks (meta/esc50.csv last) or
    raises a ValueError or StorageError in one line naming the archive or --out; either way
    nothing is written outside --out."""
    archive = _fresh(folder, "archive.zip")
    base = archive.parent
    archive.write_bytes(data)
    out = base.joinpath(*"abcde"[:DEPTH], "out")
    url = f"file://{archive}"
    try:
        _timed(lambda: download.download_esc50(str(out), url=url, verify=False))
    except (ValueError, storage.StorageError) as e:
        assert not isinstance(e, UnicodeError), repr(e)
        _one_line(str(e))
        assert url in str(e) or str(out) in str(e), str(e)
    else:
        assert (out / "meta" / "esc50.csv").is_file()
    written = [p for p in base.rglob("*") if not p.is_dir() and p != archive]
    outside = [p for p in written if out not in p.parents]
    assert outside == [], f"written outside --out: {outside}"


@_settings(300)
@given(data=st.one_of(archives(), archives(), st.binary(max_size=400)))
@example(data=b"PK\x05\x06" + b"\0" * 18)  # an empty zip
@example(data=_zip([("audio/../../../x.wav", b"x", zipfile.ZIP_STORED)]))
@example(data=_zip([("audio/a/../../../../x.wav", b"x", zipfile.ZIP_STORED)], prefix="/"))
@example(data=_zip([("audio/" + "x" * 300, b"x", zipfile.ZIP_DEFLATED)]))
def test_the_esc50_unpack_stays_inside_out_or_names_its_error(folder, data):
    _unpack_inside_out_or_named(folder, data)


def _corrupt_member(method: int) -> bytes:
    """An ESC-50 archive whose one clip's compressed bytes are spoilt."""
    raw = bytearray(_zip([("audio/a.wav", bytes(range(64)), method)]))
    start = raw.index(b"audio/a.wav") + len("audio/a.wav")
    raw[start + 12] ^= 0xFF
    return bytes(raw)


def _central_directory_moved(by: int) -> bytes:
    """An ESC-50 archive whose end record puts the central directory `by` bytes later: every
    member's offset comes out negative."""
    raw = bytearray(_zip([("audio/a.wav", b"x", zipfile.ZIP_STORED)]))
    end = raw.rindex(b"PK\x05\x06")
    offset = int.from_bytes(raw[end + 16:end + 20], "little")
    raw[end + 16:end + 20] = (offset + by).to_bytes(4, "little")
    return bytes(raw)


def _needs_zip_version(version: int) -> bytes:
    """An ESC-50 archive whose central directory says its clip needs zip version/10 to
    extract (zipfile reads up to 6.3)."""
    raw = bytearray(_zip([("audio/a.wav", b"x", zipfile.ZIP_STORED)]))
    entry = raw.rindex(b"PK\x01\x02")  # the clip's central directory entry (meta's is first)
    raw[entry + 6] = version
    return bytes(raw)


@_settings(60)
@given(data=spoilt(archives(ALL_METHODS, ascii_only=True)))
@example(data=_corrupt_member(zipfile.ZIP_LZMA))
@example(data=_corrupt_member(zipfile.ZIP_BZIP2))
@example(data=_central_directory_moved(1000))
@example(data=_needs_zip_version(64))
def test_a_spoilt_archive_is_named(folder, data):
    _unpack_inside_out_or_named(folder, data)


def _non_utf8_name(where: str, stem: str = ".wav", bad: int = 0xFF) -> bytes:
    """An archive whose clip's name is flagged UTF-8 (it holds an '\u00e9') but is not: byte
    `bad` in place of the '\u00e9''s first, in the central directory or in the local header."""
    name = PREFIX + "audio/\u00e9" + stem
    raw = bytearray(_zip([(name[len(PREFIX):], b"x", zipfile.ZIP_STORED)]))
    encoded = name.encode()
    at = raw.rindex(encoded) if where == "central" else raw.index(encoded)
    raw[at + len(PREFIX + "audio/")] = bad
    return bytes(raw)


@_settings(30)
@given(data=st.builds(
    _non_utf8_name, st.sampled_from(["central", "local"]),
    st.text(st.characters(exclude_characters="/\0" + LINE_BREAKS), max_size=8),
    st.one_of(st.integers(0x80, 0xBF), st.integers(0xF8, 0xFF))))  # never a UTF-8 start
@example(data=_non_utf8_name("central"))
@example(data=_non_utf8_name("local"))
def test_a_member_name_that_is_not_utf8_is_named(folder, data):
    _unpack_inside_out_or_named(folder, data)


@_settings(30)
@given(data=st.lists(st.tuples(
    st.tuples(st.text(max_size=4), st.sampled_from(LINE_BREAKS), st.text(max_size=4))
    .map(lambda t: "audio/" + "".join(t).replace("/", "") + "x" * 300),
    st.binary(max_size=8), st.just(zipfile.ZIP_STORED)), min_size=1, max_size=2).map(_zip))
@example(data=_zip([("audio/a\n" + "x" * 300, b"x", zipfile.ZIP_STORED)]))
def test_a_member_name_with_a_line_break_gives_one_line(folder, data):
    _unpack_inside_out_or_named(folder, data)
