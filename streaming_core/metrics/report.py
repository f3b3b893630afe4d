"""`score_video`: every consistency metric of the CPU kit in one JSON-ready dict (spec `metrics.md` §4.3).

Pipeline: frames -> 8-bit RGB; SCuts on the frames as given; MAWE~, W/OFS, seam ratio, flow statistics and
the stagnation flag on frames resized to `size` × `size` (bilinear, no antialiasing, rounded to 8 bits, as the
official `mawe.py` resizes to 720 × 720); colour drift and appearance on the frames as given.

Stagnation **[decision]**: the spec's rule is "mean flow magnitude below 0.05 px per frame at 720²". Per-pair
flow of a frozen video with sensor-like noise is not zero (it measures the noise: about 0.08 px at 256² for
σ = 3 grey levels with the Lucas–Kanade flow), so the rule is applied to the *long-baseline motion*
(`motion_span_px`): the video is cut into windows of `window` consecutive frames (8), each window is averaged
over time (noise falls by √8, motion only blurs), the flow between the averaged windows starting at t and
t + `span` (16; t = 0, span, 2·span, …) is averaged over an 8 × 8 grid of blocks, and the mean block magnitude
is divided by `span`. Real motion accumulates over the span and is coherent within a block; noise does neither
(σ = 3 noise on a frozen 128² video: ~0.002 px per frame against a threshold of 0.0089). The threshold scales
with the metric size: 0.05 · size / 720 px per frame. Short videos use smaller windows and spans (window
≈ F/4, span ≤ F − window). Motion that returns to its start within `span` frames (a fast oscillation) also
reads as stagnant. `motion_span_px` is a stagnation test, not a speed measurement: displacements beyond the
flow's range (about 24 px over the span at 256²) are underestimated.
"""
from __future__ import annotations

import json
import math
import os
from typing import Callable

import torch
import torch.nn.functional as F

from .. import __version__ as CORE_VERSION
from .chunk_layout import ChunkLayout, parse_layout
from .color_drift import color_drift, hsv_correlations, orb_ratios
from .optical_flow import LK_DEFAULTS, RaftFlow, gray, lk_flow
from .scene_cuts import PAPER, SEAM, AdaptiveParams, adaptive_cuts, content_values
from .video_io import to_uint8_frames
from .warp_error import MAWE_COEFF, MOTION_FLOOR, SEAM_EPS, PairStats, seam_ratio, summarize

__all__ = ["score_video", "report_json", "STAGNATION_PX_AT_720", "DEFAULT_SIZE", "REPORT_KEYS"]

DEFAULT_SIZE = 720
STAGNATION_PX_AT_720 = 0.05
STAGNATION_SPAN = 16
STAGNATION_WINDOW = 8

# Top-level keys of the report, in order (spec §4.3 plus the project's additions after "seam_ratio").
REPORT_KEYS = ("frames", "fps", "layout", "scuts_paper", "scuts_seam", "cut_frames", "cut_frames_paper",
               "seam_locked_fraction", "mawe_approx", "mawe_raft", "w_over_ofs", "mean_warp_error",
               "mean_motion_px", "stagnant", "motion_span_px", "seam_ratio", "flow_std_a", "flow_jerk_b",
               "motion_per_chunk_px", "color", "appearance", "anchor", "metric_size", "flow", "params",
               "skipped", "versions")

_NOT_IN_KIT = {
    "clip": "CLIP score needs CLIP weights; not part of the weight-free consistency kit",
    "aesthetic": "aesthetic score needs CLIP ViT-L/14 and LAION predictor weights; not part of the kit",
    "reid": "re-ID score needs face-recognition weights; not part of the kit",
    "lpips": "LPIPS needs backbone weights; not part of the kit",
}


def _resize_u8(frames_u8: torch.Tensor, size: int | None, device: torch.device) -> torch.Tensor:
    """uint8 (n, 3, H, W) -> float32 (n, 3, S, S) on 0–255, rounded like torchvision's uint8 resize."""
    x = frames_u8.to(device=device, dtype=torch.float32)
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.round().clamp(0.0, 255.0)


def _flow_pairs(frames_u8: torch.Tensor, pairs: list[tuple[int, int]], size: int | None, device: torch.device,
                flow_fn: Callable, batch: int, stats: PairStats, on_batch: Callable[[int], None]) -> None:
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        first = _resize_u8(frames_u8[[a for a, _ in chunk]], size, device)
        second = _resize_u8(frames_u8[[b for _, b in chunk]], size, device)
        stats.add(first, second, flow_fn(first, second))
        on_batch(len(chunk))


def _long_baseline_motion(frames_u8: torch.Tensor, size: int | None, device: torch.device, span: int,
                          window: int, on_pair: Callable[[int], None]) -> list[float]:
    """Block motion (px) between time-averaged windows `span` frames apart (module docstring)."""
    stats = PairStats()
    count = frames_u8.shape[0]
    for start in range(0, count - span - window + 1, span):
        first = _resize_u8(frames_u8[start:start + window], size, device).mean(dim=0, keepdim=True)
        second = _resize_u8(frames_u8[start + span:start + span + window], size, device).mean(dim=0, keepdim=True)
        stats.add(first, second, _lk(first, second))
        on_pair(1)
    return stats.block_motion


def _lk(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return lk_flow(gray(first), gray(second))


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def score_video(frames, *, layout: "str | ChunkLayout | None" = "first=16,stride=8", anchor: int = 0,
                size: int | None = DEFAULT_SIZE, fps: float | None = None, raft_weights: str | None = None,
                coeff: float = MAWE_COEFF, stagnation_span: int = STAGNATION_SPAN,
                appearance_step: int | None = None, orb: bool = True, series: bool = False, batch: int = 8,
                device: "torch.device | str" = "cpu",
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Score one video; returns the report dict (JSON-ready; `report_json` serialises it).

    frames: uint8 (F, H, W, 3) / (F, 3, H, W) in 0..255, or float (F, 3, H, W) / (F, H, W, 3) in [0, 1];
        F ≥ 2. Float frames are quantised to 8 bits first.
    layout: chunk layout ("first=16,stride=8", "refine:24/8", "none" / None, or a ChunkLayout).
    anchor: index of the reference frame for colour and appearance drift (negative counts from the end).
    size: side of the square frames the flow metrics run on (720 as in the paper; None = as given).
    raft_weights: local torchvision RAFT-large state dict; when given, `mawe_raft` (the official MAWE) is added.
        A missing file is reported in `skipped["raft_mawe"]`, never downloaded.
    stagnation_span: frame distance of the long-baseline motion used by the stagnation flag.
    appearance_step: every how many frames appearance is compared with the anchor (default: the layout
        stride, else 8).
    orb: compute the ORB keypoint ratio when OpenCV is importable.
    series: include per-frame / per-pair series under "series".
    progress: called as progress(done, total) after each batch of flow pairs.
    """
    video = to_uint8_frames(frames)
    count = int(video.shape[0])
    if count < 2:
        raise ValueError(f"a video needs at least 2 frames to be scored, got {count}")
    if not -count <= anchor < count:
        raise ValueError(f"anchor frame {anchor} is outside the video ({count} frames)")
    anchor = anchor % count
    if size is not None and size < 16:
        raise ValueError(f"size must be at least 16 pixels (or None), got {size}")
    chunk_layout = parse_layout(layout)
    device = torch.device(device)
    boundaries = chunk_layout.boundaries(count)
    spans = chunk_layout.chunk_spans(count)
    skipped = dict(_NOT_IN_KIT)

    # ---- SCuts -------------------------------------------------------------------------------------------
    values = content_values(video)
    cuts_paper = adaptive_cuts(values, PAPER)
    cuts_seam = adaptive_cuts(values, SEAM)
    boundary_set = set(boundaries)
    seam_locked = (sum(1 for c in cuts_seam if c in boundary_set) / len(cuts_seam)
                   if cuts_seam and chunk_layout.kind != "none" else None)

    # ---- flow metrics ------------------------------------------------------------------------------------
    window = max(1, min(STAGNATION_WINDOW, count // 4))
    span = max(1, min(stagnation_span, count - window))
    long_pair_count = len(range(0, count - span - window + 1, span))
    consecutive = [(t, t + 1) for t in range(count - 1)]
    raft: RaftFlow | None = None
    flow_sides = (size, size) if size is not None else tuple(video.shape[-2:])
    if raft_weights and not os.path.isfile(raft_weights):
        skipped["raft_mawe"] = (f"RAFT weights file not found: {raft_weights} (official MAWE skipped; nothing is "
                                f"downloaded)")
    elif raft_weights and any(side % 8 or side < 128 for side in flow_sides):
        skipped["raft_mawe"] = (f"RAFT needs frame sides that are multiples of 8 and at least 128; the metric size "
                                f"is {size or 'native'} (official MAWE skipped)")
    elif raft_weights:
        raft = RaftFlow(raft_weights, device=device)
    else:
        skipped["raft_mawe"] = "no RAFT weights file given (official MAWE needs torchvision raft_large weights)"
    total = len(consecutive) + long_pair_count + (len(consecutive) if raft is not None else 0)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    stats = PairStats()
    _flow_pairs(video, consecutive, size, device, _lk, batch, stats, advance)
    block_motion = _long_baseline_motion(video, size, device, span, window, advance)
    summary = summarize(stats, coeff=coeff)
    motion_span = sum(block_motion) / len(block_motion) / span
    side = size if size is not None else math.sqrt(video.shape[-2] * video.shape[-1])
    threshold = STAGNATION_PX_AT_720 * side / 720.0
    mawe_raft = None
    if raft is not None:
        raft_stats = PairStats()
        _flow_pairs(video, consecutive, size, device, raft, max(1, batch // 4), raft_stats, advance)
        mawe_raft = summarize(raft_stats, coeff=coeff).mawe

    motion_per_chunk = []
    for start, end in spans:
        pair_motion = stats.motion[start:max(start, end - 1)]
        motion_per_chunk.append(sum(pair_motion) / len(pair_motion) if pair_motion else None)

    # ---- colour and appearance ---------------------------------------------------------------------------
    color = color_drift(video, anchor, spans)
    color_series = color.pop("_series")
    step = appearance_step or (chunk_layout.stride if chunk_layout.kind == "stream" else 8)
    hsv_corr = hsv_correlations(video, anchor, step)
    orb_ratio: dict[int, float] | None = None
    opencv_version = None
    if orb:
        try:
            import cv2

            opencv_version = cv2.__version__
            orb_ratio = orb_ratios(video, anchor, step)
        except ImportError:
            skipped["orb"] = "ORB keypoint ratio needs OpenCV (cv2), which is not installed"
    else:
        skipped["orb"] = "ORB keypoint ratio switched off"

    report = {
        "frames": count,
        "fps": fps,
        "layout": chunk_layout.as_dict(),
        "scuts_paper": len(cuts_paper),
        "scuts_seam": len(cuts_seam),
        "cut_frames": cuts_seam,
        "cut_frames_paper": cuts_paper,
        "seam_locked_fraction": seam_locked,
        "mawe_approx": _finite_or_none(summary.mawe),
        "mawe_raft": _finite_or_none(mawe_raft),
        "w_over_ofs": _finite_or_none(summary.w_over_ofs),
        "mean_warp_error": _finite_or_none(summary.mean_warp_error),
        "mean_motion_px": _finite_or_none(summary.mean_motion_px),
        "stagnant": bool(motion_span < threshold),
        "motion_span_px": motion_span,
        "seam_ratio": _finite_or_none(seam_ratio(stats.warp_error, boundaries)),
        "flow_std_a": _finite_or_none(summary.flow_std_a),
        "flow_jerk_b": _finite_or_none(summary.flow_jerk_b),
        "motion_per_chunk_px": motion_per_chunk,
        "color": color,
        "appearance": {
            "hsv_corr_min": min(hsv_corr.values()),
            "orb_ratio_min": min(orb_ratio.values()) if orb_ratio else None,
            "step": step,
        },
        "anchor": anchor,
        "metric_size": size,
        "flow": {"method": "lk", "size": size, **LK_DEFAULTS,
                 "raft_weights": raft.path if raft is not None else None},
        "params": {
            "scuts_paper": _params(PAPER), "scuts_seam": _params(SEAM), "coeff": coeff,
            "motion_floor_px": MOTION_FLOOR, "seam_eps": SEAM_EPS, "stagnation_span": span,
            "stagnation_window": window,
            "stagnation_threshold_px": threshold, "boundaries": boundaries,
        },
        "skipped": skipped,
        "versions": {
            "scenedetect": "native AdaptiveDetector (PySceneDetect 0.6.3+/0.7 rules, OpenCV 8-bit HSV)",
            "opencv": opencv_version,
            "torch": torch.__version__,
            "streaming_core": CORE_VERSION,
        },
    }
    if series:
        report["series"] = {
            "content_values": values,
            "warp_error": stats.warp_error,
            "motion_px": stats.motion,
            "ofs": stats.ofs,
            "magnitude_std_px": stats.magnitude_std,
            "mean_lab": color_series["mean_lab"],
            "std_lab": color_series["std_lab"],
            "delta_e": color_series["delta_e"],
            "l_hist_emd_per_chunk": color_series["l_hist_emd_per_chunk"],
            "hsv_corr": {str(k): v for k, v in hsv_corr.items()},
            "orb_ratio": {str(k): v for k, v in orb_ratio.items()} if orb_ratio else None,
        }
    return report


def _params(params: AdaptiveParams) -> dict:
    return {"adaptive_threshold": params.adaptive_threshold, "min_scene_len": params.min_scene_len,
            "window_width": params.window_width, "min_content_val": params.min_content_val,
            "weights": list(params.weights), "legacy_first_cut": params.legacy_first_cut}


def _clean(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def report_json(report: dict, *, indent: int | None = 2) -> str:
    """Strict JSON (non-finite numbers become null)."""
    return json.dumps(_clean(report), indent=indent, allow_nan=False)
