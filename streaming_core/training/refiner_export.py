"""The trained toy refiner in the three MS-Vid2Vid-XL file formats (refine_stage.md §6.1), each carrying its
`RefinerConfig` like the pack's tiny refiner files, so `refiner_files.load_ms_vid2vid(unet, text, vae)` and the
refine nodes read them:

* `refiner_<name>_non_ema.pth`   - bare state dict, official UNet names (`non_ema_0035000.pth`)
* `refiner_<name>_open_clip.bin` - OpenCLIP text tower (the used blocks; `open_clip_pytorch_model.bin`)
* `refiner_<name>_sd21.ckpt`     - `{"state_dict": first_stage_model.*}` LDM VAE (`v2-1_512-ema-pruned.ckpt`)

`refiner_config_for` expresses the toy stream model's text encoder and VAE in the official vocabulary (OpenCLIP
`text_cfg`, LDM `ddconfig`); the refiner shares them, as the full-size refiner shares nothing but could.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from ..config import StreamingT2VConfig
from ..refiner_files import diffusers_vae_to_ldm
from ..refiner_model import REFINER_CONFIG_KEY, RefinerConfig
from ..refiner_names import internal_to_official, official_sort_key
from ..text_encoder import ClipTextEncoder
from ..unet3d import UNet3D
from ..vae import Vae

_HF_BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def refiner_config_for(cfg: StreamingT2VConfig, unet: dict, native: tuple[int, int]) -> RefinerConfig:
    """RefinerConfig whose text tower and VAE are the stream model's (ValueError if they cannot be expressed:
    OpenCLIP needs exact GELU and eps 1e-5, the LDM VAE widths ch·mult). A GroupNorm group count other than
    LDM's 32 goes into the ddconfig extension key `norm_num_groups` (read by `vae_names.vae_config_from_ldm`)."""
    te, v = cfg.text_encoder, cfg.vae
    if te.hidden_act != "gelu" or te.layer_norm_eps != 1e-5:
        raise ValueError(f"text encoder {te} is not an OpenCLIP text tower (needs gelu, eps 1e-5)")
    ch = v.block_out_channels[0]
    if any(c % ch for c in v.block_out_channels):
        raise ValueError(f"VAE {v} cannot be written with LDM names (needs widths ch·mult)")
    text = {"context_length": te.max_position_embeddings, "vocab_size": te.vocab_size, "width": te.hidden_size,
            "heads": te.num_attention_heads, "layers": te.num_hidden_layers + 1,
            "mlp_ratio": te.intermediate_size / te.hidden_size}
    ddconfig = {"double_z": True, "z_channels": v.latent_channels, "resolution": cfg.sample_size,
                "in_channels": v.in_channels, "out_ch": v.out_channels, "ch": ch,
                "ch_mult": [c // ch for c in v.block_out_channels], "num_res_blocks": v.layers_per_block,
                "attn_resolutions": [], "dropout": 0.0}
    if v.norm_num_groups != 32:
        ddconfig["norm_num_groups"] = v.norm_num_groups
    return RefinerConfig(unet=dict(unet), text=text, vae_ddconfig=ddconfig, vae_embed_dim=v.latent_channels,
                         native_height=native[0], native_width=native[1])


def hf_text_to_openclip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`ClipTextEncoder` names -> OpenCLIP text names (the inverse of `openclip_names.openclip_text_to_hf`)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        rest = key.removeprefix("text_model.")
        if rest == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif rest == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif rest.startswith("final_layer_norm."):
            out["ln_final." + rest.rsplit(".", 1)[1]] = value
        else:
            _, _, index, tail = rest.split(".", 3)  # encoder.layers.<i>.<tail>
            module, _, kind = tail.rpartition(".")
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((int(index), kind), {})[module[-6]] = value
            else:
                out[f"transformer.resblocks.{index}.{_HF_BLOCK[module]}.{kind}"] = value
    for (index, kind), parts in sorted(qkv.items()):
        out[f"transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _with_config(sd: dict[str, torch.Tensor], cfg: RefinerConfig, dtype: torch.dtype = torch.float32) -> OrderedDict:
    out = OrderedDict((k, v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous())
                      for k, v in sd.items())
    setattr(out, REFINER_CONFIG_KEY, cfg.to_json())
    return out


def refiner_paths(folder: Path, name: str) -> dict[str, Path]:
    folder = Path(folder)
    return {"unet": folder / f"refiner_{name}_non_ema.pth", "text": folder / f"refiner_{name}_open_clip.bin",
            "vae": folder / f"refiner_{name}_sd21.ckpt"}


def write_refiner_files(folder: Path, name: str, cfg: RefinerConfig, unet: UNet3D, text: ClipTextEncoder,
                        vae: Vae, dtype: torch.dtype = torch.float32) -> dict[str, Path]:
    """Write the three files (floating tensors in `dtype`; the loader casts); returns their paths by role."""
    paths = refiner_paths(folder, name)
    Path(folder).mkdir(parents=True, exist_ok=True)
    official = internal_to_official(unet.state_dict())
    unet_sd = {k: official[k] for k in sorted(official, key=official_sort_key)}
    vae_sd = {"first_stage_model." + k: v for k, v in diffusers_vae_to_ldm(vae.state_dict()).items()}
    text_sd = hf_text_to_openclip(text.state_dict())
    payloads = {"unet": _with_config(unet_sd, cfg, dtype), "text": _with_config(text_sd, cfg, dtype),
                "vae": {"state_dict": _with_config(vae_sd, cfg, dtype)}}
    for key, path in paths.items():
        tmp = path.with_suffix(".tmp")
        torch.save(payloads[key], tmp)
        tmp.replace(path)
    return paths
