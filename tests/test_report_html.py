"""The HTML experiment report: files, embedded plots, table formatting, escaping and PCA."""

from __future__ import annotations

import base64
import os
import re

import numpy as np
import pytest
import torch

from feda2v.evaluation.figures import pca_2d
from feda2v.evaluation.report_html import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _entry(cosine, flags, ratio, frechet=1.25, density=0.8):
    return {"cosine_to_real_mean": cosine, "flags": flags, "frechet": frechet,
            "frechet_real_baseline": 0.5, "density": density, "coverage": 0.6,
            "spread_ratio": 1.0, "class_consistency": 0.9, "class_consistency_real": 0.95,
            "memorisation_ratio": ratio, "k": 3}


RESULTS = [
    {"variant": "full", "final_accuracy": 0.8125,
     "history": [{"phase": "run1", "round": 1, "step": 1, "accuracy": 0.5},
                 {"phase": "run1", "round": 2, "step": 2, "accuracy": 0.875},
                 {"phase": "run2", "round": 1, "step": 3, "accuracy": 0.8125}]},
    {"variant": "no_generator", "final_accuracy": 0.4375,
     "history": [{"phase": "run1", "round": 1, "step": 1, "accuracy": 0.25},
                 {"phase": "run1", "round": 2, "step": 2, "accuracy": 0.4375}]},
]
QUALITY = {
    0: {"dog": _entry(0.91, [], 1.02),
        "<b>bold</b>": _entry(0.42, ["memorised", "collapsed"], 0.45, frechet=None,
                              density=None),
        "overall": _entry(0.66, ["memorised"], 0.95)},
    1: {},
}


def _projection(seq: bool = False):
    gen = torch.Generator().manual_seed(0)
    shape = (12, 3, 2) if seq else (12, 6)
    return {"real_x": torch.randn(*shape, generator=gen), "real_y": [0, 1, 2] * 4,
            "synthetic_x": np.random.default_rng(0).normal(size=(6, *shape[1:])),
            "synthetic_y": torch.tensor([0, 1, 2, 0, 1, 2]),
            "class_names": ["dog", "rain", "siren"]}


@pytest.fixture
def report(tmp_path):
    paths = write_report(str(tmp_path / "out"), RESULTS, QUALITY, _projection(),
                         title="Ablation <run>")
    with open(paths["html"], encoding="utf-8") as f:
        return paths, f.read()


def _assert_png(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000  # a rendered plot, not an empty canvas


def test_files_and_embedded_images(report, tmp_path):
    paths, doc = report
    assert set(paths) == {"html", "accuracy_png", "projection_png"}
    for key in ("accuracy_png", "projection_png"):
        assert os.path.dirname(paths[key]) == str(tmp_path / "out")
        _assert_png(paths[key])
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc)
    assert len(embedded) == 2
    # The embedded images are the files written alongside.
    with open(paths["accuracy_png"], "rb") as f:
        assert base64.b64decode(embedded[0]) == f.read()
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in embedded)


def test_results_table(report):
    _, doc = report
    assert "full" in doc and "no_generator" in doc
    # variant, rounds, final (last-k mean when summarised), rounds to target; no "best" column
    assert "<td>full</td><td>3</td><td>0.812</td><td>-</td>" in doc
    assert "<td>no_generator</td><td>2</td><td>0.438</td><td>-</td>" in doc
    assert "best" not in doc


def test_quality_tables(report):
    _, doc = report
    assert '<td class="pass">pass</td>' in doc  # dog: no verdict
    assert '<td class="fail">memorised, collapsed</td>' in doc
    assert '<td class="fail">memorised</td>' in doc  # overall
    # Ratio 0.45 < 0.5 is highlighted, 1.02 and 0.95 are not.
    assert re.search(r'<td class="leak"[^>]*>0\.450 memorised\?</td>', doc)
    assert doc.count('class="leak"') == 1
    assert "<td>1.020</td>" in doc and "<td>0.950</td>" in doc
    assert "<td>–</td>" in doc  # frechet and density are None for the "<b>" class
    # Escaped class name and title; the raw tag never reaches the page.
    assert "&lt;b&gt;bold&lt;/b&gt;" in doc and "<b>" not in doc
    assert "Ablation &lt;run&gt;" in doc and "<run>" not in doc
    # Classes come before the pooled overall row.
    assert doc.index("&lt;b&gt;bold") < doc.index('class="overall">overall<')
    assert "No synthetic samples were produced for this client." in doc
    assert doc.count("<h3>Client") == 2


def test_no_projection(tmp_path):
    paths = write_report(str(tmp_path), RESULTS, {}, None)
    assert "projection_png" not in paths
    assert not os.path.exists(tmp_path / "projection.png")
    _assert_png(paths["accuracy_png"])
    with open(paths["html"], encoding="utf-8") as f:
        doc = f.read()
    assert doc.count("<img") == 1 and "PCA" not in doc


def test_sequence_projection_and_bad_labels(tmp_path):
    paths = write_report(str(tmp_path), RESULTS, QUALITY, _projection(seq=True))
    _assert_png(paths["projection_png"])
    bad = _projection() | {"synthetic_y": [0, 1, 5, 0, 1, 2]}
    with pytest.raises(ValueError, match="synthetic_y labels"):
        write_report(str(tmp_path / "bad"), RESULTS, {}, bad)


def test_pca_on_a_line_has_no_second_component():
    t = np.linspace(-3, 5, 40)[:, None]
    direction = np.array([[1.0, -2.0, 0.5, 3.0]])
    xy = pca_2d(t @ direction + 7.0)
    assert xy.shape == (40, 2)
    assert np.allclose(xy[:, 1], 0, atol=1e-9)
    # The first component keeps all the spread: distances along the line are preserved.
    assert np.allclose(np.abs(xy[:, 0] - xy[0, 0]), (t[:, 0] - t[0, 0]) * np.linalg.norm(direction))


def test_pca_flattens_sequences_and_handles_tiny_inputs():
    x = np.random.default_rng(1).normal(size=(5, 2, 3))
    assert np.allclose(pca_2d(x), pca_2d(x.reshape(5, 6)))
    assert pca_2d(np.zeros((0, 4))).shape == (0, 2)
    one_feature = pca_2d(np.arange(4.0)[:, None])
    assert np.allclose(one_feature[:, 1], 0) and np.ptp(one_feature[:, 0]) == pytest.approx(3)


def test_the_accuracy_chart_marks_where_run2_starts():
    from feda2v.evaluation.report_html import phase_boundaries

    assert phase_boundaries(RESULTS) == [(2.5, "run1 → run2")]
    one_phase = [{"variant": "fedavg", "history": [{"phase": "fedavg", "step": s, "accuracy": 0.1}
                                                   for s in (1, 2, 3)]}]
    assert phase_boundaries(one_phase) == []
    both = [dict(RESULTS[0], variant=v, history=[dict(h, phase=p if h["phase"] == "run2" else
                                                      h["phase"]) for h in RESULTS[0]["history"]])
            for v, p in (("synthetic", "run2"), ("synthetic_only", "synthetic_only"))]
    assert phase_boundaries(both) == [(2.5, "run1 → run2 / synthetic_only")]


def test_the_results_table_needs_only_the_keys_it_fetches():
    """`feda2v run` and the exit handler fetch only report.result_keys (each metric history is a
    request, and half a second against a basic-auth MLflow): the table from those alone must be
    the table from every metric."""
    from feda2v.evaluation import report

    plan = [("run1", 2), ("run2", 2)]
    rng = np.random.default_rng(0)
    keys = report.result_keys(3) + ["eval/node_0/accuracy", "train/node_1/adapter_loss",
                                    "quality/node_0/dog/memorisation_ratio"]
    history = {k: [(s, float(rng.random())) for s in range(1, 5)] for k in keys}
    fetched = {k: v for k, v in history.items() if k in report.result_keys(3)}
    full = report.results_table(report.results_rows(plan, history, 3))
    assert report.results_table(report.results_rows(plan, fetched, 3)) == full
    assert "-" not in full.splitlines()[2]  # every cell filled: the keys are the real ones
