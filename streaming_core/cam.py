"""CAM, the Conditional Attention Module (stream_stage.md §6): the conditioning-frame encoder, the branch
(a trained copy of the UNet encoder run on the first 8 latent frames) and the per-pixel temporal
cross-attention injectors that feed its features into the UNet's skips.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import sdpa_heads
from .config import CamConfig, UNet3DConfig


class InjectorAttention(nn.Module):
    """`to_q/to_k/to_v` without bias, `to_out.0` with bias."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.to_out[0](sdpa_heads(self.to_q(x), self.to_k(y), self.to_v(y), self.heads))


class InjectorTransformer(nn.Module):
    """Parameters of one injector (`temporal_transformer.{norm, proj_in, attention, proj_out}`)."""

    def __init__(self, channels: int, cfg: CamConfig) -> None:
        super().__init__()
        if channels % cfg.injector_head_dim:
            raise ValueError(f"injector width {channels} is not a multiple of the head width {cfg.injector_head_dim}")
        self.norm = nn.GroupNorm(cfg.injector_norm_groups, channels, eps=cfg.injector_norm_eps)
        self.proj_in = nn.Linear(channels, channels)
        self.attention = InjectorAttention(channels, channels // cfg.injector_head_dim)
        self.proj_out = nn.Linear(channels, channels)


class Injector(nn.Module):
    """S' = S + proj_out(Attn(proj_in(GroupNorm(S)), CAM feature)) per pixel over frames (§6.3).

    skip: (B·F, C, h, w) with F = 16; cam: (B·F_c, C, h, w) with F_c = 8; batch: B -> (B·F, C, h, w).
    GroupNorm statistics run over all F frames of a sample; keys/values are the raw CAM features.
    With `proj_out` zero (its initial value) the injector is the identity.
    """

    def __init__(self, channels: int, cfg: CamConfig) -> None:
        super().__init__()
        self.temporal_transformer = InjectorTransformer(channels, cfg)

    def forward(self, skip: torch.Tensor, cam: torch.Tensor, batch: int) -> torch.Tensor:
        tt = self.temporal_transformer
        n, c, h, w = skip.shape
        b = batch
        f, fc = n // b, cam.shape[0] // b
        s5 = skip.view(b, f, c, h, w).permute(0, 2, 1, 3, 4)  # (B, C, F, h, w)
        q = tt.norm(s5).permute(0, 3, 4, 2, 1).reshape(b * h * w, f, c)  # (B·h·w, F, C)
        kv = cam.view(b, fc, c, h, w).permute(0, 3, 4, 1, 2).reshape(b * h * w, fc, c)  # (B·h·w, F_c, C)
        r = tt.proj_out(tt.attention(tt.proj_in(q), kv))
        r = r.view(b, h, w, f, c).permute(0, 3, 4, 1, 2).reshape(n, c, h, w)
        return skip + r


class CondEmbedding(nn.Module):
    """E_cond (§6.1): per-frame convs on pixels in [-1, 1], 3 stride-2 stages, no normalisation.

    (N, 3, H, W) -> (N, C0, H/8, W/8). SiLU after every conv except `conv_out`.
    """

    def __init__(self, channels: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels[0], 3, padding=1)
        blocks = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            blocks.append(nn.Conv2d(cin, cin, 3, padding=1))
            blocks.append(nn.Conv2d(cin, cout, 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 3, padding=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(frames))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)
