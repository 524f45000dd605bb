from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def class_targets(config_json: str, targets: Output[Dataset]) -> int:
    """CLIP text embedding of every class prompt; returns the number of classes."""
    from feda2v import stages

    return stages.class_targets(config_json, targets.path)["num_classes"]
