
from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def init_adapter(config_json: str, client_data_uris: list[str], targets: Input[Dataset],
                 adapter: Output[Model]) -> int:
    """The server's initial global adapter; returns its parameter count."""
    from feda2v import stages

    return stages.init_adapter(config_json, client_data_uris, targets.path, adapter.path)["parameters"]
