"""The CAM branch (checkpoint prefix `unet.`, stream_stage.md §6.2): a trained copy of the UNet's stem, down
and mid blocks plus the conditioning-frame encoder, producing the 12 + 1 features the injectors consume."""
from __future__ import annotations

import torch

from .cam import CondEmbedding
from .config import CamConfig, UNet3DConfig
from .unet_blocks import EncoderStem


class CamBranch(EncoderStem):
    """forward(z_cond (B, 4, F_c, h, w), timestep, text (B, 77, D), cond_frames (B·F_c, 3, H, W) in [-1, 1])
    -> 12 down residuals + 1 mid feature, each (B·F_c, C_i, h_i, w_i).

    Only text tokens reach the CAM (no image tokens, no APM); its output convolutions are identities and the
    conditioning scale is 1.
    """

    def __init__(self, unet: UNet3DConfig, cam: CamConfig) -> None:
        super().__init__()
        self.cam_cfg = cam
        self._build_encoder(unet, apm=None)
        self.controlnet_cond_embedding = CondEmbedding(cam.cond_embedding_channels, unet.block_out_channels[0])

    def forward(self, z_cond: torch.Tensor, timestep: torch.Tensor, text_context: torch.Tensor,
                cond_frames: torch.Tensor) -> list[torch.Tensor]:
        b, c, f, h, w = z_cond.shape
        if cond_frames.shape[0] != b * f:
            raise ValueError(f"CAM got {cond_frames.shape[0]} conditioning frames for {b} samples of {f} latent "
                             f"frames; expected {b * f}")
        temb = self.time_embed(timestep, b, z_cond.dtype).repeat_interleave(f, dim=0)
        x = z_cond.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        cond = self.controlnet_cond_embedding(cond_frames.to(z_cond.dtype))
        x, skips = self.run_down(x, temb, text_context, f, extra=cond)
        mid = self.mid_block(x, temb, text_context, f)
        return skips + [mid]
