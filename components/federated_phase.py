from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def federated_phase(config_json: str, compiled: str, global_rounds: int,
                    generator_training_rounds: int, client_ids: list, settings: dict, phase: str, run_key: str,
                    mlflow_run_id: str, ready: list, adapter: Output[Model],
                    metrics: Output[Metrics]) -> float:
    """Every round of one federated phase for every client: FedAvg (and, in Run 2, global
    training on the pooled synthetic samples) each round; resumes after the last finished round
    on retry. `ready`: the per-client tasks it waits for. Returns the final accuracy."""
    from feda2v.orchestration import runtime, stages

    cfg = runtime.resolve(config_json, compiled, global_rounds, generator_training_rounds,
                          client_ids, settings)
    result = stages.federated_phase(cfg, phase, run_key, mlflow_run_id, adapter.path)
    metrics.log_metric("accuracy", result["accuracy"])
    return result["accuracy"]
