"""The global adapter as an MLflow pyfunc model, logged as code (no pickle: loading it runs this
file, never unpickles). predict: audio token sequences [N, S, D_audio] float32 -> CLIP-space
vectors [N, D_clip]; the class whose target (artifact `class_targets`) is nearest by cosine is
the zero-shot prediction the accuracy metrics count."""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class AdapterModel(PythonModel):
    def load_context(self, context) -> None:
        from safetensors.torch import load_file

        from feda2v.federated.adapter import Adapter

        state = load_file(context.artifacts["adapter"])
        conf = context.model_config
        self.adapter = Adapter(state["mlp.0.weight"].shape[1], state["query"].shape[-1],
                               tuple(conf["adapter_hidden_dims"]), conf["adapter_heads"])
        self.adapter.load_state_dict(state)
        self.adapter.eval()

    def predict(self, context, model_input, params=None):
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        if x.dim() != 3:
            raise ValueError(f"expected audio token sequences [N, S, D], got shape {tuple(x.shape)}")
        with torch.no_grad():
            return self.adapter(x).numpy()


mlflow.models.set_model(AdapterModel())
