"""A run's report (HTML and PNG figures) built from its MLflow run alone, so that the exit
handler and `feda2v report --run-id` draw the same thing, on a laptop or for a cluster's run.

What it reads of the run: the metric histories (accuracy, generator and adapter losses), the
latest quality numbers, the `feda2v.phases` param, and the inputs the exit handler logs under
report/: partition.json, confusion.json and each client's projection_client_{i}.png.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import tempfile

from feda2v.evaluation import figures, report
from feda2v.evaluation.report_html import QUALITY_EXPLAINED, img_tag, quality_section, write_page
from feda2v.io import runstate, tracking
from feda2v.io.config import Config

FOLDER = runstate.REPORT_FOLDER  # the run's artifact folder for all of it
PARTITION = "partition.json"  # {"classes", "train": [[rows per class] per client], "test"}
CONFUSION = "confusion.json"  # {"classes", "matrix": [[true row, predicted column]]}
PROJECTION = re.compile(r"projection_client_(\d+)\.png")
_NODE = re.compile(r"(?:train|eval)/node_(\d+)/(generator_loss|adapter_loss|accuracy)")
_QUALITY = re.compile(r"quality/node_(\d+)/(?:(.+)/)?([^/]+)")


def collect(cfg: Config, run_id: str) -> dict:
    """Everything the report draws, read from the MLflow run `run_id` (in cfg's tracking store)."""
    record = tracking.run_record(cfg, run_id)
    curve_keys = [k for k in record["metrics"] if _NODE.fullmatch(k)] + [
        k for k in ("eval/global_accuracy", "server/global_train_loss") if k in record["metrics"]]
    _, history = tracking.run_info(cfg, run_id, curve_keys)
    quality: dict[str, dict] = {}
    for key, value in record["metrics"].items():
        m = _QUALITY.fullmatch(key)
        if m:
            client, group, name = m.group(1), m.group(2) or "overall", m.group(3)
            quality.setdefault(client, {}).setdefault(group, {})[name] = value
    data = {"run_id": run_id, "name": record["name"], "status": record["status"],
            "plan": report.parse_phases(record["params"].get("feda2v.phases", "")),
            "history": history, "quality": dict(sorted(quality.items(), key=lambda kv: int(kv[0]))),
            "partition": None, "confusion": None, "projections": {}}
    with tempfile.TemporaryDirectory() as tmp:
        logged = tracking.list_artifacts(cfg, run_id, FOLDER)  # one listing, then what is there
        for path in logged:
            name = path.rpartition("/")[2]
            m = PROJECTION.fullmatch(name)
            if name in (PARTITION, CONFUSION):
                with open(tracking.download_artifact(cfg, run_id, path, tmp)) as f:
                    data["partition" if name == PARTITION else "confusion"] = json.load(f)
            elif m:
                with open(tracking.download_artifact(cfg, run_id, path, tmp), "rb") as f:
                    data["projections"][int(m.group(1))] = f.read()
    return data


def _curves(history: dict, metric: str, extra: dict[str, str]) -> figures.Curves:
    """client i's `metric` as "client i", plus the `extra` {key: label} series."""
    out = {}
    for key, points in history.items():
        m = _NODE.fullmatch(key)
        if m and m.group(2) == metric:
            out[f"client {m.group(1)}"] = points
    out.update({label: history[key] for key, label in extra.items() if history.get(key)})
    return out


def render(data: dict, out_dir: str) -> dict[str, str]:
    """Write report.html and its PNG figures (also embedded in the HTML, so the file alone can
    be mailed or shown by the KFP UI) under `out_dir`. Returns {name: path}, "html" included."""
    os.makedirs(out_dir, exist_ok=True)
    boundaries = figures.phase_boundaries(data["plan"])
    history = data["history"]
    pngs = {
        "accuracy": figures.curves_png(
            _curves(history, "accuracy", {"eval/global_accuracy": "global"}),
            "Zero-shot accuracy on the held-out rows: global and per client", "accuracy",
            boundaries, bold="global"),
        "generator_loss": figures.curves_png(
            _curves(history, "generator_loss", {}), "Generator loss per client (Run 1 rounds)",
            "generator loss", boundaries),
        "adapter_loss": figures.curves_png(
            _curves(history, "adapter_loss", {"server/global_train_loss": "server (global)"}),
            "Adapter training loss per client, and the server's global training",
            "adapter loss", boundaries),
    }
    if data["partition"]:
        p = data["partition"]
        pngs["partition"] = figures.partition_png(p["train"], p["classes"])
    if data["confusion"]:
        c = data["confusion"]
        pngs["confusion"] = figures.confusion_png(c["matrix"], c["classes"])
    for client, picture in sorted(data["projections"].items()):
        pngs[f"projection_client_{client}"] = picture
    paths = {}
    for name, picture in pngs.items():
        paths[name] = os.path.join(out_dir, f"{name}.png")
        with open(paths[name], "wb") as f:
            f.write(picture)

    def figure(name: str, alt: str) -> str:
        return img_tag(base64.b64encode(pngs[name]).decode("ascii"), alt) if name in pngs else ""

    title = f"FedA2V run {data['name']}"
    n = len(data["partition"]["train"]) if data["partition"] else len(data["quality"])
    rows = report.results_rows(data["plan"], history, n)
    parts = [f"<h1>{html.escape(title)}</h1>",
             (f'<p class="identity">MLflow run {html.escape(data["run_id"])} · '
             f'{html.escape(str(data["status"]).lower())} · '
             f'{html.escape(report.phases_param(data["plan"]))}</p>'),
             "<h2>Accuracy</h2>", figure("accuracy", "accuracy per round"),
             "<h2>Losses</h2>", figure("generator_loss", "generator loss per client"),
             figure("adapter_loss", "adapter loss per client"),
             "<h2>Partition</h2>",
             figure("partition", "clients x classes") or "<p>No partition was recorded.</p>",
             "<h2>Final global adapter: confusion matrix</h2>",
             figure("confusion", "confusion matrix") or
             "<p>No final adapter to evaluate (the run did not finish).</p>",
             "<h2>Real vs synthetic embeddings, per client</h2>"]
    projections = [figure(f"projection_client_{c}", f"client {c}")
                   for c in sorted(data["projections"])]
    parts += projections or [("<p>No client drew one (no synthetic samples, or quality metrics "
                             "off).</p>")]
    parts += ["<h2>Synthetic sample quality</h2>", f"<p>{QUALITY_EXPLAINED}</p>"]
    parts += [quality_section(client, q) for client, q in data["quality"].items()] or [
        "<p>No quality report was computed.</p>"]
    if rows:
        parts += ["<h2>Rounds</h2>", "<pre>" + html.escape(report.results_table(rows)) + "</pre>"]
    paths["html"] = write_page(os.path.join(out_dir, "report.html"), title, parts)
    return paths
