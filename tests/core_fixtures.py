"""Small models for core tests: the same classes as full size, built from a micro configuration."""
from __future__ import annotations

from pathlib import Path

import torch

from streaming_core.config import (ApmConfig, CamConfig, ImageEncoderConfig, StreamingT2VConfig, TextEncoderConfig,
                                   UNet3DConfig, VaeConfig)


def micro_config() -> StreamingT2VConfig:
    """32-channel UNet, 64x64 pixels (8x8 latent), 2-layer encoders: a chunk step takes a fraction of a second."""
    return StreamingT2VConfig(
        unet=UNet3DConfig(block_out_channels=(32, 32, 32, 32), attention_head_dim=16, cross_attention_dim=32,
                          transformer_in_num_heads=2, transformer_in_head_dim=16),
        cam=CamConfig(cond_embedding_channels=(8, 16, 16, 32), injector_head_dim=16),
        apm=ApmConfig(image_embed_dim=32, resampler_inner_dim=32),
        text_encoder=TextEncoderConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2),
        image_encoder=ImageEncoderConfig(image_size=32, patch_size=16, width=32, layers=1, head_width=16,
                                         embed_dim=32, text_width=32, text_vocab_size=64),
        vae=VaeConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1),
        sample_size=64,
    )


def write_micro_models(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    from streaming_core.tiny_default import write_tiny_default

    return write_tiny_default(folder, seed=seed, cfg=micro_config())


def random_video(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) in [0, 1]."""
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed))
