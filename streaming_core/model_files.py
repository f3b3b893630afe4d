"""Building the stream-stage bundles from the files users download (stream_stage.md §13).

The same code path loads the 25.6 GB official `streaming_t2v.ckpt`, its fp16 safetensors conversion, the
VidXTend repack and the pack's tiny models (safetensors files whose metadata entry `streamingt2v_config` holds
their architecture; files without it are full size).
"""
from __future__ import annotations

import json
import logging
import os

import torch
from torch import nn

from .config import StreamingT2VConfig
from .loading import (CheckpointLayoutError, cast_state_dict, check_strict, describe, fill_unused, load_into,
                      read_image_encoder, read_normalized)
from .models import BaseModel, StreamingT2VNetwork, StreamModel, build_vanilla_unet
from .tokenizer import ClipTokenizer

logger = logging.getLogger("streaming_core")

CONFIG_METADATA_KEY = "streamingt2v_config"
STREAM_LAYOUTS = ("official", "vidxtend")
BASE_LAYOUTS = ("diffusers_unet", "modelscope_folder_unet")


def config_from_metadata(metadata: dict[str, str] | None) -> StreamingT2VConfig:
    """The architecture stored in a file's metadata, or the released full-size one."""
    text = (metadata or {}).get(CONFIG_METADATA_KEY)
    return StreamingT2VConfig.from_json(text) if text else StreamingT2VConfig.full()


def expected_layout(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


LAYOUT_WORDS = {
    "official": "the StreamingT2V checkpoint",
    "vidxtend": "the VidXTend repack of the StreamingT2V checkpoint",
    "vidxtend_unet": "only the StreamingT2V UNet (VidXTend unet/ file, without CAM, encoders and VAE)",
    "diffusers_unet": "a vanilla ModelScope T2V UNet (first chunk)",
    "modelscope_folder_unet": "a vanilla ModelScope T2V UNet folder (first chunk)",
}


def _read_expecting(path: str | os.PathLike, allowed: tuple[str, ...], what: str, hint: str):
    """`read_normalized`, then refuse any layout outside `allowed` with a sentence naming what the file is."""
    sd, info, layout = read_normalized(path)
    source = describe(info)
    if layout not in allowed:
        raise CheckpointLayoutError(f"{source} holds {LAYOUT_WORDS.get(layout, layout)}, not {what}; {hint}")
    return sd, info, layout, source


def _finish(module: nn.Module, source: str) -> None:
    leftovers = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftovers:
        raise CheckpointLayoutError(f"{source}: tensors were not materialised after loading: {leftovers[:5]}")
    module.eval().requires_grad_(False)


def load_stream_model(path: str | os.PathLike, *, image_encoder_path: str | os.PathLike | None = None,
                      dtype: torch.dtype = torch.float32) -> StreamModel:
    """Load the StreamingT2V stream-stage model (CAM, APM, fine-tuned UNet, text and image encoders, VAE).

    Weights are cast to `dtype` and stay on the CPU (the VAE stays float32: it decodes in float32). A file
    without `image_encoder.*` (VidXTend) needs `image_encoder_path` (OpenCLIP ViT-H-14 `open_clip_pytorch_model.bin`).
    Raises `CheckpointLayoutError` naming the file and the offending keys.
    """
    sd, info, layout, source = _read_expecting(
        path, STREAM_LAYOUTS, "the StreamingT2V stream model",
        "select streaming_t2v.ckpt (or its fp16 conversion / vidxtend.safetensors) here; a ModelScope UNet belongs "
        "in 'Load ModelScope T2V' / load_base_model")
    cfg = config_from_metadata(info.metadata)
    if image_encoder_path is not None:
        sd = {k: v for k, v in sd.items() if not k.startswith("image_encoder.")}
        sd.update(read_image_encoder(image_encoder_path))
    with torch.device("meta"):
        network = StreamingT2VNetwork(cfg, with_image_encoder=True)
    expected = expected_layout(network)
    check_strict(sd, expected, source=source, layout=layout)
    sd = fill_unused(sd, expected)
    vae = {k: v for k, v in sd.items() if k.startswith("vae.")}
    sd = cast_state_dict({k: v for k, v in sd.items() if k not in vae}, dtype)
    sd.update(cast_state_dict(vae, torch.float32))
    load_into(network, sd)
    _finish(network, source)
    logger.info("loaded StreamingT2V model from %s (%s layout, %s)", source, layout, dtype)
    return StreamModel(config=cfg, network=network, tokenizer=ClipTokenizer(), source=source, dtype=dtype)


def load_base_model(path: str | os.PathLike, *, shared: StreamModel,
                    dtype: torch.dtype = torch.float32) -> BaseModel:
    """Load the vanilla ModelScope T2V UNet (diffusers names; a `unet/` folder, a diffusers safetensors file or
    the pack's tiny file). Text encoder, tokenizer and VAE come from `shared`."""
    sd, info, layout, source = _read_expecting(
        path, BASE_LAYOUTS, "the vanilla ModelScope T2V UNet",
        "select text-to-video-ms-1.7b unet/diffusion_pytorch_model.safetensors here")
    file_cfg = config_from_metadata(info.metadata)
    if file_cfg.unet != shared.config.unet:
        raise CheckpointLayoutError(
            f"{source}: its UNet architecture does not match the StreamingT2V model {shared.source} "
            f"({json.dumps(file_cfg.to_dict()['unet'])} vs {json.dumps(shared.config.to_dict()['unet'])}); "
            f"use the ModelScope UNet that belongs to this StreamingT2V model")
    with torch.device("meta"):
        unet = build_vanilla_unet(shared.config.unet)
    check_strict(sd, expected_layout(unet), source=source, layout=layout)
    load_into(unet, cast_state_dict(sd, dtype))
    _finish(unet, source)
    logger.info("loaded ModelScope T2V UNet from %s (%s)", source, dtype)
    return BaseModel(unet=unet, shared=shared, source=source, dtype=dtype)
