from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def global_train(config_json: str, round_num: int, step: int, aggregated: Input[Model],
                 previous: Input[Model], synthetic: Input[Dataset], targets: Input[Dataset],
                 mlflow_run_id: str, adapter: Output[Model]) -> float:
    """Train the global adapter on the pooled synthetic samples; returns the loss."""
    from feda2v import stages

    return stages.global_train(config_json, round_num, step, aggregated.path, previous.path,
                               synthetic.path, targets.path, adapter.path, mlflow_run_id)
