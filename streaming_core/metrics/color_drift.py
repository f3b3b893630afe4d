"""Colour and exposure drift against an anchor frame, and weight-free appearance similarity.

Colour (spec `metrics.md` §4 #9), from 8-bit sRGB frames:

* CIELAB (D65 white, sRGB transfer curve undone, CIE 1976 L*a*b*) per pixel; per frame the mean and standard
  deviation of L*, a*, b* over the pixels;
* ΔE76 of frame t = Euclidean distance between the mean Lab of frame t and of the anchor frame;
  `delta_e_max` is its maximum over the video, `delta_e_final` its value at the last frame;
* `l_slope_per_100` (and a*, b*): least-squares slope of the per-frame mean over the frame index, times 100
  (L* units per 100 frames; a linear exposure ramp is recovered exactly);
* `l_hist_emd_max`: the largest 1-D earth mover's distance (L* units) between the L* histogram of a chunk
  (all its frames, 100 bins over 0..100) and that of the anchor's chunk.

Appearance (spec §4 #10, weight-free part): `hsv_corr_min`, the lowest correlation (Pearson correlation of
the bin counts, the `HISTCMP_CORREL` of OpenCV) between the 2-D hue/saturation histogram (30 × 32 bins of
OpenCV 8-bit HSV) of the anchor and that of every k-th frame. The ORB keypoint ratio (`orb_ratio_min`) needs
OpenCV and is computed only when `cv2` is importable: fraction of the anchor's ORB keypoints (500 features)
with a cross-checked Hamming match (distance < 64) in the frame.
"""
from __future__ import annotations

import torch

from .scene_cuts import rgb_to_hsv_opencv

__all__ = ["srgb_to_lab", "lab_statistics", "color_drift", "hsv_correlations", "orb_ratios"]

# sRGB (linear) -> XYZ, D65, IEC 61966-2-1
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_EPSILON = 216.0 / 24389.0
_KAPPA = 24389.0 / 27.0


def srgb_to_lab(rgb: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """sRGB in [0, 1], (..., 3, H, W) -> CIELAB (..., 3, H, W) in `dtype` (L* 0..100)."""
    x = rgb.to(dtype).clamp(0.0, 1.0)
    linear = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=dtype, device=x.device)
    xyz = torch.einsum("ij,...jhw->...ihw", matrix, linear)
    white = torch.tensor(_WHITE_D65, dtype=dtype, device=x.device).view(3, 1, 1)
    t = xyz / white
    f = torch.where(t > _EPSILON, t.clamp(min=1e-12) ** (1.0 / 3.0), (_KAPPA * t + 16.0) / 116.0)
    fx, fy, fz = f.unbind(dim=-3)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def lab_statistics(frames_u8: torch.Tensor, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 RGB (F, 3, H, W) -> (mean Lab (F, 3), std Lab (F, 3), L* histograms (F, 100) as pixel fractions)."""
    means, stds, hists = [], [], []
    for start in range(0, frames_u8.shape[0], batch):
        lab = srgb_to_lab(frames_u8[start:start + batch].float() / 255.0, dtype=torch.float32)
        flat = lab.flatten(2).double()  # per-pixel Lab in float32, moments in float64
        means.append(flat.mean(dim=2))
        stds.append(flat.std(dim=2, unbiased=False))
        lum = flat[:, 0]
        bins = (lum.clamp(0.0, 99.999) / 1.0).long()
        hist = torch.zeros(lum.shape[0], 100, dtype=torch.float64, device=lum.device)
        hist.scatter_add_(1, bins, torch.ones_like(lum))
        hists.append(hist / lum.shape[1])
    return torch.cat(means), torch.cat(stds), torch.cat(hists)


def _slope_per_100(series: torch.Tensor) -> float:
    count = series.shape[0]
    if count < 2:
        return 0.0
    t = torch.arange(count, dtype=torch.float64, device=series.device)
    tc = t - t.mean()
    return float((tc * (series - series.mean())).sum() / (tc * tc).sum() * 100.0)


def color_drift(frames_u8: torch.Tensor, anchor: int, spans: list[tuple[int, int]]) -> dict:
    """Colour drift report (see module docstring) of uint8 RGB frames (F, 3, H, W) against frame `anchor`."""
    mean, std, hist = lab_statistics(frames_u8)
    delta_e = torch.linalg.vector_norm(mean - mean[anchor], dim=1)
    anchor_span = next((s for s in spans if s[0] <= anchor < s[1]), (anchor, anchor + 1))
    anchor_hist = hist[anchor_span[0]:anchor_span[1]].mean(dim=0)
    emds = []
    for start, end in spans:
        chunk_hist = hist[start:end].mean(dim=0)
        emds.append(float((torch.cumsum(chunk_hist - anchor_hist, dim=0)).abs().sum()))  # bin width 1 L*
    return {
        "delta_e_max": float(delta_e.max()),
        "delta_e_final": float(delta_e[-1]),
        "l_slope_per_100": _slope_per_100(mean[:, 0]),
        "a_slope_per_100": _slope_per_100(mean[:, 1]),
        "b_slope_per_100": _slope_per_100(mean[:, 2]),
        "anchor_lab": [round(float(v), 4) for v in mean[anchor]],
        "l_hist_emd_max": max(emds) if emds else 0.0,
        "_series": {"mean_lab": mean.tolist(), "std_lab": std.tolist(), "delta_e": delta_e.tolist(),
                    "l_hist_emd_per_chunk": emds},
    }


def _hs_histogram(frame_u8: torch.Tensor, h_bins: int = 30, s_bins: int = 32) -> torch.Tensor:
    hsv = rgb_to_hsv_opencv(frame_u8.unsqueeze(0))[0]
    h = (hsv[0].long() * h_bins) // 180
    s = (hsv[1].long() * s_bins) // 256
    index = (h * s_bins + s).flatten()
    hist = torch.zeros(h_bins * s_bins, dtype=torch.float64, device=frame_u8.device)
    hist.scatter_add_(0, index, torch.ones_like(index, dtype=torch.float64))
    return hist


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    ac, bc = a - a.mean(), b - b.mean()
    denominator = torch.sqrt((ac * ac).sum() * (bc * bc).sum())
    return float((ac * bc).sum() / denominator) if denominator > 0 else 1.0


def hsv_correlations(frames_u8: torch.Tensor, anchor: int, step: int) -> dict[int, float]:
    """{frame index: H-S histogram correlation with the anchor} for every `step`-th frame and the last."""
    reference = _hs_histogram(frames_u8[anchor])
    indices = sorted(set(range(0, frames_u8.shape[0], max(1, step))) | {frames_u8.shape[0] - 1})
    return {i: _correlation(reference, _hs_histogram(frames_u8[i])) for i in indices}


def orb_ratios(frames_u8: torch.Tensor, anchor: int, step: int) -> dict[int, float]:
    """{frame index: matched fraction of the anchor's ORB keypoints}; raises ImportError without OpenCV."""
    import cv2  # optional: only this metric needs OpenCV
    import numpy as np

    def gray(index: int):
        rgb = frames_u8[index].permute(1, 2, 0).cpu().numpy()
        return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)

    orb = cv2.ORB_create(nfeatures=500)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    keypoints, reference = orb.detectAndCompute(gray(anchor), None)
    indices = sorted(set(range(0, frames_u8.shape[0], max(1, step))) | {frames_u8.shape[0] - 1})
    ratios: dict[int, float] = {}
    for i in indices:
        if reference is None or not keypoints:
            ratios[i] = 0.0
            continue
        _, descriptors = orb.detectAndCompute(gray(i), None)
        if descriptors is None:
            ratios[i] = 0.0
            continue
        good = [m for m in matcher.match(reference, descriptors) if m.distance < 64]
        ratios[i] = len(good) / len(keypoints)
    return ratios
