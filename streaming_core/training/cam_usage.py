"""How much a trained StreamingT2V model uses its CAM: the ε loss on held-out clips with the CAM residuals as
computed vs with them zeroed (everything else identical: same clips, noise, timesteps, text, no anchor tokens).

A CAM that learned to continue the conditioning frames makes the prediction of the chunk much better (the first
8 chunk frames are the conditioning frames themselves, the next 8 follow from them); equal losses mean the
extension chunks are new samples from the text, not continuations, whatever the architecture could do.
"""
from __future__ import annotations

import torch

from ..chunks import COND_FRAMES
from ..models import StreamModel
from ..schedules import DiffusionSchedule
from ..tokenizer import ClipTokenizer
from .datasets import ToyWorldSource, read_stream_clip, sample_stream_position, step_rng
from .latent_pool import encode_frames

PROBE_TIMESTEPS = (50, 200, 500)


@torch.no_grad()
def cam_usage(model: StreamModel, clips: int = 8, timesteps: tuple[int, ...] = PROBE_TIMESTEPS,
              source_seed: int = 10, seed: int = 0) -> dict:
    """ε-MSE over `clips` toy-world stream clips (one object, solid background; scene seeds disjoint from the
    toy training data) at each timestep, with and without the CAM residuals.

    Returns {"timesteps", "with_cam", "without_cam" (lists, per timestep), "mean_with", "mean_without",
    "reduction" (1 − mean_with / mean_without: 0 = the CAM changes nothing, 1 = perfect)}.
    """
    net = model.network
    size = model.config.sample_size
    source = ToyWorldSource(videos=clips, frames=48, size=size, seed=source_seed, simple=True)
    rng = step_rng(seed, 0)
    positions = [sample_stream_position(source, rng) for _ in range(clips)]
    pixels = [read_stream_clip(source, p) for p in positions]
    x0 = torch.stack([encode_frames(net.vae, c.chunk).permute(1, 0, 2, 3) for c in pixels])
    cond = torch.cat([c.cond for c in pixels]) * 2.0 - 1.0
    text = net.text_encoder(ClipTokenizer()([c.caption for c in pixels]))
    tokens = torch.zeros(clips, model.config.apm.num_image_tokens, text.shape[2])
    context = torch.cat([text, tokens], dim=1)
    schedule = DiffusionSchedule.scaled_linear()
    gen = torch.Generator().manual_seed(seed)
    with_cam, without_cam = [], []
    for t in timesteps:
        eps = torch.randn(x0.shape, generator=gen)
        a = schedule.alphas_cumprod[t]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        steps = torch.full((clips,), t)
        residuals = net.unet(x_t[:, :, :COND_FRAMES], steps, text, cond)
        zeros = [torch.zeros_like(r) for r in residuals]
        with_cam.append(float((net.base_model(x_t, steps, context, residuals) - eps).pow(2).mean()))
        without_cam.append(float((net.base_model(x_t, steps, context, zeros) - eps).pow(2).mean()))
    mean_with, mean_without = sum(with_cam) / len(with_cam), sum(without_cam) / len(without_cam)
    return {"timesteps": list(timesteps), "with_cam": with_cam, "without_cam": without_cam,
            "mean_with": mean_with, "mean_without": mean_without, "reduction": 1.0 - mean_with / mean_without}
