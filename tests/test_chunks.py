"""Chunk and frame-count arithmetic (stream_stage.md §10)."""
from __future__ import annotations

import pytest

from streaming_core.chunks import chunk_first_new_frame, chunk_prompts, chunks_for_target, frames_for_chunks


@pytest.mark.parametrize("k, frames", [(0, 16), (1, 24), (2, 32), (29, 248), (149, 1208)])
def test_text_to_video_has_16_plus_8k_frames(k, frames):
    assert frames_for_chunks(k) == frames


@pytest.mark.parametrize("n, k", [(16, 0), (23, 0), (24, 1), (31, 1), (80, 8), (240, 28), (1200, 148)])
def test_floor_mode_never_exceeds_the_requested_length(n, k):
    """Official: n = (num_frames − 8)//8 iterations including the first chunk, so K = n − 1 = ⌊(N−16)/8⌋."""
    assert chunks_for_target(n, "floor") == k
    assert frames_for_chunks(k) <= n


@pytest.mark.parametrize("n, k", [(16, 0), (17, 1), (24, 1), (25, 2), (250, 30)])
def test_exact_mode_covers_the_requested_length(n, k):
    assert chunks_for_target(n, "exact") == k
    assert frames_for_chunks(k) >= n


def test_fewer_than_16_frames_is_an_input_error():
    with pytest.raises(ValueError, match="at least 16"):
        chunks_for_target(15)


def test_second_chunk_starts_at_frame_24():
    assert chunk_first_new_frame(1) == 16
    assert chunk_first_new_frame(2) == 24
    assert chunk_first_new_frame(1, first_frames=40) == 40


def test_extending_a_clip_counts_from_its_length():
    assert frames_for_chunks(3, first_frames=37) == 61


def test_one_prompt_is_repeated_and_a_short_list_repeats_its_last_entry():
    assert chunk_prompts(["a"], 3) == ["a", "a", "a"]
    assert chunk_prompts(["a", "b"], 4) == ["a", "b", "b", "b"]
    with pytest.raises(ValueError):
        chunk_prompts(["a", "b", "c"], 2)
