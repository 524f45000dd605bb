"""The pipeline's exit handler: generator losses, the results table, the final adapter (as a
file and an MLflow model), the generators and the report into the run's MLflow run, which it
ends FINISHED, FAILED or KILLED whatever happened before."""

from __future__ import annotations

import os
import tempfile

from feda2v.evaluation import report
from feda2v.federated import adapter_model
from feda2v.io import config as config_mod
from feda2v.io import runstate, storage, tracking
from feda2v.io.config import Config
from feda2v.io.log import get_logger
from feda2v.orchestration import runtime
from feda2v.orchestration.stages import checkpoint_dir, phase_plan_steps, targets_uri

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


def finish_tracking(config: Config | str, mlflow_run_id: str, run_key: str, state: str,
                    report_path: str, error: str = "") -> str:
    """The pipeline's exit handler: generator losses, results table (Markdown), final adapter
    and report to MLflow; the MLflow run ends FINISHED, FAILED or KILLED whatever happened
    before; the run's lease on the checkpoint folder is released."""
    cfg = config_mod.as_config(config)
    plan = runtime.plan(cfg)
    runstate.release(checkpoint_dir(cfg), run_key)
    run_id = tracking.ensure_run(cfg, mlflow_run_id, run_key, report.phases_param(plan))
    if "run1" in dict(plan):
        log_generator_losses(cfg, runstate.run_dir(cfg, run_key), run_id,
                             phase_plan_steps(plan, "run1"))
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
    except Exception:
        status = "FAILED"  # a model that could not be logged or registered fails the run ...
        raise
    finally:
        tracking.end_run(cfg, run_id, status)  # ... which still ends, whatever happened
    log.info("[Server] Pipeline %s: results of %d rounds written to %s; MLflow run %s %s",
             state.lower(), len(rows), report_path, run_id, status)
    return text
