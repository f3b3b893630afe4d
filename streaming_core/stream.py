"""The stream stage loops: the first chunk (ModelScope T2V) and the CAM/APM-conditioned extension chunks
(stream_stage.md §1, §2, §8-§12).

Memory: only the current chunk lives on `device`; finished frames go to the CPU and out through
`events.on_frames` as soon as they are final; models return to `offload_device` when the loop ends.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from .chunks import COND_FRAMES, FRAMES_PER_CHUNK, NEW_FRAMES, chunk_prompts
from .events import NullEvents, StreamEvents
from .frames import check_frames
from .guidance import cfg_dual, cfg_single
from .models import BaseModel, StreamModel
from .noise import CpuNoise
from .samplers import ddim_step
from .schedules import DiffusionSchedule, leading_timesteps

logger = logging.getLogger("streaming_core")

GUIDANCE_MODES = ("single", "dual")
INIT_SAMPLERS = ("dpmpp_2m", "ddim")


class NonFiniteError(RuntimeError):
    """A chunk produced NaN/inf values; frames finished before it were already handed out."""


@contextmanager
def on_device(modules: Sequence[nn.Module], device: torch.device, offload: torch.device) -> Iterator[None]:
    """Move `modules` to `device` for the block and back to `offload` afterwards (also on errors/cancel)."""
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m in modules:
            m.to(offload)


@torch.no_grad()
def encode_text(model: StreamModel, texts: list[str], device: torch.device,
                offload: torch.device) -> torch.Tensor:
    """Prompts -> last hidden states (n, 77, D) on `device`, in the text encoder's dtype."""
    with on_device([model.text_encoder], device, offload):
        ids = model.tokenizer(texts).to(device)
        return model.text_encoder(ids)


@torch.no_grad()
def encode_anchor(model: StreamModel, anchor: torch.Tensor, device: torch.device,
                  offload: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor (3, S, S) in [0, 1] -> (null-image tokens, anchor tokens), each (1, 16, D) on `device`.

    The null image is all zeros in [-1, 1] space (mid-grey), passed through the same encoder and resampler
    (stream_stage.md §7.4).
    """
    if anchor.dim() != 3 or anchor.shape[0] != 3:
        raise ValueError(f"the anchor must be one (3, H, W) frame, got shape {tuple(anchor.shape)}")
    if not torch.isfinite(anchor).all():
        raise ValueError("the anchor frame contains NaN or infinite values")
    encoder = model.image_encoder
    with on_device([encoder, model.resampler], device, offload):
        img = (anchor.to(device, torch.float32) * 2.0 - 1.0)[None]
        embeds = encoder(torch.cat([torch.zeros_like(img), img]))  # (2, E) [null, anchor]
        tokens = model.resampler(embeds.to(model.resampler.context_embedding[0].weight.dtype))
    return tokens[0:1], tokens[1:2]


@dataclass
class ChunkConditioning:
    """Guidance rows of one chunk: contexts (R, 93, D) and the guidance combination."""

    context: torch.Tensor
    mode: str
    scales: tuple[float, ...]

    def combine(self, eps: torch.Tensor) -> torch.Tensor:
        if self.mode == "single":
            return cfg_single(eps[0:1], eps[1:2], self.scales[0])
        return cfg_dual(eps[0:1], eps[1:2], eps[2:3], self.scales[0], self.scales[1])


def chunk_conditioning(text: torch.Tensor, negative: torch.Tensor, null_tokens: torch.Tensor,
                       anchor_tokens: torch.Tensor, mode: str, guidance_scale: float, cfg_text: float,
                       cfg_anchor: float) -> ChunkConditioning:
    """Rows `[uncond, cond]` (single, §8.1) or `[(∅,∅), (τ,∅), (τ,a)]` (dual, §8.2); each row is text77 ‖ image16."""
    if mode == "single":
        rows = [torch.cat([negative, null_tokens], 1), torch.cat([text, anchor_tokens], 1)]
        return ChunkConditioning(torch.cat(rows), mode, (guidance_scale,))
    if mode == "dual":
        rows = [torch.cat([negative, null_tokens], 1), torch.cat([text, null_tokens], 1),
                torch.cat([text, anchor_tokens], 1)]
        return ChunkConditioning(torch.cat(rows), mode, (cfg_text, cfg_anchor))
    raise ValueError(f"unknown guidance mode {mode!r}; expected one of {GUIDANCE_MODES}")


@torch.no_grad()
def denoise_chunk(model: StreamModel, cond: ChunkConditioning, cond_frames: torch.Tensor, noise: CpuNoise,
                  schedule: DiffusionSchedule, timesteps: list[int], eta: float, device: torch.device,
                  dtype: torch.dtype, events: StreamEvents, chunk: int, num_chunks: int) -> torch.Tensor:
    """50 DDIM steps (by default) of one extension chunk; returns the clean latent (1, 4, 16, h, w) float32.

    cond_frames: (8, 3, S, S) in [-1, 1] on `device`. Noise is drawn from the CPU generator in the official
    order (initial latent channel-major, then one frame-major draw per step).
    """
    rows = cond.context.shape[0]
    h = model.latent_size
    c = model.unet.cfg.in_channels
    latents = noise.randn((1, c, FRAMES_PER_CHUNK, h, h)).to(device)
    cam_frames = cond_frames.to(dtype).repeat(rows, 1, 1, 1)  # same frames in every guidance row
    text_ctx = cond.context[:, :model.config.apm.num_text_tokens]
    ratio = schedule.num_train_timesteps // len(timesteps)
    for i, t in enumerate(timesteps):
        events.check_cancel()
        z = latents.to(dtype).expand(rows, -1, -1, -1, -1)
        tt = torch.tensor([t], device=device)
        residuals = model.cam(z[:, :, :COND_FRAMES], tt, text_ctx, cam_frames)
        eps = cond.combine(model.unet(z, tt, cond.context, residuals).float())
        variance_noise = None
        if eta > 0:
            variance_noise = noise.randn((FRAMES_PER_CHUNK, c, h, h)).permute(1, 0, 2, 3)[None].to(device)
        latents = ddim_step(schedule, eps, t, t - ratio, latents, eta, variance_noise).prev_sample
        events.on_step("extend", chunk, num_chunks, i + 1, len(timesteps))
    return latents


@torch.no_grad()
def decode_chunk(model: StreamModel, latents: torch.Tensor, slice_size: int = 4) -> torch.Tensor:
    """(1, 4, F, h, w) -> (F, 3, S, S) float32 in [0, 1] on the latents' device, `slice_size` frames per VAE call
    (the official code decodes one at a time; a few at once is faster on a GPU and keeps memory flat)."""
    vae = model.vae
    z = latents[0].permute(1, 0, 2, 3).to(next(vae.parameters()).dtype)
    return vae.decode(z, slice_size=slice_size).float()


def extend_video(model: StreamModel, frames: torch.Tensor, anchor: torch.Tensor, prompts: Sequence[str],
                 num_chunks: int, *, negative_prompt: str = "", steps: int = 50, guidance_scale: float = 7.5,
                 eta: float = 1.0, seed: int = 33, guidance_mode: str = "single", cfg_text: float = 7.5,
                 cfg_anchor: float = 7.5, device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype | None = None, offload_device: torch.device = torch.device("cpu"),
                 events: StreamEvents | None = None, noise_state: torch.Tensor | None = None) -> torch.Tensor:
    """Extend a video by `num_chunks` chunks of 8 new frames (stream_stage.md §1, §10).

    frames: (N >= 8, 3, S, S) in [0, 1]; anchor: (3, S, S) in [0, 1]; prompts: one, or one per chunk.
    Returns (N + 8·num_chunks, 3, S, S) float32 in [0, 1] on the CPU: the input frames followed by the new ones.
    Each chunk: CAM on the last 8 frames, APM on the anchor, fresh noise from one seeded CPU generator, DDIM
    (eta, steps), frames 8..15 kept. `events.check_cancel()` runs before every step and its exception
    propagates; `events.on_frames` gets every chunk's 8 new frames when they are final, and
    `events.on_chunk_end` the generator state to resume from (pass it back as `noise_state` with all frames
    produced so far and the remaining prompts/chunks; stream_stage.md §11 requirement 2).
    """
    events = events or NullEvents()
    size = model.sample_size
    check_frames(frames, size=size, min_frames=COND_FRAMES, what="input frames")
    if num_chunks < 0:
        raise ValueError(f"num_chunks must be >= 0, got {num_chunks}")
    if guidance_mode not in GUIDANCE_MODES:
        raise ValueError(f"unknown guidance mode {guidance_mode!r}; expected one of {GUIDANCE_MODES}")
    frames = frames.detach().float().cpu()
    if num_chunks == 0:
        return frames.clone()
    per_chunk = chunk_prompts(list(prompts), num_chunks)
    dtype = dtype or model.dtype
    device = torch.device(device)

    unique = sorted(set(per_chunk))
    embeds = encode_text(model, [negative_prompt] + unique, device, offload_device)
    negative, by_prompt = embeds[0:1], {p: embeds[i + 1:i + 2] for i, p in enumerate(unique)}
    null_tokens, anchor_tokens = encode_anchor(model, anchor, device, offload_device)

    schedule = DiffusionSchedule.scaled_linear()
    timesteps = leading_timesteps(steps, schedule.num_train_timesteps)
    noise = CpuNoise(seed)
    if noise_state is not None:
        noise.restore(noise_state)
    outputs = [frames]
    cond_frames = frames[-COND_FRAMES:].to(device) * 2.0 - 1.0
    first_index = frames.shape[0]
    with on_device([model.unet, model.cam, model.vae], device, offload_device):
        for k in range(num_chunks):
            cond = chunk_conditioning(by_prompt[per_chunk[k]].to(dtype), negative.to(dtype), null_tokens.to(dtype),
                                      anchor_tokens.to(dtype), guidance_mode, guidance_scale, cfg_text, cfg_anchor)
            latents = denoise_chunk(model, cond, cond_frames, noise, schedule, timesteps, eta, device, dtype,
                                    events, k, num_chunks)
            decoded = decode_chunk(model, latents)
            if not torch.isfinite(decoded).all():
                raise NonFiniteError(
                    f"extension chunk {k + 1} of {num_chunks} produced NaN/inf values (dtype {dtype}); the "
                    f"{first_index} frames before it are complete. Try fp32 or bf16 instead of fp16.")
            new = decoded[COND_FRAMES:].cpu()
            outputs.append(new)
            events.on_frames(new, first_index)
            events.on_chunk_end(k, noise.state())
            first_index += NEW_FRAMES
            cond_frames = decoded[COND_FRAMES:] * 2.0 - 1.0
    return torch.cat(outputs)


def generate_init_chunk(base: BaseModel, prompt: str, negative_prompt: str = "", *, steps: int = 50,
                        guidance_scale: float = 9.0, seed: int = 33, sampler: str = "dpmpp_2m",
                        device: torch.device = torch.device("cpu"), dtype: torch.dtype | None = None,
                        offload_device: torch.device = torch.device("cpu"),
                        events: StreamEvents | None = None) -> torch.Tensor:
    """The first chunk from text with the vanilla ModelScope UNet (stream_stage.md §2): (16, 3, S, S) in [0, 1].

    Defaults follow the official first chunk: 50 steps, CFG 9.0, DPM-Solver++(2M) over the ModelScope training
    schedule, empty negative prompt. `sampler="ddim"` uses DDIM with eta 1.0 (the stream-stage sampler).
    """
    events = events or NullEvents()
    if sampler not in INIT_SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {INIT_SAMPLERS}")
    shared = base.shared
    dtype = dtype or base.dtype
    device = torch.device(device)
    ctx = encode_text(shared, [negative_prompt, prompt], device, offload_device).to(dtype)  # [uncond, cond]
    noise = CpuNoise(seed)
    h = shared.latent_size
    c = base.unet.cfg.in_channels
    latents = noise.randn((1, c, FRAMES_PER_CHUNK, h, h)).to(device)
    with on_device([base.unet, shared.vae], device, offload_device):
        def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
            events.check_cancel()
            eps = base.unet(x.to(dtype).expand(2, -1, -1, -1, -1), torch.tensor([t], device=device), ctx).float()
            return cfg_single(eps[0:1], eps[1:2], guidance_scale)

        if sampler == "dpmpp_2m":
            latents = _sample_dpmpp_2m(base, latents, steps, eps_fn, events)
        else:
            schedule = DiffusionSchedule.from_config(base.scheduler_config)
            timesteps = leading_timesteps(steps, schedule.num_train_timesteps)
            ratio = schedule.num_train_timesteps // steps
            for i, t in enumerate(timesteps):
                eps = eps_fn(latents, t)
                z = noise.randn((FRAMES_PER_CHUNK, c, h, h)).permute(1, 0, 2, 3)[None].to(device)
                latents = ddim_step(schedule, eps, t, t - ratio, latents, 1.0, z).prev_sample
                events.on_step("init", 0, 1, i + 1, steps)
        frames = decode_chunk(shared, latents)
    if not torch.isfinite(frames).all():
        raise NonFiniteError(f"the first chunk produced NaN/inf values (dtype {dtype}); try fp32 or bf16")
    frames = frames.cpu()
    events.on_frames(frames, 0)
    return frames


def _sample_dpmpp_2m(base: BaseModel, latents: torch.Tensor, steps: int, eps_fn, events: StreamEvents) -> torch.Tensor:
    """DPM-Solver++(2M) through diffusers' public `DPMSolverMultistepScheduler` with its defaults, configured
    from the ModelScope schedule (as the official first chunk does)."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(**base.scheduler_config)
    scheduler.set_timesteps(steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        eps = eps_fn(latents, int(t))
        latents = scheduler.step(eps, t, latents).prev_sample
        events.on_step("init", 0, 1, i + 1, steps)
    return latents
