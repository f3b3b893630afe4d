"""Model bundles of the stream stage.

`StreamingT2VNetwork` is the module tree whose state dict carries exactly the official key names of
`streaming_t2v.ckpt["state_dict"]` (prefixes `resampler.`, `image_encoder.`, `text_encoder.`, `vae.`, `unet.`
(CAM), `base_model.` (UNet + injectors + APM)). `StreamModel` and `BaseModel` are what loaders return and what
`stream.py` consumes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .apm import ImageResampler
from .cam_branch import CamBranch
from .config import StreamingT2VConfig, UNet3DConfig
from .image_encoder import OpenClipImageEncoder
from .text_encoder import ClipTextEncoder
from .tokenizer import ClipTokenizer
from .unet3d import UNet3D
from .vae import Vae


class StreamingT2VNetwork(nn.Module):
    """All stream-stage networks under their official prefixes. `with_image_encoder=False` leaves the OpenCLIP
    tower out (it is only needed once per video, to embed the anchor)."""

    def __init__(self, cfg: StreamingT2VConfig, with_image_encoder: bool = True) -> None:
        super().__init__()
        check_consistent(cfg)
        self.resampler = ImageResampler(cfg.apm, cfg.unet.cross_attention_dim)
        self.image_encoder = OpenClipImageEncoder(cfg.image_encoder) if with_image_encoder else None
        self.text_encoder = ClipTextEncoder(cfg.text_encoder)
        self.vae = Vae(cfg.vae)
        self.unet = CamBranch(cfg.unet, cfg.cam)
        self.base_model = UNet3D(cfg.unet, streaming=True, cam=cfg.cam, apm=cfg.apm)


def check_consistent(cfg: StreamingT2VConfig) -> None:
    """The widths that must agree between components (raises ValueError naming both values)."""
    pairs = [
        ("text_encoder.hidden_size", cfg.text_encoder.hidden_size, "unet.cross_attention_dim",
         cfg.unet.cross_attention_dim),
        ("image_encoder.embed_dim", cfg.image_encoder.embed_dim, "apm.image_embed_dim", cfg.apm.image_embed_dim),
        ("vae.latent_channels", cfg.vae.latent_channels, "unet.in_channels", cfg.unet.in_channels),
        ("text_encoder.max_position_embeddings", cfg.text_encoder.max_position_embeddings,
         "apm.num_text_tokens", cfg.apm.num_text_tokens),
    ]
    for name_a, a, name_b, b in pairs:
        if a != b:
            raise ValueError(f"inconsistent configuration: {name_a} = {a} but {name_b} = {b}")


@dataclass
class StreamModel:
    """The StreamingT2V stream-stage model: networks (CPU until used), tokenizer and configuration."""

    config: StreamingT2VConfig
    network: StreamingT2VNetwork
    tokenizer: ClipTokenizer
    source: str = ""
    dtype: torch.dtype = torch.float32

    @property
    def sample_size(self) -> int:
        return self.config.sample_size

    @property
    def latent_size(self) -> int:
        return self.config.sample_size // self.network.vae.downsample_factor

    @property
    def unet(self) -> UNet3D:
        return self.network.base_model

    @property
    def cam(self) -> CamBranch:
        return self.network.unet

    @property
    def vae(self) -> Vae:
        return self.network.vae

    @property
    def text_encoder(self) -> ClipTextEncoder:
        return self.network.text_encoder

    @property
    def image_encoder(self) -> OpenClipImageEncoder:
        if self.network.image_encoder is None:
            raise ValueError(f"{self.source or 'this model'} has no image encoder; load it with an OpenCLIP "
                             f"ViT-H-14 file (open_clip_pytorch_model.bin) as image_encoder_path")
        return self.network.image_encoder

    @property
    def resampler(self) -> ImageResampler:
        return self.network.resampler


@dataclass
class BaseModel:
    """The vanilla ModelScope UNet for the first chunk, sharing text encoder, tokenizer and VAE with a
    StreamModel (they were frozen during StreamingT2V training)."""

    unet: UNet3D
    shared: StreamModel
    source: str = ""
    dtype: torch.dtype = torch.float32
    scheduler_config: dict = field(default_factory=lambda: {
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "steps_offset": 1, "prediction_type": "epsilon"})

    @property
    def sample_size(self) -> int:
        return self.shared.sample_size


def build_vanilla_unet(cfg: UNet3DConfig) -> UNet3D:
    return UNet3D(cfg, streaming=False)
