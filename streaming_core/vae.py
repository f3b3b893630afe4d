"""SD-style KL autoencoder with diffusers `AutoencoderKL` parameter names (stream_stage.md §5).

A native implementation (no diffusers import) of the architecture diffusers builds from
`down_block_types=("DownEncoderBlock2D",) * n`, `up_block_types=("UpDecoderBlock2D",) * n`: GroupNorm (eps 1e-6) +
SiLU resnets, a stride-2 conv with (0, 1, 0, 1) zero padding to downsample, nearest ×2 + conv to upsample, one
single-head self-attention in each mid block. The tests compare it with `diffusers.AutoencoderKL`.

State-dict names relative to `vae.`::

    encoder.{conv_in, down_blocks.i.resnets.j.*, down_blocks.i.downsamplers.0.conv, mid_block.*, conv_norm_out,
             conv_out}
    decoder.{conv_in, mid_block.*, up_blocks.i.resnets.j.*, up_blocks.i.upsamplers.0.conv, conv_norm_out, conv_out}
    quant_conv, post_quant_conv
    *.mid_block.attentions.0.{group_norm, to_q, to_k, to_v, to_out.0}   (Linear weights (C, C))

Decoding follows the official stream stage: `x = D(z / scaling_factor)` one slice of frames at a time (the
official pipeline enables VAE slicing, one frame per slice), then `frames = clamp(x·0.5 + 0.5, 0, 1)`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import VaeConfig

NORM_EPS = 1e-6  # every GroupNorm of the diffusers VAE encoder/decoder
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps the log-variance to this range


class ResnetBlock(nn.Module):
    """`shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`; 1×1 `conv_shortcut` when channels change."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=NORM_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


class Downsample(nn.Module):
    """Halve H and W: zero-pad right/bottom by one, then a 3×3 conv with stride 2 (`downsamplers.0.conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour ×2, then a 3×3 conv (`upsamplers.0.conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlockAttention(nn.Module):
    """Single-head spatial self-attention with a residual: `x + to_out(attn(group_norm(x)))`, scale `C**-0.5`."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.group_norm(x).view(n, c, h * w).transpose(1, 2)  # (N, HW, C)
        q = self.to_q(tokens).unsqueeze(1)  # (N, 1, HW, C): one head
        k = self.to_k(tokens).unsqueeze(1)
        v = self.to_v(tokens).unsqueeze(1)
        y = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(c)).squeeze(1)  # (N, HW, C)
        y = self.to_out[0](y).transpose(1, 2).reshape(n, c, h, w)
        return x + y


class MidBlock(nn.Module):
    """`resnets.0` → `attentions.0` → `resnets.1` at the lowest resolution."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([MidBlockAttention(channels, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock(nn.Module):
    """`num_layers` resnets then an optional `Downsample` (diffusers `DownEncoderBlock2D`)."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_layers)
        )
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock(nn.Module):
    """`num_layers` resnets then an optional `Upsample` (diffusers `UpDecoderBlock2D`)."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_layers)
        )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    """Pixels `(N, in_channels, H, W)` → posterior moments `(N, 2·latent_channels, H/f, W/f)`, f = 2^(n−1)."""

    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        channels = config.block_out_channels
        groups = config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock(
                channels[max(i - 1, 0)], channels[i], config.layers_per_block, groups, downsample=i < len(channels) - 1
            )
            for i in range(len(channels))
        )
        self.mid_block = MidBlock(channels[-1], groups)
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(channels[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latents `(N, latent_channels, h, w)` → pixels `(N, out_channels, h·f, w·f)` in about [-1, 1]."""

    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        channels = tuple(reversed(config.block_out_channels))
        groups = config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, channels[0], 3, padding=1)
        self.mid_block = MidBlock(channels[0], groups)
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock(
                channels[max(i - 1, 0)],
                channels[i],
                config.layers_per_block + 1,
                groups,
                upsample=i < len(channels) - 1,
            )
            for i in range(len(channels))
        )
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(channels[-1], config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Vae(nn.Module):
    """The stream-stage VAE (§5): frames ↔ scaled latents, with diffusers `AutoencoderKL` names.

    Runs in the dtype of its parameters; the caller decides the decode precision (fp32 or bf16 recommended, §5).
    Builds on any device, including `torch.device("meta")`.
    """

    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        if config.latent_channels <= 0 or not config.block_out_channels:
            raise ValueError(f"invalid VaeConfig {config}: need latent channels and at least one block")
        for width in config.block_out_channels:
            if width % config.norm_num_groups:
                raise ValueError(
                    f"block_out_channels {config.block_out_channels} must be multiples of norm_num_groups "
                    f"{config.norm_num_groups}"
                )
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)

    @classmethod
    def from_config(cls, config: VaeConfig) -> "Vae":
        return cls(config)

    @property
    def downsample_factor(self) -> int:
        """Pixel size of one latent cell (8 for the released VAE)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def decode(self, latents: torch.Tensor, slice_size: int = 1) -> torch.Tensor:
        """Scaled latents → frames in [0, 1] (§5).

        Args:
            latents: `(N, latent_channels, h, w)`, already multiplied by `scaling_factor` (the UNet's space).
            slice_size: frames decoded per call of the decoder (1 = official VAE slicing; memory stays flat).

        Returns:
            `(N, out_channels, h·f, w·f)` = `clamp(D(z / scaling_factor)·0.5 + 0.5, 0, 1)`, dtype of the parameters.
        """
        if latents.dim() != 4 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"expected latents (N, {self.config.latent_channels}, h, w), got {tuple(latents.shape)}; "
                "flatten (B, C, F, h, w) to (B·F, C, h, w) first"
            )
        if slice_size < 1:
            raise ValueError(f"slice_size must be ≥ 1, got {slice_size}")
        dtype = self.post_quant_conv.weight.dtype
        frames = []
        for z in latents.split(slice_size):
            z = z.to(dtype) / self.config.scaling_factor
            x = self.decoder(self.post_quant_conv(z))
            frames.append((x * 0.5 + 0.5).clamp(0.0, 1.0))
        return torch.cat(frames)

    def encode(
        self,
        frames: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = False,
        slice_size: int = 1,
    ) -> torch.Tensor:
        """Frames in [0, 1] → scaled latents (for training and SDEdit-style uses; the stream stage does not encode).

        Args:
            frames: `(N, in_channels, H, W)` in [0, 1], H and W multiples of the downsampling factor.
            generator: random source for `sample=True`; the noise is drawn in fp32 on the generator's device and
                then moved, so it does not depend on the accelerator.
            sample: draw `mean + std·ε` from the posterior instead of returning its mean.
            slice_size: frames encoded per call of the encoder.

        Returns:
            `(N, latent_channels, H/f, W/f)` latents multiplied by `scaling_factor`.
        """
        if frames.dim() != 4 or frames.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected frames (N, {self.config.in_channels}, H, W) in [0, 1], got {tuple(frames.shape)}"
            )
        f = self.downsample_factor
        if frames.shape[-2] % f or frames.shape[-1] % f:
            raise ValueError(f"frame size {tuple(frames.shape[-2:])} is not a multiple of {f}; resize or pad first")
        dtype = self.quant_conv.weight.dtype
        means, stds = [], []
        for x in frames.split(slice_size):
            moments = self.quant_conv(self.encoder(x.to(dtype) * 2.0 - 1.0))
            mean, logvar = moments.chunk(2, dim=1)
            means.append(mean)
            stds.append(torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE)))
        latents = torch.cat(means)
        if sample:
            device = generator.device if generator is not None else torch.device("cpu")
            noise = torch.randn(latents.shape, generator=generator, device=device, dtype=torch.float32)
            latents = latents + torch.cat(stds) * noise.to(latents.device, latents.dtype)
        return latents * self.config.scaling_factor
