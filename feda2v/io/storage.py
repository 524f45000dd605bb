"""All file I/O goes through fsspec URLs: local paths, file://, s3://, ...

Writes are atomic: a local file is written beside its target and renamed; a remote object is
written with one PUT. A crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile
from typing import TYPE_CHECKING, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

if TYPE_CHECKING:
    import torch

# torch and safetensors are imported where tensors are read or written: `feda2v --help`, config
# checks and tracking-only code never pay for them.


def _fs(uri: str):
    return fsspec.core.url_to_fs(uri)


def join(root: str, *parts: str) -> str:
    """Join path segments onto a path or URL without mangling the scheme."""
    return posixpath.join(root.rstrip("/"), *parts) if "://" in root else os.path.join(root, *parts)


class StorageError(OSError):
    """A read or write that failed, with the URI and what to check in its message."""


def _named(uri: str, e: BaseException, doing: str) -> StorageError:
    """The error of an I/O call, as one line that names the URI: disk full, read-only or
    missing paths, an S3 endpoint that does not answer, credentials refused, a missing bucket."""
    import errno

    from feda2v.io.config import redact

    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    hint = ""
    code = getattr(e, "errno", None)
    if code == errno.ENOSPC:
        hint = "; the disk is full: free space and run again (nothing half-written is kept)"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM) or isinstance(e, PermissionError):
        hint = ("; not allowed: check the folder's permissions, or the S3 credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket's policy")
    elif "Could not connect" in text or "EndpointConnectionError" in type(e).__name__:
        hint = "; the object store does not answer: check AWS_ENDPOINT_URL"
    elif isinstance(e, FileNotFoundError) and "://" in uri:
        hint = "; check that the bucket exists"
    shown = redact(uri)
    shown = shown if shown.isprintable() else repr(shown)[1:-1]  # one line, whatever the name
    out = StorageError(f"cannot {doing} {shown}: {text}{hint}")
    out.errno, out.__cause__ = code, e
    return out


def _io(uri: str, doing: str, call):
    try:
        return call()
    except StorageError:
        raise
    except FileNotFoundError as e:
        if "://" not in uri:
            raise
        raise _named(uri, e, doing) from e
    except Exception as e:
        if isinstance(e, (ValueError, TypeError, KeyboardInterrupt)):
            raise
        raise _named(uri, e, doing) from e


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return _io(uri, "look up", lambda: fs.exists(path))


def write_bytes(uri: str, data: bytes) -> None:
    _io(uri, "write", lambda: _write_bytes(uri, data))


def _write_bytes(uri: str, data: bytes) -> None:  # the fault tests' hook
    _write_chunks(uri, [data], whole=True)


def write_stream(uri: str, chunks) -> None:
    """Write the byte chunks of an iterable to `uri` atomically without holding the file in
    memory (an archive's member): a remote object through an fsspec file committed only when
    complete (s3fs completes its multipart upload at the end, aborts it on any error)."""
    _io(uri, "write", lambda: _write_chunks(uri, chunks))


def _write_chunks(uri: str, chunks, whole: bool = False) -> None:
    fs, path = _fs(uri)
    if isinstance(fs, LocalFileSystem):
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
        try:
            # mkstemp makes the file 0600; a stored file gets the usual umask-based mode, so a
            # shared store stays readable by the others who should read it.
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    elif whole:
        fs.pipe_file(path, b"".join(chunks))  # one PUT
    else:
        with fs.transaction, fs.open(path, "wb") as f:
            for chunk in chunks:
                f.write(chunk)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def require_finite(tensors: dict, where: str) -> None:
    """Refuse NaN or inf in any floating-point tensor, naming the file (or update) and the key:
    a non-finite value would poison every later loss, checkpoint and average."""
    import torch

    for key, value in tensors.items():
        if torch.is_tensor(value) and torch.is_floating_point(value):
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise ValueError(f"{where}: '{key}' holds {bad} non-finite value(s) (NaN or "
                                 "inf); nothing was trained on it — fix or regenerate it")


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    if not exists(uri):
        raise FileNotFoundError(f"no such file: {uri}")
    return _io(uri, "read", lambda: fs.cat_file(path))


def save_tensors(uri: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    """safetensors file; `meta` (any JSON value) travels in the header under 'feda2v'."""
    from safetensors.torch import save as st_save

    header = {"feda2v": json.dumps(meta or {})}
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_bytes(uri, st_save(data, metadata=header))


MAX_HEADER = 100 * 1024 * 1024  # safetensors' own cap on a header


def load_tensors(uri: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, 'feda2v' metadata) of a safetensors file; a file that is not one is a
    ValueError naming it."""
    from safetensors.torch import load as st_load

    raw = read_bytes(uri)
    meta = _feda2v_meta(uri, raw[8 : 8 + _header_length(uri, raw[:8])])
    try:
        return st_load(raw), meta
    except Exception as e:  # noqa: BLE001 - SafetensorError is no ValueError
        raise _unreadable(uri, e) from None


def _unreadable(uri: str, e: BaseException | str) -> ValueError:
    from feda2v.io.config import redact

    text = e if isinstance(e, str) else (str(e).splitlines() or [type(e).__name__])[0]
    return ValueError(f"{redact(uri)}: not a readable safetensors file ({text[:200]})")


def _header_length(uri: str, prefix: bytes) -> int:
    n = int.from_bytes(prefix, "little")
    if len(prefix) < 8 or n > MAX_HEADER:
        raise _unreadable(uri, "truncated" if len(prefix) < 8 else f"a header of {n} bytes")
    return n


def _feda2v_meta(uri: str, header: bytes) -> dict[str, Any]:
    try:
        top = json.loads(header)
        meta = json.loads(top.get("__metadata__", {}).get("feda2v", "{}"))
    except (ValueError, AttributeError, TypeError) as e:  # not JSON, or JSON of another shape
        raise _unreadable(uri, f"its header: {e}") from None
    if not isinstance(meta, dict):
        raise _unreadable(uri, "its 'feda2v' metadata is not an object")
    return meta


def read_meta(uri: str) -> dict[str, Any]:
    """The 'feda2v' header metadata of a safetensors file, reading only its header (a cache
    check should not download a whole embeddings file)."""
    fs, path = _fs(uri)

    def read() -> bytes:
        with fs.open(path, "rb") as f:
            return f.read(_header_length(uri, f.read(8)))

    return _feda2v_meta(uri, _io(uri, "read", read))


def save_checkpoint(uri: str, checkpoint: dict[str, Any]) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    write_bytes(uri, buf.getvalue())


def load_checkpoint(uri: str, data: bytes | None = None) -> dict[str, Any]:
    """Load a .pt checkpoint (its bytes `data` when already read from `uri`) without unpickling
    arbitrary objects (weights_only=True): the one checked way every checkpoint is read. A file
    that is truncated, corrupt or not a checkpoint dict, one holding pickled Python objects, and
    one with NaN or inf in any tensor or number (weights, class conditions, statistics, optimizer
    state) is refused with one line naming the file (credentials redacted) and the entry."""
    import pickle
    import warnings

    import torch

    from feda2v.io.config import redact

    name = redact(uri)
    data = read_bytes(uri) if data is None else data
    if not data:
        raise ValueError(f"{name}: not a readable checkpoint: the file is empty")
    try:
        with warnings.catch_warnings():  # torch's notes on a hostile file's pickle protocol
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e) and not _whole_pickle(data):  # spoilt, not Python objects
            raise ValueError(f"{name}: not a readable checkpoint (truncated, or not a torch .pt "
                             f"file): {_first_line(e)}") from None
        raise ValueError(f"{name}: holds pickled Python objects, which feda2v never loads (only "
                         "tensors and plain values); save it again with tensors only") from None
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - torch's readers raise anything on a spoilt file
        # (zip, pickle, struct, index errors): name the file, in one line
        raise ValueError(f"{name}: not a readable checkpoint (truncated, or not a torch .pt "
                         f"file): {_first_line(e)}") from None
    if not isinstance(ckpt, dict):  # a named ValueError, as every refusal of a stored file
        raise ValueError(f"{name}: not a generator checkpoint (it holds a "  # noqa: TRY004
                         f"{type(ckpt).__name__}, not the checkpoint dict)")
    for section, entry, bad in _non_finite(ckpt):
        where = f" in {section}" if section else ""
        raise ValueError(f"{name}: '{entry}' holds {bad} non-finite value(s) (NaN or inf){where}; "
                         "the checkpoint is refused — retrain the generator (Run 1) or restore "
                         "the file")
    return ckpt


def _whole_pickle(data: bytes) -> bool:
    """Whether the checkpoint's pickle (data.pkl of the zip format, else the file) is a whole,
    well-formed opcode stream: then the weights-only reader refused what it holds (Python
    objects), not a spoilt file. Only parses the opcodes; nothing is unpickled."""
    import pickletools
    import zipfile

    stream = data
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            member = next(n for n in z.namelist() if n.rsplit("/", 1)[-1] == "data.pkl")
            with z.open(member) as f:
                stream = f.read(64 << 20)
    except Exception:  # noqa: BLE001, S110 - not a zip: the legacy format begins with pickles
        pass
    try:
        for _ in pickletools.genops(io.BytesIO(stream)):
            pass
        return True
    except Exception:  # noqa: BLE001 - any fault in the opcodes: a spoilt stream
        return False


def _first_line(e: BaseException) -> str:
    """What went wrong, in one line, without torch's advice to load the file unsafely."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if "Weights only load failed" in str(e):
        after = [line for line in lines[1:] if not line.startswith(("Check the documentation",
                                                                     "Please file an issue"))]
        found = [line.split("WeightsUnpickler error:", 1)[-1].strip() for line in lines
                 if "WeightsUnpickler error:" in line]
        lines = [f for f in found if f] + [a for a in after if "weights_only" not in a]
        return lines[0] if lines else "its pickle stream is corrupt"
    lines = [line.split(". This is an internal miniz error")[0] for line in lines
             if "weights_only" not in line]
    return lines[0] if lines else type(e).__name__


def _non_finite(ckpt: dict):
    """(section, entry, count) of every tensor or float holding NaN or inf in a loaded
    checkpoint, in order: the section is its top-level key, the entry the path below it (a
    state dict's key: 'decoder.0.weight'), or the top-level key itself with no section
    ('class_conditions'). The config's copy is left alone (checked where a config is read).
    Iterative: a deeply nested file gives an answer, not a RecursionError."""
    import math

    import torch

    stack: list[tuple[tuple[str, ...], Any]] = [((str(k),), v) for k, v in ckpt.items()
                                                 if k != "config"][::-1]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend([((*path, str(k)), v) for k, v in value.items()][::-1])
            continue
        if isinstance(value, (list, tuple)):
            stack.extend([((*path, str(i)), v) for i, v in enumerate(value)][::-1])
            continue
        if torch.is_tensor(value):
            bad = (int((~torch.isfinite(value)).sum())
                   if value.is_floating_point() or value.is_complex() else 0)
        else:
            bad = int(isinstance(value, float) and not math.isfinite(value))
        if bad:
            yield ((path[0], ".".join(path[1:]), bad) if len(path) > 1
                   else ("", path[0], bad))


def write_json(uri: str, value: Any) -> None:
    write_bytes(uri, json.dumps(value, indent=2, sort_keys=True).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri.removeprefix("file://")


def absolute(uri: str) -> str:
    """Make a local path absolute (tasks may run in another folder); URLs pass through."""
    return os.path.abspath(local_path(uri)) if is_local(uri) else uri


def copy_tree(source: str, dest: str, say=None) -> tuple[int, int]:
    """Copy every file under the folder `source` to `dest` (paths or URLs), each written
    atomically, in sorted order; returns (files, bytes). Hidden files and folders are left
    out (`hf download --local-dir` keeps its own bookkeeping in .cache/). Files are read one at
    a time (a model's weights may be gigabytes: one file in memory, never the folder)."""
    fs, root = _fs(source)
    if not _io(source, "look up", lambda: fs.isdir(root)):
        raise FileNotFoundError(f"{source} is not a folder")

    def relative(path: str) -> str:
        return posixpath.relpath(path, root) if "://" in source else os.path.relpath(path, root)

    files = sorted(p for p in _io(source, "list", lambda: fs.find(root))
                   if not any(part.startswith(".") for part in relative(p).split(os.sep)))
    total = 0
    for n, path in enumerate(files, 1):
        rel = relative(path)
        data = _io(path, "read", lambda path=path: fs.cat_file(path))
        write_bytes(join(dest, *rel.split(os.sep)), data)
        total += len(data)
        if say:
            say(f"  {n}/{len(files)} {rel} ({len(data) / 1e6:.1f} MB)")
    return len(files), total
