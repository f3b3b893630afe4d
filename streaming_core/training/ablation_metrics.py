"""Per-video numbers of the ablation study (`ablation.py`): the metrics kit's scores plus the toy world's
tracked-object drift.

Object drift (APM ablation) on toy videos with a solid background and one object (`toy_metrics`): per 8-frame
group after the first 16 frames (the anchor chunk), compared with the first 16 frames:

* colour: L∞ distance of the object's mean RGB (`toy_metrics.object_colour`, [0, 1] units) and ΔE76 of the two
  mean colours in CIELAB (`metrics.color_drift.srgb_to_lab`);
* shape: object area (pixels per frame, as a ratio to the reference) and *fill ratio* = area of the largest
  connected object region / area of its bounding box, averaged over the group's frames. The fill ratio tells
  the toy shapes apart (circle π/4 ≈ 0.79, square 1.0, triangle 0.5) independent of position and size;
* a group whose object has fewer than `min_pixels` pixels per frame counts as *vanished* and is left out of
  the maxima (reported as a count instead).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..chunks import FRAMES_PER_CHUNK, NEW_FRAMES
from ..metrics import score_video
from ..metrics.color_drift import srgb_to_lab
from ..metrics.warp_error import seam_ratio
from .toy_metrics import object_colour

#: Report entries copied into the ablation JSON for every video.
SCORE_KEYS = ("frames", "scuts_paper", "scuts_seam", "seam_ratio", "mawe_approx", "mean_motion_px",
              "mean_warp_error", "stagnant", "flow_std_a", "flow_jerk_b")


def object_mask(frames: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """(F, 3, H, W) in [0, 1] -> (F, H, W) bool: pixels farther than `threshold` (RGB L2) from the frame's median
    colour (the background), as in `toy_metrics.object_colour`."""
    flat = frames.float().flatten(2)
    background = flat.median(dim=2).values[:, :, None]
    return ((flat - background).norm(dim=1) > threshold).reshape(frames.shape[0], *frames.shape[-2:])


def fill_ratio(mask: np.ndarray) -> float | None:
    """Area of the largest 4-connected region of a (H, W) bool mask over the area of its bounding box
    (None for an empty mask)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    ys, xs = np.nonzero(labels == largest)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    return float(sizes[largest - 1]) / float(box)


@dataclass
class GroupStats:
    """One group of frames: mean object colour (RGB [0, 1]), pixels per frame, mean fill ratio."""

    rgb: list[float]
    pixels: float
    fill: float | None


def group_stats(frames: torch.Tensor, threshold: float = 0.25) -> GroupStats:
    colour = object_colour(frames, threshold)
    masks = object_mask(frames, threshold).numpy()
    fills = [f for f in (fill_ratio(m) for m in masks) if f is not None]
    return GroupStats([float(v) for v in colour.rgb], colour.pixels, sum(fills) / len(fills) if fills else None)


def _lab(rgb: list[float]) -> torch.Tensor:
    return srgb_to_lab(torch.tensor(rgb, dtype=torch.float64).view(3, 1, 1)).view(3)


def object_drift(video: torch.Tensor, first: int = FRAMES_PER_CHUNK, min_pixels: float = 8.0,
                 threshold: float = 0.25) -> dict:
    """Drift of the tracked object over `video` (N, 3, H, W) in [0, 1] against its first `first` frames.

    Returns a JSON-ready dict: `reference` (GroupStats of the first frames), `groups` (one per later 8-frame
    group), `vanished_groups`, and maxima over the visible groups: `rgb_linf_max`, `rgb_linf_final` (last
    group), `delta_e_max`, `delta_e_final`, `area_ratio_max_dev` (max |log(area/area_ref)| as a ratio
    e^|·| ≥ 1), `fill_dev_max` (max |fill − fill_ref|). Values are None when nothing could be measured (the
    reference shows no object or every group vanished).
    """
    reference = group_stats(video[:first], threshold)
    groups = [group_stats(video[i:i + NEW_FRAMES], threshold) for i in range(first, video.shape[0], NEW_FRAMES)]
    out = {"reference": asdict(reference), "groups": [asdict(g) for g in groups], "vanished_groups": 0,
           "rgb_linf_max": None, "rgb_linf_final": None, "delta_e_max": None, "delta_e_final": None,
           "area_ratio_max_dev": None, "fill_dev_max": None}
    if reference.pixels < min_pixels:
        out["vanished_groups"] = len(groups)
        out["reference_missing"] = True
        return out
    ref_rgb, ref_lab = torch.tensor(reference.rgb), _lab(reference.rgb)
    linf, de, area, fill = [], [], [], []
    for g in groups:
        if g.pixels < min_pixels:
            out["vanished_groups"] += 1
            continue
        linf.append(float((torch.tensor(g.rgb) - ref_rgb).abs().max()))
        de.append(float(torch.linalg.vector_norm(_lab(g.rgb) - ref_lab)))
        area.append(math.exp(abs(math.log(g.pixels / reference.pixels))))
        if g.fill is not None and reference.fill is not None:
            fill.append(abs(g.fill - reference.fill))
    if linf:
        out.update(rgb_linf_max=max(linf), rgb_linf_final=linf[-1] if groups[-1].pixels >= min_pixels else None,
                   delta_e_max=max(de), delta_e_final=de[-1] if groups[-1].pixels >= min_pixels else None,
                   area_ratio_max_dev=max(area), fill_dev_max=max(fill) if fill else None)
    return out


def score(frames: torch.Tensor, layout: str, size: int, extra_boundaries: list[int] | None = None) -> dict:
    """The metrics kit's report (`score_video`, Lucas–Kanade flow at `size`², no ORB) reduced to `SCORE_KEYS`
    plus `color` (whole-frame ΔE against frame 0 etc.); with `extra_boundaries` also `seam_ratio_at_cuts`, the
    seam ratio over exactly those boundary frames."""
    report = score_video(frames, layout=layout, anchor=0, size=size, orb=False, series=extra_boundaries is not None)
    out = {k: report[k] for k in SCORE_KEYS}
    out["color"] = {k: report["color"][k] for k in ("delta_e_max", "delta_e_final", "l_slope_per_100",
                                                    "l_hist_emd_max")}
    out["hsv_corr_min"] = report["appearance"]["hsv_corr_min"]
    if extra_boundaries is not None:
        out["seam_ratio_at_cuts"] = seam_ratio(report["series"]["warp_error"], extra_boundaries)
    return out
