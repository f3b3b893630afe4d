"""Tiny random refiner files in the official formats, for tests and CPU smoke runs (refine_stage.md §6.1, §16).

    python -m streaming_core.tiny_refiner <dir> [--seed 0]

writes into `<dir>`:

| file | format (like) | content |
|---|---|---|
| `refiner_tiny_non_ema.pth` | `non_ema_0035000.pth`: zip pickle, bare `OrderedDict`, official names | MS-Vid2Vid-XL UNet |
| `refiner_tiny_open_clip.bin` | `open_clip_pytorch_model.bin`: zip pickle, full OpenCLIP model | `visual.*` + text tower of 3 blocks |
| `refiner_tiny_sd21.ckpt` | `v2-1_512-ema-pruned.ckpt`: Lightning checkpoint, protocol 2 | `first_stage_model.*` (the VAE) plus a few SD UNet / text / EMA tensors, a `callbacks` entry keyed by Lightning's `ModelCheckpoint` class, NumPy scalars and bytes (`_codecs.encode`) |
| `refiner_tiny_t2v_diffusers/` | a diffusers `TextToVideoSDPipeline` folder | `unet/`, `text_encoder/`, `vae/`, `scheduler/`, `model_index.json` (no `tokenizer/`: not read) |

The three MS-Vid2Vid-XL files carry their `RefinerConfig` (`TINY_REFINER_CONFIG`) as the attribute
`streamingt2v_refiner_config` of the pickled state-dict `OrderedDict`, so `refiner_files.load_ms_vid2vid` reads
them like the full-size files; the diffusers folder marks its UNet config `_streamingt2v_tiny` (sizes may differ
from ModelScope) and `_streamingt2v_native_size`. Weights are deterministic for a seed, untrained.

The Lightning class and the `numpy.core.multiarray.scalar` / `numpy.dtype` globals are written by a pickler that
emits those names for local stand-in classes; nothing is registered in `sys.modules` and nothing of this is
needed (or allowed) when loading.
"""
from __future__ import annotations

import argparse
import json
import pickle
import struct
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .config import TextEncoderConfig
from .refiner_files import (diffusers_vae_to_ldm, refiner_unet_config, unet3d_config_from_diffusers,
                            vae_config_from_diffusers)
from .refiner_model import REFINER_CONFIG_KEY, RefinerConfig
from .refiner_names import build_refiner_unet, internal_to_official, official_sort_key
from .text_encoder import ClipTextEncoder
from .tiny_default import random_state_dict
from .unet3d import UNet3D
from .vae import Vae
from .vae_names import LDM_PREFIX, vae_config_from_ldm

UNET_FILE = "refiner_tiny_non_ema.pth"
TEXT_FILE = "refiner_tiny_open_clip.bin"
VAE_FILE = "refiner_tiny_sd21.ckpt"
DIFFUSERS_FOLDER = "refiner_tiny_t2v_diffusers"

#: The tiny MS-Vid2Vid-XL architecture: UNet widths 32/64/32/32 (attention at the first three levels, like the
#: golden set), context 32; OpenCLIP text tower of width 32 with 3 blocks (2 used); 2-level VAE (factor 2).
#: Native frame 20 x 32 pixels = latent 10 x 16 (h = 2 mod 8, w = 0 mod 8, §3.4): the smallest legal size,
#: so the pipeline tests stay fast on a CPU.
TINY_REFINER_CONFIG = RefinerConfig(
    unet={"in_dim": 4, "dim": 32, "y_dim": 32, "context_dim": 32, "out_dim": 4, "dim_mult": [1, 2, 1, 1],
          "num_heads": 4, "head_dim": 16, "num_res_blocks": 2, "attn_scales": [1.0, 0.5, 0.25]},
    text={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3},
    vae_ddconfig={"double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
                  "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0},
    vae_embed_dim=4,
    native_height=20,
    native_width=32,
)

_UNET3D_BLOCKS = {
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
}
#: `unet/config.json` of the tiny diffusers folder (ModelScope structure, tiny sizes).
TINY_DIFFUSERS_UNET: dict[str, Any] = {
    "_class_name": "UNet3DConditionModel", "_diffusers_version": "0.30.0", "act_fn": "silu",
    "attention_head_dim": 16, "block_out_channels": [32, 32, 32, 32], "cross_attention_dim": 32,
    **_UNET3D_BLOCKS, "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "sample_size": 20, "_streamingt2v_tiny": True, "_streamingt2v_native_size": [16, 32],
}
TINY_DIFFUSERS_TEXT: dict[str, Any] = {
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": 32,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
    "vocab_size": 49408, "hidden_act": "gelu", "layer_norm_eps": 1e-05, "projection_dim": 32,
    "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 0, "torch_dtype": "float32",
}
TINY_DIFFUSERS_VAE: dict[str, Any] = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.30.0", "act_fn": "silu",
    "block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2, "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "layers_per_block": 1, "norm_num_groups": 32, "sample_size": 64, "scaling_factor": 0.18215,
}
TINY_DIFFUSERS_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.30.0", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "set_alpha_to_one": False, "steps_offset": 1,
}
TINY_DIFFUSERS_INDEX: dict[str, Any] = {
    "_class_name": "TextToVideoSDPipeline", "_diffusers_version": "0.30.0",
    "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet3DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


# --------------------------------------------------------------------------------------------------------------
# Writing pickles that name foreign globals (write side only)
# --------------------------------------------------------------------------------------------------------------


def _stand_in(dotted: str) -> type:
    """A local class the pickler below writes as the global `dotted` (e.g. numpy.core.multiarray.scalar)."""
    module, _, name = dotted.rpartition(".")
    return type(name, (), {"__pickle_global__": (module, name)})


ModelCheckpointStandIn = _stand_in("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint")
_NumpyScalarGlobal = _stand_in("numpy.core.multiarray.scalar")
_NumpyDtypeGlobal = _stand_in("numpy.dtype")


class _LegacyFloat64Dtype:
    """Pickles as `numpy.dtype('f8', False, True)` + its state, as NumPy < 2 writes it."""

    def __reduce__(self):
        return (_NumpyDtypeGlobal, ("f8", False, True), (3, "<", None, None, None, -1, -1, 0))


class LegacyNumpyFloat64:
    """Pickles as `numpy.core.multiarray.scalar(dtype('f8'), <8 bytes>)` (the NumPy < 2 module path); the bytes
    become `_codecs.encode(..., 'latin1')` under pickle protocol 2."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def __reduce__(self):
        return (_NumpyScalarGlobal, (_LegacyFloat64Dtype(), struct.pack("<d", self.value)))


class _StandInPickler(pickle._Pickler):  # the pure-Python pickler: its save_global can be overridden
    def save_global(self, obj, name=None):
        target = obj.__dict__.get("__pickle_global__") if isinstance(obj, type) else None
        if target is None:
            return super().save_global(obj, name)
        module, qualname = target
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("utf-8"))
        self.memoize(obj)


_STAND_IN_PICKLE_MODULE = types.SimpleNamespace(Pickler=_StandInPickler, __name__="stand_in_pickle")


def save_with_stand_ins(obj: Any, path: str | Path) -> None:
    """`torch.save` (zip format, pickle protocol 2, like Lightning 1.x) through the stand-in pickler."""
    torch.save(obj, str(path), pickle_module=_STAND_IN_PICKLE_MODULE, pickle_protocol=2)


# --------------------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------------------


def _with_config(sd: dict[str, torch.Tensor], cfg: RefinerConfig) -> OrderedDict:
    out = OrderedDict(sd)
    setattr(out, REFINER_CONFIG_KEY, cfg.to_json())  # pickled as the OrderedDict's BUILD state
    return out


def openclip_text_layout(text_cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of an OpenCLIP text tower with every block (`text_cfg["layers"]`), projection and scale."""
    w, n, ctx, vocab = int(text_cfg["width"]), int(text_cfg["layers"]), int(text_cfg["context_length"]), \
        int(text_cfg["vocab_size"])
    hidden = int(round(w * float(text_cfg.get("mlp_ratio", 4.0))))
    layout = [("positional_embedding", (ctx, w)), ("text_projection", (w, w)), ("logit_scale", ()),
              ("token_embedding.weight", (vocab, w))]
    for i in range(n):
        p = f"transformer.resblocks.{i}."
        layout += [(p + "ln_1.weight", (w,)), (p + "ln_1.bias", (w,)), (p + "attn.in_proj_weight", (3 * w, w)),
                   (p + "attn.in_proj_bias", (3 * w,)), (p + "attn.out_proj.weight", (w, w)),
                   (p + "attn.out_proj.bias", (w,)), (p + "ln_2.weight", (w,)), (p + "ln_2.bias", (w,)),
                   (p + "mlp.c_fc.weight", (hidden, w)), (p + "mlp.c_fc.bias", (hidden,)),
                   (p + "mlp.c_proj.weight", (w, hidden)), (p + "mlp.c_proj.bias", (w,))]
    layout += [("ln_final.weight", (w,)), ("ln_final.bias", (w,))]
    return layout


def _openclip_visual_layout(embed_dim: int, width: int = 16, patch: int = 4, grid: int = 2) -> list:
    """A small OpenCLIP image tower (one block) so the file looks like a full OpenCLIP model."""
    p = "visual.transformer.resblocks.0."
    return [("visual.class_embedding", (width,)), ("visual.positional_embedding", (grid * grid + 1, width)),
            ("visual.proj", (width, embed_dim)), ("visual.conv1.weight", (width, 3, patch, patch)),
            ("visual.ln_pre.weight", (width,)), ("visual.ln_pre.bias", (width,)),
            (p + "ln_1.weight", (width,)), (p + "ln_1.bias", (width,)), (p + "attn.in_proj_weight", (3 * width, width)),
            (p + "attn.in_proj_bias", (3 * width,)), (p + "attn.out_proj.weight", (width, width)),
            (p + "attn.out_proj.bias", (width,)), (p + "ln_2.weight", (width,)), (p + "ln_2.bias", (width,)),
            (p + "mlp.c_fc.weight", (4 * width, width)), (p + "mlp.c_fc.bias", (4 * width,)),
            (p + "mlp.c_proj.weight", (width, 4 * width)), (p + "mlp.c_proj.bias", (width,)),
            ("visual.ln_post.weight", (width,)), ("visual.ln_post.bias", (width,))]


def _shapes(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def tiny_official_state_dicts(seed: int = 0, cfg: RefinerConfig = TINY_REFINER_CONFIG) -> dict[str, dict]:
    """Random tensors of the three MS-Vid2Vid-XL files: {"unet": official UNet names, "text": OpenCLIP names
    (full tower, visual.* included), "vae": bare LDM VAE names}."""
    unet = build_refiner_unet(refiner_unet_config(cfg), "meta")
    official = internal_to_official(random_state_dict(_shapes(unet), seed))
    unet_sd = {k: official[k].contiguous() for k in sorted(official, key=official_sort_key)}
    text_layout = _openclip_visual_layout(int(cfg.text["width"])) + openclip_text_layout(cfg.text)
    text_sd = random_state_dict(text_layout, seed + 1)
    with torch.device("meta"):
        vae = Vae(vae_config_from_ldm(cfg.vae_ddconfig, cfg.vae_embed_dim))
    vae_sd = {k: v.contiguous() for k, v in diffusers_vae_to_ldm(random_state_dict(_shapes(vae), seed + 2)).items()}
    return {"unet": unet_sd, "text": text_sd, "vae": vae_sd}


# --------------------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------------------


def _write_sd21_ckpt(vae_ldm: dict[str, torch.Tensor], cfg: RefinerConfig, path: Path, seed: int) -> None:
    """An SD-2.1-style Lightning checkpoint around the VAE tensors."""
    g = torch.Generator().manual_seed(seed + 3)
    state: dict[str, torch.Tensor] = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3, generator=g),
        "model.diffusion_model.input_blocks.0.0.bias": torch.zeros(8),
        "cond_stage_model.model.ln_final.weight": torch.ones(8),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(35000, dtype=torch.int32),  # -> torch.IntStorage, as in the card
    }
    state.update({LDM_PREFIX + k: v for k, v in vae_ldm.items()})
    checkpoint = {
        "epoch": 6,
        "global_step": 35000,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": _with_config(state, cfg),
        "callbacks": {
            ModelCheckpointStandIn: {
                "monitor": None,
                "best_model_score": LegacyNumpyFloat64(0.125),   # numpy.core.multiarray.scalar + numpy.dtype
                "current_score": np.float64(0.25),               # the NumPy >= 2 path numpy._core.multiarray.scalar
                "best_model_path": "",
                "dirpath": "/checkpoints",
                "fingerprint": b"\x00\x01sd21",                  # bytes -> _codecs.encode under protocol 2
            }
        },
    }
    save_with_stand_ins(checkpoint, path)


def write_tiny_diffusers_folder(folder: Path, seed: int = 0) -> Path:
    """The tiny diffusers UNet3D text-to-video folder (safetensors weights, JSON configs)."""
    for sub in ("unet", "text_encoder", "vae", "scheduler"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    unet_cfg = unet3d_config_from_diffusers(TINY_DIFFUSERS_UNET, allow_sizes=True)
    text_cfg = TextEncoderConfig(
        vocab_size=TINY_DIFFUSERS_TEXT["vocab_size"], hidden_size=TINY_DIFFUSERS_TEXT["hidden_size"],
        intermediate_size=TINY_DIFFUSERS_TEXT["intermediate_size"],
        num_hidden_layers=TINY_DIFFUSERS_TEXT["num_hidden_layers"],
        num_attention_heads=TINY_DIFFUSERS_TEXT["num_attention_heads"], hidden_act="gelu")
    with torch.device("meta"):
        unet = UNet3D(unet_cfg, streaming=False)
        text = ClipTextEncoder(text_cfg)
        vae = Vae(vae_config_from_diffusers(TINY_DIFFUSERS_VAE, "tiny"))
    meta = {"format": "pt"}
    save_file(random_state_dict(_shapes(unet), seed + 10), str(folder / "unet" / "diffusion_pytorch_model.safetensors"),
              metadata=meta)
    save_file(random_state_dict(_shapes(text), seed + 11), str(folder / "text_encoder" / "model.safetensors"),
              metadata=meta)
    save_file(random_state_dict(_shapes(vae), seed + 12), str(folder / "vae" / "diffusion_pytorch_model.safetensors"),
              metadata=meta)
    for rel, data in (("unet/config.json", TINY_DIFFUSERS_UNET), ("text_encoder/config.json", TINY_DIFFUSERS_TEXT),
                      ("vae/config.json", TINY_DIFFUSERS_VAE), ("scheduler/scheduler_config.json",
                                                                TINY_DIFFUSERS_SCHEDULER),
                      ("model_index.json", TINY_DIFFUSERS_INDEX)):
        (folder / rel).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return folder


def write_tiny_refiner(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write every tiny refiner file into `folder` (created if needed).

    Returns {"unet": .pth, "text": .bin, "vae": .ckpt, "diffusers_folder": folder}; the first three go to
    `load_ms_vid2vid(unet, text, vae)`, the folder to `load_diffusers_refiner`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = TINY_REFINER_CONFIG
    parts = tiny_official_state_dicts(seed, cfg)
    paths = {"unet": folder / UNET_FILE, "text": folder / TEXT_FILE, "vae": folder / VAE_FILE,
             "diffusers_folder": folder / DIFFUSERS_FOLDER}
    torch.save(_with_config(parts["unet"], cfg), str(paths["unet"]))
    torch.save(_with_config(parts["text"], cfg), str(paths["text"]))
    _write_sd21_ckpt(parts["vae"], cfg, paths["vae"], seed)
    write_tiny_diffusers_folder(paths["diffusers_folder"], seed)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streaming_core.tiny_refiner",
                                     description="Write tiny random refiner files in the official formats.")
    parser.add_argument("folder", type=Path, help="destination, e.g. ComfyUI/models/streamingt2v/refiner_tiny")
    parser.add_argument("--seed", type=int, default=0)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    paths = write_tiny_refiner(args.folder, args.seed)
    for key, path in paths.items():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        print(f"{key}: {path} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
