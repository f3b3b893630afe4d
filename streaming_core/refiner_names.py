"""MS-Vid2Vid-XL refiner UNet (`Vid2VidSDUNet`): official configuration and key names <-> this package's
`UNet3D` (refine_stage.md §3, Appendix A).

The refiner is the ModelScope UNet3D with the `ms_vid2vid` resampler geometry, so one module serves both; only
the names differ:

| official (refiner) name                                   | internal (diffusers) name                            |
|-----------------------------------------------------------|------------------------------------------------------|
| `time_embed.{0,2}.*`                                      | `time_embedding.linear_{1,2}.*`                      |
| `input_blocks.0.0.*`, `input_blocks.0.1.*`                | `conv_in.*`, `transformer_in.*`                      |
| `input_blocks.{n}.0.{in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection}.*` | `down_blocks.{L}.resnets.{j}.{norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut}.*` |
| `input_blocks.{n}.0.temopral_conv.*` (sic)                | `down_blocks.{L}.temp_convs.{j}.*`                   |
| `input_blocks.{n}.1.*`, `input_blocks.{n}.2.*`            | `down_blocks.{L}.attentions.{j}.*`, `…temp_attentions.{j}.*` |
| `input_blocks.{n}.op.*` (n = (L+1)·(r+1))                 | `down_blocks.{L}.downsamplers.0.conv.*`              |
| `middle_block.{0,3}.*` / `.1.*` / `.2.*`                  | `mid_block.resnets.{0,1}` + `temp_convs.{0,1}` / `attentions.0` / `temp_attentions.0` |
| `output_blocks.{n}.0.*`, `.1.*`, `.2.*`                   | `up_blocks.{U}.resnets.{j}` + `temp_convs.{j}`, `attentions.{j}`, `temp_attentions.{j}` |
| `output_blocks.{n}.{1 or 3}.conv.*` (last block of a level) | `up_blocks.{U}.upsamplers.0.conv.*`                |
| `out.0.*`, `out.2.*`                                      | `conv_norm_out.*`, `conv_out.*`                      |

with r = `num_res_blocks` (2), encoder block n ≥ 1 at level L = (n−1) div (r+1), layer j = (n−1) mod (r+1),
decoder block n at up-level U = n div (r+1), layer j = n mod (r+1). Temporal transformers' `proj_in`/`proj_out`
weights are 1x1 Conv1d `(m, c, 1)` officially and Linear `(m, c)` internally. Everything inside transformers
keeps its name.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from .config import UNet3DConfig
from .unet3d import UNet3D

OFFICIAL_DEFAULTS: dict[str, Any] = {
    "in_dim": 4, "dim": 320, "y_dim": 1024, "context_dim": 1024, "out_dim": 4, "dim_mult": [1, 2, 4, 4],
    "num_heads": 8, "head_dim": 64, "num_res_blocks": 2, "attn_scales": [1.0, 0.5, 0.25],
    "use_scale_shift_norm": True, "dropout": 0.1, "temporal_attn_times": 1, "temporal_attention": True,
    "use_checkpoint": True, "use_image_dataset": False, "use_fps_condition": False, "use_sim_mask": False,
    "training": False, "inpainting": True,
}
# Arguments without effect on the inference computation (every ResBlock is built without scale-shift norm;
# dropout/checkpointing are training-only; `inpainting` and `training` change nothing in the forward).
_IGNORED = {"use_scale_shift_norm", "dropout", "use_checkpoint", "training", "inpainting"}
# Arguments that must keep one value because the module implements only that behaviour.
_REQUIRED = {"use_fps_condition": False, "use_image_dataset": False, "use_sim_mask": False,
             "temporal_attention": True, "temporal_attn_times": 1}
DECODER_CONTEXT_DIM = 1024  # the official decoder's spatial transformers hard-code this width


class RefinerKeyError(KeyError):
    """A key that is not part of the refiner UNet naming, or two keys mapping to one name."""

    def __str__(self) -> str:
        return str(self.args[0])


def official_unet_config(d: Mapping[str, Any]) -> UNet3DConfig:
    """`UNet3DConfig` (geometry `ms_vid2vid`) equivalent to `Vid2VidSDUNet(**d)`; omitted arguments take the
    official constructor defaults (so `{}` gives the full-size refiner).

    Level l has spatial + temporal transformers when 1/2^l is in `attn_scales`; the first temporal transformer
    is `num_heads` heads of `head_dim`. Raises ValueError naming the argument for unknown arguments and for
    settings the module does not implement (fps conditioning, image-dataset mode, similarity mask, no temporal
    attention, repeated temporal attention, a context width other than 1024, `y_dim != context_dim`).
    """
    unknown = sorted(set(d) - set(OFFICIAL_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown Vid2VidSDUNet arguments {unknown}")
    a = {**OFFICIAL_DEFAULTS, **d}
    for key, value in _REQUIRED.items():
        if a[key] != value:
            raise ValueError(f"Vid2VidSDUNet argument {key} = {a[key]!r} is not supported (only {value!r})")
    if int(a["context_dim"]) != DECODER_CONTEXT_DIM:
        raise ValueError(f"context_dim = {a['context_dim']} is not supported: the official decoder's spatial "
                         f"transformers hard-code {DECODER_CONTEXT_DIM}")
    if int(a["y_dim"]) != int(a["context_dim"]):
        raise ValueError(f"y_dim = {a['y_dim']} differs from context_dim = {a['context_dim']}; not supported")
    dim, mult, head_dim = int(a["dim"]), [int(m) for m in a["dim_mult"]], int(a["head_dim"])
    if not mult:
        raise ValueError("dim_mult is empty")
    widths = tuple(dim * m for m in mult)
    scales = [float(s) for s in a["attn_scales"]]
    attn = [2.0 ** -level in scales for level in range(len(widths))]
    stray = [s for s in scales if s not in [2.0 ** -level for level in range(len(widths))]]
    if stray:
        raise ValueError(f"attn_scales {stray} match no resolution level (levels have scales 1, 1/2, …)")
    for level, (width, has_attn) in enumerate(zip(widths, attn)):
        if width % 32:
            raise ValueError(f"level {level} width {width} is not a multiple of the 32 GroupNorm groups")
        if has_attn and width % head_dim:
            raise ValueError(f"level {level} width {width} is not a multiple of head_dim {head_dim}")
    if widths[-1] % head_dim:
        raise ValueError(f"middle width {widths[-1]} is not a multiple of head_dim {head_dim}")
    return UNet3DConfig(
        in_channels=int(a["in_dim"]),
        out_channels=int(a["out_dim"]),
        down_block_types=tuple("CrossAttnDownBlock3D" if x else "DownBlock3D" for x in attn),
        up_block_types=tuple("CrossAttnUpBlock3D" if x else "UpBlock3D" for x in reversed(attn)),
        block_out_channels=widths,
        layers_per_block=int(a["num_res_blocks"]),
        attention_head_dim=head_dim,
        cross_attention_dim=int(a["context_dim"]),
        transformer_in_num_heads=int(a["num_heads"]),
        transformer_in_head_dim=head_dim,
        resampler_geometry="ms_vid2vid",
    )


# -- name pieces ----------------------------------------------------------------------------------------------

_RES_OFFICIAL_TO_INTERNAL = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                             "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_RES_INTERNAL_TO_OFFICIAL = {v: k for k, v in _RES_OFFICIAL_TO_INTERNAL.items()}
_PARAM = r"(weight|bias)"
_TEMP_CONV_TAIL = re.compile(r"(conv1\.[02]|conv[234]\.[03])\." + _PARAM)
_TRANSFORMER_TAIL = re.compile(
    r"(norm|proj_in|proj_out)\.(weight|bias)"
    r"|transformer_blocks\.\d+\.(attn[12]\.to_[qkv]\.weight|attn[12]\.to_out\.0\.(weight|bias)"
    r"|ff\.net\.0\.proj\.(weight|bias)|ff\.net\.2\.(weight|bias)|norm[123]\.(weight|bias))"
)


def _resnet_to_internal(tail: str, container: str, j: int, key: str) -> str:
    """`tail` after `…{n}.0.` -> internal name in `container` (e.g. `down_blocks.1`)."""
    if tail.startswith("temopral_conv."):
        rest = tail[len("temopral_conv."):]
        if _TEMP_CONV_TAIL.fullmatch(rest):
            return f"{container}.temp_convs.{j}.{rest}"
    else:
        module, _, param = tail.rpartition(".")
        if module in _RES_OFFICIAL_TO_INTERNAL and param in ("weight", "bias"):
            return f"{container}.resnets.{j}.{_RES_OFFICIAL_TO_INTERNAL[module]}.{param}"
    raise RefinerKeyError(f"unknown refiner UNet key {key!r}")


def _resnet_to_official(kind: str, tail: str, prefix: str, key: str) -> str:
    """`prefix`: the official ResBlock module (`input_blocks.4.0`, `middle_block.3`, …)."""
    if kind == "temp_convs":
        if _TEMP_CONV_TAIL.fullmatch(tail):
            return f"{prefix}.temopral_conv.{tail}"
    else:
        module, _, param = tail.rpartition(".")
        if module in _RES_INTERNAL_TO_OFFICIAL and param in ("weight", "bias"):
            return f"{prefix}.{_RES_INTERNAL_TO_OFFICIAL[module]}.{param}"
    raise RefinerKeyError(f"unknown internal UNet key {key!r}")


def _transformer(tail: str, key: str, internal: bool) -> str:
    if not _TRANSFORMER_TAIL.fullmatch(tail):
        raise RefinerKeyError(f"unknown {'internal' if internal else 'refiner'} UNet key {key!r}")
    return tail


def _layers_from_official(keys) -> int:
    ops = sorted(int(m.group(1)) for k in keys if (m := re.fullmatch(r"input_blocks\.(\d+)\.op\.weight", k)))
    if ops:
        return ops[0] - 1
    outs = [int(m.group(1)) for k in keys if (m := re.match(r"output_blocks\.(\d+)\.", k))]
    return max(outs) if outs else 2  # one level: its r+1 decoder blocks are all there is


def _layers_from_internal(keys) -> int:
    res = [int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))]
    return max(res) + 1 if res else 2


def _temporal_to_internal(name: str, value: torch.Tensor, key: str) -> torch.Tensor:
    if name.endswith((".proj_in.weight", ".proj_out.weight")) or name in ("proj_in.weight", "proj_out.weight"):
        if value.dim() != 3 or value.shape[-1] != 1:
            raise ValueError(f"{key}: expected a 1x1 Conv1d weight (m, c, 1), got shape {tuple(value.shape)}")
        return value.reshape(value.shape[0], value.shape[1])
    return value


def _temporal_to_official(name: str, value: torch.Tensor, key: str) -> torch.Tensor:
    if name.endswith((".proj_in.weight", ".proj_out.weight")):
        if value.dim() != 2:
            raise ValueError(f"{key}: expected a Linear weight (m, c), got shape {tuple(value.shape)}")
        return value.reshape(value.shape[0], value.shape[1], 1)
    return value


# -- official -> internal -------------------------------------------------------------------------------------

def official_name_to_internal(key: str, layers_per_block: int = 2) -> tuple[str, bool]:
    """(internal name, is-temporal-transformer) of one official refiner key; RefinerKeyError if unknown."""
    r1 = layers_per_block + 1
    m = re.fullmatch(r"time_embed\.([02])\." + _PARAM, key)
    if m:
        return f"time_embedding.linear_{1 if m.group(1) == '0' else 2}.{m.group(2)}", False
    m = re.fullmatch(r"out\.([02])\." + _PARAM, key)
    if m:
        return f"{'conv_norm_out' if m.group(1) == '0' else 'conv_out'}.{m.group(2)}", False
    m = re.fullmatch(r"input_blocks\.0\.0\." + _PARAM, key)
    if m:
        return f"conv_in.{m.group(1)}", False
    m = re.fullmatch(r"input_blocks\.0\.1\.(.+)", key)
    if m:
        return "transformer_in." + _transformer(m.group(1), key, False), True
    m = re.fullmatch(r"input_blocks\.(\d+)\.(op|\d+)\.(.+)", key)
    if m and int(m.group(1)) >= 1:
        n = int(m.group(1))
        level, j = divmod(n - 1, r1)
        container = f"down_blocks.{level}"
        if m.group(2) == "op":
            if j == layers_per_block and re.fullmatch(_PARAM, m.group(3)):
                return f"{container}.downsamplers.0.conv.{m.group(3)}", False
        elif j < layers_per_block:
            sub, tail = int(m.group(2)), m.group(3)
            if sub == 0:
                return _resnet_to_internal(tail, container, j, key), False
            if sub in (1, 2):
                kind = "attentions" if sub == 1 else "temp_attentions"
                return f"{container}.{kind}.{j}.{_transformer(tail, key, False)}", sub == 2
        raise RefinerKeyError(f"unknown refiner UNet key {key!r}")
    m = re.fullmatch(r"middle_block\.([0-3])\.(.+)", key)
    if m:
        sub, tail = int(m.group(1)), m.group(2)
        if sub in (0, 3):
            return _resnet_to_internal(tail, "mid_block", 0 if sub == 0 else 1, key), False
        kind = "attentions" if sub == 1 else "temp_attentions"
        return f"mid_block.{kind}.0.{_transformer(tail, key, False)}", sub == 2
    m = re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        up, j = divmod(int(m.group(1)), r1)
        sub, tail = int(m.group(2)), m.group(3)
        container = f"up_blocks.{up}"
        if sub in (1, 3) and tail in ("conv.weight", "conv.bias"):
            if j == layers_per_block:
                return f"{container}.upsamplers.0.{tail}", False
        elif sub == 0:
            return _resnet_to_internal(tail, container, j, key), False
        elif sub in (1, 2):
            kind = "attentions" if sub == 1 else "temp_attentions"
            return f"{container}.{kind}.{j}.{_transformer(tail, key, False)}", sub == 2
    raise RefinerKeyError(f"unknown refiner UNet key {key!r}")


def official_to_internal(sd: Mapping[str, torch.Tensor],
                         layers_per_block: int | None = None) -> dict[str, torch.Tensor]:
    """Official refiner state dict -> `UNet3D` state dict (temporal proj weights `(m, c, 1)` -> `(m, c)`, views).

    `layers_per_block` (`num_res_blocks`) is read from the position of the first downsampler when omitted.
    Raises RefinerKeyError naming an unknown key or a collision; ValueError for a temporal proj weight that is
    not a 1x1 Conv1d. Missing keys are reported by the strict load (`load_official_unet`).
    """
    layers = _layers_from_official(sd.keys()) if layers_per_block is None else layers_per_block
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name, temporal = official_name_to_internal(key, layers)
        if temporal:
            value = _temporal_to_internal(name, value, key)
        if name in out:
            raise RefinerKeyError(f"two refiner keys map to {name!r} (second: {key!r})")
        out[name] = value
    return out


# -- internal -> official -------------------------------------------------------------------------------------

def internal_name_to_official(key: str, layers_per_block: int = 2,
                              up_levels_with_attention: frozenset[int] | set[int] = frozenset()) -> tuple[str, bool]:
    """(official name, is-temporal-transformer) of one internal key; RefinerKeyError if unknown.
    `up_levels_with_attention`: up-block indices that have transformers (their upsampler sits at index 3, else 1).
    """
    r1 = layers_per_block + 1
    m = re.fullmatch(r"time_embedding\.linear_([12])\." + _PARAM, key)
    if m:
        return f"time_embed.{0 if m.group(1) == '1' else 2}.{m.group(2)}", False
    m = re.fullmatch(r"(conv_norm_out|conv_out)\." + _PARAM, key)
    if m:
        return f"out.{0 if m.group(1) == 'conv_norm_out' else 2}.{m.group(2)}", False
    m = re.fullmatch(r"conv_in\." + _PARAM, key)
    if m:
        return f"input_blocks.0.0.{m.group(1)}", False
    m = re.fullmatch(r"transformer_in\.(.+)", key)
    if m:
        return "input_blocks.0.1." + _transformer(m.group(1), key, True), True
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\." + _PARAM, key)
    if m:
        return f"input_blocks.{(int(m.group(1)) + 1) * r1}.op.{m.group(2)}", False
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|temp_convs|attentions|temp_attentions)\.(\d+)\.(.+)", key)
    if m:
        level, kind, j, tail = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        if j < layers_per_block:
            block = f"input_blocks.{1 + level * r1 + j}"
            if kind in ("resnets", "temp_convs"):
                return _resnet_to_official(kind, tail, block + ".0", key), False
            sub = 1 if kind == "attentions" else 2
            return f"{block}.{sub}.{_transformer(tail, key, True)}", sub == 2
        raise RefinerKeyError(f"unknown internal UNet key {key!r}")
    m = re.fullmatch(r"mid_block\.(resnets|temp_convs|attentions|temp_attentions)\.(\d+)\.(.+)", key)
    if m:
        kind, i, tail = m.group(1), int(m.group(2)), m.group(3)
        if kind in ("resnets", "temp_convs") and i in (0, 1):
            return _resnet_to_official(kind, tail, f"middle_block.{0 if i == 0 else 3}", key), False
        if kind in ("attentions", "temp_attentions") and i == 0:
            sub = 1 if kind == "attentions" else 2
            return f"middle_block.{sub}.{_transformer(tail, key, True)}", sub == 2
        raise RefinerKeyError(f"unknown internal UNet key {key!r}")
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\." + _PARAM, key)
    if m:
        up = int(m.group(1))
        sub = 3 if up in up_levels_with_attention else 1
        return f"output_blocks.{up * r1 + layers_per_block}.{sub}.conv.{m.group(2)}", False
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|temp_convs|attentions|temp_attentions)\.(\d+)\.(.+)", key)
    if m:
        up, kind, j, tail = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        if j < r1:
            block = f"output_blocks.{up * r1 + j}"
            if kind in ("resnets", "temp_convs"):
                return _resnet_to_official(kind, tail, block + ".0", key), False
            sub = 1 if kind == "attentions" else 2
            return f"{block}.{sub}.{_transformer(tail, key, True)}", sub == 2
    raise RefinerKeyError(f"unknown internal UNet key {key!r}")


def internal_to_official(sd: Mapping[str, torch.Tensor],
                         layers_per_block: int | None = None) -> dict[str, torch.Tensor]:
    """`UNet3D` state dict -> official refiner names (temporal proj weights `(m, c)` -> `(m, c, 1)`, views).
    Works on meta tensors. Raises RefinerKeyError naming an unknown key (e.g. CAM injector or APM tensors of
    the streaming UNet) or a collision."""
    layers = _layers_from_internal(sd.keys()) if layers_per_block is None else layers_per_block
    with_attn = {int(m.group(1)) for k in sd if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name, temporal = internal_name_to_official(key, layers, with_attn)
        if temporal:
            value = _temporal_to_official(name, value, key)
        if name in out:
            raise RefinerKeyError(f"two internal keys map to {name!r} (second: {key!r})")
        out[name] = value
    return out


# -- building and loading -------------------------------------------------------------------------------------

def build_refiner_unet(cfg: UNet3DConfig, device: torch.device | str | None = None) -> UNet3D:
    """The refiner UNet module (vanilla `UNet3D`, geometry `ms_vid2vid`), uninitialised on `device`."""
    if cfg.resampler_geometry != "ms_vid2vid":
        raise ValueError("MS-Vid2Vid-XL weights need resampler_geometry='ms_vid2vid'")
    with torch.device(device or "cpu"):
        return UNet3D(cfg, streaming=False)


_OFFICIAL_ORDER = {word: i for i, word in enumerate((
    "time_embed", "input_blocks", "middle_block", "output_blocks", "out", "op",
    "in_layers", "emb_layers", "out_layers", "skip_connection", "temopral_conv",
    "norm", "proj_in", "transformer_blocks", "attn1", "ff", "attn2", "norm1", "norm2", "norm3", "proj_out",
    "to_q", "to_k", "to_v", "to_out", "net", "proj", "conv1", "conv2", "conv3", "conv4", "conv",
    "weight", "bias",
))}


def official_sort_key(name: str) -> tuple:
    """Sort key reproducing the official module registration order (that of `refiner_keys.tsv`)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, _OFFICIAL_ORDER.get(p, len(_OFFICIAL_ORDER)), p)
                 for p in name.split("."))


def official_layout(cfg: UNet3DConfig | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(official name, shape) of every tensor of the refiner UNet state dict (full size by default), built on
    the meta device, in the official naming with Conv1d temporal proj shapes and the official order."""
    unet = build_refiner_unet(cfg or official_unet_config({}), "meta")
    names = internal_to_official(unet.state_dict())
    return [(k, tuple(names[k].shape)) for k in sorted(names, key=official_sort_key)]


def load_official_unet(sd: Mapping[str, torch.Tensor], cfg: UNet3DConfig,
                       device: torch.device | str | None = None) -> UNet3D:
    """Strictly load an official-named refiner state dict into a new `UNet3D` (eval mode, parameters in the
    state dict's dtype). Raises RefinerKeyError listing missing / unexpected keys and shape differences in the
    official naming (first 20 of each)."""
    expected = dict(official_layout(cfg))
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k}: file {tuple(sd[k].shape)}, expected {expected[k]}" for k in sd
              if k in expected and tuple(sd[k].shape) != expected[k]]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape differences", shapes)):
            if items:
                parts.append(f"{len(items)} {title}: " + "; ".join(items[:20])
                             + (f"; … {len(items) - 20} more" if len(items) > 20 else ""))
        raise RefinerKeyError("refiner UNet state dict does not match the configuration: " + " | ".join(parts))
    unet = build_refiner_unet(cfg, "meta")
    internal = official_to_internal(sd, cfg.layers_per_block)
    unet.load_state_dict(internal, strict=True, assign=True)
    if device is not None:
        unet = unet.to(device)
    return unet.eval()
