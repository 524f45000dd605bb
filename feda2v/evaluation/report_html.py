"""A self-contained HTML report of an experiment: accuracy curves, per-client synthetic-sample
quality tables and a PCA view of real vs synthetic embeddings.

Inputs are plain Python data (lists, dicts, arrays or tensors), so the report can be rebuilt
from saved results without the training stack. Plots are PNG files next to the HTML and are
also embedded as base64 data URIs, so the HTML alone can be mailed or uploaded as an artifact.
"""

from __future__ import annotations

import base64
import html
import itertools
import os

import numpy as np
from matplotlib.figure import Figure

from feda2v.evaluation import figures
from feda2v.evaluation.metrics import CONSISTENCY_SHARE, MEMORISATION_THRESHOLD, SPREAD_RANGE

_QUALITY_COLUMNS = [
    ("density", "density"), ("coverage", "coverage"), ("spread_ratio", "spread"),
    ("class_consistency", "consistency"), ("class_consistency_real", "consistency (real)"),
    ("memorisation_ratio", "memorisation ratio"), ("frechet", "Fréchet"),
    ("frechet_real_baseline", "Fréchet real baseline"),
    ("cosine_to_real_mean", "cosine to real mean"), ("k", "k"), ("dp_epsilon", "DP ε"),
]
QUALITY_EXPLAINED = (
    "Measured by each client against its held-out rows, which the generator never saw; spread and "
    "consistency against all its real rows. "
    "<strong>density</strong> and <strong>coverage</strong> (Naeem et al. 2020): about 1 and close to 1 when the "
    "synthetic samples follow the real distribution; density well above 1 means samples crowd "
    "the class centres. <strong>spread</strong>: median distance to the class centre over the real "
    "rows' (each to the mean of the others) "
    f"(outside {SPREAD_RANGE[0]}–{SPREAD_RANGE[1]}: collapsed or scattered). "
    "<strong>consistency</strong>: share of samples nearest to their own class mean, next to the real "
    "rows' own, each real row measured against means it took no part in "
    f"(below {CONSISTENCY_SHARE:.0%} of it: off-class). <strong>memorisation ratio</strong>: "
    "distance to the closest training row over the held-out rows' (about 1 for fresh data; "
    f"below {MEMORISATION_THRESHOLD}: flagged as memorised). Fréchet distance next to the "
    "training-vs-held-out baseline; the seed's cosine to the class mean is shown, not judged "
    "on: noise and other classes pass it.")
CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
.pass{color:#176b1c}.fail{color:#b00020;font-weight:bold}
.leak{background:#ffd7d7;font-weight:bold}.overall{font-weight:bold}img{max-width:100%}"""


def _fmt(value, spec: str = ".3f") -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    return format(float(value), spec)


def _save(fig: Figure, path: str) -> str:
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


def phase_boundaries(results: list[dict]) -> list[tuple[float, str]]:
    """(x, "run1 → run2") wherever a variant's history changes phase: half a step before the
    first round of the new phase, where the chart draws a line."""
    found: dict[float, dict[str, set]] = {}
    for res in results:
        history = sorted(res.get("history", []), key=lambda h: h["step"])
        for before, after in itertools.pairwise(history):
            if before.get("phase") != after.get("phase"):
                into = found.setdefault(after["step"] - 0.5, {})
                into.setdefault(str(before.get("phase")), set()).add(str(after.get("phase")))
    return [(x, ", ".join(f"{a} → {' / '.join(sorted(b))}" for a, b in sorted(into.items())))
            for x, into in sorted(found.items())]


def _accuracy_plot(results: list[dict], path: str) -> str:
    # Figure() without pyplot: renders through Agg, no GUI backend or global state involved.
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for x, label in phase_boundaries(results):
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.annotate(label, (x, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                    fontsize="small", color="grey", ha="right", va="bottom")
    for res in results:
        points = [(h["step"], h["accuracy"]) for h in res.get("history", [])
                  if h.get("accuracy") is not None]
        if points:
            steps, accs = zip(*sorted(points))
            ax.plot(steps, accs, marker=".", label=str(res["variant"]))
    if ax.lines:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no accuracy recorded", ha="center", va="center",
                transform=ax.transAxes)
    ax.set(xlabel="global step (round across phases)", ylabel="global accuracy",
           title="Accuracy per ablation variant")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def privacy_points(results: list[dict]) -> list[tuple[float, float]]:
    """(ε, final accuracy) of the synthetic variant trained with DP-SGD at each ε, plus the
    plain one at ε = ∞, sorted by ε."""
    points = [(r["dp_epsilon"], r.get("final", r.get("final_accuracy"))) for r in results
              if r.get("dp_epsilon")]
    plain = next((r for r in results if r["variant"] == "synthetic"), None)
    if points and plain is not None:
        points.append((float("inf"), plain.get("final", plain.get("final_accuracy"))))
    return sorted(points)


def _privacy_plot(points: list[tuple[float, float]], path: str) -> str:
    """Accuracy against ε; ∞ (no DP) is drawn one step right of the largest finite ε."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    finite = [e for e, _ in points if e != float("inf")]
    right = max(finite) * 2 if finite else 1.0
    xs = [e if e != float("inf") else right for e, _ in points]
    ax.plot(xs, [a for _, a in points], marker="o")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{e:g}" if e != float("inf") else "∞" for e, _ in points])
    ax.set(xlabel="ε of the clients' generator training (δ as configured)",
           ylabel="final global accuracy", title="Accuracy against privacy budget")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _projection_plot(proj: dict, path: str) -> str:
    data = figures.projection_png(proj["real_x"], proj["real_y"], proj["synthetic_x"],
                                  proj["synthetic_y"], list(proj["class_names"]))
    with open(path, "wb") as f:
        f.write(data)
    return base64.b64encode(data).decode("ascii")


def _results_table(results: list[dict]) -> str:
    """Final accuracy is the mean of the last rounds (experiment.summarise), not a best round
    picked on the test set."""
    rows = []
    for res in results:
        cells = [str(res["variant"]), str(len(res.get("history", []))),
                 _fmt(res.get("final", res.get("final_accuracy"))),
                 str(res.get("rounds_to_target") or "-")]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    target = next((r["target"] for r in results if r.get("target")), None)
    head = ("<tr><th>variant</th><th>rounds</th><th>final (mean of the last rounds)</th>"
            f"<th>rounds to {_fmt(target)}</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _quality_cell(key: str, value) -> str:
    text = html.escape(_fmt(value))
    if key == "memorisation_ratio" and value is not None and value < MEMORISATION_THRESHOLD:
        return (f'<td class="leak" title="below {MEMORISATION_THRESHOLD}">{text} '
                "memorised?</td>")
    return f"<td>{text}</td>"


def _health_cell(entry: dict) -> str:
    """The verdicts; from MLflow only their number is known (quality/…/flags)."""
    flags = entry.get("flags")
    if flags is None:
        return "<td>–</td>"
    if isinstance(flags, (int, float)):
        flags = [] if flags == 0 else [f"{int(flags)} flag(s)"]
    if not flags:
        return '<td class="pass">pass</td>'
    return f'<td class="fail">{html.escape(", ".join(flags))}</td>'


def quality_section(client, quality: dict) -> str:
    title = f"<h3>Client {html.escape(str(client))}</h3>"
    if not quality:
        return f"{title}<p>No synthetic samples were produced for this client.</p>"
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in _QUALITY_COLUMNS)
    health = "verdict"
    rows = []
    # Classes first, the pooled "overall" entry last.
    names = [n for n in quality if n != "overall"]
    if "overall" in quality:
        names.append("overall")
    for name in names:
        entry = quality[name]
        cells = "".join(_quality_cell(key, entry.get(key)) for key, _ in _QUALITY_COLUMNS)
        cls = ' class="overall"' if name == "overall" else ""
        rows.append(f"<tr><td{cls}>{html.escape(str(name))}</td>{cells}"
                    f"{_health_cell(entry)}</tr>")
    return (f"{title}<table><tr><th>class</th>{head}<th>{health}</th></tr>"
            f"{''.join(rows)}</table>")


def write_page(path: str, title: str, parts: list[str]) -> str:
    """A self-contained HTML page (the reports' style) of `parts` at `path`; returns `path`."""
    doc = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}'
           f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)
    return path


def img_tag(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'


def write_report(out_dir: str, results: list[dict], quality: dict[int, dict],
                 projection: dict | None, title: str = "FedA2V experiment",
                 identity: dict[str, str] | None = None,
                 links: dict[str, str] | None = None) -> dict[str, str]:
    """Write report.html plus accuracy.png (and projection.png when `projection` is given) to
    `out_dir`; return their paths under "html", "accuracy_png" and "projection_png".

    Clients appear in `quality`'s order; an empty per-client dict means no synthetic samples.
    `identity` (seed, config hash, date, commit, run id…) is shown under the title, so a
    report found on its own says what made it.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {"accuracy_png": os.path.join(out_dir, "accuracy.png")}
    who = " · ".join(f"{html.escape(k)} {html.escape(str(v))}" for k, v in (identity or {}).items())
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="identity">{who}</p>' if who else "",
             "<h2>Ablation results</h2>",
             _results_table(results), img_tag(_accuracy_plot(results, paths["accuracy_png"]),
                                           "accuracy per variant")]
    if links:
        items = "".join(f'<li><a href="{html.escape(path)}">{html.escape(variant)}</a></li>'
                        for variant, path in links.items())
        parts.append("<p>Each variant's own run report (accuracy and losses per client, "
                     f"partition, confusion matrix, real vs synthetic per client):</p><ul>{items}</ul>")
    parts.append("<h2>Synthetic sample quality</h2>")
    parts.append(f"<p>{QUALITY_EXPLAINED}</p>")
    if not quality:
        parts.append("<p>No quality report was computed.</p>")
    parts += [quality_section(client, per_class) for client, per_class in quality.items()]
    points = privacy_points(results)
    if points:
        paths["privacy_png"] = os.path.join(out_dir, "privacy.png")
        rows = "".join(f"<tr><td>{'∞' if e == float('inf') else f'{e:g}'}</td>"
                       f"<td>{_fmt(a)}</td></tr>" for e, a in points)
        parts += ["<h2>Accuracy against privacy (DP-SGD generators)</h2>",
                  ("<p>Each client's generator trained with DP-SGD at the given ε (the clients' "
                  "measured ε is in the quality tables as dp_epsilon); ∞ is the generator "
                  "trained without DP.</p>"),
                  f"<table><tr><th>ε</th><th>final accuracy</th></tr>{rows}</table>",
                  img_tag(_privacy_plot(points, paths["privacy_png"]), "accuracy against ε")]
    if projection is not None:
        paths["projection_png"] = os.path.join(out_dir, "projection.png")
        parts += ["<h2>Real vs synthetic embeddings (PCA)</h2>",
                  img_tag(_projection_plot(projection, paths["projection_png"]), "PCA projection")]
    paths["html"] = write_page(os.path.join(out_dir, "report.html"), title, parts)
    return paths
