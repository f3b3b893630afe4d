"""Sampler steps as plain functions (stream_stage.md §9)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedules import DiffusionSchedule


@dataclass(frozen=True)
class DdimStep:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor
    alpha_prod_t: float
    alpha_prod_t_prev: float


def ddim_step(schedule: DiffusionSchedule, eps: torch.Tensor, t: int, prev_t: int, x_t: torch.Tensor,
              eta: float, noise: torch.Tensor | None) -> DdimStep:
    """One DDIM step (Song et al. eq. 12 with σ from eq. 16), ε-prediction, no clipping.

    ᾱ_prev = ᾱ[prev_t], or ᾱ[0] when prev_t < 0 (set_alpha_to_one = false);
    x0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t;  σ = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_prev));
    x_prev = √ᾱ_prev·x0 + √(1−ᾱ_prev−σ²)·ε + σ·z. `noise` (z) is required when η > 0.
    """
    ac = schedule.alphas_cumprod
    a_t = ac[t]
    a_prev = ac[prev_t] if prev_t >= 0 else ac[0]
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance.sqrt()
    x_prev = a_prev.sqrt() * x0 + (1 - a_prev - std ** 2).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("DDIM with eta > 0 needs variance noise")
        x_prev = x_prev + std * noise
    return DdimStep(x_prev, x0, float(a_t), float(a_prev))
