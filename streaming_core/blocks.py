"""Convolutional building blocks of the ModelScope UNet3D (diffusers parameter names).

Frames are folded into the batch: tensors are (B·F, C, H, W), batch-major (index b·F + f).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_sinusoid(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal timestep features, cosine half first (flip_sin_to_cos=True, shift 0; stream_stage.md §3.2).

    timesteps: (B,) -> (B, dim) float32, frequencies exp(-ln(10000)·i/(dim/2)).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedding(nn.Module):
    """`linear_1 -> SiLU -> linear_2`."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv, + time embedding, GroupNorm-SiLU-conv, 1x1 shortcut when channels change."""

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class TemporalConvLayer(nn.Module):
    """Four `GroupNorm -> SiLU -> [Dropout] -> Conv3d k=(3,1,1)` stages over frames, residual.

    Keys: `conv1.{0,2}`, `conv{2,3,4}.{0,3}` (index 2 of stages 2-4 is the dropout, inactive at inference).
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()

        def stage(with_dropout: bool) -> nn.Sequential:
            layers: list[nn.Module] = [nn.GroupNorm(groups, channels), nn.SiLU()]
            if with_dropout:
                layers.append(nn.Dropout(0.0))
            layers.append(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))
            return nn.Sequential(*layers)

        self.conv1 = stage(False)
        self.conv2 = stage(True)
        self.conv3 = stage(True)
        self.conv4 = stage(True)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        n, c, h, w = x.shape
        x5 = x.view(n // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)  # (B, C, F, H, W)
        y = self.conv4(self.conv3(self.conv2(self.conv1(x5))))
        return (x5 + y).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class Downsample2D(nn.Module):
    """Stride-2 3x3 convolution (`conv`). `padding` = 1 (diffusers) or (2, 1) (MS-Vid2Vid-XL: 2 rows top and
    bottom, 1 column left and right)."""

    def __init__(self, channels: int, padding: int | tuple[int, int] = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest 2x (or to `size`) upsampling followed by a 3x3 convolution (`conv`).

    `crop_rows=True` (MS-Vid2Vid-XL): nearest 2x, then the first and the last row are dropped (h -> 2h − 2), then
    the conv; `size` must not be given then.
    """

    def __init__(self, channels: int, crop_rows: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.crop_rows = crop_rows

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if self.crop_rows:
            if size is not None:
                raise ValueError("the row-cropping upsampler has a fixed geometry; no target size is accepted")
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")[:, :, 1:-1]
        elif size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
