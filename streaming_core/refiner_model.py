"""The refiner bundle the refinement stage runs (refine_stage.md §3-§5, §16.1).

`RefinerModel` holds the networks of one refiner family, its noise table, prediction type, caption rule, native
frame size and the family defaults of §16.1:

| | `"ms_vid2vid"` (MS-Vid2Vid-XL, parity) | `"diffusers_t2v"` (diffusers UNet3D text-to-video) |
|---|---|---|
| UNet | `UNet3D`, geometry `ms_vid2vid` | `UNet3D`, geometry `modelscope_t2v` |
| text | OpenCLIP-H, 23 of 24 blocks + `ln_final` (`ClipTextEncoder`) | `CLIPTextModel` (`ClipTextEncoder`) |
| tokenizer | plain CLIP BPE (open_clip), pad id 0 | transformers `CLIPTokenizer` behaviour, pad id 0 |
| table | `NoiseTable.logsnr_cosine_interp()` | `NoiseTable.from_betas(...)` from `scheduler_config.json` |
| prediction | `"v"` | `"epsilon"` or `"v"` (`prediction_type`) |
| caption | `prompt + ", "` | the prompt as given |
| native size (W x H) | 1280 x 720 | from the model (zeroscope_v2_XL: 1024 x 576) |
| strength, cfg, rescale, start quirk, chunk/overlap | 0.6 (t_start 599), 7.5, 0.2, on, 24/8 | 0.75, 9.0, 0.0, off, 24/8 |

`RefinerConfig` describes an MS-Vid2Vid-XL architecture in the official vocabulary (the UNet constructor
arguments, OpenCLIP's `text_cfg`, the LDM VAE `ddconfig`), exactly as a golden set's `config.json` does; the
pack's tiny refiner files carry it as JSON (`REFINER_CONFIG_KEY`), files without it are full size.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .refine_schedule import NoiseTable
from .text_encoder import ClipTextEncoder
from .tokenizer import ClipTokenizer
from .unet3d import UNet3D
from .vae import Vae

FAMILIES = ("ms_vid2vid", "diffusers_t2v")
PREDICTIONS = ("v", "epsilon")

#: Metadata / attribute name under which the pack's tiny refiner files store their `RefinerConfig` JSON.
REFINER_CONFIG_KEY = "streamingt2v_refiner_config"


def _full_unet() -> dict[str, Any]:
    """`Vid2VidSDUNet()` constructor defaults (§3.1)."""
    return {"in_dim": 4, "dim": 320, "y_dim": 1024, "context_dim": 1024, "out_dim": 4, "dim_mult": [1, 2, 4, 4],
            "num_heads": 8, "head_dim": 64, "num_res_blocks": 2, "attn_scales": [1.0, 0.5, 0.25]}


def _full_text() -> dict[str, Any]:
    """OpenCLIP ViT-H-14 `text_cfg` (§4): 24 blocks of width 1024, 16 heads."""
    return {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24}


def _full_vae() -> dict[str, Any]:
    """SD 2.1 autoencoder `ddconfig` (§5.1)."""
    return {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


@dataclass(frozen=True)
class RefinerConfig:
    """MS-Vid2Vid-XL architecture in official terms; the defaults are the released model.

    unet: `Vid2VidSDUNet` constructor arguments (`dim`, `dim_mult`, `num_heads`, `head_dim`, `num_res_blocks`,
    `attn_scales`, `context_dim`, `in_dim`, `out_dim`); text: OpenCLIP `text_cfg` (`layers` counts every block
    of the full tower; the encoder runs `layers - 1`); vae_ddconfig / vae_embed_dim: the LDM autoencoder;
    native_height / native_width: pixel frame size the model was trained at.
    """

    unet: dict[str, Any] = field(default_factory=_full_unet)
    text: dict[str, Any] = field(default_factory=_full_text)
    vae_ddconfig: dict[str, Any] = field(default_factory=_full_vae)
    vae_embed_dim: int = 4
    native_height: int = 720
    native_width: int = 1280

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RefinerConfig":
        """Parse `to_json` output; unknown fields are an error (ValueError naming them)."""
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown RefinerConfig fields {unknown} in {REFINER_CONFIG_KEY}")
        return cls(**data)

    @property
    def text_layers_used(self) -> int:
        """Blocks the encoder runs: the penultimate-layer rule, `layers - 1` (23 of 24)."""
        return int(self.text["layers"]) - 1


@dataclass(frozen=True)
class RefinerDefaults:
    """Family defaults of §16.1 (`RefineSettings` takes them where the user left a value unset)."""

    strength: float
    cfg: float
    rescale: float
    start_quirk: bool
    chunk_size: int = 24
    overlap: int = 8
    steps: int = 30


MS_VID2VID_DEFAULTS = RefinerDefaults(strength=0.6, cfg=7.5, rescale=0.2, start_quirk=True)
DIFFUSERS_T2V_DEFAULTS = RefinerDefaults(strength=0.75, cfg=9.0, rescale=0.0, start_quirk=False)
FAMILY_DEFAULTS = {"ms_vid2vid": MS_VID2VID_DEFAULTS, "diffusers_t2v": DIFFUSERS_T2V_DEFAULTS}


@dataclass
class RefinerModel:
    """A loaded refiner: networks on the CPU until used, in evaluation mode without gradients.

    unet: `UNet3D` (vanilla; `cfg.resampler_geometry` "ms_vid2vid" or "modelscope_t2v"), in `dtype`;
    text_encoder: `ClipTextEncoder` (float32); tokenizer: `ClipTokenizer` (77 ids, pad id 0); vae: `Vae`
    (float32); table: `NoiseTable` of the family; prediction: "v" | "epsilon"; native_size: (height, width) in
    pixels; defaults: `RefinerDefaults`; source: what was loaded, for messages and metadata.
    """

    family: str
    unet: UNet3D
    text_encoder: ClipTextEncoder
    tokenizer: ClipTokenizer
    vae: Vae
    table: NoiseTable
    prediction: str
    native_size: tuple[int, int]
    defaults: RefinerDefaults
    source: str = ""
    dtype: torch.dtype = torch.float32
    scheduler_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown refiner family {self.family!r}; expected one of {FAMILIES}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {self.prediction!r}; expected one of {PREDICTIONS}")
        context = self.unet.cfg.cross_attention_dim
        width = self.text_encoder.config.hidden_size
        if context != width:
            raise ValueError(f"inconsistent refiner: text encoder width {width} but UNet context width {context}")
        if self.vae.config.latent_channels != self.unet.cfg.in_channels:
            raise ValueError(
                f"inconsistent refiner: VAE latent channels {self.vae.config.latent_channels} but UNet input "
                f"channels {self.unet.cfg.in_channels}"
            )

    def caption(self, prompt: str) -> str:
        """The conditional text the family feeds its encoder: MS-Vid2Vid-XL appends ", " (§4.1), diffusers
        models take the prompt as given (§16.1). The negative prompt is used as given in both families."""
        return prompt + ", " if self.family == "ms_vid2vid" else prompt

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str] | str, device: torch.device | str | None = None) -> torch.Tensor:
        """Token ids then the text encoder (run where its parameters are): `(B, 77, D)` float32 features, moved
        to `device` when given. The strings are encoded as given; apply `caption` to the prompt first."""
        if isinstance(texts, str):
            texts = [texts]
        weight = self.text_encoder.text_model.embeddings.token_embedding.weight
        features = self.text_encoder(self.tokenizer(list(texts)).to(weight.device)).float()
        return features if device is None else features.to(device)
