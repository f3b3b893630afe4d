"""Noise schedules and timestep spacing (float32 tables; stream_stage.md §9)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DiffusionSchedule:
    """Discrete training schedule: `alphas_cumprod[t]` = ᾱ_t for t = 0..T-1 (float32)."""

    alphas_cumprod: torch.Tensor
    num_train_timesteps: int

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012,
                      num_train_timesteps: int = 1000) -> "DiffusionSchedule":
        """β_i = (√β_start + i/(T-1)·(√β_end − √β_start))², ᾱ = cumprod(1 − β), all in float32."""
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
        return cls(torch.cumprod(1.0 - betas, dim=0), num_train_timesteps)

    @classmethod
    def from_config(cls, cfg: dict) -> "DiffusionSchedule":
        """From a diffusers-style scheduler config (only `scaled_linear` is used by this stage)."""
        kind = cfg.get("beta_schedule", "scaled_linear")
        if kind != "scaled_linear":
            raise ValueError(f"unsupported beta_schedule {kind!r}; the ModelScope stage uses 'scaled_linear'")
        return cls.scaled_linear(cfg.get("beta_start", 0.00085), cfg.get("beta_end", 0.012),
                                 cfg.get("num_train_timesteps", 1000))


def leading_timesteps(num_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1) -> list[int]:
    """diffusers "leading" spacing: t_j = (T // n)·(n − 1 − j) + offset, j = 0..n-1 (50 steps: 981, 961, ..., 1)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {num_train_timesteps}, got {num_steps}")
    ratio = num_train_timesteps // num_steps
    return [ratio * i + steps_offset for i in reversed(range(num_steps))]
