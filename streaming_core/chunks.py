"""Chunk and frame-count arithmetic of the stream stage (stream_stage.md §10). Pure integer math."""
from __future__ import annotations

FRAMES_PER_CHUNK = 16
COND_FRAMES = 8
NEW_FRAMES = FRAMES_PER_CHUNK - COND_FRAMES


def frames_for_chunks(extend_chunks: int, first_frames: int = FRAMES_PER_CHUNK) -> int:
    """Total frames after `extend_chunks` extension chunks: first_frames + 8·K (16 + 8K from text)."""
    if extend_chunks < 0:
        raise ValueError(f"the number of extension chunks must be >= 0, got {extend_chunks}")
    return first_frames + NEW_FRAMES * extend_chunks


def chunks_for_target(target_frames: int, mode: str = "floor", first_frames: int = FRAMES_PER_CHUNK) -> int:
    """Extension chunks for a requested total length.

    `floor` (official): K = ⌊(N − first)/8⌋, never more frames than asked; `exact`: K = ⌈(N − first)/8⌉, the
    caller trims the result to N. N below the first chunk's length is an error.
    """
    if target_frames < first_frames:
        raise ValueError(
            f"{target_frames} frames requested, but the first chunk alone has {first_frames}; ask for at least "
            f"{first_frames} frames")
    extra = target_frames - first_frames
    if mode == "floor":
        return extra // NEW_FRAMES
    if mode == "exact":
        return -(-extra // NEW_FRAMES)
    raise ValueError(f"unknown length mode {mode!r}; expected 'floor' or 'exact'")


def chunk_first_new_frame(k: int, first_frames: int = FRAMES_PER_CHUNK) -> int:
    """Video index of the first new frame of extension chunk k (1-based): first_frames + 8(k − 1)."""
    if k < 1:
        raise ValueError(f"extension chunks are numbered from 1, got {k}")
    return first_frames + NEW_FRAMES * (k - 1)


def chunk_prompts(prompts: list[str], num_chunks: int) -> list[str]:
    """One prompt per extension chunk: a single prompt is repeated; a shorter list repeats its last entry."""
    if not prompts:
        raise ValueError("at least one prompt is needed")
    if len(prompts) > num_chunks and num_chunks > 0:
        raise ValueError(f"{len(prompts)} prompts were given for {num_chunks} chunks; give at most one per chunk")
    return [prompts[min(i, len(prompts) - 1)] for i in range(num_chunks)]
