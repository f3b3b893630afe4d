"""Architecture configurations of the StreamingT2V stream stage.

One set of dataclasses describes both the released full-size model (`full()` constructors, values from
`stream_stage.md` §3-§7 and the official manifest) and tiny test models. Field names follow the official /
diffusers configs. Every model class in `streaming_core` is built from these objects only.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


RESAMPLER_GEOMETRIES = ("modelscope_t2v", "ms_vid2vid")


@dataclass(frozen=True)
class UNet3DConfig:
    """ModelScope `UNet3DConditionModel` (stream_stage.md §3.1)."""

    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: int = 64  # per-head width of the spatial/temporal transformers; heads = C // this
    cross_attention_dim: int = 1024
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    transformer_in_num_heads: int = 8
    transformer_in_head_dim: int = 64
    # "modelscope_t2v": diffusers resamplers (conv padding 1; upsample to the skip size).
    # "ms_vid2vid": MS-Vid2Vid-XL refiner (refine_stage.md §3.3 item 8): downsampler padding 2 rows / 1 column,
    # upsampler = nearest x2, drop the first and last row, conv.
    resampler_geometry: str = "modelscope_t2v"

    def __post_init__(self) -> None:
        if self.resampler_geometry not in RESAMPLER_GEOMETRIES:
            raise ValueError(
                f"resampler_geometry {self.resampler_geometry!r} is not one of {RESAMPLER_GEOMETRIES}"
            )
        if len(self.down_block_types) != len(self.block_out_channels):
            raise ValueError(
                f"down_block_types has {len(self.down_block_types)} entries but block_out_channels has "
                f"{len(self.block_out_channels)}; they must be equal"
            )
        if len(self.up_block_types) != len(self.down_block_types):
            raise ValueError(
                f"up_block_types has {len(self.up_block_types)} entries, down_block_types "
                f"{len(self.down_block_types)}; they must be equal"
            )

    @property
    def time_proj_dim(self) -> int:
        return self.block_out_channels[0]

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4


@dataclass(frozen=True)
class CamConfig:
    """CAM branch (stream_stage.md §6): conditioning-frame encoder widths and frame counts."""

    cond_embedding_channels: tuple[int, ...] = (32, 96, 256, 512)
    num_cond_frames: int = 8
    injector_head_dim: int = 64
    injector_norm_groups: int = 32
    injector_norm_eps: float = 1e-6


@dataclass(frozen=True)
class ApmConfig:
    """APM (stream_stage.md §7): image tokens, resampler and token mixing."""

    num_text_tokens: int = 77
    num_image_tokens: int = 16
    image_embed_dim: int = 1024  # pooled OpenCLIP embedding width
    resampler_inner_dim: int = 1280
    mix_kernel_size: int = 3
    mix_ln_eps: float = 1e-5


@dataclass(frozen=True)
class TextEncoderConfig:
    """HF-format CLIP text tower (stream_stage.md §4)."""

    vocab_size: int = 49408
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 23
    num_attention_heads: int = 16
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"


@dataclass(frozen=True)
class ImageEncoderConfig:
    """OpenCLIP ViT-H-14 visual tower (stream_stage.md §7.2)."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    layers: int = 32
    head_width: int = 80
    mlp_ratio: float = 4.0
    embed_dim: int = 1024
    # unused text-side leftovers kept in the official state dict (token_embedding, positional_embedding, ...)
    text_vocab_size: int = 49408
    text_context_length: int = 77
    text_width: int = 1024


@dataclass(frozen=True)
class VaeConfig:
    """diffusers-style `AutoencoderKL` (stream_stage.md §5)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215


@dataclass(frozen=True)
class StreamingT2VConfig:
    """Everything needed to build the stream-stage model bundle."""

    unet: UNet3DConfig = field(default_factory=UNet3DConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    apm: ApmConfig = field(default_factory=ApmConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    frames_per_chunk: int = 16
    sample_size: int = 256  # pixels; latent = sample_size // 8

    @classmethod
    def full(cls) -> "StreamingT2VConfig":
        """The released `streaming_t2v.ckpt` architecture."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StreamingT2VConfig":
        def build(kind: type, values: dict[str, Any] | None):
            if values is None:
                return kind()
            names = {f.name for f in dataclasses.fields(kind)}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"unknown {kind.__name__} fields {sorted(unknown)}")
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

        top = {k: v for k, v in data.items() if not isinstance(v, dict)}
        return cls(
            unet=build(UNet3DConfig, data.get("unet")),
            cam=build(CamConfig, data.get("cam")),
            apm=build(ApmConfig, data.get("apm")),
            text_encoder=build(TextEncoderConfig, data.get("text_encoder")),
            image_encoder=build(ImageEncoderConfig, data.get("image_encoder")),
            vae=build(VaeConfig, data.get("vae")),
            **top,
        )

    @classmethod
    def from_json(cls, text: str) -> "StreamingT2VConfig":
        return cls.from_dict(json.loads(text))


def tiny_default() -> StreamingT2VConfig:
    """The small architecture of the embedded default model (runs on a CPU in seconds per chunk)."""
    return StreamingT2VConfig(
        unet=UNet3DConfig(
            block_out_channels=(64, 64, 64, 64),
            attention_head_dim=16,
            cross_attention_dim=64,
            transformer_in_num_heads=4,
            transformer_in_head_dim=16,
        ),
        cam=CamConfig(cond_embedding_channels=(16, 32, 48, 64)),
        apm=ApmConfig(image_embed_dim=64, resampler_inner_dim=64),
        text_encoder=TextEncoderConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
        ),
        image_encoder=ImageEncoderConfig(
            image_size=224, patch_size=32, width=64, layers=2, head_width=16, embed_dim=64, text_width=64
        ),
        vae=VaeConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=1),
        sample_size=128,
    )
