"""A client's embeddings: partition the dataset, embed its clips, cache the result.

The cache key covers what determines the output: every clip of the client with its size and
modification stamp, the encoder (id or folder fingerprint) and the extraction settings. A rerun
with the same key reads the stored file and never loads the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath

import fsspec
import numpy as np
import torch

from feda2v.data import datasets, partition
from feda2v.io import storage
from feda2v.io.config import Config
from feda2v.io.log import get_logger

log = get_logger()
FORMAT_VERSION = 1  # bump when the stored layout or the pooling changes


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def embeddings_dir(cfg: Config) -> str:
    """Folder of this data/model configuration's client files (config-only, so every task
    computes the same place)."""
    settings = {"data": dataclasses.asdict(cfg.data),
                "models": {k: getattr(cfg.models, k)
                           for k in ("audio_model", "audio_tokens", "embeddings_dtype")},
                "seed": cfg.seed, "version": FORMAT_VERSION}
    return storage.join(cfg.storage_root, "embeddings", _digest(settings)[:12])


def embeddings_uri(cfg: Config, client_id: int) -> str:
    return storage.join(embeddings_dir(cfg), f"client_{client_id}.safetensors")


def _file_stamps(uris: list[str]) -> dict[str, list]:
    """uri -> [size, modification stamp], listing each folder once (one request per folder on
    object stores instead of one per clip)."""
    by_dir: dict[str, list[str]] = {}
    for u in uris:
        by_dir.setdefault(posixpath.dirname(u), []).append(u)
    stamps = {}
    for folder, members in by_dir.items():
        fs, path = fsspec.core.url_to_fs(folder)
        listing = {posixpath.basename(e["name"].rstrip("/")): e for e in fs.ls(path, detail=True)}
        for u in members:
            e = listing.get(posixpath.basename(u))
            if e is None:
                stamps[u] = ["missing", None]
            else:
                stamp = e.get("mtime") or e.get("LastModified") or e.get("ETag") or e.get("created")
                stamps[u] = [e.get("size"), str(stamp)]
    return stamps


def model_fingerprint(source: str) -> str:
    """A hub id stands for itself; a folder (local or fsspec URL) is fingerprinted by its
    listing: names, sizes and modification stamps (ETags on object stores)."""
    if "://" not in source and not os.path.isdir(source):
        return source
    fs, root = fsspec.core.url_to_fs(source)
    listing = fs.find(root, detail=True)
    return _digest({name[len(root):]: [e.get("size"), str(e.get("mtime") or e.get("ETag")
                                                         or e.get("LastModified"))]
                    for name, e in sorted(listing.items())})


def client_clips(cfg: Config, client_id: int):
    """(train items, test items, class names) of one client under the configured partition."""
    items = datasets.read_items(cfg)
    names = datasets.class_names(cfg, items)
    index = {c: i for i, c in enumerate(names)}
    labels = np.array([index[i.label] for i in items])
    splits = np.array([0 if i.split == "train" else 1 for i in items])
    shares = partition.shares_for(cfg, names)
    parts = partition.client_indices(labels, splits, shares, cfg.seed, names)
    mine = parts[client_id]
    return [items[j] for j in mine["train"]], [items[j] for j in mine["test"]], names


def extract_client(cfg: Config, client_id: int, out_uri: str) -> str:
    if cfg.data.format == "embeddings":
        return _split_precomputed(cfg, client_id, out_uri)
    train, test, names = client_clips(cfg, client_id)
    if not test:
        raise ValueError(f"client {client_id} received no test clips; check data.test_folds / "
                         "data.test_fraction")
    m, d = cfg.models, cfg.data
    uris = [i.uri for i in train + test]
    key = _digest({"files": _file_stamps(uris), "uris": uris,
                   "labels": [(i.label, i.split) for i in train + test],
                   "model": model_fingerprint(m.audio_model), "tokens": m.audio_tokens,
                   "seconds": d.clip_seconds, "dtype": m.embeddings_dtype,
                   "version": FORMAT_VERSION})
    if storage.exists(out_uri) and storage.read_meta(out_uri).get("cache_key") == key:
        log.info("[Client %d] Embeddings cache hit: %s (same clips, model and settings; "
                 "extraction skipped)", client_id, out_uri)
        return out_uri

    from feda2v.encoders.embed import AudioEncoder, embed_clips

    encoder = AudioEncoder(m.audio_model, m.audio_tokens, m.device)
    log.info("[Client %d] Extracting %d train + %d test clips with %s (%s, %d-d tokens, %s)",
             client_id, len(train), len(test), m.audio_model, encoder.backbone.family,
             encoder.dim, encoder.device)
    x, kept, bad = embed_clips(encoder, uris, d.clip_seconds, m.extract_batch_size,
                               m.extract_workers, f"[Client {client_id}] clips")
    _check_bad(bad, len(uris), d.max_bad_fraction, client_id)
    index = {c: i for i, c in enumerate(names)}
    labels = torch.tensor([index[(train + test)[i].label] for i in kept])
    is_test = torch.tensor([i >= len(train) for i in kept])
    dtype = torch.float16 if m.embeddings_dtype == "float16" else torch.float32
    tensors = {"train_x": x[~is_test].to(dtype), "train_y": labels[~is_test],
               "test_x": x[is_test].to(dtype), "test_y": labels[is_test]}
    storage.save_tensors(out_uri, tensors, {"client_id": client_id, "class_names": names,
                                            "audio_model": m.audio_model, "cache_key": key,
                                            "skipped": [u for u, _ in bad]})
    log.info("[Client %d] Saved embeddings train %s, test %s to %s", client_id,
             tuple(tensors["train_x"].shape), tuple(tensors["test_x"].shape), out_uri)
    return out_uri


def _check_bad(bad: list[tuple[str, str]], total: int, limit: float, client_id: int) -> None:
    if not bad:
        return
    listing = "\n".join(f"  - {err}" for _, err in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    if len(bad) / total > limit:
        raise ValueError(f"client {client_id}: {len(bad)} of {total} clips are unreadable "
                         f"(more than data.max_bad_fraction = {limit}):\n{listing}{more}")
    log.warning("[Client %d] Warning: skipped %d unreadable clip(s):\n%s%s", client_id, len(bad),
                listing, more)


def split_codes(cfg: Config, tensors: dict, n: int) -> torch.Tensor:
    """Per row of a precomputed-embeddings file: 0 train, 1 test, -1 unused (a fold in neither
    data.train_folds nor data.test_folds), as for manifests."""
    if "split" in tensors:
        return tensors["split"].long()
    if "fold" in tensors:
        fold = tensors["fold"].long()
        codes = torch.full((n,), -1, dtype=torch.long)
        codes[torch.isin(fold, torch.tensor(cfg.data.train_folds))] = 0
        codes[torch.isin(fold, torch.tensor(cfg.data.test_folds))] = 1
        return codes
    g = torch.Generator().manual_seed(cfg.seed)
    return (torch.rand(n, generator=g) < cfg.data.test_fraction).long()


def _split_precomputed(cfg: Config, client_id: int, out_uri: str) -> str:
    """Bring-your-own embeddings: partition the rows of the file, no model involved."""
    uri = cfg.data.dataset_uri
    tensors, meta = datasets.read_embeddings(uri)
    file_names = meta["class_names"]
    names = datasets.class_names(cfg)
    unknown = [c for c in names if c not in file_names]
    if unknown:
        raise ValueError(f"class(es) {unknown} are not in {uri}'s class_names")
    remap = torch.tensor([names.index(c) if c in names else -1 for c in file_names])
    labels = remap[tensors["labels"].long()]
    splits = split_codes(cfg, tensors, len(labels))
    keep = (labels >= 0) & (splits >= 0)
    shares = partition.shares_for(cfg, names)
    parts = partition.client_indices(labels[keep].numpy(), splits[keep].numpy(), shares,
                                     cfg.seed, names)[client_id]
    x, y = tensors["embeddings"][keep], labels[keep]
    out = {"train_x": x[parts["train"]], "train_y": y[parts["train"]],
           "test_x": x[parts["test"]], "test_y": y[parts["test"]]}
    storage.save_tensors(out_uri, out, {"client_id": client_id, "class_names": names,
                                        "source": uri})
    log.info("[Client %d] Took %d train + %d test precomputed embeddings from %s", client_id,
             len(parts["train"]), len(parts["test"]), uri)
    return out_uri
