from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def extract(config_json: str, compiled: str, client_ids: list, client_id: int) -> str:
    """Embed one client's clips under the storage root; returns the embeddings URI."""
    from feda2v import runtime, stages

    return stages.extract(runtime.resolve(config_json, compiled, client_ids=client_ids), client_id)
