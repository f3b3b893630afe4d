"""Refiner geometry, resizing and frame sinks (refine_stage.md §3.4, §7.2, §13, §20.3 items 1 and 7)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from streaming_core.refine_frames import (ANY_SIZE_RULE, MS_VID2VID_RULE, check_frame_size, plan_geometry,
                                          resize_frames)
from streaming_core.video_sink import FrameCollector, Mp4Sink

ROOT = Path(__file__).resolve().parents[1]


def ms_plan(h, w, mode="official", target=None):
    return plan_geometry(h, w, native_h=720, native_w=1280, factor=8, rule=MS_VID2VID_RULE, pad_mode=mode,
                         target_height=target)


def test_official_padding_puts_720_square_content_between_280_pixel_bars():
    g = ms_plan(256, 256)
    assert (g.content_h, g.content_w, g.frame_h, g.frame_w, g.top, g.left) == (720, 720, 720, 1280, 0, 280)
    assert g.latent_size(8) == (90, 160)


def test_minimal_padding_is_768x720_with_24_pixel_bars():
    g = ms_plan(256, 256, "minimal")
    assert (g.frame_h, g.frame_w, g.top, g.left) == (720, 768, 0, 24)
    assert g.latent_size(8) == (90, 96)


def test_custom_mode_fits_the_target_height_and_pads_to_the_smallest_legal_frame():
    g = ms_plan(576, 1024, "custom", target=576)
    assert (g.content_h, g.content_w) == (576, 1024)
    assert g.frame_h % 64 == 16 and g.frame_w % 64 == 0 and g.frame_h >= 576 and g.frame_h - 576 < 64


@pytest.mark.parametrize("h,w", [(720, 1280), (720, 768), (80, 128), (80, 64)])
def test_legal_ms_vid2vid_sizes_pass_the_validator(h, w):
    check_frame_size(h, w, 8, MS_VID2VID_RULE)


@pytest.mark.parametrize("h,w", [(720, 720), (576, 1024)])
def test_illegal_sizes_are_rejected_with_the_nearest_legal_sizes(h, w):
    with pytest.raises(ValueError, match="nearest legal sizes") as err:
        check_frame_size(h, w, 8, MS_VID2VID_RULE)
    for size in err.value.args[0].split("nearest legal sizes: ")[1].split(", "):
        lw, lh = map(int, size.split("x"))
        check_frame_size(lh, lw, 8, MS_VID2VID_RULE)


def test_the_diffusers_family_accepts_any_multiple_of_the_vae_factor():
    check_frame_size(576, 1024, 8, ANY_SIZE_RULE)
    g = plan_geometry(256, 256, native_h=576, native_w=1024, factor=8, rule=ANY_SIZE_RULE, pad_mode="minimal")
    assert (g.frame_h, g.frame_w) == (576, 576)


def test_place_then_crop_returns_the_resized_content_exactly():
    frames = torch.rand(2, 3, 32, 32)
    g = plan_geometry(32, 32, native_h=80, native_w=128, factor=8, rule=MS_VID2VID_RULE)
    placed = g.place(frames)
    assert placed.shape == (2, 3, 80, 128)
    assert torch.equal(g.crop(placed), resize_frames(frames, g.content_h, g.content_w))
    outside = placed.clone()
    outside[:, :, g.top:g.top + g.content_h, g.left:g.left + g.content_w] = 0
    assert outside.abs().max() == 0  # black bars


@pytest.mark.parametrize("kind,pil", [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR),
                                      ("lanczos", Image.LANCZOS)])
@pytest.mark.parametrize("size", [(45, 90), (13, 17)])
def test_resizing_matches_pil_on_float_images(kind, pil, size):
    rng = np.random.default_rng(0)
    image = rng.random((30, 40)).astype(np.float32)
    ours = resize_frames(torch.from_numpy(image)[None, None], size[0], size[1], kind)[0, 0].numpy()
    theirs = np.asarray(Image.fromarray(image, mode="F").resize((size[1], size[0]), pil)).clip(0, 1)
    assert np.abs(ours - theirs).max() < 1e-5


def test_collector_keeps_frames_in_order_and_refuses_gaps():
    sink = FrameCollector()
    sink.write(torch.zeros(2, 3, 4, 4), 0)
    with pytest.raises(ValueError, match="out of order"):
        sink.write(torch.zeros(1, 3, 4, 4), 5)
    sink.write(torch.ones(1, 3, 4, 4), 2)
    assert sink.frames().shape == (3, 3, 4, 4)


def _count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_mp4_sink_writes_every_frame(tmp_path):
    sink = Mp4Sink(tmp_path / "v.mp4", fps=8)
    for i in range(0, 20, 4):
        sink.write(torch.rand(4, 3, 32, 48), i)
    sink.close()
    assert _count_frames(tmp_path / "v.mp4") == 20


def test_mp4_sink_file_stays_playable_when_the_process_dies(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from streaming_core.video_sink import Mp4Sink
        sink = Mp4Sink({str(tmp_path / 'killed.mp4')!r}, fps=8, keyframe_interval=8)
        for i in range(40):
            sink.write(torch.rand(1, 3, 32, 48), i)
        os._exit(1)  # no close(): as if the process were killed
    """)
    subprocess.run([sys.executable, "-c", script], check=False, timeout=120)
    assert _count_frames(tmp_path / "killed.mp4") >= 32
