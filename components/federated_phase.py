from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def federated_phase(config_json: str, compiled: str, global_rounds: int,
                    generator_training_rounds: int, client_ids: list, settings: dict, phase: str,
                    run_key: str, mlflow_run_id: str, embeddings: Input[list[Dataset]],
                    targets: Input[Dataset], adapter: Output[Model], metrics: Output[Metrics],
                    conditions: Output[Dataset],
                    synthetic: Optional[Input[list[Dataset]]] = None,  # noqa: UP045 - KFP reads it
                    start: Optional[Input[Model]] = None) -> float:  # noqa: UP045
    """Every round of one federated phase for every client: FedAvg (and, in Run 2, global
    training on the pooled synthetic samples) each round; resumes after the last finished round
    on retry. Reads each client's `embeddings`, the class `targets` (and in Run 2 the
    `synthetic` samples and the Run 1 adapter it `start`s from); writes Run 1's class
    `conditions` for the generator tasks. Returns the final accuracy."""
    from feda2v.orchestration import runtime, tasks

    cfg = runtime.resolve(config_json, compiled, global_rounds, generator_training_rounds,
                          client_ids, settings)
    return tasks.federated_phase_task(cfg, phase, run_key, mlflow_run_id, adapter, metrics,
                                       conditions, embeddings, targets, synthetic, start)
