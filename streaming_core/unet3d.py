"""The ModelScope text-to-video UNet3D with the StreamingT2V injection points (stream_stage.md §3, §6.3, §7.5).

The same class is the MS-Vid2Vid-XL refiner UNet (refine_stage.md §3.5) when built vanilla with
`UNet3DConfig(resampler_geometry="ms_vid2vid")`; official refiner names map onto it through `refiner_names`.

Two modes, same class:
* vanilla (`streaming=False`): the plain ModelScope UNet (first chunk), 77-token context, diffusers key names;
* streaming (`streaming=True`, the `base_model.*` of `streaming_t2v.ckpt`): 13 CAM injectors
  (`cross_attention_merger_*`) and APM mixing parameters in the 16 spatial cross-attentions; context
  (B, 77+16, D).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cam import Injector
from .config import ApmConfig, CamConfig, UNet3DConfig
from .refine_geometry import check_refiner_latent_size
from .unet_blocks import EncoderStem, build_up_blocks


class UNet3D(EncoderStem):
    """forward(sample (B, 4, F, h, w), timestep, context (B, L, D), cam) -> (B, 4, F, h, w): ε-prediction for the
    stream stage, v-prediction with the MS-Vid2Vid-XL refiner weights (geometry `ms_vid2vid`, whose latent sizes
    are checked before any work: h ≡ 2, w ≡ 0 (mod 8) with three downsamplers)."""

    def __init__(self, cfg: UNet3DConfig, streaming: bool = False, cam: CamConfig | None = None,
                 apm: ApmConfig | None = None) -> None:
        super().__init__()
        self.streaming = streaming
        cam = cam or CamConfig()
        apm = (apm or ApmConfig()) if streaming else None
        self._build_encoder(cfg, apm)
        self.up_blocks = build_up_blocks(cfg, apm)
        c0 = cfg.block_out_channels[0]
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, c0, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(c0, cfg.out_channels, 3, padding=1)
        if streaming:
            self.cross_attention_merger_down_blocks = nn.ModuleList(
                Injector(c, cam) for c in self.skip_channels()
            )
            self.cross_attention_merger_mid_block = Injector(cfg.block_out_channels[-1], cam)

    def skip_channels(self) -> list[int]:
        """Channels of the skip features in order (stream_stage.md §6.3 table): the stem, then every layer and
        downsampler output of each down block."""
        cfg = self.cfg
        channels = [cfg.block_out_channels[0]]
        for i, block in enumerate(self.down_blocks):
            channels += [cfg.block_out_channels[i]] * (len(block.resnets) + (block.downsamplers is not None))
        return channels

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                cam_residuals: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """sample: (B, C, F, h, w); timestep: scalar or (B,); context: (B, L, D) (L = 77 vanilla, 77+16 streaming);
        cam_residuals: 12 down features + 1 mid feature, each (B·F_cond, C_i, h_i, w_i), required in streaming mode.
        """
        b, c, f, h, w = sample.shape
        vid2vid = self.cfg.resampler_geometry == "ms_vid2vid"
        if vid2vid:
            check_refiner_latent_size(h, w, downsamplers=len(self.cfg.block_out_channels) - 1)
        if self.streaming and cam_residuals is None:
            raise ValueError("the streaming UNet needs the CAM residuals (12 down + 1 mid); none were given")
        if not self.streaming and cam_residuals is not None:
            raise ValueError("CAM residuals were given to a vanilla UNet (it has no injectors)")
        # 1. time
        temb = self.time_embed(timestep, b, sample.dtype).repeat_interleave(f, dim=0)  # (B·F, D_t)
        # 2. pre-process + down
        x = sample.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        x, skips = self.run_down(x, temb, context, f)
        # 3. mid
        x = self.mid_block(x, temb, context, f)
        # 4. CAM injection: skips and mid output replaced after the whole down pass (§6.3)
        if cam_residuals is not None:
            if len(cam_residuals) != len(skips) + 1:
                raise ValueError(f"expected {len(skips) + 1} CAM residuals, got {len(cam_residuals)}")
            mergers = self.cross_attention_merger_down_blocks
            skips = [inj(s, r, b) for inj, s, r in zip(mergers, skips, cam_residuals)]
            x = self.cross_attention_merger_mid_block(x, cam_residuals[-1], b)
        # 5. up
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            size = tuple(skips[-1].shape[-2:]) if skips and not vid2vid else None
            x = block(x, tuple(block_skips), temb, context, f, size)
        # 6. post-process
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return x.reshape(b, f, -1, h, w).permute(0, 2, 1, 3, 4)
