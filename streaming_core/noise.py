"""Seeded noise (stream_stage.md §11): every draw comes from one CPU `torch.Generator` in float32, so results do
not depend on the accelerator; the caller moves/casts the result."""
from __future__ import annotations

import torch


class CpuNoise:
    """A seeded CPU Gaussian stream. `state()`/`restore()` make a run resumable bit-exactly."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator("cpu").manual_seed(int(seed))

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=torch.float32)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def restore(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
