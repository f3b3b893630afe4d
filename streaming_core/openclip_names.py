"""OpenCLIP text tower -> Hugging Face `CLIPTextModel` names (refine_stage.md §4.4), i.e. the names of
`text_encoder.ClipTextEncoder` (prefix `text_model.`).

| OpenCLIP (used)                                   | `ClipTextEncoder`                                            |
|---------------------------------------------------|--------------------------------------------------------------|
| `token_embedding.weight`                          | `text_model.embeddings.token_embedding.weight`               |
| `positional_embedding`                            | `text_model.embeddings.position_embedding.weight`            |
| `transformer.resblocks.{i}.ln_1.*`, i < layers    | `text_model.encoder.layers.{i}.layer_norm1.*`                |
| `...attn.in_proj_{weight,bias}` (3w rows)         | rows [0, w) -> `self_attn.q_proj`, [w, 2w) -> `k_proj`, [2w, 3w) -> `v_proj` |
| `...attn.out_proj.*`                              | `...self_attn.out_proj.*`                                    |
| `...ln_2.*`                                       | `...layer_norm2.*`                                           |
| `...mlp.c_fc.*`, `...mlp.c_proj.*`                | `...mlp.fc1.*`, `...mlp.fc2.*`                               |
| `ln_final.*`                                      | `text_model.final_layer_norm.*`                              |

Ignored: blocks `>= layers_used` (the penultimate-layer encoder skips the last block), `text_projection`,
`logit_scale`, `attn_mask`, every `visual.*` key. The OpenCLIP text tower uses exact (erf) GELU and a causal mask,
which is what `ClipTextEncoder` computes with `hidden_act="gelu"`.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from .config import TextEncoderConfig

IGNORED_TOP_LEVEL = ("text_projection", "logit_scale", "attn_mask")

_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_BLOCK_KEYS = ("ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
               "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
               "mlp.c_proj.weight", "mlp.c_proj.bias")


class OpenClipNameError(KeyError):
    """A missing or unknown OpenCLIP text key (the message names it)."""

    def __str__(self) -> str:
        return str(self.args[0])


def openclip_text_to_hf(sd: Mapping[str, torch.Tensor], layers_used: int) -> dict[str, torch.Tensor]:
    """Map an OpenCLIP state dict (full model or text part) to `ClipTextEncoder` names, keeping blocks
    `0 … layers_used − 1`.

    Args:
        sd: OpenCLIP names (`token_embedding.weight`, `transformer.resblocks.{i}.…`, `ln_final.*`, …).
        layers_used: how many residual blocks the encoder runs (23 of 24 for ViT-H-14's penultimate layer).
    Returns:
        a new dict with `text_model.*` names; q/k/v are row slices (views) of `in_proj_*`.
    Raises:
        OpenClipNameError naming missing keys (of the used blocks) or unknown keys; ValueError when
        `layers_used` exceeds the blocks present.
    """
    if layers_used < 1:
        raise ValueError(f"layers_used must be >= 1, got {layers_used}")
    out: dict[str, torch.Tensor] = {}
    blocks_present: set[int] = set()
    for key, value in sd.items():
        if key.startswith("visual.") or key in IGNORED_TOP_LEVEL:
            continue
        if key == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = value
        elif key in ("ln_final.weight", "ln_final.bias"):
            out["text_model.final_layer_norm." + key.split(".")[-1]] = value
        else:
            m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", key)
            if not m or m.group(2) not in _BLOCK_KEYS:
                raise OpenClipNameError(f"unknown OpenCLIP text key {key!r}")
            index, tail = int(m.group(1)), m.group(2)
            blocks_present.add(index)
            if index < layers_used:
                out.update(_block(index, tail, value))
    if blocks_present and max(blocks_present) + 1 < layers_used:
        raise ValueError(
            f"the OpenCLIP text tower has {max(blocks_present) + 1} blocks, {layers_used} requested"
        )
    required = ["token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias"]
    required += [f"transformer.resblocks.{i}.{t}" for i in range(layers_used) for t in _BLOCK_KEYS]
    missing = [k for k in required if k not in sd]
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise OpenClipNameError(f"OpenCLIP text state dict lacks {len(missing)} keys: {shown}")
    return out


def _block(index: int, tail: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    prefix = f"text_model.encoder.layers.{index}."
    if tail in ("attn.in_proj_weight", "attn.in_proj_bias"):
        if value.shape[0] % 3:
            raise ValueError(f"transformer.resblocks.{index}.{tail} has {value.shape[0]} rows, not 3·width")
        kind = "weight" if tail.endswith("weight") else "bias"
        q, k, v = value.chunk(3, dim=0)
        return {f"{prefix}self_attn.{n}_proj.{kind}": t for n, t in zip("qkv", (q, k, v))}
    module, _, kind = tail.rpartition(".")
    return {f"{prefix}{_BLOCK[module]}.{kind}": value}


def text_config_from_openclip(text_cfg: Mapping, layers_used: int | None = None) -> TextEncoderConfig:
    """`TextEncoderConfig` for an OpenCLIP `text_cfg` (`context_length`, `vocab_size`, `width`, `heads`,
    `layers`, optional `mlp_ratio`), running `layers_used` blocks (default `layers − 1`, the penultimate layer).

    Raises ValueError for OpenCLIP options `ClipTextEncoder` does not implement (layer scale, QuickGELU,
    no causal mask, a class token, attentional pooling with its own weights, …).
    """
    known = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
    allowed_defaults = {"ls_init_value": None, "quick_gelu": False, "no_causal_mask": False, "embed_cls": False,
                        "act_kwargs": None, "norm_kwargs": None, "proj_bias": False, "pad_id": 0,
                        "hf_model_name": None, "hf_tokenizer_name": None, "output_tokens": False,
                        "pool_type": "argmax", "proj_type": "linear", "final_ln_after_pool": False}
    for key, value in text_cfg.items():
        if key in known:
            continue
        if key in allowed_defaults:
            if value != allowed_defaults[key]:
                raise ValueError(f"OpenCLIP text_cfg {key} = {value!r} is not supported by the text encoder")
            continue
        raise ValueError(f"unknown OpenCLIP text_cfg field {key!r}")
    width, layers = int(text_cfg["width"]), int(text_cfg["layers"])
    used = layers - 1 if layers_used is None else int(layers_used)
    if not 1 <= used <= layers:
        raise ValueError(f"layers_used {used} outside 1 … {layers}")
    return TextEncoderConfig(
        vocab_size=int(text_cfg["vocab_size"]),
        hidden_size=width,
        intermediate_size=int(round(width * float(text_cfg.get("mlp_ratio", 4.0)))),
        num_hidden_layers=used,
        num_attention_heads=int(text_cfg["heads"]),
        max_position_embeddings=int(text_cfg["context_length"]),
        layer_norm_eps=1e-5,
        hidden_act="gelu",
    )
