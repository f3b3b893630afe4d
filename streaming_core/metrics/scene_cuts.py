"""SCuts: PySceneDetect's AdaptiveDetector re-implemented on torch (no OpenCV, no scenedetect).

Semantics follow `scenedetect.detectors.AdaptiveDetector` of PySceneDetect 0.6.3+ and 0.7.x (checked against
0.7.2 in `tests/test_metrics.py`), fed one frame at a time through the detector's per-frame API:

1. colour conversion: 8-bit RGB -> OpenCV's 8-bit HSV (`cv2.COLOR_BGR2HSV` on the BGR frame: H in 0..179,
   S and V in 0..255), reproduced bit-exactly with OpenCV's integer tables (shift 12, rounded reciprocal tables
   `255·4096/v` and `180·4096/(6·diff)`);
2. content value of frame i (i ≥ 1): `(ΔH + ΔS + ΔV) / 3`, each Δ the mean absolute difference of that channel
   between frames i − 1 and i (weights 1, 1, 1 and edges 0, the defaults); frame 0 scores 0.0;
3. adaptive ratio of frame i: `content(i) / mean(content(i − w..i − 1, i + 1..i + w))` with w = `window_width`,
   capped at 255; when that mean is below 1e-5 the ratio is 255 if `content(i) ≥ min_content_val` else 0.
   Only frames w..F − 1 − w are ever judged (the detector needs w frames on each side; the last w frames of a
   video are never cut, and neither are the first w);
4. frame i is a cut when ratio ≥ `adaptive_threshold`, `content(i) ≥ min_content_val` and
   `i − last_cut ≥ min_scene_len`, where `last_cut` starts at frame 0 (0.6.3+: "cuts in the first
   `min_scene_len` frames are never reported"). The reported index is i, the first frame of the new scene.
   `legacy_first_cut=True` gives the PySceneDetect ≤ 0.6.2 rule, under which the first cut ignores
   `min_scene_len` (0.6.2 was current when the paper's reference was accessed; 0.6.3 came out 2024-03-10);
5. SCuts = number of cuts (= scenes − 1 of `detect()`, 0 when no cut).

Not reproduced: `detect()`/`SceneManager` on a video file downscales frames wider than 256 px before detection
(0.7: to 256 px wide; 0.6: by the integer factor ⌊width / 256⌋); this module judges the frames at the size
they are given. The project's stream output is 256 px wide, where both agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AdaptiveParams", "PAPER", "SEAM", "rgb_to_hsv_opencv", "content_values", "adaptive_cuts"]

_HSV_SHIFT = 12


@dataclass(frozen=True)
class AdaptiveParams:
    """AdaptiveDetector parameters (defaults = PySceneDetect's Python API defaults)."""

    adaptive_threshold: float = 3.0
    min_scene_len: int = 15
    window_width: int = 2
    min_content_val: float = 15.0
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # hue, saturation, value (edges are off)
    legacy_first_cut: bool = False


PAPER = AdaptiveParams()
SEAM = AdaptiveParams(min_scene_len=1)


def _tables(device) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.arange(256, dtype=torch.float64)
    with torch.no_grad():
        sdiv = torch.where(index > 0, torch.round((255 << _HSV_SHIFT) / index.clamp(min=1)), torch.zeros(()))
        hdiv = torch.where(index > 0, torch.round((180 << _HSV_SHIFT) / (6.0 * index.clamp(min=1))), torch.zeros(()))
    return sdiv.to(torch.int32).to(device), hdiv.to(torch.int32).to(device)


def rgb_to_hsv_opencv(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (..., 3, H, W) -> int32 HSV (..., 3, H, W) exactly as OpenCV's 8-bit `COLOR_BGR2HSV` of the
    same picture in BGR order (H in 0..179, S and V in 0..255)."""
    if rgb.dtype != torch.uint8:
        raise ValueError(f"rgb_to_hsv_opencv needs uint8 frames, got {rgb.dtype}")
    x = rgb.to(torch.int32)  # every intermediate stays below 2**31
    r, g, b = x.unbind(dim=-3)
    v = torch.maximum(torch.maximum(r, g), b)
    vmin = torch.minimum(torch.minimum(r, g), b)
    diff = v - vmin
    sdiv, hdiv = _tables(rgb.device)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * sdiv[v.long()] + half) >> _HSV_SHIFT
    # OpenCV picks the hue sector in the order: max is red, else max is green, else blue.
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * hdiv[diff.long()] + half) >> _HSV_SHIFT
    h = torch.where(h < 0, h + 180, h)
    return torch.stack((h, s, v), dim=-3)


def content_values(frames_u8: torch.Tensor, weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                   batch: int = 8) -> list[float]:
    """Per-frame content value (frame 0 -> 0.0) of uint8 RGB frames (F, 3, H, W)."""
    if frames_u8.dim() != 4 or frames_u8.shape[1] != 3:
        raise ValueError(f"content_values needs (F, 3, H, W) uint8 frames, got {tuple(frames_u8.shape)}")
    count = frames_u8.shape[0]
    values = [0.0] if count else []
    norm = sum(abs(w) for w in weights) + 0.0  # + the edges weight, 0
    previous = None
    for start in range(0, count, batch):
        hsv = rgb_to_hsv_opencv(frames_u8[start:start + batch])
        if previous is not None:
            hsv_ext = torch.cat((previous, hsv), dim=0)
        else:
            hsv_ext = hsv
        # Integer sums divided by the pixel count in float64, then the weighted mean in Python floats: the
        # same operations, in the same order, as PySceneDetect (bit-identical content values).
        sums = (hsv_ext[1:] - hsv_ext[:-1]).abs().sum(dim=(-2, -1), dtype=torch.int64)  # (n, 3)
        pixels = float(frames_u8.shape[-2] * frames_u8.shape[-1])
        for dh, ds, dv in sums.tolist():
            values.append((dh / pixels * weights[0] + ds / pixels * weights[1] + dv / pixels * weights[2]
                           + 0.0) / norm)
        previous = hsv[-1:]
    return values


def adaptive_cuts(values: list[float], params: AdaptiveParams = PAPER) -> list[int]:
    """Cut frames (first frame of each new scene) from per-frame content values, AdaptiveDetector rules."""
    w = params.window_width
    if w < 1:
        raise ValueError("window_width must be at least 1")
    cuts: list[int] = []
    last_cut: int | None = None if params.legacy_first_cut else 0
    for target in range(w, len(values) - w):
        score = values[target]
        neighbours = values[target - w:target] + values[target + 1:target + w + 1]
        average = sum(neighbours) / (2.0 * w)
        if abs(average) >= 1e-5:
            ratio = min(score / average, 255.0)
        else:
            ratio = 255.0 if score >= params.min_content_val else 0.0
        if ratio >= params.adaptive_threshold and score >= params.min_content_val:
            if last_cut is None or target - last_cut >= params.min_scene_len:
                cuts.append(target)
                last_cut = target
    return cuts
