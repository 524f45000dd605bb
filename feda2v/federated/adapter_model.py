"""Logging the global adapter as an MLflow model (the model's own code is mlflow_model.py)."""

from __future__ import annotations

import os
import shutil
import tempfile

from feda2v import patches
from feda2v.io import tracking
from feda2v.io.config import Config


def log_adapter_model(cfg: Config, run_id: str, adapter_file: str, targets_file: str = "") -> str:
    """The global adapter as an MLflow model (pyfunc, logged as code from federated/mlflow_model.py,
    with the feda2v modules it imports beside it: MODEL_CODE) with a signature and an input example, registered under
    `mlflow_register_model` when that is set. Returns the model URI."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec
    from safetensors.torch import load_file

    from feda2v.federated import mlflow_model

    state = load_file(adapter_file)
    audio_dim = state["mlp.0.weight"].shape[1]
    # A shape example, not data: a client's real embeddings must not reach the server's store.
    example = np.random.default_rng(0).standard_normal((2, 4, audio_dim)).astype(np.float32)
    f = cfg.feda2v
    conf = {"adapter_hidden_dims": list(f.adapter_hidden_dims),
            "adapter_heads": f.adapter_heads}
    f32 = np.dtype(np.float32)
    # Any batch size and any sequence length: the adapter pools the tokens.
    signature = ModelSignature(Schema([TensorSpec(f32, (-1, -1, audio_dim))]),
                               Schema([TensorSpec(f32, (-1, state["query"].shape[-1]))]))
    uri = tracking.ready(cfg)  # the fail-fast settings and the store lock
    with tempfile.TemporaryDirectory() as code, patches.mlflow_fluent_uris(uri), \
            mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="global_adapter", python_model=mlflow_model.__file__,
            artifacts=dict(adapter=adapter_file, **({"class_targets": targets_file}
                                                    if targets_file else {})),
            code_paths=[_model_code(code)], model_config=conf,
            signature=signature, input_example=example,
            pip_requirements=[f"torch=={_version('torch')}", f"mlflow=={_version('mlflow')}",
                              f"safetensors=={_version('safetensors')}", "numpy"],
            registered_model_name=cfg.mlflow_register_model or None)
    return info.model_uri


# What the logged model imports of feda2v (tests/test_mlflow_model.py checks the imports). The
# whole package was 80 files, one upload each: 20 s against a basic-auth server.
MODEL_CODE = ("__init__.py", "federated/__init__.py", "federated/adapter.py")


def package_dir() -> str:
    from feda2v.federated import mlflow_model

    return os.path.dirname(os.path.dirname(os.path.abspath(mlflow_model.__file__)))


def _model_code(folder: str) -> str:
    """A feda2v package under `folder` holding MODEL_CODE only; returns its path."""
    for name in MODEL_CODE:
        dest = os.path.join(folder, "feda2v", name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(package_dir(), name), dest)
    return os.path.join(folder, "feda2v")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
