"""Streaming nodes: first chunk (or an IMAGE batch), APM anchor, CAM streaming extension.

Each node converts its inputs, calls one `streaming_core` function and converts the result back
(`stream_stage.md` §2.2, §7.1, §8, §10.2). Frames travel between the nodes as float IMAGE tensors, never as
files.
"""
from __future__ import annotations

import logging

import torch

from ..streaming_core.chunks import COND_FRAMES, FRAMES_PER_CHUNK, chunk_prompts, chunks_for_target
from ..streaming_core.frames import fit_frames
from ..streaming_core.stream import extend_video, generate_init_chunk
from . import _runtime as rt
from .types import (
    BOOLEAN,
    CATEGORY_STREAM,
    FLOAT,
    IMAGE,
    INT,
    ST2V_ANCHOR,
    ST2V_BASE_MODEL,
    ST2V_MODEL,
    STRING,
)

log = logging.getLogger("streamingt2v.nodes")

MAX_SEED = 0xFFFFFFFFFFFFFFFF
MAX_LENGTH = 100_000

RESIZE_CHOICES = ["area", "bicubic", "nearest (official)"]
_RESIZE_MODES = {"area": "area", "bicubic": "bicubic", "nearest (official)": "nearest"}
CROP_CHOICES = ["center", "pad"]
SAMPLER_CHOICES = ["dpmpp_2m", "ddim"]
LENGTH_MODES = ["chunks", "total_frames (floor)", "total_frames (exact)"]
GUIDANCE_MODES = ["single", "dual"]

_SEED_TOOLTIP = "Seed of the CPU noise generator; the same seed, settings and device give the same video."


# ------------------------------------------------------------------------------------------------------------
# input checks shared by the nodes
# ------------------------------------------------------------------------------------------------------------


def _check_finite(frames: torch.Tensor, name: str) -> None:
    finite = torch.isfinite(frames).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(
            f"'{name}' contains NaN or infinite values in {len(bad)} of {frames.shape[0]} frame(s) "
            f"(first bad frame: {bad[0]}); fix or replace the node that produced them."
        )


def _video_frames(image: torch.Tensor, name: str, *, size: int | None = None) -> torch.Tensor:
    """IMAGE -> frames (N, 3, H, W), checked: at least 8 frames, finite, optionally size x size."""
    frames = rt.image_to_frames(image, name=name)
    count = int(frames.shape[0])
    if count < COND_FRAMES:
        raise ValueError(
            f"'{name}' has {count} frame(s), but at least {COND_FRAMES} are needed: StreamingT2V conditions every "
            f"new chunk on the last {COND_FRAMES} frames."
        )
    _check_finite(frames, name)
    if size is not None and tuple(frames.shape[-2:]) != (size, size):
        height, width = frames.shape[-2:]
        raise ValueError(
            f"'{name}' frames are {width}x{height} pixels, but the StreamingT2V model works at {size}x{size}. "
            f"Pass the video through 'StreamingT2V Init Chunk' (its images input resizes and crops) or resize "
            f"it to {size}x{size}."
        )
    return frames


def _model_dtype(model: object) -> torch.dtype:
    """Dtype the bundle was loaded in (`StreamModel.dtype` / `BaseModel.dtype`)."""
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def _chunk_prompts(prompt: str, per_chunk: bool, num_chunks: int) -> list[str]:
    """One prompt for all chunks, or one non-empty line per chunk with the last line repeated."""
    if not per_chunk:
        return [prompt]
    lines = [line.strip() for line in prompt.splitlines() if line.strip()]
    if not lines:
        raise ValueError("prompt_per_chunk is on but the prompt has no non-empty line; write one line per chunk.")
    if len(lines) > num_chunks:
        log.warning("prompt has %d lines but only %d chunk(s) are generated; the last %d line(s) are unused",
                    len(lines), num_chunks, len(lines) - num_chunks)
    return chunk_prompts(lines[:max(num_chunks, 1)], max(num_chunks, 1))


def _plan(length_mode: str, length: int, input_frames: int) -> tuple[int, int | None]:
    """(number of new chunks, total frames to keep or None) for the length widgets (`stream_stage.md` §10.2)."""
    if length_mode == "chunks":
        if length < 0:
            raise ValueError(f"length is {length}, but the number of chunks cannot be negative.")
        return length, None
    mode = "exact" if length_mode == "total_frames (exact)" else "floor"
    if length < input_frames:
        raise ValueError(
            f"length asks for {length} total frames, but the input already has {input_frames}; ask for at least "
            f"{input_frames} frames, or use length_mode 'chunks'."
        )
    # The input frames play the role of the first chunk, whatever their number.
    num_chunks = chunks_for_target(length, mode, first_frames=input_frames)
    return num_chunks, (length if mode == "exact" else None)


# ------------------------------------------------------------------------------------------------------------
# nodes
# ------------------------------------------------------------------------------------------------------------


class InitChunk:
    DESCRIPTION = (
        "Starts the video: generates the first 16 frames with the ModelScope T2V model, or takes any IMAGE batch of "
        "at least 8 frames (AnimateDiff, SVD, Wan, real footage), resized and cropped to the model size. All its "
        "frames begin the video and its last 8 condition the first new chunk."
    )
    CATEGORY = CATEGORY_STREAM
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = (
        "The first frames at the model size (S x S), float 0..1; connect them to APM Anchor and CAM Streaming "
        "Extend.",
    )
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (ST2V_MODEL, {"tooltip": "The StreamingT2V model; sets the frame size (256 px)."}),
                "prompt": (STRING, {
                    "multiline": True, "default": "",
                    "tooltip": "What the first chunk shows (only used when generating with base_model).",
                }),
                "negative_prompt": (STRING, {
                    "multiline": True, "default": "",
                    "tooltip": "What to steer away from when generating (empty = unconditional guidance).",
                }),
                "steps": (INT, {
                    "default": 50, "min": 1, "max": 1000,
                    "tooltip": "Denoising steps of the first chunk; fewer is faster but rougher.",
                }),
                "cfg": (FLOAT, {
                    "default": 9.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                    "tooltip": "Classifier-free guidance scale of the first chunk; higher follows the prompt more "
                               "closely but saturates colours.",
                }),
                "seed": (INT, {
                    "default": 33, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": _SEED_TOOLTIP,
                }),
                "sampler": (SAMPLER_CHOICES, {
                    "default": "dpmpp_2m",
                    "tooltip": "dpmpp_2m: DPM-Solver++(2M), good in few steps. ddim: DDIM with eta 1.0 as in the "
                               "stream stage.",
                }),
            },
            "optional": {
                "base_model": (ST2V_BASE_MODEL, {
                    "tooltip": "ModelScope T2V model from 'Load ModelScope T2V (first chunk)'; generates the "
                               "first 16 frames when no images are connected.",
                }),
                "images": (IMAGE, {
                    "tooltip": "Start from these frames instead of generating (at least 8). When connected, "
                               "base_model and the sampling settings are ignored.",
                }),
                "resize": (RESIZE_CHOICES, {
                    "default": "area",
                    "tooltip": "How images are scaled to the model size: area (sharp, no aliasing), bicubic, or "
                               "nearest as the official code did.",
                }),
                "crop": (CROP_CHOICES, {
                    "default": "center",
                    "tooltip": "Non-square images: center crops to a square (loses the sides), pad keeps the "
                               "whole picture with borders.",
                }),
            },
        }

    def run(self, model, prompt, negative_prompt, steps, cfg, seed, sampler, base_model=None, images=None,
            resize="area", crop="center"):
        if images is not None:
            frames = _video_frames(images, "images")
            if base_model is not None:
                log.info("Init Chunk: images are connected, so base_model is not used")
            fitted = fit_frames(frames, model.sample_size, resize=_RESIZE_MODES[resize], crop=crop)
            return (rt.frames_to_image(fitted),)
        if base_model is None:
            raise ValueError(
                "StreamingT2V Init Chunk has nothing to start from: connect a 'Load ModelScope T2V (first chunk)' "
                "node to base_model to generate the first 16 frames, or an IMAGE batch with at least "
                f"{COND_FRAMES} frames to images."
            )
        events = rt.ComfyEvents(steps)
        with rt.interrupt_logged(events, "StreamingT2V Init Chunk"):
            frames = generate_init_chunk(
                base_model, prompt, negative_prompt, steps=steps, guidance_scale=cfg, seed=seed, sampler=sampler,
                device=rt.torch_device(), dtype=_model_dtype(base_model), offload_device=rt.offload_device(),
                events=events,
            )
        return (rt.frames_to_image(frames),)


class APMAnchor:
    DESCRIPTION = (
        "Picks the anchor frame whose appearance the APM keeps for the whole video: a frame of the first chunk "
        "(frame 0 as released) or an external image, resized to the frame size."
    )
    CATEGORY = CATEGORY_STREAM
    RETURN_TYPES = (ST2V_ANCHOR, IMAGE)
    RETURN_NAMES = ("anchor", "anchor_image")
    OUTPUT_TOOLTIPS = (
        "The anchor for CAM Streaming Extend.",
        "The same anchor as a one-frame IMAGE, to preview or save it.",
    )
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": (IMAGE, {"tooltip": "The first frames of the video (output of Init Chunk)."}),
                "frame_index": (INT, {
                    "default": 0, "min": -MAX_LENGTH, "max": MAX_LENGTH,
                    "tooltip": "Which frame is the anchor; 0 is the first (as released), negative values count "
                               "from the end (-1 = last).",
                }),
            },
            "optional": {
                "image": (IMAGE, {
                    "tooltip": "External anchor image (its first frame), resized and center-cropped to the frame "
                               "size; overrides frame_index.",
                }),
            },
        }

    def run(self, frames, frame_index, image=None):
        video = rt.image_to_frames(frames, name="frames")
        count, _, height, width = video.shape
        if count == 0:
            raise ValueError("'frames' is empty; connect the output of StreamingT2V Init Chunk.")
        if height != width:
            raise ValueError(
                f"'frames' are {width}x{height} pixels, but StreamingT2V frames are square; pass them through "
                "StreamingT2V Init Chunk first."
            )
        if image is not None:
            external = rt.image_to_frames(image, name="image")
            if external.shape[0] == 0:
                raise ValueError("'image' is empty; connect an image or disconnect the input.")
            if external.shape[0] > 1:
                log.info("APM Anchor: image has %d frames; the first one is the anchor", external.shape[0])
            _check_finite(external[:1], "image")
            anchor = fit_frames(external[:1], height, resize="area", crop="center")[0]
        else:
            if not -count <= frame_index < count:
                raise ValueError(
                    f"frame_index {frame_index} is out of range for {count} frames; use 0..{count - 1}, or "
                    f"-1..-{count} to count from the end."
                )
            anchor = video[frame_index]
            _check_finite(anchor[None], "frames")
        anchor = anchor.contiguous()
        return (anchor, rt.frames_to_image(anchor[None]))


class CAMStreamingExtend:
    DESCRIPTION = (
        "Extends the video chunk by chunk: each chunk of 16 frames is conditioned on the last 8 frames (CAM) and on "
        "the anchor's appearance (APM), and adds 8 new frames. Output = input frames followed by the new ones."
    )
    CATEGORY = CATEGORY_STREAM
    RETURN_TYPES = (IMAGE, INT)
    RETURN_NAMES = ("frames", "frame_count")
    OUTPUT_TOOLTIPS = (
        "The whole video: the input frames followed by 8 new frames per chunk, float 0..1.",
        "Number of frames in the output video.",
    )
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (ST2V_MODEL, {"tooltip": "The StreamingT2V model."}),
                "frames": (IMAGE, {
                    "tooltip": "The video so far at the model size (from Init Chunk or an earlier extend); its "
                               "last 8 frames condition the first new chunk.",
                }),
                "anchor": (ST2V_ANCHOR, {"tooltip": "Anchor from StreamingT2V APM Anchor."}),
                "prompt": (STRING, {
                    "multiline": True, "default": "",
                    "tooltip": "What the new chunks show. With prompt_per_chunk, one line per chunk.",
                }),
                "prompt_per_chunk": (BOOLEAN, {
                    "default": False,
                    "tooltip": "On: each non-empty line of the prompt is the prompt of one chunk, the last line "
                               "repeats. Off: the whole text is the prompt of every chunk.",
                }),
                "negative_prompt": (STRING, {
                    "multiline": True, "default": "",
                    "tooltip": "What to steer away from (empty as released).",
                }),
                "length_mode": (LENGTH_MODES, {
                    "default": "chunks",
                    "tooltip": "chunks: length = number of new chunks (8 frames each). total_frames: length = "
                               "frames of the whole output; floor stops at the last full chunk, exact generates "
                               "one more chunk and trims.",
                }),
                "length": (INT, {
                    "default": 2, "min": 0, "max": MAX_LENGTH,
                    "tooltip": "Number of new chunks, or total output frames (at least 16) in the total_frames "
                               "modes. Time and memory of the result grow with it.",
                }),
                "steps": (INT, {
                    "default": 50, "min": 1, "max": 1000,
                    "tooltip": "DDIM steps per chunk (50 as released); fewer is faster but rougher.",
                }),
                "cfg": (FLOAT, {
                    "default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                    "tooltip": "Guidance scale (text and anchor together in single mode, text only in dual mode); "
                               "higher follows the prompt more closely.",
                }),
                "eta": (FLOAT, {
                    "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "DDIM noise: 1.0 as released (stochastic), 0.0 deterministic DDIM.",
                }),
                "seed": (INT, {
                    "default": 33, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": _SEED_TOOLTIP + " 33 as released.",
                }),
                "guidance_mode": (GUIDANCE_MODES, {
                    "default": "single",
                    "tooltip": "single: one guidance scale for text and anchor (as released, 2 model rows per "
                               "step). dual: separate text and anchor scales (paper, 3 rows per step, ~1.5x "
                               "slower).",
                }),
            },
            "optional": {
                "cfg_anchor": (FLOAT, {
                    "default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                    "tooltip": "Anchor guidance scale, dual mode only; higher keeps the anchor's appearance more "
                               "strictly.",
                }),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, length_mode=None, length=None):
        # ComfyUI repeats a failure once per argument named here, so only the length widgets are checked
        # statically; an empty per-chunk prompt is reported at run time.
        if length_mode is not None and length_mode not in LENGTH_MODES:
            return f"length_mode '{length_mode}' is not one of {', '.join(LENGTH_MODES)}."
        if length is not None:
            if length < 0 or length > MAX_LENGTH:
                return f"length {length} is outside 0..{MAX_LENGTH}."
            if length_mode is not None and length_mode.startswith("total_frames") and length < FRAMES_PER_CHUNK:
                return (
                    f"length is {length}, but the total_frames modes need at least {FRAMES_PER_CHUNK} frames (one "
                    f"16-frame first chunk); use length_mode 'chunks' to add a number of 8-frame chunks."
                )
        return True

    def run(self, model, frames, anchor, prompt, prompt_per_chunk, negative_prompt, length_mode, length, steps, cfg,
            eta, seed, guidance_mode, cfg_anchor=7.5):
        size = int(model.sample_size)
        video = _video_frames(frames, "frames", size=size)
        if not isinstance(anchor, torch.Tensor) or tuple(anchor.shape) != (3, size, size):
            shape = tuple(anchor.shape) if isinstance(anchor, torch.Tensor) else type(anchor).__name__
            raise ValueError(
                f"anchor has shape {shape}, but the model needs (3, {size}, {size}); build it with StreamingT2V "
                "APM Anchor from frames at the model size."
            )
        _check_finite(anchor[None], "anchor")
        num_chunks, keep = _plan(length_mode, length, int(video.shape[0]))
        if num_chunks == 0:
            log.info("CAM Streaming Extend: 0 chunks requested, returning the %d input frames", video.shape[0])
            return (rt.frames_to_image(video), int(video.shape[0]))
        prompts = _chunk_prompts(prompt, prompt_per_chunk, num_chunks)
        events = rt.ComfyEvents(steps * num_chunks)
        info = {"prompts": prompts, "seed": seed, "steps": steps, "cfg": cfg, "eta": eta,
                "guidance_mode": guidance_mode, "cfg_anchor": cfg_anchor, "negative_prompt": negative_prompt,
                "num_chunks": num_chunks}
        with rt.interrupt_logged(events, "StreamingT2V CAM Streaming Extend", video, info):
            out = extend_video(
                model, video, anchor.to(device="cpu", dtype=torch.float32), prompts, num_chunks,
                negative_prompt=negative_prompt, steps=steps, guidance_scale=cfg, eta=eta, seed=seed,
                guidance_mode=guidance_mode, cfg_text=cfg, cfg_anchor=cfg_anchor,
                device=rt.torch_device(), dtype=_model_dtype(model), offload_device=rt.offload_device(),
                events=events,
            )
        if keep is not None:
            out = out[:keep]
        return (rt.frames_to_image(out), int(out.shape[0]))


NODE_CLASS_MAPPINGS = {
    "ST2V_InitChunk": InitChunk,
    "ST2V_APMAnchor": APMAnchor,
    "ST2V_CAMStreamingExtend": CAMStreamingExtend,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ST2V_InitChunk": "StreamingT2V Init Chunk",
    "ST2V_APMAnchor": "StreamingT2V APM Anchor",
    "ST2V_CAMStreamingExtend": "StreamingT2V CAM Streaming Extend",
}
