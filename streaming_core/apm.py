"""APM anchor resampler (checkpoint prefix `resampler.`, stream_stage.md §7.3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ApmConfig


class ImageResampler(nn.Module):
    """Pooled image embedding(s) -> image tokens.

    embeds: (B, F_a, E) (or (B, E)) -> mean over F_a -> Linear E->inner -> SiLU -> Linear inner->N·D
    -> (B, N, D) with N = 16 tokens and D = the cross-attention width.
    """

    def __init__(self, cfg: ApmConfig, context_dim: int) -> None:
        super().__init__()
        self.num_tokens = cfg.num_image_tokens
        self.context_dim = context_dim
        self.context_embedding = nn.ModuleList([
            nn.Linear(cfg.image_embed_dim, cfg.resampler_inner_dim),
            nn.SiLU(),
            nn.Linear(cfg.resampler_inner_dim, cfg.num_image_tokens * context_dim),
        ])

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        if embeds.dim() == 3:
            embeds = embeds.mean(dim=1)
        x = self.context_embedding[2](F.silu(self.context_embedding[0](embeds)))
        return x.view(embeds.shape[0], self.num_tokens, self.context_dim)
