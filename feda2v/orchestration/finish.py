"""The pipeline's exit handler: the results table, the final adapter (as a file and an MLflow
model), the generators and the report (HTML and figures: evaluation.run_report) into the run's
MLflow run, which it ends FINISHED, FAILED or KILLED whatever happened before."""

from __future__ import annotations

import html
import json
import os
import tempfile

from feda2v.evaluation import report, run_report
from feda2v.federated import adapter_model
from feda2v.io import config as config_mod
from feda2v.io import runstate, storage, tracking
from feda2v.io.config import Config
from feda2v.io.log import get_logger
from feda2v.orchestration import runtime, stages
from feda2v.orchestration.stages import checkpoint_dir, targets_uri

log = get_logger()


def final_adapter_uri(cfg: Config, run_key: str, plan: list[tuple[str, int]]) -> str:
    phase, rounds = plan[-1]
    return runstate.round_uri(runstate.run_dir(cfg, run_key), phase, rounds)


def log_generator_losses(cfg: Config, run: str, run_id: str, first: int = 1) -> None:
    """Run 1's per-round generator losses (written by the per-client generator tasks under the
    run folder `run`) as the seed's train/node_{i}/generator_loss, Run 1 starting at step
    `first`."""
    by_step: dict[int, dict] = {}
    for i in range(config_mod.num_clients(cfg)):
        uri = runstate.generator_losses_uri(run, i)
        if storage.exists(uri):
            for r, loss in runstate.read_losses(uri).items():
                by_step.setdefault(first + r - 1, {})[f"train/node_{i}/generator_loss"] = loss
    for step, metrics in sorted(by_step.items()):
        tracking.log_metrics(cfg, run_id, metrics, step)


def _log_generators(cfg: Config, run_id: str, run_key: str, tmp: str) -> None:
    """The generator each client trained in this run (its own copy under the run folder, never
    the shared checkpoint folder another run may have written since), as MLflow artifacts
    generators/client_{i}_generator.pt, with their sha256 as tags."""
    from feda2v.federated.generators.checkpoints import checkpoint_uri

    run = runstate.run_dir(cfg, run_key)
    for i in range(config_mod.num_clients(cfg)):
        uri = runstate.generator_state_uri(run, i)
        if storage.exists(uri):
            data = storage.read_bytes(uri)
            local = os.path.join(tmp, os.path.basename(checkpoint_uri("", i)))
            storage.write_bytes(local, data)
            tracking.log_artifact(cfg, run_id, local, "generators")
            tracking.set_tags(cfg, run_id, {f"generators.client_{i}.sha256": runstate.sha256(data)})


def _log_run_artifacts(cfg: Config, run_id: str, run_key: str, plan, state: str,
                       text: str) -> None:
    """The final adapter (file and MLflow model), the generators and the results table."""
    with tempfile.TemporaryDirectory() as tmp:
        adapter = final_adapter_uri(cfg, run_key, plan)
        if state == "SUCCEEDED" and storage.exists(adapter):
            adapter_file = os.path.join(tmp, "global_adapter.safetensors")
            storage.write_bytes(adapter_file, storage.read_bytes(adapter))
            tracking.log_artifact(cfg, run_id, adapter_file, "model")
            targets_file = ""
            if storage.exists(targets_uri(cfg, run_key)):  # phase execution keeps them there
                targets_file = os.path.join(tmp, "class_targets.safetensors")
                storage.write_bytes(targets_file, storage.read_bytes(targets_uri(cfg, run_key)))
            model_uri = adapter_model.log_adapter_model(cfg, run_id, adapter_file, targets_file)
            log.info("[Server] Global adapter logged as MLflow model %s%s", model_uri,
                     f", registered as {cfg.mlflow_register_model!r}"
                     if cfg.mlflow_register_model else "")
        if "run1" in dict(plan):
            _log_generators(cfg, run_id, run_key, tmp)
        report_file = os.path.join(tmp, "results.md")
        storage.write_bytes(report_file, text.encode())
        tracking.log_artifact(cfg, run_id, report_file, "report")


def report_uri(cfg: Config, run_key: str) -> str:
    """The results table of a run, written by its exit handler."""
    return storage.join(runstate.run_dir(cfg, run_key), "report.md")


def _report_inputs(cfg: Config, run: str, adapter: str, targets: str, tmp: str) -> list[str]:
    """What the report draws that is not a metric, as files under `tmp` to log: the partition
    (from the clients' embeddings), the confusion matrix of the final `adapter` (when there is
    one) and the projections the clients' generation tasks drew under the run folder `run`."""
    files = []
    if all(storage.exists(stages.embeddings_uri(cfg, i))
           for i in range(config_mod.num_clients(cfg))):
        files.append(os.path.join(tmp, run_report.PARTITION))
        with open(files[-1], "w") as f:
            json.dump(stages.partition_counts(cfg), f)
    if adapter and storage.exists(adapter) and storage.exists(targets):
        matrix = stages.confusion(cfg, adapter, targets)
        storage.write_json(storage.join(run, run_report.FOLDER, run_report.CONFUSION), matrix)
        files.append(os.path.join(tmp, run_report.CONFUSION))
        with open(files[-1], "w") as f:
            json.dump(matrix, f)
    for i in range(config_mod.num_clients(cfg)):
        if storage.exists(runstate.projection_uri(run, i)):
            files.append(os.path.join(tmp, os.path.basename(runstate.projection_uri(run, i))))
            storage.write_bytes(files[-1], storage.read_bytes(runstate.projection_uri(run, i)))
    return files


def write_report(cfg: Config, run_id: str, run: str, adapter: str, targets: str,
                 html_path: str = "") -> dict[str, str]:
    """Log the report's inputs, render the report from the MLflow run (what `feda2v report`
    renders), log its HTML and figures, and keep them under the run folder's report/ (and at
    `html_path`, the KFP HTML artifact). `adapter`: the final global adapter ("" when the run
    did not finish). Returns {name: path in storage}."""
    with tempfile.TemporaryDirectory() as tmp:
        for file in _report_inputs(cfg, run, adapter, targets, tmp):
            tracking.log_artifact(cfg, run_id, file, run_report.FOLDER)
        out = os.path.join(tmp, "out")
        paths = run_report.render(run_report.collect(cfg, run_id), out)
        stored = {}
        for name, path in paths.items():
            tracking.log_artifact(cfg, run_id, path, run_report.FOLDER)
            stored[name] = storage.join(run, run_report.FOLDER, os.path.basename(path))
            if not run_report.PROJECTION.fullmatch(os.path.basename(path)):  # already there
                storage.write_bytes(stored[name], storage.read_bytes(path))
        if html_path:
            os.makedirs(os.path.dirname(os.path.abspath(html_path)), exist_ok=True)
            storage.write_bytes(html_path, storage.read_bytes(paths["html"]))
    return stored


def confusion_of(cfg: Config, run_key: str) -> dict | None:
    """The confusion matrix the exit handler computed ({"classes", "matrix"}), or None."""
    uri = storage.join(runstate.report_dir(cfg, run_key), run_report.CONFUSION)
    return storage.read_json(uri) if storage.exists(uri) else None


def finish_tracking(config: Config | str, mlflow_run_id: str, run_key: str, state: str,
                    report_path: str, error: str = "", html_path: str = "") -> str:
    """The pipeline's exit handler: results table (Markdown), final adapter and the report
    (HTML and figures, also at `html_path`) to MLflow; the MLflow run ends FINISHED, FAILED
    or KILLED whatever happened before; the run's lease on the checkpoint folder is released.
    (The generator tasks logged their losses as each round ended.)"""
    cfg = config_mod.as_config(config)
    plan = runtime.plan(cfg)
    runstate.release(checkpoint_dir(cfg), run_key)
    run_id = tracking.ensure_run(cfg, mlflow_run_id, run_key, report.phases_param(plan))
    n = config_mod.num_clients(cfg)
    _, history = tracking.run_info(cfg, run_id, report.result_keys(n))
    rows = report.results_rows(plan, history, n)
    text = f"# FedA2V results ({state.lower()})\n\n" + report.results_table(rows, markdown=True) + "\n"
    if error:
        text += f"\n{error}\n"
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    with open(report_path, "w") as f:
        f.write(text)
    status = tracking.final_status(state)
    try:
        # Beside the run's state in storage too: a cluster's pipeline root may be out of reach.
        storage.write_bytes(report_uri(cfg, run_key), text.encode())
        _log_run_artifacts(cfg, run_id, run_key, plan, state, text)
        try:
            adapter = final_adapter_uri(cfg, run_key, plan) if state == "SUCCEEDED" else ""
            figures = write_report(cfg, run_id, runstate.run_dir(cfg, run_key), adapter,
                                   targets_uri(cfg, run_key), html_path)
            log.info("[Server] Report with %d figures: %s", len(figures) - 1, figures["html"])
        except (OSError, ValueError) as e:  # the numbers are logged: a figure must not fail it
            log.warning("[Server] The HTML report could not be drawn: %s", e)
            if html_path:
                storage.write_bytes(html_path, f"<p>The report could not be drawn: "
                                               f"{html.escape(str(e))}</p>".encode())
    except Exception:
        status = "FAILED"  # a model that could not be logged or registered fails the run ...
        raise
    finally:
        tracking.end_run(cfg, run_id, status)  # ... which still ends, whatever happened
    log.info("[Server] Pipeline %s: results of %d rounds written to %s; MLflow run %s %s",
             state.lower(), len(rows), report_path, run_id, status)
    return text
