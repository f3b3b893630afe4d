"""LDM (`ldm.models.autoencoder.AutoencoderKL`, SD 2.1 `first_stage_model.*`) -> diffusers `AutoencoderKL` names
(refine_stage.md §5.1), i.e. the names of `vae.Vae`.

| LDM                                           | diffusers                                                   |
|-----------------------------------------------|-------------------------------------------------------------|
| `encoder.down.{i}.block.{j}.*`                | `encoder.down_blocks.{i}.resnets.{j}.*`                     |
| `encoder.down.{i}.downsample.conv.*`          | `encoder.down_blocks.{i}.downsamplers.0.conv.*`             |
| `decoder.up.{i}.block.{j}.*`                  | `decoder.up_blocks.{n-1-i}.resnets.{j}.*` (reversed order)  |
| `decoder.up.{i}.upsample.conv.*`              | `decoder.up_blocks.{n-1-i}.upsamplers.0.conv.*`             |
| `...nin_shortcut.*`                           | `...conv_shortcut.*`                                        |
| `{encoder,decoder}.mid.block_{1,2}.*`         | `...mid_block.resnets.{0,1}.*`                              |
| `...mid.attn_1.{norm,q,k,v,proj_out}.*`       | `...mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}.*` (1x1 conv -> Linear) |
| `{encoder,decoder}.norm_out.*`                | `...conv_norm_out.*`                                        |
| `conv_in`, `conv_out`, `quant_conv`, `post_quant_conv` | unchanged                                          |

n = number of resolution levels (`len(ch_mult)`), read from the `decoder.up.{i}` indices.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from .config import VaeConfig

LDM_PREFIX = "first_stage_model."

_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_RESNET_PARTS = ("norm1", "conv1", "norm2", "conv2", "nin_shortcut")


class VaeNameError(KeyError):
    """A key that is not part of an LDM VAE state dict (the message names it)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


def _resnet_tail(tail: str, key: str) -> str:
    part, _, rest = tail.partition(".")
    if part not in _RESNET_PARTS or rest not in ("weight", "bias"):
        raise VaeNameError(f"unknown LDM VAE key {key!r} (resnet parameter {tail!r})")
    return ("conv_shortcut" if part == "nin_shortcut" else part) + "." + rest


def _mid(side: str, tail: str, key: str) -> str:
    m = re.fullmatch(r"block_([12])\.(.+)", tail)
    if m:
        return f"{side}.mid_block.resnets.{int(m.group(1)) - 1}.{_resnet_tail(m.group(2), key)}"
    m = re.fullmatch(r"attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", tail)
    if m:
        return f"{side}.mid_block.attentions.0.{_ATTN[m.group(1)]}.{m.group(2)}"
    raise VaeNameError(f"unknown LDM VAE key {key!r}")


def ldm_vae_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an LDM VAE state dict to diffusers / `vae.Vae` names.

    Args:
        sd: the VAE tensors with LDM names, either bare (`encoder.down.0.block.0.conv1.weight`) or all with the
            `first_stage_model.` prefix of an SD checkpoint (select those keys from a full checkpoint first).
    Returns:
        a new dict; tensors are shared, except the mid-block attention 1x1-conv weights `(c, c, 1, 1)`, which
        become `(c, c)` views.
    Raises:
        VaeNameError naming the first key that is not an LDM VAE name (also for attention inside the
        down/up levels, which `vae.Vae` does not have), or a key that maps onto a name already produced.
    """
    prefixed = [k for k in sd if k.startswith(LDM_PREFIX)]
    if prefixed and len(prefixed) != len(sd):
        other = next(k for k in sd if not k.startswith(LDM_PREFIX))
        raise VaeNameError(f"mixed VAE key names: {other!r} lacks the {LDM_PREFIX!r} prefix the others have")
    strip = len(LDM_PREFIX) if prefixed else 0
    bare = {k[strip:]: v for k, v in sd.items()}
    up_levels = {int(m.group(1)) for k in bare if (m := re.match(r"decoder\.up\.(\d+)\.", k))}
    n_levels = max(up_levels) + 1 if up_levels else 0
    out: dict[str, torch.Tensor] = {}
    for key, value in bare.items():
        new = _rename(key, n_levels)
        if new.endswith(".weight") and ".mid_block.attentions.0.to_" in new and value.dim() == 4:
            value = value.reshape(value.shape[0], value.shape[1])
        if new in out:
            raise VaeNameError(f"two LDM VAE keys map to {new!r} (second: {key!r})")
        out[new] = value
    return out


def _rename(key: str, n_levels: int) -> str:
    if re.fullmatch(r"(quant_conv|post_quant_conv)\.(weight|bias)", key):
        return key
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.(weight|bias)", key)
    if m:
        name = "conv_norm_out" if m.group(2) == "norm_out" else m.group(2)
        return f"{m.group(1)}.{name}.{m.group(3)}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.(.+)", key)
    if m:
        return _mid(m.group(1), m.group(2), key)
    m = re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.down_blocks.{m.group(1)}.resnets.{m.group(2)}.{_resnet_tail(m.group(3), key)}"
    m = re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.block\.(\d+)\.(.+)", key)
    if m:
        level = n_levels - 1 - int(m.group(1))
        return f"decoder.up_blocks.{level}.resnets.{m.group(2)}.{_resnet_tail(m.group(3), key)}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", key)
    if m:
        return f"decoder.up_blocks.{n_levels - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}"
    if re.fullmatch(r"(encoder\.down|decoder\.up)\.\d+\.attn\.\d+\..+", key):
        raise VaeNameError(
            f"LDM VAE key {key!r}: attention inside the resolution levels (attn_resolutions non-empty) is not "
            "supported; the SD 2.1 VAE has attention only in the mid blocks"
        )
    raise VaeNameError(f"unknown LDM VAE key {key!r}")


def vae_config_from_ldm(ddconfig: Mapping, embed_dim: int, scaling_factor: float = 0.18215) -> VaeConfig:
    """`VaeConfig` of the diffusers model equivalent to an LDM `AutoencoderKL(ddconfig, embed_dim)`.

    Widths `ch·ch_mult[i]`, `num_res_blocks` resnets per encoder level. LDM always uses 32 GroupNorm groups;
    the pack's trained toy refiner (docs/training.md) sets the extension key `norm_num_groups` in its embedded
    ddconfig. Raises ValueError for LDM settings `vae.Vae` cannot represent (attention inside levels, a single
    `z`, `embed_dim != z_channels`).
    """
    if list(ddconfig.get("attn_resolutions", [])):
        raise ValueError(f"LDM VAE with attn_resolutions {ddconfig['attn_resolutions']} is not supported")
    if not ddconfig.get("double_z", True):
        raise ValueError("LDM VAE with double_z = false is not supported (the encoder must output mean and logvar)")
    if int(ddconfig["z_channels"]) != int(embed_dim):
        raise ValueError(f"LDM VAE with z_channels {ddconfig['z_channels']} != embed_dim {embed_dim} is not supported")
    ch = int(ddconfig["ch"])
    return VaeConfig(
        in_channels=int(ddconfig.get("in_channels", 3)),
        out_channels=int(ddconfig.get("out_ch", 3)),
        block_out_channels=tuple(ch * int(m) for m in ddconfig["ch_mult"]),
        layers_per_block=int(ddconfig["num_res_blocks"]),
        latent_channels=int(embed_dim),
        norm_num_groups=int(ddconfig.get("norm_num_groups", 32)),
        scaling_factor=float(scaling_factor),
    )
