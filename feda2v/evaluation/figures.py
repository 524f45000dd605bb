"""The figures of a run's report, each from plain numbers to PNG bytes (matplotlib's Figure,
no pyplot: no GUI backend, no global state, safe in a task process).

accuracy (global and per node, per round across phases), generator loss and adapter loss per
client, the partition (clients x classes), the confusion matrix of the final adapter, and a
client's real vs synthetic embeddings in 2-D (drawn by the client's own task: only the picture
leaves it).
"""

from __future__ import annotations

import io
import itertools

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

Curves = dict[str, list[tuple[int, float]]]  # label -> [(step, value)]


def png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100, bbox_inches="tight")
    return out.getvalue()


def _colours(n: int) -> list:
    # ESC-50 has 50 classes: past tab20, sample a continuous map so colours stay distinct.
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    return [cmap(i) if n <= 20 else cmap(i / max(n - 1, 1)) for i in range(n)]


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def curves_png(curves: Curves, title: str, ylabel: str,
               boundaries: list[tuple[float, str]] = (), bold: str = "") -> bytes:
    """One line per label over the global step; dashed lines where the phase changes. The
    `bold` label (the global curve) is drawn thick and black."""
    fig = Figure(figsize=(8, 4.2))
    ax = fig.add_subplot()
    for x, label in boundaries:
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.annotate(label, (x, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                    fontsize="small", color="grey", ha="right", va="bottom")
    colours = _colours(max(len(curves), 1))
    for (label, points), colour in zip(sorted(curves.items()), colours):
        if not points:
            continue
        steps, values = zip(*sorted(points))
        style = ({"color": "black", "linewidth": 2.5, "zorder": 3} if label == bold
                 else {"color": colour, "linewidth": 1.2, "alpha": 0.8})
        ax.plot(steps, values, marker="." if len(steps) < 60 else None, label=label, **style)
    if ax.lines:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        _empty(ax, "nothing recorded")
    ax.set(xlabel="global step (round across phases)", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return png(fig)


def phase_boundaries(plan: list[tuple[str, int]]) -> list[tuple[float, str]]:
    """(x, "run1 → run2") half a step before each phase's first round."""
    out, step = [], 0
    for (before, rounds), (after, _) in itertools.pairwise(plan):
        step += rounds
        out.append((step + 0.5, f"{before} → {after}"))
    return out


def partition_png(counts: list[list[int]], class_names: list[str]) -> bytes:
    """Clients x classes: training rows each client holds of each class (a heat map, numbers in
    the cells while they fit)."""
    m = np.asarray(counts, dtype=float).reshape(len(counts), len(class_names))
    fig = Figure(figsize=(min(2 + 0.35 * len(class_names), 18), 1.5 + 0.45 * len(m)))
    ax = fig.add_subplot()
    im = ax.imshow(m, aspect="auto", cmap="Blues", vmin=0)
    ax.set_yticks(range(len(m)), [f"client {i}" for i in range(len(m))])
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right",
                  fontsize="small" if len(class_names) <= 20 else "x-small")
    if m.size <= 400:
        top = m.max() if m.size else 0
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize="x-small",
                        color="white" if v > top / 2 else "black")
    fig.colorbar(im, ax=ax, label="training rows")
    ax.set(title="Partition: training rows per client and class")
    return png(fig)


def confusion_png(matrix: list[list[int]], class_names: list[str]) -> bytes:
    """Rows: true class; columns: predicted; each row normalised (a class's recall on the
    diagonal), counts in the cells while they fit."""
    m = np.asarray(matrix, dtype=float).reshape(len(class_names), len(class_names))
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = min(3 + 0.3 * len(class_names), 16)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    small = "small" if len(class_names) <= 20 else "x-small"
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=small)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=small)
    if m.size <= 400:
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize="x-small",
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="share of the true class's rows")
    accuracy = np.trace(m) / m.sum() if m.sum() else 0.0
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Final global adapter, held-out rows: accuracy {accuracy:.3f}")
    return png(fig)


def as_2d(x) -> np.ndarray:
    """Tensor or array, [N, F] or [N, S, D] -> float64 [N, F] (a sequence is one point)."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected [N, F] or [N, S, D], got shape {x.shape}")
    # Explicit width instead of -1: reshape(0, -1) is ambiguous for an empty set.
    return x.reshape(len(x), int(np.prod(x.shape[1:])))


def pca_2d(x) -> np.ndarray:
    """Project samples onto their first two principal components -> [N, 2].

    Columns beyond the data's rank (one feature, or fewer than three samples) are zeros.
    """
    x = as_2d(x)
    centred = x - x.mean(axis=0) if len(x) else x
    out = np.zeros((len(x), 2))
    if len(x) == 0:
        return out
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2]
    out[:, :len(comps)] = centred @ comps.T
    return out


def _labels(y, n: int, n_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y.detach().cpu() if hasattr(y, "detach") else y, dtype=np.int64).reshape(-1)
    if len(y) != n:
        raise ValueError(f"{name}: {n} samples but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} labels must lie in [0, {n_classes})")
    return y


def projection_png(real_x, real_y, synthetic_x, synthetic_y, class_names: list[str],
                   title: str = "PCA of real (o) vs synthetic (x) embeddings") -> bytes:
    """Real and synthetic points of each class on one PCA fit (shared axes), by class colour."""
    real, syn = as_2d(real_x), as_2d(synthetic_x)
    if real.shape[1] != syn.shape[1]:
        raise ValueError(f"real has {real.shape[1]} features, synthetic {syn.shape[1]}")
    names = list(class_names)
    real_y = _labels(real_y, len(real), len(names), "real_y")
    syn_y = _labels(synthetic_y, len(syn), len(names), "synthetic_y")
    xy = pca_2d(np.concatenate([real, syn]))
    real_xy, syn_xy = xy[:len(real)], xy[len(real):]
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    # Colours over the classes present (a client holds a few of many): neighbours stay distinct.
    present = sorted(set(real_y.tolist()) | set(syn_y.tolist()))
    colours = dict(zip(present, _colours(len(present))))
    handles = []
    for c in present:
        name = names[c]
        r, s = real_xy[real_y == c], syn_xy[syn_y == c]
        if len(r):
            ax.scatter(r[:, 0], r[:, 1], marker="o", s=18, alpha=0.6, color=colours[c])
        if len(s):
            ax.scatter(s[:, 0], s[:, 1], marker="x", s=28, color=colours[c])
        if len(r) or len(s):
            handles.append(Line2D([], [], color=colours[c], marker="s", ls="", label=name))
    handles += [Line2D([], [], color="grey", marker="o", ls="", label="real"),
                Line2D([], [], color="grey", marker="x", ls="", label="synthetic")]
    # Outside the axes: with many classes an inside legend would hide the points.
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1),
              ncol=1 + len(handles) // 26)
    ax.set(xlabel="PC 1", ylabel="PC 2", title=title)
    ax.grid(alpha=0.3)
    return png(fig)
