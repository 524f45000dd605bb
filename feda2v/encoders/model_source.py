"""Where a model comes from: a hub id, a local folder, or a folder behind an fsspec URL.

`from_pretrained` understands hub ids and local folders only, so a remote folder (s3://...) is
copied once into a local cache and loaded from there. Each call lists the remote folder again
(names + sizes) and copies it anew only when that listing changed since the cached copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile

import fsspec

from feda2v.io import storage
from feda2v.io.log import get_logger

log = get_logger()

CACHE_ENV = "FEDA2V_MODEL_CACHE"
MANIFEST = ".feda2v-manifest.json"  # inside the cached copy: the listing it was made from


def resolve(source: str, cache_dir: str | None = None) -> str:
    """Return what `from_pretrained` should load: a hub id unchanged, a local folder as an
    absolute path, a remote folder as the path of its local copy."""
    if storage.is_local(source):
        path = os.path.expanduser(storage.local_path(source))
        # "org/name" is a hub id unless such a folder exists here (as from_pretrained decides)
        if source.startswith("file://") or os.path.isdir(path) or path.startswith((".", "/")):
            return os.path.abspath(path)
        return source
    return _cached_copy(source, os.path.abspath(cache_dir or default_cache_dir()))


def default_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.expanduser("~/.cache/feda2v/models")


def _cached_copy(url: str, cache_dir: str) -> str:
    url = url.rstrip("/")
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    files = _listing(fs, root, url)
    wanted = {"source": url, "files": files}

    name = posixpath.basename(root) or "model"
    dest = os.path.join(cache_dir, f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:16]}")
    if _manifest(dest) == wanted:
        log.info("Using cached model %s from %s", url, dest)
        return dest

    # Download beside the destination and rename it into place, so that a crash or a concurrent
    # reader never sees half a model.
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_dir, prefix=f".{name}-download-")
    try:
        _download(fs, root, files, tmp)
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(wanted, f, indent=2, sort_keys=True)
        _move_into_place(tmp, dest, wanted)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size_mb = sum(files.values()) / 1e6
    log.info("Copied model %s (%d files, %.1f MB) to %s", url, len(files), size_mb, dest)
    return dest


def _listing(fs, root: str, url: str) -> dict[str, int]:
    """{path relative to the folder: size} of every file below it (fresh, not from fsspec's
    listings cache: a cached listing would hide a changed model)."""
    fs.invalidate_cache(root)
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:  # e.g. a missing bucket
        found = {}
    files = {posixpath.relpath(path, root): int(info["size"]) for path, info in found.items()
             if info.get("type") != "directory"}
    if not files or "." in files:  # "." : the URL names a file, not a folder
        raise FileNotFoundError(f"model folder {url} is missing, empty or not a folder")
    return files


def _download(fs, root: str, files: dict[str, int], out: str) -> None:
    for rel in files:
        os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
    # one call with all files: async filesystems (s3fs) fetch them concurrently
    fs.get([posixpath.join(root, rel) for rel in files], [os.path.join(out, rel) for rel in files])


def _manifest(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _move_into_place(tmp: str, dest: str, wanted: dict) -> None:
    try:
        os.rename(tmp, dest)  # fails if dest exists (a stale copy, or a concurrent download)
        return
    except OSError:
        if not os.path.isdir(dest):
            raise
    if _manifest(dest) == wanted:  # another process just put the same copy there
        shutil.rmtree(tmp)
        return
    stale = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=".stale-")
    os.rename(dest, os.path.join(stale, "old"))
    os.rename(tmp, dest)
    shutil.rmtree(stale)
