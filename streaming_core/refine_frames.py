"""Refiner pre- and post-processing: resize, pad to a legal refiner size, crop back (refine_stage.md §3.4, §7.2).

Frames are `(N, 3, H, W)` float in [0, 1]. Resizing is PIL-compatible separable filtering on float values
(bicubic = Keys kernel a = −0.5, bilinear = triangle, lanczos = 3-lobe), with PIL's support scaling when
shrinking and its edge handling (taps outside the image are dropped and the weights renormalised); results are
clamped to [0, 1]. Padding bars are black (0) and placed in whole latent cells so cropping after decoding is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

PAD_MODES = ("official", "minimal", "custom")
RESIZE_FILTERS = ("bicubic", "bilinear", "lanczos")


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    a = -0.5
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _bilinear(x: torch.Tensor) -> torch.Tensor:
    return (1 - x.abs()).clamp(min=0)


def _lanczos(x: torch.Tensor) -> torch.Tensor:
    out = torch.sinc(x) * torch.sinc(x / 3)
    return torch.where(x.abs() < 3, out, torch.zeros_like(x))


_FILTERS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float]] = {
    "bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0), "lanczos": (_lanczos, 3.0),
}


def resample_matrix(in_size: int, out_size: int, kind: str = "bicubic") -> torch.Tensor:
    """(out_size, in_size) float64 weights of PIL's separable resampling along one axis."""
    if kind not in _FILTERS:
        raise ValueError(f"unknown resize filter {kind!r}; expected one of {RESIZE_FILTERS}")
    kernel, support = _FILTERS[kind]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = support * filter_scale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = torch.arange(lo, hi, dtype=torch.float64)
        w = kernel((taps - center + 0.5) / filter_scale)
        total = w.sum()
        weights[i, lo:hi] = w / total if total != 0 else w
    return weights


def resize_frames(frames: torch.Tensor, height: int, width: int, kind: str = "bicubic") -> torch.Tensor:
    """(N, C, H, W) -> (N, C, height, width), PIL-compatible filtering on floats, clamped to [0, 1]."""
    n, c, h, w = frames.shape
    if (h, w) == (height, width):
        return frames.float().clamp(0, 1)
    rows = resample_matrix(h, height, kind).to(frames.device, torch.float32)
    cols = resample_matrix(w, width, kind).to(frames.device, torch.float32)
    out = torch.einsum("oh,nchw,pw->ncop", rows, frames.float(), cols)
    return out.clamp(0, 1)


@dataclass(frozen=True)
class FrameGeometry:
    """Where the content sits in the padded frame the refiner sees (pixels)."""

    content_h: int
    content_w: int
    frame_h: int
    frame_w: int
    top: int
    left: int

    def latent_size(self, factor: int) -> tuple[int, int]:
        return self.frame_h // factor, self.frame_w // factor

    def place(self, frames: torch.Tensor, kind: str = "bicubic") -> torch.Tensor:
        """(n, 3, H, W) in [0, 1] -> (n, 3, frame_h, frame_w): resized content inside black bars."""
        content = resize_frames(frames, self.content_h, self.content_w, kind)
        out = content.new_zeros(content.shape[0], content.shape[1], self.frame_h, self.frame_w)
        out[:, :, self.top:self.top + self.content_h, self.left:self.left + self.content_w] = content
        return out

    def crop(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, 3, frame_h, frame_w) -> (n, 3, content_h, content_w)."""
        return frames[:, :, self.top:self.top + self.content_h, self.left:self.left + self.content_w]


def _round_to(value: float, step: int) -> int:
    return max(step, int(round(value / step)) * step)


def _legal_at_least(size: int, factor: int, modulus: int, residue: int) -> int:
    """Smallest pixel size ≥ `size` whose latent size (size / factor) is ≡ residue (mod modulus)."""
    cells = math.ceil(size / factor)
    while cells % modulus != residue % modulus:
        cells += 1
    return cells * factor


@dataclass(frozen=True)
class LatentRule:
    """Which latent sizes a refiner family accepts: h ≡ h_residue (mod modulus), w ≡ w_residue (mod modulus)."""

    modulus: int = 1
    h_residue: int = 0
    w_residue: int = 0

    def accepts(self, h: int, w: int) -> bool:
        m = self.modulus
        return h > 0 and w > 0 and h % m == self.h_residue % m and w % m == self.w_residue % m


MS_VID2VID_RULE = LatentRule(8, 2, 0)  # §3.4: h ≡ 2, w ≡ 0 (mod 8)
ANY_SIZE_RULE = LatentRule(1, 0, 0)


def plan_geometry(in_h: int, in_w: int, *, native_h: int, native_w: int, factor: int, rule: LatentRule,
                  pad_mode: str = "official", target_height: int | None = None) -> FrameGeometry:
    """Decide the content size and the padded frame size (§7.2 item 3).

    * `official`: fit the content into the native frame (aspect kept), pad to exactly the native frame.
    * `minimal`: same content size, padded only to the smallest legal frame around it.
    * `custom`: content height = `target_height` (aspect kept), smallest legal frame around it.
    The content size is rounded to a multiple of `factor`; bars split `factor·⌊Δ/(2·factor)⌋` before, rest after.
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"unknown pad_mode {pad_mode!r}; expected one of {PAD_MODES}")
    if in_h <= 0 or in_w <= 0:
        raise ValueError(f"frames must have a positive size, got {in_w}x{in_h}")
    if pad_mode == "custom":
        if not target_height or target_height <= 0:
            raise ValueError("pad_mode 'custom' needs a positive target_height (pixels)")
        scale = target_height / in_h
    else:
        scale = min(native_w / in_w, native_h / in_h)
    content_h, content_w = _round_to(in_h * scale, factor), _round_to(in_w * scale, factor)
    if pad_mode == "official":
        content_h, content_w = min(content_h, native_h), min(content_w, native_w)
        frame_h, frame_w = native_h, native_w
        if not rule.accepts(frame_h // factor, frame_w // factor) or frame_h % factor or frame_w % factor:
            raise ValueError(f"the native size {native_w}x{native_h} is not a legal size for this refiner")
    else:
        frame_h = _legal_at_least(content_h, factor, rule.modulus, rule.h_residue)
        frame_w = _legal_at_least(content_w, factor, rule.modulus, rule.w_residue)
    dh, dw = frame_h - content_h, frame_w - content_w
    top, left = factor * (dh // (2 * factor)), factor * (dw // (2 * factor))
    return FrameGeometry(content_h, content_w, frame_h, frame_w, top, left)


def nearest_legal_sizes(h: int, w: int, factor: int, rule: LatentRule) -> str:
    """Human-readable nearest legal pixel sizes around `w x h` (for error messages)."""
    def around(size: int, residue: int) -> tuple[int, int]:
        up = _legal_at_least(size, factor, rule.modulus, residue)
        down = up - rule.modulus * factor
        return (down if down > 0 else up), up

    h_lo, h_hi = around(h, rule.h_residue)
    w_lo, w_hi = around(w, rule.w_residue)
    options = sorted({(w_lo, h_lo), (w_lo, h_hi), (w_hi, h_lo), (w_hi, h_hi)}, key=lambda s: abs(s[0] - w) + abs(s[1] - h))
    return ", ".join(f"{a}x{b}" for a, b in options[:3])


def check_frame_size(h: int, w: int, factor: int, rule: LatentRule) -> None:
    """Raise ValueError naming the nearest legal sizes when `w x h` pixels cannot run through the refiner."""
    if h % factor or w % factor or not rule.accepts(h // factor, w // factor):
        raise ValueError(
            f"{w}x{h} pixels (latent {w // factor}x{h // factor}) is not a legal size for this refiner "
            f"(latent height ≡ {rule.h_residue} and width ≡ {rule.w_residue} mod {rule.modulus}); "
            f"nearest legal sizes: {nearest_legal_sizes(h, w, factor, rule)}"
        )
