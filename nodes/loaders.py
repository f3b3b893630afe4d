"""Loader nodes: the StreamingT2V stream model and the ModelScope T2V UNet for the first chunk.

Weight files live in ComfyUI's `models/streamingt2v` folder (registered here at import time); the vanilla
ModelScope UNet may also sit in `models/diffusion_models`. Nothing is downloaded. Loading is done by
`streaming_core.loading`; the weights stay on the CPU until a sampling node moves the parts it needs.
"""
from __future__ import annotations

from ..streaming_core.model_files import load_base_model, load_stream_model
from . import _runtime as rt
from .types import (
    CATEGORY_LOADERS,
    DTYPE_CHOICES,
    MODEL_FOLDER,
    ST2V_BASE_MODEL,
    ST2V_MODEL,
)

rt.register_model_folder()

INSIDE_CHECKPOINT = "(inside checkpoint)"
BASE_FOLDERS = (MODEL_FOLDER, "diffusion_models")

_DTYPE_TOOLTIP = (
    "Weight precision. auto: fp16 on a CUDA GPU that supports it, fp32 on the CPU. fp32 is the reference "
    "precision (slowest, most memory); fp16/bf16 halve the memory."
)


class LoadStreamingT2V:
    DESCRIPTION = (
        "Loads the StreamingT2V stream-stage model (video UNet with the CAM and APM modules, text and image "
        "encoders, VAE) from models/streamingt2v. Accepts the official streaming_t2v.ckpt, its fp16 safetensors "
        "conversion, the VidXTend repack and the pack's tiny test models."
    )
    CATEGORY = CATEGORY_LOADERS
    RETURN_TYPES = (ST2V_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = (
        "The StreamingT2V model; connect it to Init Chunk, Load ModelScope T2V and CAM Streaming Extend.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = rt.list_model_files(MODEL_FOLDER)
        return {
            "required": {
                "ckpt_name": (files, {
                    "tooltip": "StreamingT2V checkpoint in models/streamingt2v (streaming_t2v.ckpt, its fp16 "
                               ".safetensors conversion, the VidXTend repack or a tiny test model).",
                }),
                "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": _DTYPE_TOOLTIP}),
            },
            "optional": {
                "image_encoder_name": ([INSIDE_CHECKPOINT] + files, {
                    "default": INSIDE_CHECKPOINT,
                    "tooltip": "Separate OpenCLIP ViT-H-14 image encoder file for the APM, for checkpoints that "
                               "were saved without it. Keep '(inside checkpoint)' for the official file.",
                }),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name=None, image_encoder_name=None):
        if ckpt_name is not None and rt.find_model_file(ckpt_name, MODEL_FOLDER) is None:
            return rt.missing_file_message("StreamingT2V checkpoint", ckpt_name, MODEL_FOLDER)
        if image_encoder_name not in (None, INSIDE_CHECKPOINT) and rt.find_model_file(
            image_encoder_name, MODEL_FOLDER
        ) is None:
            return rt.missing_file_message("Image encoder", image_encoder_name, MODEL_FOLDER)
        return True

    @classmethod
    def IS_CHANGED(cls, ckpt_name, dtype="auto", image_encoder_name=INSIDE_CHECKPOINT):
        fingerprint = rt.file_fingerprint(rt.find_model_file(ckpt_name, MODEL_FOLDER))
        if image_encoder_name != INSIDE_CHECKPOINT:
            fingerprint += "|" + rt.file_fingerprint(rt.find_model_file(image_encoder_name, MODEL_FOLDER))
        return fingerprint

    def load(self, ckpt_name, dtype, image_encoder_name=INSIDE_CHECKPOINT):
        path = rt.model_file_or_raise("StreamingT2V checkpoint", ckpt_name, MODEL_FOLDER)
        encoder_path = None
        if image_encoder_name != INSIDE_CHECKPOINT:
            encoder_path = rt.model_file_or_raise("Image encoder", image_encoder_name, MODEL_FOLDER)
        torch_dtype = rt.resolve_dtype(dtype)
        rt.log.info("loading StreamingT2V model %s (%s)", path, torch_dtype)
        model = load_stream_model(path, image_encoder_path=encoder_path, dtype=torch_dtype)
        return (model,)


class LoadModelScopeBase:
    DESCRIPTION = (
        "Loads the vanilla ModelScope T2V UNet (text-to-video-ms-1.7b, diffusers unet weights) that generates the "
        "first 16-frame chunk. It shares the text encoder and VAE of the StreamingT2V model. Not needed when the "
        "first frames come from an IMAGE batch."
    )
    CATEGORY = CATEGORY_LOADERS
    RETURN_TYPES = (ST2V_BASE_MODEL,)
    RETURN_NAMES = ("base_model",)
    OUTPUT_TOOLTIPS = ("The first-chunk model; connect it to the base_model input of StreamingT2V Init Chunk.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (ST2V_MODEL, {
                    "tooltip": "The loaded StreamingT2V model; its text encoder, tokenizer and VAE are reused.",
                }),
                "unet_name": (rt.list_model_files(*BASE_FOLDERS), {
                    "tooltip": "ModelScope T2V UNet weights (diffusers diffusion_pytorch_model*.safetensors or the "
                               "tiny test file) in models/streamingt2v or models/diffusion_models.",
                }),
                "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": _DTYPE_TOOLTIP}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, unet_name=None):
        if unet_name is not None and rt.find_model_file(unet_name, *BASE_FOLDERS) is None:
            return rt.missing_file_message("ModelScope T2V UNet", unet_name, *BASE_FOLDERS)
        return True

    @classmethod
    def IS_CHANGED(cls, unet_name, model=None, dtype="auto"):
        return rt.file_fingerprint(rt.find_model_file(unet_name, *BASE_FOLDERS))

    def load(self, model, unet_name, dtype):
        path = rt.model_file_or_raise("ModelScope T2V UNet", unet_name, *BASE_FOLDERS)
        torch_dtype = rt.resolve_dtype(dtype)
        rt.log.info("loading ModelScope T2V UNet %s (%s)", path, torch_dtype)
        base_model = load_base_model(path, shared=model, dtype=torch_dtype)
        return (base_model,)


NODE_CLASS_MAPPINGS = {
    "ST2V_LoadStreamingT2V": LoadStreamingT2V,
    "ST2V_LoadModelScopeBase": LoadModelScopeBase,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ST2V_LoadStreamingT2V": "Load StreamingT2V Model",
    "ST2V_LoadModelScopeBase": "Load ModelScope T2V (first chunk)",
}
