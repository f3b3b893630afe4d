"""Offline consistency metrics (`streaming_core.metrics`, spec metrics.md §4): the tests of §4.2 on synthetic
videos, cross-checks against OpenCV and PySceneDetect (test-only dependencies), the CLI on an mp4 file and the
Consistency Metrics node in-process.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO_ROOT
from streaming_core.metrics import (
    PAPER,
    SEAM,
    AdaptiveParams,
    ChunkLayout,
    adaptive_cuts,
    content_values,
    lk_flow,
    parse_layout,
    read_video,
    refine_chunk_starts,
    report_json,
    rgb_to_hsv_opencv,
    score_video,
    to_uint8_frames,
)
from streaming_core.metrics.color_drift import srgb_to_lab
from streaming_core.metrics.optical_flow import gray
from streaming_core.metrics.warp_error import PairStats, forward_splat, seam_ratio, summarize, warp_error

# the keys of the report format of metrics.md §4.3
SPEC_KEYS = ("frames", "fps", "layout", "scuts_paper", "scuts_seam", "cut_frames", "seam_locked_fraction",
             "mawe_approx", "w_over_ofs", "mean_motion_px", "stagnant", "seam_ratio", "flow_std_a", "flow_jerk_b",
             "color", "appearance", "skipped", "versions")

# ------------------------------------------------------------------------------------------------------------
# synthetic videos: smooth colour textures, panned by cropping a wider canvas (exact integer motion)
# ------------------------------------------------------------------------------------------------------------


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="circular"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="circular"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                    groups=c)


def texture(height: int, width: int, seed: int, *, sigma: float = 5.0, contrast: float = 0.18,
            base: torch.Tensor | None = None) -> torch.Tensor:
    """(3, H, W) in [0, 1]: blurred colour noise around a random base colour."""
    g = torch.Generator().manual_seed(seed)
    x = _blur(torch.rand(1, 3, height, width, generator=g), sigma)
    x = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)
    if base is None:
        base = torch.rand(3, generator=g) * 0.6 + 0.2
    return (base.view(1, 3, 1, 1) + contrast * x).clamp(0, 1)[0]


def pan(canvas: torch.Tensor, frames: int, size: int, speed: int) -> torch.Tensor:
    """(frames, 3, size, size): a window sliding left over `canvas`, so the content moves right by `speed` px."""
    width = canvas.shape[-1]
    assert width >= size + speed * (frames - 1)
    return torch.stack([canvas[:, :size, width - size - t * speed:width - t * speed] for t in range(frames)])


def panning_video(frames: int, size: int, seed: int, speed: int = 1) -> torch.Tensor:
    return pan(texture(size, size + speed * frames, seed), frames, size, speed)


def with_noise(frames: torch.Tensor, sigma_levels: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (frames + sigma_levels / 255.0 * torch.randn(frames.shape, generator=g)).clamp(0, 1)


def periodic_seams(frames: int, size: int, period: int) -> torch.Tensor:
    """Every `period` frames the picture is re-synthesised (a new texture), panning 1 px/frame in between."""
    pieces = []
    for k in range(-(-frames // period)):
        piece = panning_video(period, size, seed=10 + k, speed=1)
        pieces.append(piece)
    return torch.cat(pieces)[:frames]


def hard_cut(frames: int, size: int, at: int) -> torch.Tensor:
    a = panning_video(frames, size, seed=1)
    b = panning_video(frames, size, seed=2)
    return torch.cat((a[:at], b[at:]))


def _u8(frames: torch.Tensor) -> torch.Tensor:
    return to_uint8_frames(frames)


def _scuts(frames: torch.Tensor, params: AdaptiveParams) -> list[int]:
    return adaptive_cuts(content_values(_u8(frames)), params)


# ------------------------------------------------------------------------------------------------------------
# SCuts (§4.2 tests 1-3) and the native AdaptiveDetector
# ------------------------------------------------------------------------------------------------------------


def test_hard_cut_is_found_at_its_frame_by_both_variants():
    video = hard_cut(96, 64, at=48)
    assert _scuts(video, PAPER) == [48]
    assert _scuts(video, SEAM) == [48]


def test_periodic_8_frame_seams_count_29_with_seam_variant_and_14_with_paper_variant():
    video = periodic_seams(240, 48, period=8)
    report = score_video(video, layout="first=8,stride=8", size=48, orb=False)
    assert report["scuts_seam"] == 29
    assert report["cut_frames"] == list(range(8, 240, 8))
    assert report["scuts_paper"] == 14  # the 15-frame minimum scene length swallows every other seam
    assert report["cut_frames_paper"] == list(range(16, 240, 16))
    assert report["seam_locked_fraction"] == 1.0


def test_cuts_off_the_chunk_grid_are_not_seam_locked():
    video = periodic_seams(96, 48, period=12)  # seams at 12, 24, ...; stream boundaries at 16, 24, 32, ...
    report = score_video(video, layout="first=16,stride=8", size=48, orb=False)
    assert report["cut_frames"] == [12, 24, 36, 48, 60, 72, 84]
    assert report["seam_locked_fraction"] == pytest.approx(3 / 7)  # 24, 48 and 72 lie on the grid


def test_cut_at_frame_5_is_not_reported_by_paper_variant():
    video = hard_cut(64, 64, at=5)
    assert _scuts(video, PAPER) == []  # blind zone: cuts in the first min_scene_len frames are never reported
    assert _scuts(video, SEAM) == [5]
    legacy = AdaptiveParams(legacy_first_cut=True)  # PySceneDetect <= 0.6.2 let the first cut through
    assert _scuts(video, legacy) == [5]


def test_the_first_and_last_window_width_frames_are_never_cut():
    values = [0.0, 0.0, 90.0, 0.0, 0.0, 0.0, 0.0, 90.0, 0.0]
    assert adaptive_cuts(values, SEAM) == [2]  # frame 7 has only one frame after it
    assert adaptive_cuts([0.0, 90.0, 0.0, 0.0, 0.0], SEAM) == []  # frame 1 has only one frame before it


def test_adaptive_ratio_and_min_content_value_rules():
    steady = [0.0] + [20.0] * 20
    assert adaptive_cuts(steady, SEAM) == []  # a high but steady content value is motion, not a cut
    weak = [0.0] + [1.0] * 5 + [14.0] + [1.0] * 5
    assert adaptive_cuts(weak, SEAM) == []  # ratio 14 but below min_content_val 15
    strong = [0.0] + [1.0] * 5 + [15.0] + [1.0] * 5
    assert adaptive_cuts(strong, SEAM) == [6]


def test_hsv_conversion_matches_opencv_on_every_8bit_colour():
    cv2 = pytest.importorskip("cv2")
    levels = np.arange(256, dtype=np.uint8)
    for red in range(0, 256, 32):  # 8 slabs of 32 x 256 x 256 colours: all 16.7 M colours
        r, g, b = np.meshgrid(levels[red:red + 32], levels, levels, indexing="ij")
        rgb = np.stack([r, g, b], axis=-1).reshape(32 * 256, 256, 3)
        expected = cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2HSV)
        ours = rgb_to_hsv_opencv(torch.from_numpy(rgb).permute(2, 0, 1).contiguous()).permute(1, 2, 0).numpy()
        mismatch = int((ours != expected).sum())
        assert mismatch == 0, f"{mismatch} HSV values differ from OpenCV in red {red}..{red + 31}"


def _scenedetect_run(frames_u8: torch.Tensor, params: AdaptiveParams) -> tuple[list[float], list[int]]:
    """Content values and cut frames of the real PySceneDetect AdaptiveDetector (per-frame API)."""
    scenedetect = pytest.importorskip("scenedetect")
    detector = scenedetect.AdaptiveDetector(
        adaptive_threshold=params.adaptive_threshold, min_scene_len=params.min_scene_len,
        window_width=params.window_width, min_content_val=params.min_content_val)
    stats = scenedetect.StatsManager()
    detector.stats_manager = stats
    cuts, values = [], []
    for index, frame in enumerate(frames_u8):
        bgr = np.ascontiguousarray(frame.permute(1, 2, 0).numpy()[..., ::-1])
        try:  # 0.7: timecodes
            timecode = scenedetect.FrameTimecode(index, fps=8.0)
        except AttributeError:  # pragma: no cover - 0.6 takes frame numbers
            timecode = index
        cuts.extend(detector.process_frame(timecode, bgr))
    for index in range(frames_u8.shape[0]):
        key = scenedetect.FrameTimecode(index, fps=8.0)
        value = stats.get_metrics(key, ["content_val"])[0]
        values.append(0.0 if value is None else float(value))
    return values, [c.frame_num if hasattr(c, "frame_num") else int(c) for c in cuts]


def _mixed_video() -> torch.Tensor:
    """Cuts at irregular places (3, 20, 26, 61), a subtle seam (40), a fade (70..77) and noise."""
    size = 40
    scenes = [panning_video(100, size, seed=s) for s in range(5)]
    video = torch.cat((scenes[0][:3], scenes[1][3:20], scenes[2][20:26], scenes[3][26:61], scenes[4][61:100]))
    video[40:61] = (video[40:61] * 0.93 + 0.03)  # a low-contrast exposure jump
    fade = torch.linspace(0, 1, 8).view(8, 1, 1, 1)
    video[70:78] = video[70:78] * (1 - fade) + scenes[0][70:78] * fade
    return with_noise(video, 2.0, seed=3)


@pytest.mark.parametrize("params", [PAPER, SEAM, AdaptiveParams(min_scene_len=8, adaptive_threshold=2.0)],
                         ids=["paper", "seam", "other"])
@pytest.mark.parametrize("case", ["hard_cut", "periodic", "cut_at_5", "mixed"])
def test_native_detector_matches_pyscenedetect(case, params):
    video = {
        "hard_cut": lambda: hard_cut(96, 48, at=48),
        "periodic": lambda: periodic_seams(120, 40, period=8),
        "cut_at_5": lambda: hard_cut(40, 48, at=5),
        "mixed": _mixed_video,
    }[case]()
    frames_u8 = _u8(video)
    expected_values, expected_cuts = _scenedetect_run(frames_u8, params)
    ours = content_values(frames_u8)
    assert ours == expected_values  # bit-identical content values
    assert adaptive_cuts(ours, params) == expected_cuts


# ------------------------------------------------------------------------------------------------------------
# optical flow and warp error
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dx,dy", [(1, 0), (2, 0), (3, 0), (4, 0), (0, 2), (-3, 0), (2, -3)])
def test_lk_flow_recovers_known_translations_within_10_percent(dx, dy):
    size, margin = 96, 8
    canvas = texture(size + 2 * margin, size + 2 * margin, seed=4) * 255
    first = canvas[:, margin:margin + size, margin:margin + size]
    # the content moves by (dx, dy): second(p + d) = first(p)
    second = canvas[:, margin - dy:margin - dy + size, margin - dx:margin - dx + size]
    flow = lk_flow(gray(first[None]), gray(second[None]))
    mean = flow.mean(dim=(2, 3))[0]
    assert abs(mean[0].item() - dx) <= 0.1 * max(abs(dx), 1) and abs(mean[1].item() - dy) <= 0.1 * max(abs(dy), 1)
    magnitude = torch.linalg.vector_norm(flow, dim=1).mean().item()
    assert magnitude == pytest.approx(math.hypot(dx, dy), rel=0.1)


def test_lk_flow_of_a_fractional_pan_is_subpixel_accurate():
    video = panning_video(2, 96, seed=5, speed=3) * 255
    half = F.interpolate(video, scale_factor=0.5, mode="area")  # 1.5 px at half resolution
    flow = lk_flow(gray(half[:1]), gray(half[1:]))
    assert flow[:, 0].mean().item() == pytest.approx(1.5, rel=0.05)


def test_forward_splat_moves_pixels_and_marks_known_ones():
    image = torch.arange(1, 13, dtype=torch.float64).view(1, 1, 3, 4)
    flow = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    flow[:, 0] = 1.0  # everything one pixel to the right
    warped, known = forward_splat(image, flow)
    assert known[0, 0].tolist() == [[False, True, True, True]] * 3
    assert warped[0, 0, :, 1:].tolist() == image[0, 0, :, :3].tolist()
    assert warped[0, 0, :, 0].tolist() == [0.0, 0.0, 0.0]


def test_forward_splat_last_source_in_raster_order_wins():
    image = torch.tensor([[[[10.0, 20.0, 30.0]]]])
    flow = torch.zeros(1, 2, 1, 3)
    flow[0, 0] = torch.tensor([2.0, 1.0, 0.0])  # all three land on x = 2
    warped, known = forward_splat(image, flow)
    assert known[0, 0, 0].tolist() == [False, False, True]
    assert warped[0, 0, 0, 2].item() == 30.0


def test_warp_error_is_the_mean_squared_error_over_known_pixels_and_channels():
    first = torch.full((1, 3, 2, 3), 100.0)
    second = first.clone()
    second[0, :, 0, 1] = 110.0  # one pixel off by 10 in every channel
    flow = torch.zeros(1, 2, 2, 3)
    assert warp_error(first, second, flow).item() == pytest.approx(100.0 / 6)
    flow[:, 0] = 1.0  # column 0 becomes unknown: 4 known pixels, the wrong one among them
    assert warp_error(first, second, flow).item() == pytest.approx(100.0 / 4)


def test_mawe_is_the_mean_of_per_pair_ratios_with_coefficient_9_5():
    stats = PairStats(warp_error=[19.0, 38.0], motion=[1.0, 4.0], ofs=[1.0, 16.0], magnitude_std=[0.5, 0.5])
    summary = summarize(stats)
    assert summary.mawe == pytest.approx((19.0 / 9.5 + 38.0 / 38.0) / 2)
    assert summary.w_over_ofs == pytest.approx(28.5 / 8.5)  # paper: ratio of means, squared magnitudes
    assert summary.flow_jerk_b == pytest.approx(1.5)
    assert summary.flow_std_a == pytest.approx(0.5)


def test_seam_ratio_compares_boundary_pairs_with_interior_pairs():
    errors = [1.0] * 20
    errors[15] = errors[7] = 11.0  # pairs (15, 16) and (7, 8)
    assert seam_ratio(errors, [8, 16]) == pytest.approx(11.01 / 1.01)
    assert seam_ratio([0.0] * 10, [4]) == 1.0  # no warp error anywhere: no seam
    assert seam_ratio(errors, []) is None


# ------------------------------------------------------------------------------------------------------------
# whole-video behaviour (§4.2 tests 4-6 and planted seams)
# ------------------------------------------------------------------------------------------------------------


def _gray_frames_with_lightness(lightness: torch.Tensor, size: int = 16) -> torch.Tensor:
    """Uniform grey frames whose CIELAB L* is `lightness` (inverse of the L* and sRGB curves)."""
    fy = (lightness.double() + 16.0) / 116.0
    y = torch.where(fy ** 3 > 216 / 24389, fy ** 3, (116.0 * fy - 16.0) / (24389 / 27))
    srgb = torch.where(y <= 0.0031308, 12.92 * y, 1.055 * y ** (1 / 2.4) - 0.055)
    return srgb.view(-1, 1, 1, 1).expand(-1, 3, size, size).float()


def test_lab_conversion_of_reference_colours():
    lab = srgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).view(3, 3, 1, 1))[..., 0, 0]
    assert lab[0].tolist() == pytest.approx([100.0, 0.0, 0.0], abs=0.01)
    assert lab[1].tolist() == pytest.approx([53.24, 80.09, 67.20], abs=0.02)
    assert lab[2].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)


def test_colour_ramp_drift_slope_within_5_percent():
    frames = 120
    injected = 0.2  # L* per frame: 20 per 100 frames
    lightness = 35.0 + injected * torch.arange(frames)
    texture_layer = texture(32, 32, seed=6, contrast=0.02, base=torch.zeros(3)) - 0.0
    video = (_gray_frames_with_lightness(lightness, 32) + texture_layer).clamp(0, 1)
    report = score_video(video, layout="none", size=32, orb=False)
    assert report["color"]["l_slope_per_100"] == pytest.approx(100 * injected, rel=0.05)
    assert report["color"]["delta_e_max"] == pytest.approx(injected * (frames - 1), rel=0.05)


def test_frozen_video_with_noise_is_stagnant_and_has_high_mawe():
    frozen = panning_video(1, 128, seed=7).repeat(48, 1, 1, 1)
    noisy = with_noise(frozen, 3.0, seed=8)  # sensor-like noise, sigma 3 grey levels
    moving = with_noise(panning_video(48, 128, seed=7, speed=2), 3.0, seed=8)
    frozen_report = score_video(noisy, size=128, orb=False)
    moving_report = score_video(moving, size=128, orb=False)
    assert frozen_report["motion_span_px"] < 0.5 * frozen_report["params"]["stagnation_threshold_px"]
    assert frozen_report["stagnant"] is True
    assert moving_report["stagnant"] is False
    assert frozen_report["mawe_approx"] > 10.0
    assert frozen_report["mawe_approx"] > 10 * moving_report["mawe_approx"]


def test_frozen_video_without_noise_is_stagnant():
    frozen = panning_video(1, 64, seed=7).repeat(40, 1, 1, 1)
    report = score_video(frozen, size=64, orb=False)
    assert report["stagnant"] is True
    assert report["mawe_approx"] == 0.0
    assert report["scuts_paper"] == report["scuts_seam"] == 0


def test_slow_pan_is_not_stagnant():
    video = pan(texture(64, 64 + 11, seed=9), 12, 64, 1)  # 12 frames, 1 px per frame
    slow = torch.cat([video[i:i + 1].repeat(4, 1, 1, 1) for i in range(12)])  # 1 px per 4 frames
    report = score_video(slow, size=64, orb=False)
    assert report["motion_span_px"] == pytest.approx(0.25, rel=0.2)
    assert report["stagnant"] is False


def test_consistent_pan_has_seam_ratio_one_mawe_zero_and_no_cuts():
    report = score_video(panning_video(64, 64, seed=10, speed=2), size=64, orb=False)
    assert report["scuts_paper"] == report["scuts_seam"] == 0
    assert report["mawe_approx"] < 0.05  # a noisy pan scores ~1, a frozen noisy video > 10
    assert 0.7 < report["seam_ratio"] < 1.4
    assert report["mean_motion_px"] == pytest.approx(2.0, rel=0.05)
    assert report["stagnant"] is False


def test_planted_seams_every_8_frames_after_16_raise_the_seam_ratio():
    size, frames = 64, 64
    base = panning_video(frames, size, seed=11, speed=2)
    details = [texture(size, size + 2 * frames, seed=100 + k, sigma=1.0, contrast=0.04, base=torch.zeros(3))
               for k in range(8)]
    video = []
    for t in range(frames):
        chunk = 0 if t < 16 else 1 + (t - 16) // 8  # the detail layer is re-synthesised by every chunk
        video.append((base[t] + pan(details[chunk], frames, size, 2)[t]).clamp(0, 1))
    report = score_video(torch.stack(video), layout="first=16,stride=8", size=size, orb=False)
    assert report["seam_ratio"] > 20.0
    assert report["scuts_seam"] == 0  # too subtle for the scene detector: the seam ratio is what sees it
    smooth = score_video(base, layout="first=16,stride=8", size=size, orb=False)
    assert smooth["seam_ratio"] < 1.5


# ------------------------------------------------------------------------------------------------------------
# layouts, inputs, report
# ------------------------------------------------------------------------------------------------------------


def test_layout_parsing_and_stream_boundaries():
    assert parse_layout("first=16,stride=8").boundaries(48) == [16, 24, 32, 40]
    assert parse_layout(" first = 8 , stride = 8 ").boundaries(20) == [8, 16]
    assert parse_layout("none").boundaries(48) == []
    assert parse_layout(None).kind == "none"
    with pytest.raises(ValueError, match="cannot read chunk layout"):
        parse_layout("16/8")


def test_refine_layout_follows_the_project_chunk_plan():
    assert refine_chunk_starts(240, 24, 8)[:4] == [0, 15, 31, 46]
    assert refine_chunk_starts(240, 24, 8)[-1] == 216
    assert refine_chunk_starts(100, 24, 8) == [0, 15, 30, 46, 61, 76]
    assert refine_chunk_starts(56, 24, 8) == [0, 16, 32]
    assert refine_chunk_starts(24, 24, 8) == [0]
    layout = parse_layout("refine:24/8")
    assert layout == ChunkLayout(kind="refine", chunk=24, overlap=8)
    assert layout.boundaries(56) == list(range(16, 24)) + list(range(32, 40))


def test_uint8_channels_last_and_float_channels_first_give_the_same_report():
    video = panning_video(20, 32, seed=12)
    u8_last = (video * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    a = score_video(video, size=32, orb=False)
    b = score_video(u8_last, size=32, orb=False)
    assert report_json(a) == report_json(b)


def test_score_video_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 frames"):
        score_video(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="anchor frame"):
        score_video(torch.rand(4, 3, 16, 16), anchor=4)
    with pytest.raises(ValueError, match="NaN"):
        score_video(torch.full((4, 3, 16, 16), float("nan")))


def test_report_has_every_key_of_the_spec_format_and_is_strict_json():
    report = score_video(hard_cut(40, 32, at=20), size=32, fps=8.0, orb=False)
    for key in SPEC_KEYS:
        assert key in report, key
    assert report["layout"]["first"] == 16 and report["layout"]["stride"] == 8
    assert {"delta_e_max", "l_slope_per_100"} <= set(report["color"])
    assert {"hsv_corr_min", "orb_ratio_min"} <= set(report["appearance"])
    assert {"scenedetect", "opencv"} <= set(report["versions"])
    assert {"clip", "raft_mawe", "orb"} <= set(report["skipped"])
    assert report["metric_size"] == 32 and report["flow"]["size"] == 32
    parsed = json.loads(report_json(report))
    assert parsed["cut_frames"] == [20]


def test_missing_raft_weights_are_skipped_with_a_message_naming_the_file(tmp_path):
    missing = tmp_path / "raft_large_C_T_SKHT_V2-ff5fadd5.pth"
    report = score_video(panning_video(4, 32, seed=13), size=32, raft_weights=str(missing), orb=False)
    assert report["mawe_raft"] is None
    assert str(missing) in report["skipped"]["raft_mawe"]


def test_raft_at_a_size_it_cannot_take_is_skipped_with_the_reason(tmp_path):
    path = tmp_path / "raft.pth"
    path.write_bytes(b"never read")
    report = score_video(panning_video(4, 32, seed=13), size=64, raft_weights=str(path), orb=False)
    assert report["mawe_raft"] is None
    assert "at least 128" in report["skipped"]["raft_mawe"]


def test_raft_from_a_local_weights_file_gives_the_official_mawe(tmp_path):
    raft_module = pytest.importorskip("torchvision.models.optical_flow")
    torch.manual_seed(0)
    path = tmp_path / "raft_random.pth"
    torch.save(raft_module.raft_large(weights=None).state_dict(), path)  # random weights: plumbing only
    report = score_video(panning_video(3, 128, seed=14), size=128, raft_weights=str(path), orb=False)
    assert "raft_mawe" not in report["skipped"]
    assert report["flow"]["raft_weights"] == str(path)
    assert isinstance(report["mawe_raft"], float) and math.isfinite(report["mawe_raft"])


def test_orb_ratio_is_computed_when_opencv_is_installed():
    pytest.importorskip("cv2")
    report = score_video(panning_video(10, 64, seed=15, speed=1), size=64, orb=True)
    assert 0.0 <= report["appearance"]["orb_ratio_min"] <= 1.0
    assert report["versions"]["opencv"]


def test_metrics_package_imports_with_torch_and_numpy_only():
    code = (
        "import sys\n"
        "for name in ('cv2', 'scenedetect', 'av', 'torchvision', 'comfy', 'folder_paths'):\n"
        "    sys.modules[name] = None  # any import of these now fails\n"
        "import streaming_core.metrics as m\n"
        "import torch\n"
        "r = m.score_video(torch.rand(6, 3, 24, 24), size=24)\n"
        "print(sorted(r['skipped']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "orb" in done.stdout


# ------------------------------------------------------------------------------------------------------------
# the command line on an mp4 file
# ------------------------------------------------------------------------------------------------------------


def _write_mp4(path, frames: torch.Tensor, fps: int = 8) -> None:
    import av

    array = (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = array.shape[2], array.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"}
        for image in array:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_cli_on_an_mp4_prints_every_key_of_the_report(tmp_path):
    video = hard_cut(40, 64, at=24)
    path = tmp_path / "clip.mp4"
    _write_mp4(path, video)
    decoded, fps = read_video(path)
    assert decoded.shape == (40, 3, 64, 64) and fps == pytest.approx(8.0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "streaming_core.metrics", str(path), "--chunk-layout",
                           "first=16,stride=8", "--anchor", "0", "--size", "64", "--json"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    for key in SPEC_KEYS:
        assert key in report, key
    assert report["frames"] == 40 and report["fps"] == pytest.approx(8.0)
    assert report["cut_frames"] == [24] and report["seam_locked_fraction"] == 1.0
    assert report["metric_size"] == 64


def test_cli_summary_mode_and_refine_layout(tmp_path):
    path = tmp_path / "pan.mp4"
    _write_mp4(path, panning_video(30, 64, seed=16))
    done = subprocess.run([sys.executable, "-m", "streaming_core.metrics", str(path), "--chunk-layout",
                           "refine:24/8", "--size", "64"],
                          cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SCuts@paper 0" in done.stdout and "seam ratio" in done.stdout
    report = json.loads(done.stdout[done.stdout.index("\n{") + 1:])
    assert report["layout"] == {"kind": "refine", "chunk": 24, "overlap": 8}


def test_cli_reports_a_missing_file():
    done = subprocess.run([sys.executable, "-m", "streaming_core.metrics", "no_such_video.mp4"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no_such_video.mp4" in done.stderr


# ------------------------------------------------------------------------------------------------------------
# the Consistency Metrics node, in-process with the real comfy modules
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metrics_node(pack):
    return pack.NODE_CLASS_MAPPINGS["ST2V_ConsistencyMetrics"]


def test_node_is_registered_with_complete_metadata(pack, metrics_node):
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["ST2V_ConsistencyMetrics"] == "StreamingT2V Consistency Metrics"
    assert metrics_node.OUTPUT_NODE is True
    assert metrics_node.CATEGORY == "StreamingT2V/metrics"
    assert metrics_node.RETURN_TYPES == ("STRING", "FLOAT", "FLOAT", "FLOAT", "INT", "INT")
    assert len(metrics_node.OUTPUT_TOOLTIPS) == len(metrics_node.RETURN_NAMES) == len(metrics_node.RETURN_TYPES)
    assert isinstance(metrics_node.DESCRIPTION, str) and len(metrics_node.DESCRIPTION) > 30
    types_ = metrics_node.INPUT_TYPES()
    assert list(types_["required"]) == ["images", "chunk_layout", "anchor", "size"]
    assert sorted(types_["optional"]) == ["fps", "raft_weights"]
    for name, entry in {**types_["required"], **types_["optional"]}.items():
        assert entry[1].get("tooltip"), name
    assert types_["required"]["size"][1]["default"] == 720


def test_node_runs_and_shows_the_report(metrics_node, progress_hook):
    frames = periodic_seams(40, 32, period=8)
    image = frames.permute(0, 2, 3, 1).contiguous()  # IMAGE [B, H, W, 3]
    out = getattr(metrics_node(), metrics_node.FUNCTION)(image, "first=8,stride=8", 0, 64, fps=8.0,
                                                          raft_weights="")
    text = out["ui"]["text"][0]
    report, mawe, ratio, delta_e, scuts_paper, scuts_seam = out["result"]
    assert text == report
    parsed = json.loads(report)
    assert parsed["scuts_seam"] == scuts_seam == 4
    assert parsed["scuts_paper"] == scuts_paper == 2
    assert parsed["metric_size"] == 64 and parsed["fps"] == 8.0
    assert mawe == pytest.approx(parsed["mawe_approx"]) and ratio == pytest.approx(parsed["seam_ratio"])
    assert delta_e == pytest.approx(parsed["color"]["delta_e_max"])
    assert progress_hook, "the node reported no progress"


def test_node_gives_nan_for_unavailable_numbers(metrics_node):
    image = panning_video(6, 32, seed=17).permute(0, 2, 3, 1).contiguous()
    out = getattr(metrics_node(), metrics_node.FUNCTION)(image, "none", -1, 64)
    assert math.isnan(out["result"][2])  # no chunk boundaries: no seam ratio
    assert json.loads(out["result"][0])["seam_ratio"] is None


def test_node_rejects_a_single_frame_and_a_bad_anchor(metrics_node):
    node = metrics_node()
    with pytest.raises(ValueError, match="at least 2"):
        node.run(torch.rand(1, 16, 16, 3), "none", 0, 64)
    with pytest.raises(ValueError, match="anchor is 5"):
        node.run(torch.rand(3, 16, 16, 3), "none", 5, 64)
