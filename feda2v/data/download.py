"""`feda2v data esc50`: fetch the official ESC-50 archive and unpack it to any fsspec URL."""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
import urllib.request
import zipfile

from feda2v.io import storage
from feda2v.io.config import redact
from feda2v.io.log import get_logger, progress

log = get_logger()

ESC50_URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"
# The known ESC-50 release (2000 clips): the MD5 that soundata's ESC-50 loader records for this
# archive. Only MD5 is published for it; any other archive needs --sha256 (or --no-verify).
ESC50_MD5 = "7771e4b9d86d0945acce719c7a59305a"
CHUNK = 1 << 20


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


def download_esc50(out: str, url: str = ESC50_URL, sha256: str = "", verify: bool = True) -> int:
    """Download and unpack ESC-50 to `out` (meta/esc50.csv + audio/); returns the clip count.

    The metadata is written last, so an interrupted run never looks like a complete dataset,
    and a folder that already holds the dataset is left untouched.
    """
    meta_uri = storage.join(out, "meta", "esc50.csv")
    if storage.exists(meta_uri):
        log.info("ESC-50 is already at %s (meta/esc50.csv exists); nothing downloaded", out)
        return -1
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "esc50.zip")
        _verify(url, _fetch(url, archive), sha256, verify)
        try:
            zf = zipfile.ZipFile(archive)
        except zipfile.BadZipFile:
            raise ValueError(f"{url}: not a zip archive") from None
        with zf:
            names = zf.namelist()
            meta = next((n for n in names if n.endswith("meta/esc50.csv")), None)
            if meta is None:
                raise ValueError(f"{url}: no meta/esc50.csv inside the archive")
            prefix = meta[: -len("meta/esc50.csv")]
            clips = [n for n in names if n.startswith(prefix + "audio/") and not n.endswith("/")]
            for name in clips:  # zip-slip: a member must land inside `out`
                rel = posixpath.normpath(name[len(prefix):])
                if rel.startswith("../") or posixpath.isabs(rel) or not rel.startswith("audio/"):
                    raise ValueError(f"{url}: archive member {name!r} would be written outside "
                                     f"{out}; refusing the archive (nothing was unpacked)")
            tick = progress(len(clips), "Unpacking clips")
            for name in clips:
                storage.write_bytes(storage.join(out, name[len(prefix):]), zf.read(name))
                tick()
            storage.write_bytes(meta_uri, zf.read(meta))
    log.info("Unpacked %d ESC-50 clips to %s", len(clips), out)
    return len(clips)
