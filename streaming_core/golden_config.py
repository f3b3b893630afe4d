"""Reading a golden set's `config.json` (stream-stage contract) into the pack's configuration classes.

Nothing about a particular set is assumed: sizes, head widths, token counts, cases and timesteps all come
from the file, and derived values the file states explicitly are checked against what the classes derive.
"""
from __future__ import annotations

from typing import Any

from .config import ApmConfig, CamConfig, UNet3DConfig


def unet_config(cfg: dict[str, Any]) -> UNet3DConfig:
    u = cfg["unet"]
    out = UNet3DConfig(
        in_channels=u.get("in_channels", 4),
        out_channels=u.get("out_channels", 4),
        down_block_types=tuple(u["down_block_types"]),
        up_block_types=tuple(u["up_block_types"]),
        block_out_channels=tuple(u["block_out_channels"]),
        layers_per_block=u["layers_per_block"],
        attention_head_dim=u["attention_head_dim"],
        cross_attention_dim=u["cross_attention_dim"],
        norm_num_groups=u.get("norm_num_groups", 32),
        norm_eps=u.get("norm_eps", 1e-5),
        transformer_in_num_heads=u.get("transformer_in_num_heads", 8),
        transformer_in_head_dim=u.get("transformer_in_head_dim", u["attention_head_dim"]),
    )
    te = u.get("time_embedding", {})
    for key, derived in (("sinusoidal_dim", out.time_proj_dim), ("mlp_dim", out.time_embed_dim)):
        if key in te and te[key] != derived:
            raise ValueError(f"time_embedding.{key} = {te[key]} but the UNet derives {derived}")
    if te.get("flip_sin_to_cos", True) is not True or te.get("freq_shift", 0) != 0:
        raise ValueError("only flip_sin_to_cos=true, freq_shift=0 timestep features are implemented")
    if u.get("fps_conditioning", False):
        raise ValueError("fps conditioning is not part of the ModelScope stream stage")
    return out


def cam_config(cfg: dict[str, Any]) -> CamConfig:
    cam = cfg.get("cam", {})
    enc = cam.get("cond_encoder", {})
    inj = cfg.get("injectors", {})
    norm = inj.get("query_norm", {})
    return CamConfig(
        cond_embedding_channels=tuple(enc.get("block_out_channels", CamConfig.cond_embedding_channels)),
        num_cond_frames=cam.get("num_latent_frames", cfg.get("sampling", {}).get("num_condition_frames", 8)),
        injector_head_dim=inj.get("head_dim", 64),
        injector_norm_groups=norm.get("groups", 32),
        injector_norm_eps=norm.get("eps", 1e-6),
    )


def apm_config(cfg: dict[str, Any]) -> ApmConfig:
    apm = cfg.get("apm", {})
    res = cfg.get("resampler", {})
    mix_ln = apm.get("mix_layernorm", {})
    return ApmConfig(
        num_text_tokens=apm.get("num_text_tokens", 77),
        num_image_tokens=apm.get("num_image_tokens", res.get("num_tokens", 16)),
        image_embed_dim=res.get("in_dim", 1024),
        resampler_inner_dim=res.get("inner_dim", 1280),
        mix_kernel_size=apm.get("mix_conv", {}).get("kernel_size", 3),
        mix_ln_eps=mix_ln.get("eps", 1e-5),
    )
