"""Every call from the pack into ComfyUI lives here (`comfyui_runtime.md` §5).

* devices and dtypes from `comfy.model_management` (never a hard-coded "cuda");
* the `streamingt2v` models folder of `folder_paths` and file look-ups with errors that name the folder;
* IMAGE `[B, H, W, 3]` <-> `streaming_core` frames `(N, 3, H, W)` conversion;
* `ComfyEvents`, the `streaming_core.events.StreamEvents` implementation: progress bar over all denoising
  steps, JPEG previews of the newest finished frame, cancellation through ComfyUI's interrupt flag.

`InterruptProcessingException` is never swallowed: `interrupt_logged` saves what a stopped run finished and re-raises.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Iterator

import numpy as np
import torch
from PIL import Image

import comfy.model_management as mm
import comfy.utils
import folder_paths

from ..streaming_core.events import NullEvents
from ..streaming_core.resume import save_partial
from .types import MODEL_EXTENSIONS, MODEL_FOLDER

log = logging.getLogger("streamingt2v.nodes")

InterruptProcessingException = mm.InterruptProcessingException

PREVIEW_MAX_SIZE = 512

# ------------------------------------------------------------------------------------------------------------
# devices and dtypes
# ------------------------------------------------------------------------------------------------------------

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_device() -> torch.device:
    """The device ComfyUI computes on (CPU under `--cpu`)."""
    return mm.get_torch_device()


def offload_device() -> torch.device:
    """Where idle model parts are parked between chunks (CPU unless ComfyUI runs in high-VRAM mode)."""
    return mm.unet_offload_device()


def output_device() -> torch.device:
    """Where IMAGE outputs live (`intermediate_device`, the CPU unless `--gpu-only`)."""
    return mm.intermediate_device()


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """Widget value -> torch dtype. "auto": fp16 on a CUDA device that supports it, else fp32."""
    if name == "auto":
        device = torch_device() if device is None else device
        if mm.is_device_cuda(device) and mm.should_use_fp16(device):
            return torch.float16
        return torch.float32
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"Unknown dtype '{name}'; choose one of auto, fp32, fp16, bf16.") from None


def free_cache() -> None:
    """Give cached accelerator memory back after a long run."""
    mm.soft_empty_cache()


# ------------------------------------------------------------------------------------------------------------
# models folder (`models/streamingt2v`)
# ------------------------------------------------------------------------------------------------------------


def register_model_folder() -> None:
    """Register `models/streamingt2v` with `folder_paths` (idempotent; keeps paths added by extra_model_paths)."""
    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))
    paths, extensions = folder_paths.folder_names_and_paths[MODEL_FOLDER]
    if isinstance(extensions, set):
        extensions.update(MODEL_EXTENSIONS)
    else:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, set(extensions) | set(MODEL_EXTENSIONS))


def folder_locations(*folders: str) -> list[str]:
    """Every directory ComfyUI searches for the given model folders."""
    locations: list[str] = []
    for folder in folders:
        if folder in folder_paths.folder_names_and_paths:
            locations.extend(p for p in folder_paths.get_folder_paths(folder) if p not in locations)
    return locations


def list_model_files(*folders: str) -> list[str]:
    """Sorted, de-duplicated file names (relative to their folder) for a combo widget."""
    names: set[str] = set()
    for folder in folders:
        if folder in folder_paths.folder_names_and_paths:
            names.update(folder_paths.get_filename_list(folder))
    return sorted(names)


def find_model_file(name: str, *folders: str) -> str | None:
    """Full path of `name` in the first of `folders` that has it, or None."""
    for folder in folders:
        if folder in folder_paths.folder_names_and_paths:
            path = folder_paths.get_full_path(folder, name)
            if path is not None:
                return path
    return None


def missing_file_message(what: str, name: str, *folders: str) -> str:
    locations = folder_locations(*folders) or [os.path.join(folder_paths.models_dir, MODEL_FOLDER)]
    return (
        f"{what} '{name}' was not found. Put it into the ComfyUI models folder "
        f"'models/{folders[0]}' (searched: {', '.join(locations)}), then refresh the node list."
    )


def model_file_or_raise(what: str, name: str, *folders: str) -> str:
    path = find_model_file(name, *folders)
    if path is None:
        raise FileNotFoundError(missing_file_message(what, name, *folders))
    return path


def file_fingerprint(path: str | None) -> str:
    """Size and mtime of a file, for `IS_CHANGED` (a changed file re-runs the loader)."""
    if path is None:
        return "missing"
    stat = os.stat(path)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


# ------------------------------------------------------------------------------------------------------------
# IMAGE <-> frames
# ------------------------------------------------------------------------------------------------------------


def image_to_frames(image: torch.Tensor, *, name: str = "images") -> torch.Tensor:
    """ComfyUI IMAGE `[B, H, W, 3]` float in [0, 1] -> frames `(B, 3, H, W)` float32 on the CPU."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"'{name}' must be an IMAGE tensor, got {type(image).__name__}.")
    if image.ndim == 3:  # a single image without batch dimension
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(
            f"'{name}' must be an IMAGE batch [frames, height, width, 3] (RGB); got shape {tuple(image.shape)}. "
            "Convert RGBA or grayscale images to RGB first."
        )
    return image.detach().to(device="cpu", dtype=torch.float32).permute(0, 3, 1, 2).contiguous()


def frames_to_image(frames: torch.Tensor) -> torch.Tensor:
    """Frames `(N, 3, H, W)` in [0, 1] -> ComfyUI IMAGE `[N, H, W, 3]` float32 on the intermediate device."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames (N, 3, H, W), got shape {tuple(frames.shape)}")
    image = frames.detach().to(dtype=torch.float32).clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()
    return image.to(output_device())


def frame_to_pil(frame: torch.Tensor) -> Image.Image:
    """One frame `(3, H, W)` in [0, 1] -> RGB PIL image (for previews)."""
    array = frame.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).cpu().numpy()))


# ------------------------------------------------------------------------------------------------------------
# progress, previews, cancellation
# ------------------------------------------------------------------------------------------------------------


class ComfyEvents(NullEvents):
    """`StreamEvents` for ComfyUI (hooks the protocol gains later default to `NullEvents`' no-ops).

    * `on_step`: the progress bar counts denoising steps over all chunks of the run
      (`chunk * num_steps + step` of `num_chunks * num_steps`);
    * `on_frames`: a JPEG preview of the newest finished frame, counted in `frames_finished`;
    * `on_chunk_end`: keeps the generator state to resume from (`noise_state`);
    * `check_cancel`: raises `InterruptProcessingException` once the user pressed Cancel.
    """

    def __init__(self, total_steps: int, *, preview_max_size: int = PREVIEW_MAX_SIZE) -> None:
        self.total = max(1, int(total_steps))
        self.value = 0
        self.frames_finished = 0
        self.chunks_finished = 0
        self.finished: list[torch.Tensor] = []  # references to the core's CPU frames, no copies
        self.noise_state: torch.Tensor | None = None
        self.preview_max_size = preview_max_size
        self.progress = comfy.utils.ProgressBar(self.total)

    def on_step(self, stage: str, chunk: int, num_chunks: int, step: int, num_steps: int) -> None:
        self.total = max(1, num_chunks * num_steps)
        self.value = min(self.total, chunk * num_steps + step)
        self.progress.update_absolute(self.value, self.total)

    def on_frames(self, frames: torch.Tensor, first_index: int) -> None:
        if frames.shape[0] == 0:
            return
        self.frames_finished += int(frames.shape[0])
        self.chunks_finished += 1
        self.finished.append(frames)
        preview = ("JPEG", frame_to_pil(frames[-1]), self.preview_max_size)
        self.progress.update_absolute(self.value, self.total, preview)

    def on_chunk_end(self, chunk: int, noise_state: torch.Tensor) -> None:
        self.noise_state = noise_state

    def check_cancel(self) -> None:
        mm.throw_exception_if_processing_interrupted()


@contextlib.contextmanager
def interrupt_logged(events: ComfyEvents, what: str, input_frames: torch.Tensor | None = None,
                     info: dict | None = None) -> Iterator[None]:
    """Run a core call; if it stops early (Cancel, NaN, out of memory, ...) after finishing frames, save them with
    the resume state to `output/streamingt2v_partial/` and log the path, then re-raise (never swallow)."""
    try:
        yield
    except BaseException as exc:
        if events.finished:
            frames = torch.cat(([input_frames] if input_frames is not None else []) + events.finished)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            info = dict(info or {})
            if "prompts" in info and "num_chunks" in info:  # what a resume still has to do
                info["remaining_prompts"] = info.pop("prompts")[events.chunks_finished:]
                info["remaining_chunks"] = info.pop("num_chunks") - events.chunks_finished
            path = save_partial(
                os.path.join(folder_paths.get_output_directory(), "streamingt2v_partial",
                             f"{what.replace(' ', '_')}_{stamp}_{frames.shape[0]}frames.safetensors"),
                frames, events.noise_state,
                dict(info, chunks_done=events.chunks_finished, stopped_by=type(exc).__name__))
            log.warning("%s stopped (%s) after %d finished frame(s) in %d chunk(s); all %d frames so far and the "
                        "resume state were saved to %s", what, type(exc).__name__, events.frames_finished,
                        events.chunks_finished, frames.shape[0], path)
        raise
    finally:
        free_cache()
