"""Down, mid and up stages of the UNet3D (diffusers `CrossAttnDownBlock3D`, `DownBlock3D`,
`UNetMidBlock3DCrossAttn`, `UpBlock3D`, `CrossAttnUpBlock3D`), chosen by name.

Every stage works on (B·F, C, H, W) features; `context` is (B, L, D), shared by the F frames of a sample.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import Transformer2D, TransformerTemporal
from .blocks import (Downsample2D, ResnetBlock2D, TemporalConvLayer, TimestepEmbedding, Upsample2D,
                     timestep_sinusoid)
from .config import ApmConfig, UNet3DConfig


def _transformers(channels: int, cfg: UNet3DConfig, apm: ApmConfig | None):
    heads = channels // cfg.attention_head_dim
    spatial = Transformer2D(channels, heads, cfg.attention_head_dim, cfg.cross_attention_dim,
                            cfg.norm_num_groups, apm)
    temporal = TransformerTemporal(channels, heads, cfg.attention_head_dim, cfg.norm_num_groups)
    return spatial, temporal


class DownBlock3D(nn.Module):
    """`layers` x (resnet -> temporal conv [-> spatial transformer -> temporal transformer]) [-> downsample].

    Returns the output and the tuple of skip features (one per layer, plus the downsampler's output).
    """

    def __init__(self, in_channels: int, out_channels: int, cfg: UNet3DConfig, cross_attention: bool,
                 add_downsample: bool, apm: ApmConfig | None) -> None:
        super().__init__()
        temb = cfg.time_embed_dim
        self.resnets = nn.ModuleList()
        self.temp_convs = nn.ModuleList()
        for i in range(cfg.layers_per_block):
            cin = in_channels if i == 0 else out_channels
            self.resnets.append(ResnetBlock2D(cin, out_channels, temb, cfg.norm_num_groups, cfg.norm_eps))
            self.temp_convs.append(TemporalConvLayer(out_channels, cfg.norm_num_groups))
        if cross_attention:
            pairs = [_transformers(out_channels, cfg, apm) for _ in range(cfg.layers_per_block)]
            self.attentions = nn.ModuleList(p[0] for p in pairs)
            self.temp_attentions = nn.ModuleList(p[1] for p in pairs)
        else:
            self.attentions = None
            self.temp_attentions = None
        padding = (2, 1) if cfg.resampler_geometry == "ms_vid2vid" else 1
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding)]) if add_downsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int):
        skips = []
        for i, (resnet, temp_conv) in enumerate(zip(self.resnets, self.temp_convs)):
            x = temp_conv(resnet(x, temb), num_frames)
            if self.attentions is not None:
                x = self.attentions[i](x, context, num_frames)
                x = self.temp_attentions[i](x, num_frames)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, tuple(skips)


class MidBlock3D(nn.Module):
    """resnet -> temporal conv -> [spatial transformer -> temporal transformer -> resnet -> temporal conv]."""

    def __init__(self, channels: int, cfg: UNet3DConfig, apm: ApmConfig | None) -> None:
        super().__init__()
        temb = cfg.time_embed_dim
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(channels, channels, temb, cfg.norm_num_groups, cfg.norm_eps) for _ in range(2)]
        )
        self.temp_convs = nn.ModuleList([TemporalConvLayer(channels, cfg.norm_num_groups) for _ in range(2)])
        spatial, temporal = _transformers(channels, cfg, apm)
        self.attentions = nn.ModuleList([spatial])
        self.temp_attentions = nn.ModuleList([temporal])

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int):
        x = self.temp_convs[0](self.resnets[0](x, temb), num_frames)
        x = self.attentions[0](x, context, num_frames)
        x = self.temp_attentions[0](x, num_frames)
        return self.temp_convs[1](self.resnets[1](x, temb), num_frames)


class UpBlock3D(nn.Module):
    """`layers+1` x (concat skip -> resnet -> temporal conv [-> transformers]) [-> upsample]."""

    def __init__(self, in_channels: int, prev_channels: int, out_channels: int, cfg: UNet3DConfig,
                 cross_attention: bool, add_upsample: bool, apm: ApmConfig | None) -> None:
        super().__init__()
        layers = cfg.layers_per_block + 1
        temb = cfg.time_embed_dim
        self.resnets = nn.ModuleList()
        self.temp_convs = nn.ModuleList()
        for i in range(layers):
            skip_channels = in_channels if i == layers - 1 else out_channels
            cin = prev_channels if i == 0 else out_channels
            self.resnets.append(
                ResnetBlock2D(cin + skip_channels, out_channels, temb, cfg.norm_num_groups, cfg.norm_eps)
            )
            self.temp_convs.append(TemporalConvLayer(out_channels, cfg.norm_num_groups))
        if cross_attention:
            pairs = [_transformers(out_channels, cfg, apm) for _ in range(layers)]
            self.attentions = nn.ModuleList(p[0] for p in pairs)
            self.temp_attentions = nn.ModuleList(p[1] for p in pairs)
        else:
            self.attentions = None
            self.temp_attentions = None
        crop = cfg.resampler_geometry == "ms_vid2vid"
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, crop)]) if add_upsample else None

    def forward(self, x: torch.Tensor, skips: tuple[torch.Tensor, ...], temb: torch.Tensor,
                context: torch.Tensor, num_frames: int, upsample_size: tuple[int, int] | None):
        for i, (resnet, temp_conv) in enumerate(zip(self.resnets, self.temp_convs)):
            x = torch.cat([x, skips[-1 - i]], dim=1)
            x = temp_conv(resnet(x, temb), num_frames)
            if self.attentions is not None:
                x = self.attentions[i](x, context, num_frames)
                x = self.temp_attentions[i](x, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


def build_down_blocks(cfg: UNet3DConfig, apm: ApmConfig | None) -> nn.ModuleList:
    blocks = nn.ModuleList()
    out_channels = cfg.block_out_channels[0]
    for i, kind in enumerate(cfg.down_block_types):
        in_channels, out_channels = out_channels, cfg.block_out_channels[i]
        if kind not in ("CrossAttnDownBlock3D", "DownBlock3D"):
            raise ValueError(f"unknown down block type {kind!r}; expected CrossAttnDownBlock3D or DownBlock3D")
        final = i == len(cfg.block_out_channels) - 1
        blocks.append(DownBlock3D(in_channels, out_channels, cfg, kind == "CrossAttnDownBlock3D",
                                  not final, apm))
    return blocks


def build_up_blocks(cfg: UNet3DConfig, apm: ApmConfig | None) -> nn.ModuleList:
    blocks = nn.ModuleList()
    rev = list(reversed(cfg.block_out_channels))
    out_channels = rev[0]
    for i, kind in enumerate(cfg.up_block_types):
        if kind not in ("CrossAttnUpBlock3D", "UpBlock3D"):
            raise ValueError(f"unknown up block type {kind!r}; expected CrossAttnUpBlock3D or UpBlock3D")
        prev_channels, out_channels = out_channels, rev[i]
        in_channels = rev[min(i + 1, len(rev) - 1)]
        final = i == len(rev) - 1
        blocks.append(UpBlock3D(in_channels, prev_channels, out_channels, cfg, kind == "CrossAttnUpBlock3D",
                                not final, apm))
    return blocks


class EncoderStem(nn.Module):
    """`conv_in`, `time_embedding`, `transformer_in`, `down_blocks`, `mid_block`: shared by the UNet and the
    CAM branch (which is a trained copy of exactly these parts)."""

    def _build_encoder(self, cfg: UNet3DConfig, apm: ApmConfig | None) -> None:
        c0 = cfg.block_out_channels[0]
        self.cfg = cfg
        self.conv_in = nn.Conv2d(cfg.in_channels, c0, 3, padding=1)
        self.time_embedding = TimestepEmbedding(cfg.time_proj_dim, cfg.time_embed_dim)
        self.transformer_in = TransformerTemporal(c0, cfg.transformer_in_num_heads, cfg.transformer_in_head_dim,
                                                  cfg.norm_num_groups)
        self.down_blocks = build_down_blocks(cfg, apm)
        self.mid_block = MidBlock3D(cfg.block_out_channels[-1], cfg, apm)

    def time_embed(self, timestep: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """timestep: scalar or (B,) -> (B, time_embed_dim). The sinusoid is computed in float32."""
        t = timestep.reshape(-1).to(self.conv_in.weight.device)
        if t.numel() == 1:
            t = t.expand(batch)
        return self.time_embedding(timestep_sinusoid(t, self.cfg.time_proj_dim).to(dtype))

    def run_down(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int,
                 extra: torch.Tensor | None = None):
        """x: (B·F, C_in, H, W) -> (h, skips): 1 + sum of per-block skips, in diffusers order.

        `extra` (same shape as the stem output) is added after `transformer_in` (the CAM's frame encoding).
        """
        h = self.transformer_in(self.conv_in(x), num_frames)
        if extra is not None:
            h = h + extra
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb, context, num_frames)
            skips.extend(block_skips)
        return h, skips
