"""The non-default variants of the ablation study (`ablation.py`): what each mechanism is replaced by.

Stream stage (conditioning of an extension chunk, 16 frames of which 8 are new):

* `extend_by_replacement`: training-free temporal concatenation with the vanilla base UNet ("replacement" or
  inpainting conditioning, Ho et al. 2022 §3.1). Each new 16-frame chunk is sampled with DDIM; before every
  denoising step its first 8 latent frames are overwritten by the previous chunk's last 8 latents noised to the
  current timestep, `√ᾱ_t·z + √(1−ᾱ_t)·ε` (fresh ε per step), and after the last step by the clean latents; the
  chunk's last 8 frames are kept. The first chunk's latents are the VAE posterior means of its decoded frames
  (the first chunk comes from `generate_init_chunk`, which returns frames); later chunks hand on their sampled
  latents directly. This is *not* the paper's trained channel-concatenation baseline (Conc-Cond).
* `extend_independently`: every continuation is a 16-frame sample from the text alone (same sampler, steps and
  guidance as the other variants) whose last 8 frames are kept; nothing ties a chunk to the previous one.
* `apm_disabled`: every APM gate `alpha` of the stream UNet set to 0 for the duration of a block. The mixing is
  `c[:, :T] + SiLU(alpha)·LN(Conv1d(c))` (`attention.apm_mix`) and SiLU(0) = 0, so the anchor tokens have no
  effect; the CAM and the fine-tuned UNet stay as trained.

Refinement:

* `refine_independent_chunks`: each chunk of the refinement plan refined alone (its own SDEdit, solver and
  posterior noise: seed + j) and the refined chunks joined with a hard cut at the middle of each overlap
  (`overlap_midpoints`), i.e. no shared latent, no shared noise, no blending.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import torch

from ..blending import BlendPlan, chunk_overlaps, merge
from ..chunks import COND_FRAMES, FRAMES_PER_CHUNK, NEW_FRAMES
from ..guidance import cfg_single
from ..models import BaseModel, StreamModel
from ..noise import CpuNoise
from ..refine import RefineSettings, refine_video
from ..refiner_model import RefinerModel
from ..samplers import ddim_step
from ..schedules import DiffusionSchedule, leading_timesteps
from ..stream import decode_chunk, encode_text
from ..unet3d import UNet3D

# ----------------------------------------------------------------------------------------------------------------
# APM switch
# ----------------------------------------------------------------------------------------------------------------


def apm_gates(unet: UNet3D) -> list[torch.Tensor]:
    """Every APM gate parameter `alpha` of a stream UNet (empty for a vanilla UNet)."""
    return [m.alpha for m in unet.modules() if getattr(m, "apm_tokens", None) is not None]


@contextmanager
def apm_disabled(unet: UNet3D) -> Iterator[int]:
    """Set every APM gate of `unet` to 0 inside the block (restored afterwards, also on errors); yields how many
    gates there are. Raises ValueError for a UNet without APM."""
    gates = apm_gates(unet)
    if not gates:
        raise ValueError("this UNet has no APM gates (a vanilla UNet?); nothing to disable")
    saved = [g.detach().clone() for g in gates]
    try:
        with torch.no_grad():
            for g in gates:
                g.zero_()
        yield len(gates)
    finally:
        with torch.no_grad():
            for g, s in zip(gates, saved):
                g.copy_(s)


# ----------------------------------------------------------------------------------------------------------------
# Base-model continuations: replacement conditioning and independent chunks
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_latents(model: StreamModel, frames: torch.Tensor) -> torch.Tensor:
    """Frames (F, 3, S, S) in [0, 1] -> scaled latents (1, 4, F, h, w) float32 (VAE posterior means)."""
    vae = model.vae
    z = vae.encode(frames.to(next(vae.parameters()).dtype), slice_size=4).float()
    return z.permute(1, 0, 2, 3).unsqueeze(0)


@torch.no_grad()
def sample_chunk(base: BaseModel, context: torch.Tensor, noise: CpuNoise, *, steps: int, guidance_scale: float,
                 eta: float = 1.0, cond_latents: torch.Tensor | None = None) -> torch.Tensor:
    """One 16-frame chunk from the vanilla UNet with DDIM over the scaled-linear schedule and CFG.

    context: (2, 77, D) rows [uncond, cond]. cond_latents: None (text only) or (1, 4, 8, h, w) clean latents that
    replace the first 8 frames before every step (noised to that step's t with a fresh draw) and, clean, after
    the last one. Noise order (all from `noise`): initial latent; per step the replacement noise (when
    conditioned), then the DDIM variance noise (when eta > 0). Returns the final latents (1, 4, 16, h, w).
    """
    h = base.shared.latent_size
    c = base.unet.cfg.in_channels
    schedule = DiffusionSchedule.scaled_linear()
    timesteps = leading_timesteps(steps, schedule.num_train_timesteps)
    ratio = schedule.num_train_timesteps // steps
    dtype = base.dtype
    if cond_latents is not None and tuple(cond_latents.shape) != (1, c, COND_FRAMES, h, h):
        raise ValueError(f"conditioning latents must be (1, {c}, {COND_FRAMES}, {h}, {h}), got "
                         f"{tuple(cond_latents.shape)}")
    latents = noise.randn((1, c, FRAMES_PER_CHUNK, h, h))
    ctx = context.to(dtype)
    for t in timesteps:
        if cond_latents is not None:
            a_t = schedule.alphas_cumprod[t]
            eps_cond = noise.randn((1, c, COND_FRAMES, h, h))
            latents = latents.clone()
            latents[:, :, :COND_FRAMES] = a_t.sqrt() * cond_latents + (1 - a_t).sqrt() * eps_cond
        out = base.unet(latents.to(dtype).expand(2, -1, -1, -1, -1), torch.tensor([t]), ctx).float()
        eps = cfg_single(out[0:1], out[1:2], guidance_scale)
        z = noise.randn((FRAMES_PER_CHUNK, c, h, h)).permute(1, 0, 2, 3)[None] if eta > 0 else None
        latents = ddim_step(schedule, eps, t, t - ratio, latents, eta, z).prev_sample
    if cond_latents is not None:
        latents = latents.clone()
        latents[:, :, :COND_FRAMES] = cond_latents
    return latents


def _text_context(base: BaseModel, prompt: str, negative_prompt: str) -> torch.Tensor:
    cpu = torch.device("cpu")
    return encode_text(base.shared, [negative_prompt, prompt], cpu, cpu).float()


@torch.no_grad()
def extend_by_replacement(base: BaseModel, frames: torch.Tensor, prompt: str, num_chunks: int, *,
                          negative_prompt: str = "", steps: int = 10, guidance_scale: float = 7.5, eta: float = 1.0,
                          seed: int = 33, return_latents: bool = False):
    """Extend `frames` (N >= 8, 3, S, S) in [0, 1] by `num_chunks` chunks of 8 frames with replacement
    conditioning (module docstring). Returns (N + 8·num_chunks, 3, S, S) float32 in [0, 1]; with
    `return_latents` also the list of every chunk's final 16-frame latents."""
    context = _text_context(base, prompt, negative_prompt)
    noise = CpuNoise(seed)
    cond = encode_latents(base.shared, frames[-COND_FRAMES:].float())
    outputs, chunks = [frames.float().cpu()], []
    for _ in range(num_chunks):
        latents = sample_chunk(base, context, noise, steps=steps, guidance_scale=guidance_scale, eta=eta,
                               cond_latents=cond)
        chunks.append(latents)
        outputs.append(decode_chunk(base.shared, latents[:, :, COND_FRAMES:]).float().cpu())
        cond = latents[:, :, FRAMES_PER_CHUNK - COND_FRAMES:]
    video = torch.cat(outputs)
    return (video, chunks) if return_latents else video


@torch.no_grad()
def extend_independently(base: BaseModel, frames: torch.Tensor, prompt: str, num_chunks: int, *,
                         negative_prompt: str = "", steps: int = 10, guidance_scale: float = 7.5, eta: float = 1.0,
                         seed: int = 33) -> torch.Tensor:
    """Append `num_chunks` × 8 frames, each the last 8 frames of a text-only 16-frame sample (fresh noise from one
    seeded stream). Returns (N + 8·num_chunks, 3, S, S) float32 in [0, 1]."""
    context = _text_context(base, prompt, negative_prompt)
    noise = CpuNoise(seed)
    outputs = [frames.float().cpu()]
    for _ in range(num_chunks):
        latents = sample_chunk(base, context, noise, steps=steps, guidance_scale=guidance_scale, eta=eta)
        outputs.append(decode_chunk(base.shared, latents[:, :, FRAMES_PER_CHUNK - NEW_FRAMES:]).float().cpu())
    return torch.cat(outputs)


# ----------------------------------------------------------------------------------------------------------------
# Refinement: independent chunks
# ----------------------------------------------------------------------------------------------------------------


def overlap_midpoints(n: int, chunk: int = 24, overlap: int = 8) -> list[int]:
    """First frame taken from chunk j ≥ 1 when chunks are joined at the middle of each overlap:
    a_j + ⌊O_j / 2⌋ (the `hard` cut of `blending`)."""
    starts = BlendPlan(chunk, overlap).starts(n)
    overlaps = chunk_overlaps(starts, min(chunk, n))
    return [a + o // 2 for a, o in zip(starts[1:], overlaps[1:])]


def join_at_midpoints(chunks: list[torch.Tensor], n: int, chunk: int = 24, overlap: int = 8) -> torch.Tensor:
    """Join per-chunk frames `(len_j, ...)` laid out by the refinement plan for `n` frames: chunk j supplies the
    frames from the middle of its overlap with chunk j − 1 on (frame axis 0)."""
    plan = BlendPlan(chunk, overlap, "hard")
    starts = plan.starts(n)
    if len(chunks) != len(starts):
        raise ValueError(f"{len(chunks)} chunks given for a plan of {len(starts)} chunks over {n} frames")
    return merge(chunks, starts, n, "hard", plan.cuts(0, n), dim=0)


def refine_independent_chunks(model: RefinerModel, frames: torch.Tensor, prompt: str,
                              settings: RefineSettings, negative_prompt: str = "") -> torch.Tensor:
    """Refine every chunk of `settings.blend`'s plan on its own (seed `settings.seed + j`) and join the results at
    the overlap midpoints. frames (N, 3, h, w) in [0, 1] -> (N, 3, H, W) in [0, 1]."""
    plan = settings.blend or BlendPlan(model.defaults.chunk_size, model.defaults.overlap)
    n = frames.shape[0]
    length = plan.chunk_length(n)
    outs = []
    for j, a in enumerate(plan.starts(n)):
        alone = replace(settings, seed=settings.seed + j, blend=replace(plan, variant="hard"))
        outs.append(refine_video(model, frames[a:a + length], prompt, negative_prompt, alone).frames)
    return join_at_midpoints(outs, n, plan.chunk_size, plan.overlap)
