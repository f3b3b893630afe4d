"""Fitting external frames to the model size (stream_stage.md §2.2 item 4)."""
from __future__ import annotations

import pytest
import torch

from streaming_core.frames import check_frames, fit_frames


def test_non_square_frames_are_center_cropped_by_default():
    frames = torch.zeros(2, 3, 4, 8)
    frames[..., 2:6] = 1.0  # the central 4x4 square is white, the sides black
    out = fit_frames(frames, 4)
    assert out.shape == (2, 3, 4, 4) and torch.equal(out, torch.ones(2, 3, 4, 4))


def test_pad_mode_keeps_the_whole_picture_with_black_bars():
    out = fit_frames(torch.ones(1, 3, 4, 8), 8, crop="pad", resize="nearest")
    assert out.shape == (1, 3, 8, 8)
    assert torch.equal(out[..., 2:6, :], torch.ones(1, 3, 4, 8))
    assert out[..., :2, :].abs().sum() == 0 and out[..., 6:, :].abs().sum() == 0


@pytest.mark.parametrize("resize", ["area", "bicubic", "nearest"])
def test_every_resize_mode_returns_the_model_size_in_range(resize):
    frames = torch.rand(3, 3, 90, 160, generator=torch.Generator().manual_seed(0))
    for size in (32, 256):
        out = fit_frames(frames, size, resize=resize)
        assert out.shape == (3, 3, size, size) and 0.0 <= out.min() and out.max() <= 1.0


def test_unknown_modes_and_bad_batches_are_errors_that_say_what_is_wrong():
    with pytest.raises(ValueError, match="resize mode"):
        fit_frames(torch.rand(1, 3, 8, 8), 4, resize="lanczos")
    with pytest.raises(ValueError, match="crop mode"):
        fit_frames(torch.rand(1, 3, 8, 8), 4, crop="stretch")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        check_frames(torch.rand(8, 8, 3))
    with pytest.raises(ValueError, match="NaN"):
        check_frames(torch.full((1, 3, 2, 2), float("nan")))
