"""What the two stream stages share: the training clip batch and the CAM + UNet forward (stream_stage.md §6-§7).

A batch holds B clips: the 16-frame chunk latents (B, 4, 16, h, w), its first 8 frames as conditioning pixels
(B·8, 3, S, S) in [-1, 1] (the CAM sees pixels, not latents, §6.1), the anchor frames (B, 3, S, S) in [-1, 1]
and the captions. The forward mirrors `stream.denoise_chunk`: CAM on the noisy first 8 latent frames, the
pixels and the 77 text tokens; UNet on all 16 frames with text77 ‖ image16 and the CAM residuals.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..chunks import COND_FRAMES, FRAMES_PER_CHUNK
from ..models import StreamingT2VNetwork
from .datasets import read_stream_clip, sample_stream_position


@dataclass
class StreamBatch:
    x0: torch.Tensor
    cond: torch.Tensor
    anchor: torch.Tensor
    captions: list[str]


def stream_batch(source, latents, rng, batch: int, device: torch.device) -> StreamBatch:
    positions = [sample_stream_position(source, rng) for _ in range(batch)]
    clips = [read_stream_clip(source, p) for p in positions]
    x0 = torch.stack([latents.latents(p.video, p.chunk_start, FRAMES_PER_CHUNK) for p in positions])
    cond = torch.cat([c.cond for c in clips]) * 2.0 - 1.0
    anchor = torch.stack([c.anchor for c in clips]) * 2.0 - 1.0
    return StreamBatch(x0.to(device), cond.to(device), anchor.to(device), [c.caption for c in clips])


def stream_forward(network: StreamingT2VNetwork, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                   image_tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """ε prediction (B, 4, 16, h, w) for noisy chunks x_t, per-sample timesteps t (B,), text (B, 77, D),
    image tokens (B, 16, D) and conditioning pixels (B·8, 3, S, S)."""
    residuals = network.unet(x_t[:, :, :COND_FRAMES], t, text, cond)
    return network.base_model(x_t, t, torch.cat([text, image_tokens], dim=1), residuals)


def injectors(network: StreamingT2VNetwork) -> torch.nn.ModuleList:
    """The 13 (toy: fewer) CAM injectors of the stream UNet as one module (for optimisers and checkpoints)."""
    unet = network.base_model
    return torch.nn.ModuleList(list(unet.cross_attention_merger_down_blocks) + [unet.cross_attention_merger_mid_block])
