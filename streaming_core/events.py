"""Callback protocol between the long loops of `streaming_core` and whoever drives them.

The core never prints, never draws progress bars and never catches the exception that `check_cancel` raises:
cancellation propagates, and every frame already handed to `on_frames` belongs to the caller.
"""
from __future__ import annotations

from typing import Protocol

import torch


class Cancelled(Exception):
    """Raised by `check_cancel` implementations of pure-Python callers to stop a loop."""


class StreamEvents(Protocol):
    def on_step(self, stage: str, chunk: int, num_chunks: int, step: int, num_steps: int) -> None:
        """A denoising step finished. `stage` is "init" or "extend"; `chunk` is 0-based, `step` 1-based."""

    def on_frames(self, frames: torch.Tensor, first_index: int) -> None:
        """Final frames `(n, 3, H, W)` float32 in [0, 1] on the CPU, starting at video index `first_index`."""

    def check_cancel(self) -> None:
        """Raise to stop the loop (called at every denoising step)."""

    def on_chunk_end(self, chunk: int, noise_state: torch.Tensor) -> None:
        """Extension chunk `chunk` (0-based) is final. `noise_state` is the CPU generator state the next chunk
        starts from: passing it back as `extend_video(..., noise_state=...)` together with all frames so far
        resumes the run bit-exactly (same device and dtype)."""


class NullEvents:
    """Default: no progress, no previews, never cancels."""

    def on_step(self, stage: str, chunk: int, num_chunks: int, step: int, num_steps: int) -> None:
        pass

    def on_frames(self, frames: torch.Tensor, first_index: int) -> None:
        pass

    def check_cancel(self) -> None:
        pass

    def on_chunk_end(self, chunk: int, noise_state: torch.Tensor) -> None:
        pass
