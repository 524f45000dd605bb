"""A real dataset that ships inside a Python package, as a precomputed-embeddings file.

scikit-learn's handwritten digits (UCI "Optical Recognition of Handwritten Digits": 1,797 8x8
images of 10 digits written by 43 people) are installed with scikit-learn and need no download,
and nobody on this team made or tuned them. They test the federated method on data whose class
structure we did not design, in the `embeddings` format: each image is 8 tokens (its rows) of 8
features (pixel intensities / 16). The digits have no captions, so the class targets are 10
seeded random unit vectors in a 64-d stand-in for CLIP space (written into the file, so no text
model is involved).
"""

from __future__ import annotations

import torch

from feda2v.io import storage
from feda2v.io.log import get_logger

log = get_logger()
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TARGET_DIM = 64


def _folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Fold 1..`folds` per sample, stratified: each class is spread evenly over the folds."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty_like(labels)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        out[idx] = torch.arange(len(idx)) % folds + 1
    return out


def write_digits(out_uri: str, folds: int = 5, seed: int = 0) -> dict:
    """Write the digits as an embeddings file (embeddings [N, 8, 8], labels, fold,
    class_targets [10, 64], header class_names); returns a summary."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).reshape(-1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    targets = torch.nn.functional.normalize(torch.randn(len(DIGIT_NAMES), TARGET_DIM,
                                                        generator=g), dim=1)
    storage.save_tensors(out_uri, {"embeddings": x, "labels": y, "fold": _folds(y, folds, seed),
                                   "class_targets": targets},
                         {"class_names": DIGIT_NAMES, "source": "sklearn.datasets.load_digits"})
    log.info("Wrote %d digit images (%d classes, %d folds) to %s", len(y), len(DIGIT_NAMES),
             folds, out_uri)
    return {"samples": len(y), "classes": len(DIGIT_NAMES), "uri": out_uri}
