"""Frame-batch helpers: validation and fitting external frames to the model's square size
(stream_stage.md §2.2 items 1 and 4)."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger("streaming_core")

RESIZE_MODES = ("area", "bicubic", "nearest")
CROP_MODES = ("center", "pad")


def check_frames(frames: torch.Tensor, *, size: int | None = None, min_frames: int = 1, what: str = "frames") -> None:
    """Raise ValueError with a sentence naming the problem: rank, channel count, size, count, non-finite values."""
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"{what} must be a (N, 3, H, W) batch, got shape {tuple(frames.shape)}")
    if frames.shape[0] < min_frames:
        raise ValueError(f"{what}: {frames.shape[0]} frame(s) given, at least {min_frames} are needed")
    if size is not None and tuple(frames.shape[-2:]) != (size, size):
        raise ValueError(f"{what} are {frames.shape[-1]}x{frames.shape[-2]} pixels; this model needs {size}x{size} "
                         f"(resize them first, e.g. with the Init Chunk node's resize option)")
    if not torch.isfinite(frames).all():
        raise ValueError(f"{what} contain NaN or infinite values")


def fit_frames(frames: torch.Tensor, size: int, *, resize: str = "area", crop: str = "center") -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, size, size) in [0, 1].

    Non-square input is center-cropped to a square (`crop="center"`) or padded with black bars (`"pad"`), then
    resized with `resize` ("area" and "bicubic" for quality, "nearest" as the official code did; "area" enlarges
    with bicubic, logged, since area averaging only shrinks).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize!r}; expected one of {RESIZE_MODES}")
    if crop not in CROP_MODES:
        raise ValueError(f"unknown crop mode {crop!r}; expected one of {CROP_MODES}")
    check_frames(frames)
    n, c, h, w = frames.shape
    if h != w:
        if crop == "center":
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            frames = frames[:, :, top:top + s, left:left + s]
        else:
            s = max(h, w)
            top, left = (s - h) // 2, (s - w) // 2
            frames = F.pad(frames, (left, s - w - left, top, s - h - top), value=0.0)
    if frames.shape[-1] == size:
        return frames.contiguous()
    x = frames.float()
    if resize == "area" and frames.shape[-1] < size:
        logger.info("area resizing only shrinks; enlarging %dpx frames to %dpx with bicubic instead",
                    frames.shape[-1], size)
        resize = "bicubic"
    if resize == "bicubic":
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    else:
        x = F.interpolate(x, size=(size, size), mode=resize)
    return x.clamp(0.0, 1.0).to(frames.dtype)
