from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_generator(config_json: str, compiled: str, global_rounds: int,
                    generator_training_rounds: int, client_ids: list, settings: dict, client_id: int,
                    run_key: str, mlflow_run_id: str, checkpoint: Output[Model],
                    conditions: Optional[Input[Dataset]] = None) -> str:  # noqa: UP045 - KFP reads it
    """One client's generator over every Run 1 round, from the Run 1 phase's class
    `conditions`; checkpoints under the seed's names, the latest also as the `checkpoint`
    artifact; each round's loss to MLflow as the round ends. Returns its result as JSON."""
    import json

    from feda2v.orchestration import runtime, tasks

    cfg = runtime.resolve(config_json, compiled, global_rounds, generator_training_rounds,
                          client_ids, settings)
    return json.dumps(tasks.train_generator_task(cfg, client_id, run_key, checkpoint,
                                                  conditions, mlflow_run_id))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def generate(config_json: str, compiled: str, global_rounds: int,
             generator_training_rounds: int, client_ids: list, settings: dict, client_id: int,
             run_key: str, samples: Output[Dataset],
             checkpoint: Optional[Input[Model]] = None) -> str:  # noqa: UP045 - KFP reads it
    """One client's synthetic samples for every Run 2 round, from one read of its generator
    (the `checkpoint` artifact of Run 1 in this pipeline, else the published checkpoint).
    Returns the checkpoint it used (round, sha256) as JSON."""
    import json

    from feda2v.orchestration import runtime, tasks

    cfg = runtime.resolve(config_json, compiled, global_rounds, generator_training_rounds,
                          client_ids, settings)
    return json.dumps(tasks.generate_task(cfg, client_id, run_key, checkpoint, samples))
