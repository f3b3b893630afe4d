"""The streaming refinement stage: SDEdit over overlapping chunks merged by randomized blending
(refine_stage.md §1, §7, §9-§14).

`refine_video` takes low-resolution frames and returns (or streams) refined high-resolution frames:

1. geometry: content size and padded refiner frame (§7.2), validated before any model work (§3.4);
2. text features for the caption and the negative prompt, computed once (§4);
3. VAE encode frame group by frame group, resizing and padding on the fly, posterior sample with keyed noise (§5.4);
4. SDEdit noise at t_start with keyed per-frame noise (§9, §14);
5. DPM++ 2M SDE over the whole-video latent on the CPU; each solver step evaluates every chunk on `device`
   (guidance rows batched) and merges the x0 predictions with the blend plan (§10-§12);
6. VAE decode frame group by frame group in video order; each cropped frame goes to the sinks immediately (§13).

Memory: the whole-video latent state (x, D, D_prev, noise: about 4 latents) stays on the CPU; only one chunk
(and one frame group for the VAE) is on the accelerator at a time; models return to `offload` afterwards.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import torch

from .blending import BlendPlan
from .events import NullEvents, StreamEvents
from .frames import check_frames
from .keyed_rng import KEY_DERIVATION_VERSION, STREAM_POSTERIOR, STREAM_SDEDIT, keyed_frames_randn, keyed_randn
from .refine_denoiser import ChunkedDenoiser, make_guided_evaluator
from .refine_frames import (ANY_SIZE_RULE, MS_VID2VID_RULE, RESIZE_FILTERS, FrameGeometry, LatentRule,
                            check_frame_size, plan_geometry)
from .refine_schedule import solver_sigmas, strength_to_t_start
from .refine_solver import BrownianNoise, dpmpp_2m_sde, dpmpp_2m_sde_xt_random, keyed_solver_noise
from .refiner_model import RefinerModel
from .stream import NonFiniteError, on_device
from .video_sink import FrameCollector, FrameSink, close_all, write_all

logger = logging.getLogger("streaming_core")

NOISE_SOURCES = ("gaussian", "brownian")
POSTERIOR_MODES = ("sample", "mean")


@dataclass(frozen=True)
class RefineSettings:
    """Every user-facing choice of the refinement (defaults: the official MS-Vid2Vid-XL run, §18).

    `None` values take the refiner family's default (`RefinerModel.defaults`).
    """

    strength: float | None = None          # (0, 1); t_start = round(1000·strength) − 1 (§9)
    start_t: int | None = None             # overrides strength when set (1 … 998)
    steps: int = 30
    cfg: float | None = None
    rescale: float | None = None           # guidance rescale φ in [0, 1]
    eta: float = 1.0                       # 1 = SDE (official), 0 = deterministic DPM-Solver++(2M)
    start_quirk: bool | None = None        # x = x_t·s_0 (official MS) instead of x_t/α
    blend: BlendPlan | None = None
    pad_mode: str = "official"
    target_height: int | None = None       # for pad_mode "custom"
    resize_filter: str = "bicubic"
    crop_padding: bool = True
    seed: int = 666                        # SDEdit, solver and posterior noise (§14); cuts use blend.seed
    noise_source: str = "gaussian"
    posterior: str = "sample"
    batch_guidance: bool = True            # cond + uncond in one forward; False = low-VRAM sequential rows
    vae_group: int = 1                     # frames per VAE call

    def resolved(self, model: RefinerModel) -> "RefineSettings":
        d = model.defaults
        return replace(
            self,
            strength=self.strength if self.strength is not None else d.strength,
            cfg=self.cfg if self.cfg is not None else d.cfg,
            rescale=self.rescale if self.rescale is not None else d.rescale,
            start_quirk=self.start_quirk if self.start_quirk is not None else d.start_quirk,
            blend=self.blend if self.blend is not None else BlendPlan(d.chunk_size, d.overlap),
        )

    def validate(self) -> None:
        if self.start_t is None and not (0.0 < float(self.strength) < 1.0):
            raise ValueError(f"strength must be in (0, 1), got {self.strength}")
        if self.start_t is not None and not 1 <= self.start_t <= 998:
            raise ValueError(f"start_t must be in 1 … 998, got {self.start_t}")
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if self.rescale is not None and not 0.0 <= self.rescale <= 1.0:
            raise ValueError(f"guidance rescale must be in [0, 1], got {self.rescale}")
        if self.eta < 0:
            raise ValueError(f"eta must be ≥ 0, got {self.eta}")
        if self.resize_filter not in RESIZE_FILTERS:
            raise ValueError(f"unknown resize filter {self.resize_filter!r}; expected one of {RESIZE_FILTERS}")
        if self.noise_source not in NOISE_SOURCES:
            raise ValueError(f"unknown noise_source {self.noise_source!r}; expected one of {NOISE_SOURCES}")
        if self.posterior not in POSTERIOR_MODES:
            raise ValueError(f"unknown posterior mode {self.posterior!r}; expected one of {POSTERIOR_MODES}")
        if self.vae_group < 1:
            raise ValueError(f"vae_group must be ≥ 1, got {self.vae_group}")
        if self.noise_source == "brownian" and self.blend is not None and self.blend.variant == "xt_random":
            raise ValueError("noise_source 'brownian' works with the x0 blending variants only")


@dataclass
class RefineResult:
    """`frames`: (N, 3, H, W) in [0, 1] on the CPU (None when `keep_frames=False`); `info`: what was run."""

    frames: torch.Tensor | None
    geometry: FrameGeometry
    chunk_starts: list[int]
    info: dict = field(default_factory=dict)


def latent_rule(model: RefinerModel) -> LatentRule:
    return MS_VID2VID_RULE if model.unet.cfg.resampler_geometry == "ms_vid2vid" else ANY_SIZE_RULE


def plan_for(model: RefinerModel, in_h: int, in_w: int, settings: RefineSettings) -> FrameGeometry:
    """The refiner frame geometry for `in_h x in_w` input frames, validated (§3.4, §7.2)."""
    native_h, native_w = model.native_size
    factor = model.vae.downsample_factor
    rule = latent_rule(model)
    geometry = plan_geometry(in_h, in_w, native_h=native_h, native_w=native_w, factor=factor, rule=rule,
                             pad_mode=settings.pad_mode, target_height=settings.target_height)
    check_frame_size(geometry.frame_h, geometry.frame_w, factor, rule)
    return geometry


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"the refiner produced NaN/inf values in {what}; try fp32 or bf16 instead of fp16, "
                             f"or a lower cfg")


@torch.no_grad()
def encode_video(model: RefinerModel, frames: torch.Tensor, geometry: FrameGeometry, settings: RefineSettings,
                 device: torch.device, events: StreamEvents) -> torch.Tensor:
    """Frames (N, 3, h, w) in [0, 1] -> scaled latents (1, 4, N, lh, lw) float32 on the CPU (§5.2, §5.4)."""
    vae = model.vae
    dtype = vae.quant_conv.weight.dtype
    latents = []
    for first in range(0, frames.shape[0], settings.vae_group):
        events.check_cancel()
        group = geometry.place(frames[first:first + settings.vae_group].to(device), settings.resize_filter)
        moments = vae.quant_conv(vae.encoder(group.to(dtype) * 2.0 - 1.0)).float()
        mean, logvar = moments.chunk(2, dim=1)
        z = mean
        if settings.posterior == "sample":
            noise = torch.stack([keyed_randn(settings.seed, STREAM_POSTERIOR, first + i, 0, tuple(mean.shape[1:]))
                                 for i in range(mean.shape[0])]).to(device, mean.dtype)
            z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise
        latents.append((z * vae.config.scaling_factor).cpu())
    return torch.cat(latents).permute(1, 0, 2, 3).unsqueeze(0).contiguous()


def refine_video(model: RefinerModel, frames: torch.Tensor, prompt: str, negative_prompt: str = "",
                 settings: RefineSettings | None = None, *, device: torch.device | str = "cpu",
                 offload: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 events: StreamEvents | None = None, sinks: Sequence[FrameSink] = (),
                 keep_frames: bool = True) -> RefineResult:
    """Refine `frames` (N, 3, h, w) float in [0, 1] into (N, 3, H, W) high-resolution frames.

    Every frame is kept (no trimming to the chunk grid, §7.4). `sinks` receive the cropped frames in video order
    as they are decoded and are closed at the end (also on errors); with `keep_frames=False` nothing but the sinks
    holds the output. `events.on_step("refine", chunk, num_chunks, step, num_steps)` fires per chunk evaluation,
    `events.on_frames` per decoded frame group, and `events.check_cancel()` between chunk evaluations and frames.
    """
    device, offload = torch.device(device), torch.device(offload)
    events = events or NullEvents()
    collector = FrameCollector() if keep_frames else None
    all_sinks = list(sinks) + ([collector] if collector is not None else [])
    try:
        settings, geometry, starts, t_start, sigmas = _prepare(model, frames, settings)
        _run(model, frames, prompt, negative_prompt, settings, geometry, t_start, sigmas, device, offload, dtype,
             events, all_sinks)
    finally:
        close_all(all_sinks)
    plan = settings.blend
    info = {
        "family": model.family, "frames": frames.shape[0], "chunk_starts": starts, "chunk_size": plan.chunk_size,
        "overlap": plan.overlap, "blend": plan.variant, "blend_seed": plan.seed, "seed": settings.seed,
        "key_version": KEY_DERIVATION_VERSION, "t_start": t_start, "evaluations_per_chunk": len(sigmas) - 1,
        "geometry": asdict(geometry), "settings": {k: v for k, v in asdict(settings).items() if k != "blend"},
    }
    return RefineResult(collector.frames() if collector is not None else None, geometry, starts, info)


def _prepare(model: RefinerModel, frames: torch.Tensor, settings: RefineSettings | None):
    """Validate everything before any model work; returns the resolved settings, geometry, chunk starts,
    t_start and the solver's sigma list."""
    settings = (settings or RefineSettings()).resolved(model)
    settings.validate()
    check_frames(frames, what="frames to refine")
    if frames.min() < -1e-3 or frames.max() > 1 + 1e-3:
        raise ValueError(f"frames to refine must be in [0, 1], got values in [{frames.min():.3f}, {frames.max():.3f}]")
    n = frames.shape[0]
    geometry = plan_for(model, frames.shape[-2], frames.shape[-1], settings)
    starts = settings.blend.starts(n)
    t_start = settings.start_t if settings.start_t is not None else strength_to_t_start(settings.strength)
    _, sigmas = solver_sigmas(model.table, t_start, 0, settings.steps)
    logger.info("refining %d frames: %d chunk(s) at %s, content %dx%d in %dx%d, t_start %d, %d evaluations",
                n, len(starts), starts, geometry.content_w, geometry.content_h, geometry.frame_w, geometry.frame_h,
                t_start, len(sigmas) - 1)
    return settings, geometry, starts, t_start, sigmas


def _run(model: RefinerModel, frames: torch.Tensor, prompt: str, negative_prompt: str, settings: RefineSettings,
         geometry: FrameGeometry, t_start: int, sigmas: torch.Tensor, device: torch.device, offload: torch.device,
         dtype: torch.dtype, events: StreamEvents, sinks: Sequence[FrameSink]) -> None:
    n = frames.shape[0]
    plan = settings.blend
    starts = plan.starts(n)
    with torch.inference_mode():
        # 1. text, once
        with on_device([model.text_encoder], device, offload):
            texts = model.encode_text([model.caption(prompt), negative_prompt], device)
        cond, uncond = texts[:1].float(), texts[1:].float()
        # 2. encode + SDEdit noise (one keyed draw per frame, shared by every chunk that covers it)
        with on_device([model.vae], device, offload):
            z0 = encode_video(model, frames, geometry, settings, device, events)
        _check_finite(z0, "the encoded latents")
        lat_shape = (z0.shape[1],) + tuple(z0.shape[3:])
        alpha_t, sigma_t = model.table.alpha_sigma_at(t_start)
        x_t = alpha_t * z0 + sigma_t * keyed_frames_randn(settings.seed, STREAM_SDEDIT, range(n), lat_shape)
        del z0
        # 3. sample: the whole-video state on the CPU, one chunk at a time on `device`
        evaluations = len(sigmas) - 1

        def on_chunk(step: int, chunk: int, t_int: int, x0: torch.Tensor) -> None:
            _check_finite(x0, f"chunk {chunk + 1} at t = {t_int}")
            events.on_step("refine", chunk, len(starts), step + 1, evaluations)
            events.check_cancel()

        if settings.noise_source == "brownian":
            noise = BrownianNoise(x_t, sigmas, seed=settings.seed)
        else:
            noise = keyed_solver_noise(settings.seed, n, lat_shape)
        start = "quirk" if settings.start_quirk else "proper"
        with on_device([model.unet], device, offload):
            evaluator = make_guided_evaluator(model.unet, cond, uncond, model.table, settings.cfg,
                                              settings.rescale, model.prediction,
                                              batch_rows=settings.batch_guidance, dtype=dtype)
            denoiser = ChunkedDenoiser(evaluator, plan, model.table, device=device, on_chunk=on_chunk)
            events.check_cancel()
            if plan.variant == "xt_random":
                latents = dpmpp_2m_sde_xt_random(x_t, sigmas, denoiser.chunk_predictions, noise, plan,
                                                 eta=settings.eta, start=start, alpha_start=alpha_t)
            else:
                latents = dpmpp_2m_sde(x_t, sigmas, denoiser, noise, eta=settings.eta, start=start,
                                       alpha_start=alpha_t)
        _check_finite(latents, "the final latents")
        # 4. decode in video order, straight to the sinks
        with on_device([model.vae], device, offload):
            decode_to_sinks(model, latents, geometry, settings, device, events, sinks)


@torch.no_grad()
def decode_to_sinks(model: RefinerModel, latents: torch.Tensor, geometry: FrameGeometry, settings: RefineSettings,
                    device: torch.device, events: StreamEvents, sinks: Sequence[FrameSink]) -> None:
    """Latents (1, 4, N, h, w) -> frames handed to `sinks` and `events.on_frames` group by group (§13)."""
    n = latents.shape[2]
    for first in range(0, n, settings.vae_group):
        events.check_cancel()
        z = latents[0, :, first:first + settings.vae_group].permute(1, 0, 2, 3).to(device)
        decoded = model.vae.decode(z).float()
        if settings.crop_padding:
            decoded = geometry.crop(decoded)
        decoded = decoded.cpu().contiguous()
        write_all(sinks, decoded, first)
        events.on_frames(decoded, first)
