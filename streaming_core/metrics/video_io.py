"""Reading a video file into 8-bit frames for the metrics (PyAV, a runtime dependency of the pack)."""
from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["read_video", "to_uint8_frames"]


def read_video(path: str | os.PathLike, *, max_frames: int | None = None) -> tuple[torch.Tensor, float | None]:
    """Decode the first video stream of `path` -> (uint8 RGB frames (F, 3, H, W), fps or None)."""
    import av  # imported here so that the rest of the metrics need torch and numpy only

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file not found: {path}")
    frames: list[np.ndarray] = []
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{path} contains no decodable frame")
    array = np.stack(frames)  # (F, H, W, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous(), fps


def to_uint8_frames(frames: "torch.Tensor | np.ndarray") -> torch.Tensor:
    """Frames in any of the accepted forms -> uint8 RGB (F, 3, H, W) on the CPU.

    Accepted: uint8 (F, H, W, 3) or (F, 3, H, W) (0..255); float (F, 3, H, W) or (F, H, W, 3) (ComfyUI IMAGE)
    in [0, 1], quantised with round(x · 255) after clamping: the metrics see the video as an 8-bit file would
    hold it. A channel axis of 3 at position 1 is taken as channels-first.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch tensor or numpy array, got {type(frames).__name__}")
    if frames.dim() != 4 or 3 not in (frames.shape[1], frames.shape[-1]):
        raise ValueError(f"frames must be (F, 3, H, W) or (F, H, W, 3), got shape {tuple(frames.shape)}")
    frames = frames.detach().cpu()
    if frames.shape[1] != 3:
        frames = frames.permute(0, 3, 1, 2)
    if frames.dtype == torch.uint8:
        return frames.contiguous()
    if not frames.is_floating_point():
        raise ValueError(f"frames must be uint8 (0..255) or float (0..1), got {frames.dtype}")
    if not torch.isfinite(frames).all():
        raise ValueError("frames contain NaN or infinite values")
    return (frames.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).contiguous()
