"""Diffusion training objectives.

* epsilon (stream stage, ModelScope base): x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε on the discrete `DiffusionSchedule`
  (scaled_linear 0.00085-0.012, 1000 steps, stream_stage.md §9); the network predicts ε; loss = mean (ε̂ − ε)².
* v (refiner family, refine_stage.md §8): x_t = α_t·x0 + σ_t·ε with (α, σ) from the refiner's noise table; the
  network predicts v = α_t·ε − σ_t·x0; loss = mean (v̂ − v)².

Timesteps are uniform integers in [0, T). All noise comes from the caller's generator (CPU, float32) so a step is
reproducible whatever the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..schedules import DiffusionSchedule


def sample_timesteps(gen: torch.Generator, batch: int, num_train_timesteps: int) -> torch.Tensor:
    return torch.randint(0, num_train_timesteps, (batch,), generator=gen)


def sample_noise(gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(like.shape, generator=gen, dtype=torch.float32).to(like.device)


def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.view(-1, *([1] * (ndim - 1)))


@dataclass
class NoisedBatch:
    x_t: torch.Tensor
    t: torch.Tensor  # (B,) int64 on the device of x_t
    target: torch.Tensor


def noise_epsilon(schedule: DiffusionSchedule, x0: torch.Tensor, gen: torch.Generator) -> NoisedBatch:
    """x0 (B, ...) -> (x_t, t, target ε) for the ε objective."""
    t = sample_timesteps(gen, x0.shape[0], schedule.num_train_timesteps)
    eps = sample_noise(gen, x0)
    ac = _per_sample(schedule.alphas_cumprod[t].to(x0.device), x0.dim())
    x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * eps
    return NoisedBatch(x_t, t.to(x0.device), eps)


def noise_v(alphas: torch.Tensor, sigmas: torch.Tensor, x0: torch.Tensor, gen: torch.Generator) -> NoisedBatch:
    """x0 (B, ...) -> (x_t, t, target v) for the v objective on a table of (α_t, σ_t), t = 0..len-1."""
    t = sample_timesteps(gen, x0.shape[0], alphas.shape[0])
    eps = sample_noise(gen, x0)
    a = _per_sample(alphas[t].to(x0.device, torch.float32), x0.dim())
    s = _per_sample(sigmas[t].to(x0.device, torch.float32), x0.dim())
    return NoisedBatch(a * x0 + s * eps, t.to(x0.device), a * eps - s * x0)


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction.float() - target.float()).pow(2).mean()
