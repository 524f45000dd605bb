
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def aggregate(config_json: str, round_num: int, step: int, updates: Input[list[Artifact]],
              targets: Input[Dataset], mlflow_run_id: str, adapter: Output[Model],
              synthetic: Output[Dataset]) -> int:
    """Weighted FedAvg + synthetic pooling; returns the number of pooled synthetic samples."""
    from feda2v import stages

    result = stages.aggregate(config_json, round_num, step, [u.path for u in updates],
                              targets.path, adapter.path, synthetic.path, mlflow_run_id)
    synthetic.metadata.update(result)
    return result["synthetic_samples"]
