"""Refinement nodes: refiner loaders, the randomized blend plan and SDEdit refinement (refine_stage.md).

* Load Refiner (MS-Vid2Vid-XL): the three official files (or the pack's single fp16 conversion) from
  `models/streamingt2v` (any subfolder; the VAE may also come from `models/vae`), §6.
* Load Refiner (diffusers UNet3D): a diffusers text-to-video folder such as zeroscope_v2_XL, §16.
* Randomized Blend: the chunk plan and blending rule of the refiner (§7.4, §12.3); it can also merge two
  overlapping clips directly.
* Refiner SDEdit: `streaming_core.refine.refine_video` with ComfyUI devices, progress, previews and interrupts;
  frames can stream straight into an mp4 in the output folder instead of (or as well as) the IMAGE output (§13).

Every call into ComfyUI goes through `_runtime`; the torch work is in `streaming_core`.
"""
from __future__ import annotations

import json
import logging
import os

import torch

import folder_paths

from ..streaming_core.blending import BlendPlan, merge_clips
from ..streaming_core.refine import RefineSettings, plan_for, refine_video
from ..streaming_core.refiner_files import (MIRROR_REPO, MS_VID2VID_FILES, MissingRefinerFilesError,
                                            load_diffusers_refiner, load_ms_vid2vid)
from ..streaming_core.video_sink import Mp4Sink
from . import _runtime as rt
from .stream import MAX_SEED, _check_finite
from .types import (
    BOOLEAN,
    CATEGORY_LOADERS,
    CATEGORY_REFINE,
    DTYPE_CHOICES,
    FLOAT,
    IMAGE,
    INT,
    MODEL_FOLDER,
    ST2V_BLEND_PLAN,
    ST2V_REFINER,
    STRING,
)

log = logging.getLogger("streamingt2v.nodes")

rt.register_model_folder()

# ------------------------------------------------------------------------------------------------------------
# constants shared by the nodes, the workflows and the tests
# ------------------------------------------------------------------------------------------------------------

FROM_CONVERTED = "(from converted file)"
VAE_FOLDERS = (MODEL_FOLDER, "vae")
DIFFUSERS_FOLDERS = (MODEL_FOLDER, "diffusers")
DIFFUSERS_SEARCH_DEPTH = 3  # folder levels below models/streamingt2v (or models/diffusers) that are searched

MIRROR = MIRROR_REPO  # ali-vilab/MS-Vid2Vid-XL
LICENCE = "CC-BY-NC-ND-4.0"
SUGGESTED_SUBFOLDER = "models/streamingt2v/ms_vid2vid_xl/"
OFFICIAL_FILES = MS_VID2VID_FILES  # (file name, size, content) of the official download (§6.1)

BLEND_VARIANTS = ["x0_random", "xt_random", "average", "hard"]
PAD_MODES = ["official", "minimal", "custom"]
START_QUIRK_CHOICES = ["auto", "on", "off"]
DEFAULT_CHUNK, DEFAULT_OVERLAP, DEFAULT_BLEND_SEED = 24, 8, 666
MAX_CHUNK = 1024
DEFAULT_FPS = 8.0
# IMAGE output of Randomized Blend when no clips are connected: one black frame (never an empty batch,
# which core savers and previews reject)
PLACEHOLDER_SIZE = 64

_DTYPE_TOOLTIP = (
    "Weight precision. auto: fp16 on a CUDA GPU that supports it, fp32 on the CPU. fp32 is the reference "
    "precision (slowest, most memory); fp16/bf16 halve the memory."
)


def official_files_hint() -> str:
    """The sentence every missing-file message of the MS-Vid2Vid-XL loader ends with (§6.2 item 6)."""
    files = ", ".join(f"{name} ({size}, {role})" for name, size, role in OFFICIAL_FILES)
    return (
        f"MS-Vid2Vid-XL needs three files from the Hugging Face repository {MIRROR} (licence {LICENCE}): {files}. "
        f"Put them into {SUGGESTED_SUBFOLDER} (any subfolder of models/streamingt2v works; the VAE may also sit in "
        "models/vae), or convert them once into the pack's single fp16 refiner file and pick "
        f"'{FROM_CONVERTED}' for the text encoder and the VAE. Then refresh the node list (press R)."
    )


def _refiner_missing(what: str, name: str, *folders: str) -> str:
    return f"{rt.missing_file_message(what, name, *folders)} {official_files_hint()}"


def _preferred(files: list[str], *basenames: str) -> dict:
    """`{"default": <first file whose base name is one of basenames>}` or `{}` (combo widget option)."""
    for wanted in basenames:
        for name in files:
            if os.path.basename(name) == wanted:
                return {"default": name}
    return {}


def _model_dtype(model: object) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    unet = getattr(model, "unet", None)
    if unet is not None:
        for param in unet.parameters():
            return param.dtype
    return torch.float32


# ------------------------------------------------------------------------------------------------------------
# diffusers folders
# ------------------------------------------------------------------------------------------------------------


def is_diffusers_folder(path: str) -> bool:
    """A diffusers text-to-video folder: `unet/config.json` next to `vae/` (text encoder checked by the loader)."""
    return os.path.isfile(os.path.join(path, "unet", "config.json")) and os.path.isdir(os.path.join(path, "vae"))


def list_diffusers_folders() -> list[str]:
    """Diffusers folders (relative, '/'-separated) inside every location of the diffusers folder pickers."""
    found: set[str] = set()
    for root in rt.folder_locations(*DIFFUSERS_FOLDERS):
        if not os.path.isdir(root):
            continue
        for current, dirs, _files in os.walk(root, followlinks=True):
            rel = os.path.relpath(current, root)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            if depth and is_diffusers_folder(current):
                found.add(rel.replace(os.sep, "/"))
                dirs[:] = []  # a model's own subfolders are not models
                continue
            if depth >= DIFFUSERS_SEARCH_DEPTH:
                dirs[:] = []
            else:
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def find_diffusers_folder(name: str) -> str | None:
    if not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        return None
    for root in rt.folder_locations(*DIFFUSERS_FOLDERS):
        path = os.path.join(root, *name.split("/"))
        if is_diffusers_folder(path):
            return path
    return None


def _missing_diffusers(name: str) -> str:
    locations = rt.folder_locations(*DIFFUSERS_FOLDERS)
    return (
        f"Diffusers refiner folder '{name}' was not found (searched: {', '.join(locations)}). Put a diffusers "
        "text-to-video folder with unet/, text_encoder/, tokenizer/, vae/ and scheduler/ (e.g. cerspense/"
        "zeroscope_v2_XL) into models/streamingt2v/<name>/ or models/diffusers/<name>/, then refresh the node "
        "list (press R)."
    )


def _folder_fingerprint(path: str | None) -> str:
    if path is None:
        return "missing"
    parts = []
    for sub in ("unet", "text_encoder", "vae", "scheduler"):
        folder = os.path.join(path, sub)
        if os.path.isdir(folder):
            for entry in sorted(os.listdir(folder)):
                parts.append(f"{sub}/{entry}:{rt.file_fingerprint(os.path.join(folder, entry))}")
    return "|".join(parts)


# ------------------------------------------------------------------------------------------------------------
# loaders
# ------------------------------------------------------------------------------------------------------------


class LoadRefinerMSVid2Vid:
    DESCRIPTION = (
        "Loads the MS-Vid2Vid-XL refiner of StreamingT2V (video UNet, OpenCLIP ViT-H-14 text encoder, Stable "
        f"Diffusion 2.1 VAE) from models/streamingt2v. Download non_ema_0035000.pth, open_clip_pytorch_model.bin and "
        f"v2-1_512-ema-pruned.ckpt from {MIRROR} ({LICENCE}), or pick the pack's single fp16 refiner file as "
        f"unet_name and '{FROM_CONVERTED}' for the other two."
    )
    CATEGORY = CATEGORY_LOADERS
    RETURN_TYPES = (ST2V_REFINER,)
    RETURN_NAMES = ("refiner",)
    OUTPUT_TOOLTIPS = ("The refiner; connect it to Refiner SDEdit.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = rt.list_model_files(MODEL_FOLDER)
        vae_files = rt.list_model_files(*VAE_FOLDERS)
        text_choices = [FROM_CONVERTED] + files
        vae_choices = [FROM_CONVERTED] + vae_files
        return {
            "required": {
                "unet_name": (files, {
                    **_preferred(files, "non_ema_0035000.pth"),
                    "tooltip": "Refiner UNet in models/streamingt2v (any subfolder): non_ema_0035000.pth (5.65 GB) "
                               "from ali-vilab/MS-Vid2Vid-XL, a safetensors copy with the official names, or the "
                               "pack's fp16 refiner file that also holds the text encoder and the VAE.",
                }),
                "text_encoder_name": (text_choices, {
                    **_preferred(text_choices, "open_clip_pytorch_model.bin"),
                    "tooltip": "OpenCLIP ViT-H-14 text encoder: open_clip_pytorch_model.bin (3.94 GB) or a "
                               f"text-only safetensors. '{FROM_CONVERTED}': take it from the fp16 refiner file "
                               "picked in unet_name.",
                }),
                "vae_name": (vae_choices, {
                    **_preferred(vae_choices, "v2-1_512-ema-pruned.ckpt"),
                    "tooltip": "Stable Diffusion 2.1 VAE: v2-1_512-ema-pruned.ckpt (5.21 GB, only its VAE is read), "
                               "a bare VAE file, or a diffusers VAE, from models/streamingt2v or models/vae. "
                               f"'{FROM_CONVERTED}': take it from the fp16 refiner file picked in unet_name.",
                }),
                "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": _DTYPE_TOOLTIP}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, unet_name=None, text_encoder_name=None, vae_name=None):
        if unet_name is not None:
            if unet_name == FROM_CONVERTED:
                return (f"unet_name cannot be '{FROM_CONVERTED}': pick the UNet file (or the fp16 refiner file "
                        "that holds all three parts).")
            if rt.find_model_file(unet_name, MODEL_FOLDER) is None:
                return _refiner_missing("Refiner UNet", unet_name, MODEL_FOLDER)
        if text_encoder_name not in (None, FROM_CONVERTED) and rt.find_model_file(
                text_encoder_name, MODEL_FOLDER) is None:
            return _refiner_missing("Refiner text encoder", text_encoder_name, MODEL_FOLDER)
        if vae_name not in (None, FROM_CONVERTED) and rt.find_model_file(vae_name, *VAE_FOLDERS) is None:
            return _refiner_missing("Refiner VAE", vae_name, *VAE_FOLDERS)
        return True

    @classmethod
    def IS_CHANGED(cls, unet_name, text_encoder_name, vae_name, dtype="auto"):
        parts = [rt.file_fingerprint(rt.find_model_file(unet_name, MODEL_FOLDER))]
        if text_encoder_name != FROM_CONVERTED:
            parts.append(rt.file_fingerprint(rt.find_model_file(text_encoder_name, MODEL_FOLDER)))
        if vae_name != FROM_CONVERTED:
            parts.append(rt.file_fingerprint(rt.find_model_file(vae_name, *VAE_FOLDERS)))
        return "|".join(parts)

    def load(self, unet_name, text_encoder_name, vae_name, dtype):
        def resolve(what: str, name: str, *folders: str) -> str:
            path = rt.find_model_file(name, *folders)
            if path is None:
                raise FileNotFoundError(_refiner_missing(what, name, *folders))
            return path

        unet_path = resolve("Refiner UNet", unet_name, MODEL_FOLDER)
        # None = the part comes from the pack's converted file in unet_path (the core rejects other files)
        text_path = None if text_encoder_name == FROM_CONVERTED else resolve(
            "Refiner text encoder", text_encoder_name, MODEL_FOLDER)
        vae_path = None if vae_name == FROM_CONVERTED else resolve("Refiner VAE", vae_name, *VAE_FOLDERS)
        torch_dtype = rt.resolve_dtype(dtype)
        log.info("loading MS-Vid2Vid-XL refiner: unet %s, text %s, vae %s (%s)", unet_path, text_path, vae_path,
                 torch_dtype)
        try:
            return (load_ms_vid2vid(unet_path, text_path, vae_path, dtype=torch_dtype),)
        except MissingRefinerFilesError as exc:
            if None not in (text_path, vae_path):
                raise
            raise MissingRefinerFilesError(
                f"'{FROM_CONVERTED}' takes the text encoder and the VAE from the pack's converted refiner file, "
                f"but unet_name '{unet_name}' is not one; pick the text encoder and VAE files instead "
                f"({str(exc).split('. ')[0]})") from None


class LoadRefinerDiffusers:
    DESCRIPTION = (
        "Loads a diffusers UNet3D text-to-video model as refiner (e.g. cerspense/zeroscope_v2_XL, 1024x576): a "
        "folder with unet/, text_encoder/, tokenizer/, vae/ and scheduler/ inside models/streamingt2v or "
        "models/diffusers. Refine with strength 0.66-0.85, cfg 9 and guidance_rescale 0 for zeroscope."
    )
    CATEGORY = CATEGORY_LOADERS
    RETURN_TYPES = (ST2V_REFINER,)
    RETURN_NAMES = ("refiner",)
    OUTPUT_TOOLTIPS = ("The refiner; connect it to Refiner SDEdit.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": (list_diffusers_folders(), {
                    "tooltip": "A diffusers text-to-video folder (subfolder of models/streamingt2v or "
                               "models/diffusers) with unet/, text_encoder/, tokenizer/, vae/, scheduler/.",
                }),
                "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": _DTYPE_TOOLTIP}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, folder=None):
        if folder is not None and find_diffusers_folder(folder) is None:
            return _missing_diffusers(folder)
        return True

    @classmethod
    def IS_CHANGED(cls, folder, dtype="auto"):
        return _folder_fingerprint(find_diffusers_folder(folder))

    def load(self, folder, dtype):
        path = find_diffusers_folder(folder)
        if path is None:
            raise FileNotFoundError(_missing_diffusers(folder))
        torch_dtype = rt.resolve_dtype(dtype)
        log.info("loading diffusers refiner %s (%s)", path, torch_dtype)
        return (load_diffusers_refiner(path, dtype=torch_dtype),)


# ------------------------------------------------------------------------------------------------------------
# blend plan
# ------------------------------------------------------------------------------------------------------------


def blend_plan_problem(chunk_size: int | None, overlap: int | None) -> str | None:
    """Why (chunk_size, overlap) is not a valid chunk plan, or None (§7.4: 0 <= overlap < chunk_size)."""
    if chunk_size is not None and not 1 <= chunk_size <= MAX_CHUNK:
        return f"chunk_size {chunk_size} is outside 1..{MAX_CHUNK}; the refiner was trained on 24-frame chunks."
    if overlap is not None and overlap < 0:
        return f"overlap is {overlap}, but it cannot be negative; use 0 for plain tiling without blending."
    if chunk_size is not None and overlap is not None and overlap >= chunk_size:
        return (f"overlap ({overlap}) must be smaller than chunk_size ({chunk_size}): every chunk needs new frames. "
                f"Lower the overlap to at most {chunk_size - 1} (8 of 24 as released).")
    return None


class RandomizedBlend:
    DESCRIPTION = (
        "Chooses how the refiner splits a long video into overlapping chunks and merges the overlaps: the "
        "official randomized blending (x0_random) cuts each overlap at a new random frame at every denoising step, "
        "so no fixed seam survives. Also merges two overlapping IMAGE clips directly (clip_a, clip_b)."
    )
    CATEGORY = CATEGORY_REFINE
    RETURN_TYPES = (ST2V_BLEND_PLAN, IMAGE)
    RETURN_NAMES = ("blend_plan", "merged")
    OUTPUT_TOOLTIPS = (
        "The chunk plan and blending rule; connect it to the blend_plan input of Refiner SDEdit.",
        "clip_a and clip_b merged over their overlap (len(a) + len(b) - overlap frames) when both are connected; "
        f"otherwise a single black {PLACEHOLDER_SIZE}x{PLACEHOLDER_SIZE} placeholder frame.",
    )
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "chunk_size": (INT, {
                    "default": DEFAULT_CHUNK, "min": 1, "max": MAX_CHUNK,
                    "tooltip": "Frames per refiner chunk (24 as released). Videos of at most chunk_size frames "
                               "are refined in one piece.",
                }),
                "overlap": (INT, {
                    "default": DEFAULT_OVERLAP, "min": 0, "max": MAX_CHUNK - 1,
                    "tooltip": "Frames shared by neighbouring chunks (8 as released); must be smaller than "
                               "chunk_size. The plan spreads the chunks so no frame is dropped, so actual "
                               "overlaps can be a little larger. 0 = hard seams.",
                }),
                "variant": (BLEND_VARIANTS, {
                    "default": "x0_random",
                    "tooltip": "x0_random: official code, random cut per overlap and step on the denoised "
                               "predictions. xt_random: paper, random cut on the next-step latents. average: "
                               "mean of the chunks (blurrier). hard: fixed cut in the middle (visible seam).",
                }),
                "seed": (INT, {
                    "default": DEFAULT_BLEND_SEED, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": "Seed of the random cut positions (666 as released); independent of the noise seed.",
                }),
            },
            "optional": {
                "clip_a": (IMAGE, {
                    "tooltip": "Earlier clip to merge; its last `overlap` frames show the same moments as the "
                               "first `overlap` frames of clip_b.",
                }),
                "clip_b": (IMAGE, {
                    "tooltip": "Later clip to merge (same frame size as clip_a, at least `overlap` frames).",
                }),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, chunk_size=None, overlap=None):
        # naming the inputs here turns off ComfyUI's own min/max checks for them, so the ranges are checked here
        problem = blend_plan_problem(chunk_size, overlap)
        return True if problem is None else problem

    def run(self, chunk_size, overlap, variant, seed, clip_a=None, clip_b=None):
        problem = blend_plan_problem(chunk_size, overlap)
        if problem is not None:
            raise ValueError(problem)
        if variant not in BLEND_VARIANTS:
            raise ValueError(f"variant '{variant}' is not one of {', '.join(BLEND_VARIANTS)}.")
        plan = BlendPlan(chunk_size=chunk_size, overlap=overlap, variant=variant, seed=seed)
        if clip_a is None and clip_b is None:
            placeholder = torch.zeros(1, 3, PLACEHOLDER_SIZE, PLACEHOLDER_SIZE)
            return (plan, rt.frames_to_image(placeholder))
        if clip_a is None or clip_b is None:
            raise ValueError(
                f"Only {'clip_a' if clip_a is not None else 'clip_b'} is connected; connect both clip_a and clip_b "
                "to merge them, or neither to output only the blend plan."
            )
        a = rt.image_to_frames(clip_a, name="clip_a")
        b = rt.image_to_frames(clip_b, name="clip_b")
        if a.shape[-2:] != b.shape[-2:]:
            raise ValueError(
                f"clip_a frames are {a.shape[-1]}x{a.shape[-2]} and clip_b frames {b.shape[-1]}x{b.shape[-2]} "
                "pixels; resize one of them so both have the same size."
            )
        # clip_a must also keep at least one frame of its own before the overlap
        for name, clip, least in (("clip_a", a, overlap + 1), ("clip_b", b, max(overlap, 1))):
            if clip.shape[0] < least:
                raise ValueError(
                    f"{name} has {clip.shape[0]} frame(s), but with an overlap of {overlap} it needs at least "
                    f"{least}. Lower the overlap or use longer clips."
                )
            _check_finite(clip, name)
        merged = merge_clips(a, b, overlap, variant, seed)
        return (plan, rt.frames_to_image(merged))


# ------------------------------------------------------------------------------------------------------------
# refinement
# ------------------------------------------------------------------------------------------------------------


class RefineProgress(rt.ComfyEvents):
    """Progress for the refiner: one unit per chunk evaluation plus one per decoded frame (§13 item 4).

    The solver evaluates every chunk once per step (step-major), so the value is
    `(step - 1) * num_chunks + chunk + 1` while sampling and `evaluations + frames decoded` while decoding.
    Decoded frames are previewed but not kept here (the sinks own them).
    """

    def __init__(self, num_frames: int, evaluations: int) -> None:
        self.num_frames = int(num_frames)
        self.evaluations = int(evaluations)
        super().__init__(self.evaluations + self.num_frames)

    def on_step(self, stage: str, chunk: int, num_chunks: int, step: int, num_steps: int) -> None:
        self.evaluations = num_chunks * num_steps
        self.total = max(1, self.evaluations + self.num_frames)
        self.value = min(self.total, (step - 1) * num_chunks + chunk + 1)
        self.progress.update_absolute(self.value, self.total)

    def on_frames(self, frames: torch.Tensor, first_index: int) -> None:
        if frames.shape[0] == 0:
            return
        self.frames_finished = first_index + int(frames.shape[0])
        self.value = min(self.total, self.evaluations + self.frames_finished)
        preview = ("JPEG", rt.frame_to_pil(frames[-1]), self.preview_max_size)
        self.progress.update_absolute(self.value, self.total, preview)


class _ImageSink:
    """Sink that writes the frames straight into one preallocated IMAGE `[N, H, W, 3]` (no second full copy)."""

    def __init__(self, frames: int, height: int, width: int) -> None:
        self.image = torch.empty(frames, height, width, 3, dtype=torch.float32)
        self.count = 0

    def write(self, frames: torch.Tensor, first_index: int) -> None:
        if tuple(frames.shape[-2:]) != tuple(self.image.shape[1:3]):
            raise ValueError(f"refined frames are {tuple(frames.shape[-2:])}, expected {tuple(self.image.shape[1:3])}")
        self.image[first_index:first_index + frames.shape[0]] = frames.permute(0, 2, 3, 1).clamp(0.0, 1.0)
        self.count = first_index + int(frames.shape[0])

    def close(self) -> None:
        pass


class _FirstFrame:
    """Sink that keeps only frame 0 (the IMAGE placeholder when keep_frames is off)."""

    def __init__(self) -> None:
        self.frame: torch.Tensor | None = None
        self.count = 0

    def write(self, frames: torch.Tensor, first_index: int) -> None:
        if self.frame is None and first_index == 0 and frames.shape[0]:
            self.frame = frames[:1].clone()
        self.count = first_index + int(frames.shape[0])

    def close(self) -> None:
        pass


def save_prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot name a file inside ComfyUI's output folder, or None (no folder is created)."""
    output_dir = os.path.abspath(folder_paths.get_output_directory())
    subfolder = os.path.dirname(os.path.normpath(prefix))
    target = os.path.abspath(os.path.join(output_dir, subfolder))
    if os.path.isabs(prefix) or os.path.commonpath((output_dir, target)) != output_dir:
        return (f"save_to_file '{prefix}' points outside ComfyUI's output folder; use a relative prefix such as "
                "'video/streamingt2v_refined'.")
    if not os.path.basename(os.path.normpath(prefix)):
        return f"save_to_file '{prefix}' has no file name part; end it with a name, e.g. 'video/refined'."
    return None


def _start_quirk(choice: str) -> bool | None:
    return {"auto": None, "on": True, "off": False}[choice]


class RefinerSDEdit:
    DESCRIPTION = (
        "Refines a low-resolution video into a high-resolution one (StreamingT2V's streaming refinement): every "
        "frame is upscaled, partly re-noised (strength) and denoised by the refiner in overlapping chunks that are "
        "merged with randomized blending, so long videos stay seamless. Keeps every frame. For long 720p videos "
        "turn keep_frames off and stream the result into an mp4 with save_to_file."
    )
    CATEGORY = CATEGORY_REFINE
    RETURN_TYPES = (IMAGE, STRING)
    RETURN_NAMES = ("frames", "info")
    OUTPUT_TOOLTIPS = (
        "The refined frames (content only, padding bars cropped), float 0..1. With keep_frames off: only the first "
        "refined frame, as a placeholder that keeps the graph valid (the video is in the save_to_file mp4).",
        "JSON with the run: chunk starts, geometry, t_start, settings, seeds and the saved file path (if any).",
    )
    FUNCTION = "run"
    OUTPUT_NODE = True  # it can save the video itself (save_to_file), so it runs even with unconnected outputs

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "refiner": (ST2V_REFINER, {"tooltip": "Refiner from Load Refiner (MS-Vid2Vid-XL or diffusers)."}),
                "frames": (IMAGE, {
                    "tooltip": "The video to refine (any size and length, e.g. the output of CAM Streaming Extend "
                               "or a loaded video).",
                }),
                "prompt": (STRING, {
                    "multiline": True, "default": "",
                    "tooltip": "What the video shows; use the prompt that generated it.",
                }),
                "negative_prompt": (STRING, {
                    "multiline": True, "default": "",
                    "tooltip": "What to steer away from (empty as released).",
                }),
                "strength": (FLOAT, {
                    "default": 0.6, "min": 0.002, "max": 0.999, "step": 0.001, "round": 0.001,
                    "tooltip": "How much is re-generated: the frames are noised to timestep 1000*strength-1. 0.6 as "
                               "released (t = 599); lower keeps more of the input, higher invents more detail. "
                               "zeroscope_v2_XL: 0.66-0.85.",
                }),
                "steps": (INT, {
                    "default": 30, "min": 1, "max": 1000,
                    "tooltip": "DPM++ 2M SDE steps (30 as released); each step evaluates every chunk once.",
                }),
                "cfg": (FLOAT, {
                    "default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                    "tooltip": "Classifier-free guidance scale (7.5 as released; 9.0 for zeroscope). 1.0 skips the "
                               "unconditional pass (half the work).",
                }),
                "guidance_rescale": (FLOAT, {
                    "default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "Rescales the guided prediction towards the spread of the conditional one against "
                               "over-saturation (0.2 as released; 0 for zeroscope).",
                }),
                "pad_mode": (PAD_MODES, {
                    "default": "official",
                    "tooltip": "official: content fitted into the refiner's native frame (1280x720) with black bars, "
                               "as released. minimal: same content size, only the bars the refiner needs (faster). "
                               "custom: content height = target_height (aspect kept). The bars are cropped off "
                               "the output.",
                }),
                "target_height": (INT, {
                    "default": 720, "min": 16, "max": 4096, "step": 8,
                    "tooltip": "Output height in pixels for pad_mode custom (ignored otherwise); the width follows "
                               "the aspect ratio. Time and memory grow with its square.",
                }),
                "seed": (INT, {
                    "default": 666, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                    "tooltip": "Seed of the SDEdit, solver and VAE noise (666 as released); the same seed and "
                               "settings give the same video on any device order.",
                }),
            },
            "optional": {
                "blend_plan": (ST2V_BLEND_PLAN, {
                    "tooltip": "Chunk plan from Randomized Blend; default: 24-frame chunks, overlap 8, x0_random, "
                               "seed 666 (as released).",
                }),
                "eta": (FLOAT, {
                    "default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "Solver noise: 1.0 = SDE as released, 0.0 = deterministic DPM-Solver++(2M).",
                }),
                "start_quirk": (START_QUIRK_CHOICES, {
                    "default": "auto",
                    "tooltip": "How the solver enters the noised latent. auto: the refiner's default (on for "
                               "MS-Vid2Vid-XL, reproducing the released code; off for diffusers models). on/off "
                               "force it.",
                }),
                "keep_frames": (BOOLEAN, {
                    "default": True,
                    "tooltip": "On: output every refined frame as IMAGE. Off: output only the first frame and "
                               "stream the video into save_to_file (a 1200-frame 720p video needs ~7.5 GB as IMAGE).",
                }),
                "save_to_file": (STRING, {
                    "default": "",
                    "tooltip": "Filename prefix in ComfyUI's output folder (e.g. video/streamingt2v_refined): frames "
                               "are encoded into an H.264 mp4 as soon as they are decoded; an interrupted run "
                               "leaves a playable file with the frames done so far. Empty: no file.",
                }),
                "fps": (FLOAT, {
                    "default": DEFAULT_FPS, "min": 0.1, "max": 240.0, "step": 0.1,
                    "tooltip": "Frame rate of the save_to_file mp4 (8 as StreamingT2V).",
                }),
                "batch_guidance": (BOOLEAN, {
                    "default": True,
                    "tooltip": "On: conditional and unconditional passes in one batch (faster). Off: one after the "
                               "other (less VRAM, same result).",
                }),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, keep_frames=None, save_to_file=None):
        if keep_frames is False and save_to_file is not None and not save_to_file.strip():
            return ("keep_frames is off and save_to_file is empty, so the refined video would be thrown away; turn "
                    "keep_frames on or enter a filename prefix in save_to_file.")
        if save_to_file is not None and save_to_file.strip():
            problem = save_prefix_problem(save_to_file.strip())
            if problem is not None:
                return problem
        return True

    def run(self, refiner, frames, prompt, negative_prompt, strength, steps, cfg, guidance_rescale, pad_mode,
            target_height, seed, blend_plan=None, eta=1.0, start_quirk="auto", keep_frames=True, save_to_file="",
            fps=DEFAULT_FPS, batch_guidance=True):
        video = rt.image_to_frames(frames, name="frames")
        if video.shape[0] == 0:
            raise ValueError("'frames' is empty; connect a video with at least one frame.")
        _check_finite(video, "frames")
        prefix = (save_to_file or "").strip()
        if not keep_frames and not prefix:
            raise ValueError("keep_frames is off and save_to_file is empty, so the refined video would be thrown "
                             "away; turn keep_frames on or enter a filename prefix in save_to_file.")
        if prefix and save_prefix_problem(prefix):
            raise ValueError(save_prefix_problem(prefix))
        if start_quirk not in START_QUIRK_CHOICES:
            raise ValueError(f"start_quirk '{start_quirk}' is not one of {', '.join(START_QUIRK_CHOICES)}.")
        plan = blend_plan if blend_plan is not None else BlendPlan(DEFAULT_CHUNK, DEFAULT_OVERLAP, "x0_random",
                                                                   DEFAULT_BLEND_SEED)
        settings = RefineSettings(
            strength=strength, steps=steps, cfg=cfg, rescale=guidance_rescale, eta=eta,
            start_quirk=_start_quirk(start_quirk), blend=plan, pad_mode=pad_mode,
            target_height=target_height if pad_mode == "custom" else None, seed=seed,
            batch_guidance=batch_guidance,
        )
        # everything that can be checked without the networks is checked before any model work
        resolved = settings.resolved(refiner)
        try:
            resolved.validate()
            geometry = plan_for(refiner, int(video.shape[-2]), int(video.shape[-1]), resolved)
        except ValueError as exc:
            raise ValueError(
                f"Refiner SDEdit cannot refine {video.shape[-1]}x{video.shape[-2]} frames with these settings: {exc}. "
                "Try pad_mode 'official' or 'minimal', or another target_height."
            ) from None
        num_frames = int(video.shape[0])
        chunks = len(plan.starts(num_frames))

        kept = _ImageSink(num_frames, geometry.content_h, geometry.content_w) if keep_frames else _FirstFrame()
        sinks: list = [kept]
        file_info = None
        if prefix:
            out_dir = folder_paths.get_output_directory()
            folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
                prefix, out_dir, geometry.content_w, geometry.content_h)
            name = f"{filename}_{counter:05}_.mp4"
            file_info = {"filename": name, "subfolder": subfolder, "type": "output",
                         "path": os.path.join(folder, name)}
            sinks.append(Mp4Sink(file_info["path"], fps=fps))

        events = RefineProgress(num_frames, steps * chunks)
        log.info("Refiner SDEdit: %d frames %dx%d -> %dx%d, %d chunk(s)%s", num_frames, video.shape[-1],
                 video.shape[-2], geometry.content_w, geometry.content_h, chunks,
                 f", streaming to {file_info['path']}" if file_info else "")
        try:
            result = refine_video(
                refiner, video, prompt, negative_prompt, settings, device=rt.torch_device(),
                offload=rt.offload_device(), dtype=_model_dtype(refiner), events=events, sinks=sinks,
                keep_frames=False,  # `kept` holds what the IMAGE output needs
            )
        except BaseException as exc:  # refine_video has closed every sink by now, on every path
            if file_info is not None and os.path.isfile(file_info["path"]):
                log.warning("Refiner SDEdit stopped (%s) after %d decoded frame(s); they are in the playable file %s",
                            type(exc).__name__, events.frames_finished, file_info["path"])
            raise
        finally:
            rt.free_cache()

        info = dict(result.info)
        info["chunk_starts"] = list(result.chunk_starts)
        info["file"] = file_info
        info["keep_frames"] = bool(keep_frames)
        if file_info is not None:
            info["fps"] = fps
        info_text = json.dumps(info, default=str)
        if kept.count != num_frames:
            raise RuntimeError(f"the refiner returned {kept.count} of {num_frames} frames")
        image = kept.image.to(rt.output_device()) if keep_frames else rt.frames_to_image(kept.frame)
        if file_info is None:
            return (image, info_text)
        ui_file = {k: file_info[k] for k in ("filename", "subfolder", "type")}
        return {"ui": {"images": [ui_file], "animated": (True,)}, "result": (image, info_text)}


NODE_CLASS_MAPPINGS = {
    "ST2V_LoadRefinerMSVid2Vid": LoadRefinerMSVid2Vid,
    "ST2V_LoadRefinerDiffusers": LoadRefinerDiffusers,
    "ST2V_RandomizedBlend": RandomizedBlend,
    "ST2V_RefinerSDEdit": RefinerSDEdit,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ST2V_LoadRefinerMSVid2Vid": "Load Refiner (MS-Vid2Vid-XL)",
    "ST2V_LoadRefinerDiffusers": "Load Refiner (diffusers UNet3D)",
    "ST2V_RandomizedBlend": "Randomized Blend",
    "ST2V_RefinerSDEdit": "Refiner SDEdit",
}
