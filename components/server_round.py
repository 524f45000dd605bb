from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


# The server's side of a round (aggregate, global training, evaluation) as one task keeps the
# unrolled YAML small; no docstring or comments in the body for the same reason.
@dsl.component(base_image=IMAGE, install_kfp_package=False)
def server_round(config_json: str, round_num: int, step: int, phase: str,
                 updates: Input[list[Artifact]], previous: Input[Model], targets: Input[Dataset],
                 mlflow_run_id: str, adapter: Output[Model], synthetic: Output[Dataset],
                 metrics: Output[Metrics]) -> float:
    from feda2v import stages

    result = stages.server_round(config_json, round_num, step, phase,
                                 [u.path for u in updates], previous.path, targets.path,
                                 adapter.path, synthetic.path, mlflow_run_id)
    for key in ("accuracy", "synthetic_samples", "global_train_loss"):
        if key in result:
            metrics.log_metric(key, result[key])
    return result["accuracy"]
