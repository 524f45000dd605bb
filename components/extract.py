from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def extract(config_json: str, client_id: int) -> str:
    """Embed one client's clips under the storage root; returns the embeddings URI."""
    from feda2v import stages

    return stages.extract(config_json, client_id)
