from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(config_json: str, round_num: int, step: int, adapter: Input[Model],
             targets: Input[Dataset], mlflow_run_id: str,
             metrics: Output[Metrics]) -> float:
    """Zero-shot accuracy of the global adapter on every client's test clips."""
    from feda2v import stages

    accuracy = stages.evaluate(config_json, round_num, step, adapter.path, targets.path,
                               mlflow_run_id)
    metrics.log_metric("global_accuracy", accuracy)
    return accuracy
