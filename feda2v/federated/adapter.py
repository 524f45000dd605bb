"""The adapter: audio tokens [B, S, D_audio] -> one vector in CLIP text space [B, D_clip].
The model clients train and the server averages, readable top to bottom."""

from __future__ import annotations

import torch
from torch import nn


class Adapter(nn.Module):
    """Per-token MLP into CLIP space, then attention pooling with one learned query."""

    def __init__(self, audio_dim: int, clip_dim: int, hidden_dims=(1024, 2048), heads: int = 8):
        super().__init__()
        if clip_dim % heads:
            raise ValueError(f"adapter_heads ({heads}) must divide the CLIP dimension ({clip_dim})")
        layers, width = [], audio_dim
        for h in hidden_dims:
            layers += [nn.Linear(width, h), nn.GELU()]
            width = h
        layers.append(nn.Linear(width, clip_dim))
        self.mlp = nn.Sequential(*layers)
        self.query = nn.Parameter(torch.randn(1, 1, clip_dim) * 0.02)
        self.pool = nn.MultiheadAttention(clip_dim, heads, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.mlp(tokens)                                   # [B, S, D_clip]
        q = self.query.expand(x.shape[0], -1, -1)              # [B, 1, D_clip]
        pooled, _ = self.pool(q, x, x, need_weights=False)
        return pooled.squeeze(1)                               # [B, D_clip]
