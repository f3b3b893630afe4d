"""Image resizing as the official APM preprocessing does it (stream_stage.md §7.2 step 2).

The official image embedder calls `kornia.geometry.resize(x, (224, 224), interpolation="bicubic",
align_corners=True, antialias=True)`. Kornia's anti-aliasing is not torch's `antialias=True` filter: when any axis
shrinks, the image is first blurred with a separable Gaussian (per axis σ = max((in/out − 1)/2, 0.001), kernel
size int(max(4σ, 3)) bumped to the next odd number, 1 on a singleton axis, reflect border), then resampled with
`F.interpolate`. This module reimplements that without importing kornia; the tests compare it with kornia.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def antialias_sigma(in_size: int, out_size: int) -> float:
    """Gaussian σ of kornia's pre-blur along one axis: `max((in/out − 1)/2, 0.001)` (≈ 0.0714 for 256 → 224)."""
    return max((in_size / out_size - 1.0) / 2.0, 0.001)


def antialias_kernel_size(sigma: float, in_size: int) -> int:
    """Odd kernel size `int(max(4σ, 3))` rounded up to odd; 1 on a singleton axis (3 for σ < 1)."""
    if in_size == 1:
        return 1
    size = int(max(4.0 * sigma, 3.0))
    return size if size % 2 else size + 1


def gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Sampled, sum-normalised Gaussian `exp(-n²/2σ²)` at integer offsets n from the centre, shape `(size,)`.

    The squared offsets are measured from the nearest tap so a tiny σ degrades to the unit impulse instead of 0/0.
    """
    offsets = torch.arange(size, dtype=dtype, device=device) - float(size // 2)
    squared = offsets.pow(2)
    squared = squared - squared.min()
    weights = torch.exp(-squared / (2.0 * sigma**2))
    return weights / weights.sum()


def gaussian_blur2d_reflect(x: torch.Tensor, sizes: tuple[int, int], sigmas: tuple[float, float]) -> torch.Tensor:
    """Separable Gaussian blur of `(B, C, H, W)`: along W first, then H, each with reflect padding.

    Half-precision inputs are blurred in float32 and rounded back once, as kornia does.
    """
    out_dtype = x.dtype
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    b, c, h, w = work.shape
    size_y, size_x = sizes
    sigma_y, sigma_x = sigmas
    for axis, size, sigma in ((-1, size_x, sigma_x), (-2, size_y, sigma_y)):
        if size == 1:
            continue
        radius = size // 2
        kernel = gaussian_kernel1d(size, sigma, work.dtype, work.device)
        if axis == -1:
            padded = F.pad(work, (radius, radius, 0, 0), mode="reflect")
            weight = kernel.view(1, 1, 1, size).expand(c, 1, 1, size)
        else:
            padded = F.pad(work, (0, 0, radius, radius), mode="reflect")
            weight = kernel.view(1, 1, size, 1).expand(c, 1, size, 1)
        work = F.conv2d(padded, weight.contiguous(), groups=c)
    return work.to(out_dtype)


def resize_bicubic_antialiased(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Kornia-compatible `resize(x, size, interpolation="bicubic", align_corners=True, antialias=True)`.

    Args:
        x: images `(B, C, H, W)` (any value range; float).
        size: output `(height, width)`.

    Returns:
        `(B, C, height, width)` in the dtype of `x`. Bicubic overshoot is not clamped (kornia does not clamp).
    """
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    out_h, out_w = size
    if out_h <= 0 or out_w <= 0 or h <= 0 or w <= 0:
        raise ValueError(f"cannot resize {h}x{w} images to {out_h}x{out_w}; all sizes must be positive")
    if max(h / out_h, w / out_w) > 1:  # anti-alias only when some axis shrinks (both axes are then filtered)
        sigmas = (antialias_sigma(h, out_h), antialias_sigma(w, out_w))
        sizes = (antialias_kernel_size(sigmas[0], h), antialias_kernel_size(sigmas[1], w))
        x = gaussian_blur2d_reflect(x, sizes, sigmas)
    return F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=True)
