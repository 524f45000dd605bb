"""Dataset readers: every layout becomes a list of Items (clip URI, class label, split).

Layouts (data.format), each readable from any fsspec URL:
- esc50:    ROOT/meta/esc50.csv (filename, fold, category, ...) + ROOT/audio/<filename>
- folders:  ROOT/<class>/<clip>.{wav,flac,ogg,mp3,...}
- manifest: a CSV with columns path,label[,fold|split]; relative paths are relative to the CSV
- embeddings: a safetensors file of precomputed embeddings (read by `read_embeddings`)
"""

from __future__ import annotations

import csv
import io
import posixpath
import random
from dataclasses import dataclass

import fsspec

from feda2v.io import config as config_mod
from feda2v.io.config import Config

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class Item:
    uri: str
    label: str
    split: str  # "train" or "test"


def _read_csv(uri: str) -> list[dict[str, str]]:
    try:
        with fsspec.open(uri, "r") as f:
            return list(csv.DictReader(io.StringIO(f.read())))
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {uri}") from None


def _fold_split(fold: int, train_folds: list[int], test_folds: list[int]) -> str | None:
    if fold in train_folds:
        return "train"
    if fold in test_folds:
        return "test"
    return None  # a fold in neither list is simply not used


def _fraction_split(items: list[tuple[str, str]], test_fraction: float, seed: int) -> list[Item]:
    """Hold out round(test_fraction * n) clips of each class, chosen by a seeded shuffle."""
    by_class: dict[str, list[str]] = {}
    for uri, label in sorted(items):
        by_class.setdefault(label, []).append(uri)
    out = []
    for label, uris in by_class.items():
        rng = random.Random(f"{seed}:{label}")
        rng.shuffle(uris)
        n_test = round(test_fraction * len(uris))
        out += [Item(u, label, "test") for u in uris[:n_test]]
        out += [Item(u, label, "train") for u in uris[n_test:]]
    return out


def read_esc50(root: str, train_folds: list[int], test_folds: list[int]) -> list[Item]:
    root = root.rstrip("/")
    meta = f"{root}/meta/esc50.csv"
    try:
        rows = _read_csv(meta)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no ESC-50 metadata at {meta} (data.dataset_uri must point at a folder with "
            "meta/esc50.csv and audio/; `feda2v data esc50 --out DIR` downloads it, "
            "`feda2v data demo --out DIR` writes a procedural one)") from None
    missing = {"filename", "fold", "category"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{meta}: missing column(s) {sorted(missing)}")
    items = []
    for r in rows:
        split = _fold_split(int(r["fold"]), train_folds, test_folds)
        if split:
            items.append(Item(f"{root}/audio/{r['filename']}", r["category"], split))
    return items


def read_folders(root: str, test_fraction: float, seed: int) -> list[Item]:
    fs, path = fsspec.core.url_to_fs(root)
    if not fs.isdir(path):
        raise FileNotFoundError(f"no such folder: {root}")
    protocol = root.split("://", 1)[0] + "://" if "://" in root else ""
    found = []
    for class_dir in sorted(fs.ls(path, detail=False)):
        if not fs.isdir(class_dir):
            continue
        label = posixpath.basename(class_dir.rstrip("/"))
        for f in sorted(fs.ls(class_dir, detail=False)):
            if f.lower().endswith(AUDIO_SUFFIXES):
                found.append((protocol + f if protocol and "://" not in f else f, label))
    if not found:
        raise ValueError(f"{root}: no audio files in class sub-folders "
                         f"(expected ROOT/<class>/<clip>{{{','.join(AUDIO_SUFFIXES)}}})")
    return _fraction_split(found, test_fraction, seed)


def read_manifest(uri: str, train_folds: list[int], test_folds: list[int],
                  test_fraction: float, seed: int) -> list[Item]:
    rows = _read_csv(uri)
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"{uri}: a manifest needs the columns path,label[,fold|split]")
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."

    def full(p: str) -> str:
        return p if ("://" in p or p.startswith("/")) else f"{base}/{p}"

    if "split" in rows[0]:
        bad = sorted({r["split"] for r in rows} - {"train", "test"})
        if bad:
            raise ValueError(f"{uri}: split values must be train or test, got {bad}")
        return [Item(full(r["path"]), r["label"], r["split"]) for r in rows]
    if "fold" in rows[0]:
        items = []
        for line, r in enumerate(rows, start=2):
            try:
                fold = int(r["fold"])
            except ValueError:
                raise ValueError(f"{uri}: line {line}: fold {r['fold']!r} is not an integer") from None
            split = _fold_split(fold, train_folds, test_folds)
            if split:
                items.append(Item(full(r["path"]), r["label"], split))
        return items
    return _fraction_split([(full(r["path"]), r["label"]) for r in rows], test_fraction, seed)


_SOURCE = {"esc50": "the category column of meta/esc50.csv", "folders": "a class folder",
           "manifest": "the manifest's label column",
           "embeddings": "the embeddings file's class_names metadata"}


def check_class_names(names, cfg: Config) -> None:
    """Refuse, naming data.dataset_uri, the first class name read from the dataset that is not
    safe as an MLflow metric-key segment and a path segment (config_mod.name_error)."""
    for name in names:
        error = config_mod.name_error(name)
        if error:
            raise ValueError(f"data.dataset_uri {config_mod.redact(cfg.data.dataset_uri)}: class "
                             f"name from {_SOURCE[cfg.data.format]}: {error}; rename the class "
                             "or list the classes to use in data.clients / data.classes")


def read_items(cfg: Config) -> list[Item]:
    """All usable clips of the configured dataset, restricted to the configured classes."""
    data = cfg.data
    fmt, uri = data.format, data.dataset_uri
    if fmt == "esc50":
        items = read_esc50(uri, data.train_folds, data.test_folds)
    elif fmt == "folders":
        items = read_folders(uri, data.test_fraction, cfg.seed)
    elif fmt == "manifest":
        items = read_manifest(uri, data.train_folds, data.test_folds, data.test_fraction,
                              cfg.seed)
    else:
        raise ValueError(f"data.format {fmt!r} has no clips to list (embeddings are read whole)")
    wanted = config_mod.configured_classes(cfg)
    if wanted is None:  # every class of the dataset is used: its names are checked here
        check_class_names(sorted({i.label for i in items}), cfg)
        return items
    present = {i.label for i in items}
    absent = [c for c in wanted if c not in present]
    if absent:
        raise ValueError(f"class(es) {absent} have no clips in {uri} (data.format {fmt})")
    keep = set(wanted)
    return [i for i in items if i.label in keep]


def class_names(cfg: Config, items: list[Item] | None = None) -> list[str]:
    """Class order = rows of the target matrix: configured, else sorted dataset labels."""
    names = config_mod.configured_classes(cfg)
    if names is not None:
        return names
    if cfg.data.format == "embeddings":
        names = read_embeddings(cfg.data.dataset_uri)[1]["class_names"]
        check_class_names(names, cfg)
        return names
    return sorted({i.label for i in (items if items is not None else read_items(cfg))})


def read_images(cfg: Config) -> dict[str, list[str]]:
    """Class label -> image URIs: a manifest's `image` column, or image files in class folders."""
    data = cfg.data
    uri = data.dataset_uri
    found: dict[str, list[str]] = {}
    if data.format == "manifest":
        rows = _read_csv(uri)
        if not rows or "image" not in rows[0]:
            raise ValueError(f"{uri}: data.targets is 'images' but the manifest has no image column")
        base = uri.rsplit("/", 1)[0] if "/" in uri else "."
        for r in rows:
            if r["image"]:
                path = r["image"]
                full = path if ("://" in path or path.startswith("/")) else f"{base}/{path}"
                found.setdefault(r["label"], []).append(full)
    elif data.format == "folders":
        fs, root = fsspec.core.url_to_fs(uri)
        protocol = uri.split("://", 1)[0] + "://" if "://" in uri else ""
        for class_dir in sorted(fs.ls(root, detail=False)):
            if fs.isdir(class_dir):
                label = posixpath.basename(class_dir.rstrip("/"))
                found[label] = [protocol + f for f in sorted(fs.ls(class_dir, detail=False))
                                if f.lower().endswith(IMAGE_SUFFIXES)]
    else:
        raise ValueError(f"data.format {data.format!r} has no images")
    return found


def read_embeddings(uri: str):
    """Bring-your-own embeddings: tensors `embeddings` [N, S, D] and `labels` [N] (class index),
    optional `split` [N] (0 train, 1 test) or `fold` [N], optional `class_targets` [C, D_clip];
    header metadata `class_names` (JSON list). Returns (tensors, meta)."""
    from feda2v.io import storage

    tensors, meta = storage.load_tensors(uri)
    missing = {"embeddings", "labels"} - set(tensors)
    if missing:
        raise ValueError(f"{uri}: embeddings file lacks tensor(s) {sorted(missing)}")
    if "class_names" not in meta:
        raise ValueError(f"{uri}: embeddings file lacks the class_names metadata")
    storage.require_finite({"embeddings": tensors["embeddings"],
                            **({"class_targets": tensors["class_targets"]}
                               if "class_targets" in tensors else {})}, uri)
    x, y = tensors["embeddings"], tensors["labels"]
    if x.dim() != 3 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"{uri}: expected embeddings [N, S, D] and labels [N], got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if int(y.max()) >= len(meta["class_names"]) or int(y.min()) < 0:
        raise ValueError(f"{uri}: labels must index class_names ({len(meta['class_names'])} classes)")
    return tensors, meta
