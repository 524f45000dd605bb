"""`feda2v data esc50`: fetch the official ESC-50 archive and unpack it to any fsspec URL."""

from __future__ import annotations

import hashlib
import lzma
import os
import posixpath
import tempfile
import time
import urllib.request
import zipfile
import zlib

from feda2v.io import storage
from feda2v.io.config import redact
from feda2v.io.log import get_logger, progress

log = get_logger()

ESC50_URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"
# The known ESC-50 release (2000 clips): the MD5 that soundata's ESC-50 loader records for this
# archive. Only MD5 is published for it; any other archive needs --sha256 (or --no-verify).
ESC50_MD5 = "7771e4b9d86d0945acce719c7a59305a"
CHUNK = 1 << 20
MB = 1_000_000
# What one archive may unpack. The real ESC-50 (2000 clips of 441 KB, ~0.9 GB, each compressed
# about 1.1-3x) passes with room to spare; a zip bomb or a corrupt/hostile mirror does not.
MAX_UNPACKED_MB = 3000  # all members unpacked (audio/ + meta/esc50.csv), in MB
MAX_MEMBER_MB = 100  # one member, in MB (an ESC-50 clip is 0.44 MB)
MAX_RATIO = 100  # unpacked / compressed size of one member (deflate bombs reach ~1000)
RATIO_FLOOR = 1 << 20  # the ratio is checked once a member has unpacked this many bytes


class UnpackLimitError(ValueError):
    """An archive that would unpack past a limit; nothing of it is published."""


def _fetch(url: str, dest: str) -> dict[str, str]:
    """Stream `url` to `dest`; returns the sha256 and md5 of what was written."""
    digests = {"sha256": hashlib.sha256(), "md5": hashlib.md5(usedforsecurity=False)}
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0)
        tick = progress(max(total // CHUNK, 1), f"Downloading {redact(url)} (MiB)")
        while chunk := response.read(CHUNK):
            f.write(chunk)
            for digest in digests.values():
                digest.update(chunk)
            tick()
    return {name: digest.hexdigest() for name, digest in digests.items()}


def _verify(url: str, got: dict[str, str], sha256: str, verify: bool) -> None:
    """By default an archive must be the known ESC-50 release or match --sha256."""
    if sha256:
        if got["sha256"] != sha256.lower():
            raise ValueError(f"{url}: sha256 is {got['sha256']}, expected {sha256}; nothing "
                             "was unpacked")
    elif verify:
        if got["md5"] != ESC50_MD5:
            raise ValueError(f"{url}: not the known ESC-50 release (md5 {got['md5']}, expected "
                             f"{ESC50_MD5}); nothing was unpacked. For another archive you "
                             f"trust, pass --sha256 {got['sha256']} (or --no-verify)")
    else:
        log.warning("%s: checksum not verified (--no-verify); sha256 %s", redact(url), got["sha256"])


class _Limits:
    def __init__(self, url: str, total_mb: float, member_mb: float, ratio: float) -> None:
        self.url, self.ratio = redact(url), ratio
        self.total, self.member = int(total_mb * MB), int(member_mb * MB)

    def refuse(self, name: str, what: str, flag: str) -> UnpackLimitError:
        return UnpackLimitError(f"{self.url}: archive member {name!r} {what} ({flag}); refusing "
                                "the archive, nothing of it was unpacked")

    def check_headers(self, infos: list[zipfile.ZipInfo]) -> None:
        """Refuse on what the headers declare, before any byte is decompressed."""
        total = 0
        for info in infos:
            if info.file_size > self.member:
                raise self.refuse(info.filename, f"declares {info.file_size / MB:.1f} MB, over the "
                                  f"per-member limit of {self.member / MB:g} MB", "--max-member-mb")
            self.check_ratio(info, info.file_size)
            total += info.file_size
            if total > self.total:
                raise self.refuse(info.filename, f"brings the declared total to {total / MB:.1f} MB, "
                                  f"over the limit of {self.total / MB:g} MB unpacked",
                                  "--max-unpacked-mb")

    def check_ratio(self, info: zipfile.ZipInfo, size: int) -> None:
        if size >= RATIO_FLOOR and size > self.ratio * max(info.compress_size, 1):
            raise self.refuse(info.filename, f"expands {info.compress_size} bytes to over "
                              f"{size / MB:.1f} MB, a compression ratio over the limit of "
                              f"{self.ratio:g} (a zip bomb?)", "--max-ratio")


def _stream(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: _Limits, done: list[int], url: str):
    """Yield the member's bytes in chunks of at most CHUNK, checking the limits against the bytes
    actually read (a header may lie); `done` is [bytes unpacked so far in this archive]."""
    read = 0
    try:
        with zf.open(info) as member:
            while chunk := member.read(CHUNK):
                read += len(chunk)
                done[0] += len(chunk)
                if read > info.file_size:
                    raise limits.refuse(info.filename, f"holds more than the {info.file_size} bytes "
                                        "its header declares", "a lying header")
                if read > limits.member:
                    raise limits.refuse(info.filename, f"unpacks to over {limits.member / MB:g} MB, "
                                        "the per-member limit", "--max-member-mb")
                if done[0] > limits.total:
                    raise limits.refuse(info.filename, f"brings the total past {limits.total / MB:g}"
                                        " MB unpacked", "--max-unpacked-mb")
                limits.check_ratio(info, read)
                yield chunk
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError,
            RuntimeError, OSError, UnicodeDecodeError) as e:  # RuntimeError: encrypted
        raise ValueError(f"{redact(url)}: archive member {info.filename!r} is corrupt or its "
                         f"header lies about its size ({e}); refusing the archive, nothing of it "
                         "was unpacked") from None
    if read != info.file_size:
        raise limits.refuse(info.filename, f"holds {read} bytes, its header declares "
                            f"{info.file_size}", "a lying header")


class _Progress:
    """Log `members/total, MB/MB` at most every `every_s` seconds and at the end."""

    def __init__(self, what: str, total_members: int, total_bytes: int, every_s: float = 5.0):
        self.what, self.n, self.mb = what, total_members, total_bytes / MB
        self.every_s, self.last = every_s, time.monotonic()

    def __call__(self, members: int, done: int, end: bool = False) -> None:
        now = time.monotonic()
        if end or now - self.last >= self.every_s:
            self.last = now
            log.info("  %s: %d/%d members, %.0f/%.0f MB", self.what, members, self.n,
                     done / MB, self.mb)


def download_esc50(out: str, url: str = ESC50_URL, sha256: str = "", verify: bool = True,
                   max_unpacked_mb: float = MAX_UNPACKED_MB, max_member_mb: float = MAX_MEMBER_MB,
                   max_ratio: float = MAX_RATIO) -> int:
    """Download and unpack ESC-50 to `out` (meta/esc50.csv + audio/); returns the clip count.

    The metadata is written last, so an interrupted run never looks like a complete dataset,
    and a folder that already holds the dataset is left untouched. Members are streamed in
    chunks (never one whole in memory). What the archive may unpack is capped (in total, per
    member and by compression ratio); the archive is checked in full against the caps before
    anything is written, so an archive over a cap publishes nothing.
    """
    meta_uri = storage.join(out, "meta", "esc50.csv")
    if storage.exists(meta_uri):
        log.info("ESC-50 is already at %s (meta/esc50.csv exists); nothing downloaded", out)
        return -1
    for value, flag in ((max_unpacked_mb, "--max-unpacked-mb"), (max_member_mb, "--max-member-mb"),
                        (max_ratio, "--max-ratio")):
        if not value > 0:
            raise ValueError(f"{flag} must be > 0, got {value}")
    limits = _Limits(url, max_unpacked_mb, max_member_mb, max_ratio)
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "esc50.zip")
        _verify(url, _fetch(url, archive), sha256, verify)
        try:
            zf = zipfile.ZipFile(archive)
        except zipfile.BadZipFile:
            raise ValueError(f"{redact(url)}: not a zip archive") from None
        except (OSError, EOFError, NotImplementedError, UnicodeDecodeError) as e:
            raise ValueError(f"{redact(url)}: not a readable zip archive ({e}); nothing was "
                             "unpacked") from None
        with zf:
            infos = zf.infolist()
            meta = next((i for i in infos if i.filename.endswith("meta/esc50.csv")), None)
            if meta is None:
                raise ValueError(f"{url}: no meta/esc50.csv inside the archive")
            prefix = meta.filename[: -len("meta/esc50.csv")]
            clips = [i for i in infos
                     if i.filename.startswith(prefix + "audio/") and not i.filename.endswith("/")]
            for info in clips:  # zip-slip: a member must land inside `out`
                rel = posixpath.normpath(info.filename[len(prefix):])
                if rel.startswith("../") or posixpath.isabs(rel) or not rel.startswith("audio/"):
                    raise ValueError(f"{url}: archive member {info.filename!r} would be written "
                                     f"outside {out}; refusing the archive (nothing was unpacked)")
            members = [*clips, meta]
            limits.check_headers(members)
            declared = sum(i.file_size for i in members)
            # Pass 1: decompress everything, writing nothing, so that a member over a cap (or a
            # lying header, or a corrupt member) refuses the whole archive before any of it is
            # published. Pass 2 writes; it checks the same caps again.
            for what, write in (("Checking the archive", False), ("Unpacking", True)):
                say, done = _Progress(what, len(members), declared), [0]
                for n, info in enumerate(members, 1):
                    chunks = _stream(zf, info, limits, done, url)
                    if write:
                        uri = storage.join(out, info.filename[len(prefix):])
                        storage.write_stream(uri, chunks)
                    else:
                        for _ in chunks:
                            pass
                    say(n, done[0])
                say(len(members), done[0], end=True)
    log.info("Unpacked %d ESC-50 clips to %s", len(clips), out)
    return len(clips)
