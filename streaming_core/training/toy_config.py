"""The toy StreamingT2V architecture trained by `scripts/train_toy_model.sh` (docs/training.md).

64x64-pixel frames, a VAE with downsampling 8 (8x8x4 latents), a three-level UNet of widths 32/64/64 with one
layer per block, 2-layer 64-wide text and image encoders. Chosen so that a training step is well under a second
and an extension chunk with 10 DDIM steps takes about 2 s on 2 CPU cores.
"""
from __future__ import annotations

from ..config import (ApmConfig, CamConfig, ImageEncoderConfig, StreamingT2VConfig, TextEncoderConfig, UNet3DConfig,
                      VaeConfig)

TOY_NAME = "toy"


def toy_unet_config() -> UNet3DConfig:
    return UNet3DConfig(
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        attention_head_dim=16,
        cross_attention_dim=64,
        norm_num_groups=16,
        transformer_in_num_heads=2,
        transformer_in_head_dim=16,
    )


def toy_config() -> StreamingT2VConfig:
    """The toy stream-stage architecture (the VAE `scaling_factor` is re-measured by the `vae` stage)."""
    return StreamingT2VConfig(
        unet=toy_unet_config(),
        cam=CamConfig(cond_embedding_channels=(16, 32, 32, 32), injector_head_dim=16, injector_norm_groups=16),
        apm=ApmConfig(image_embed_dim=64, resampler_inner_dim=64),
        text_encoder=TextEncoderConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4),
        image_encoder=ImageEncoderConfig(image_size=64, patch_size=16, width=64, layers=2, head_width=16,
                                         embed_dim=64, text_vocab_size=8, text_width=64),
        # 8 GroupNorm groups (4 channels each at the 32-channel levels, as SD's VAE has at 128): measured on toy
        # frames, 32 groups (an instance norm at 32 channels) learns colours much more slowly
        vae=VaeConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8),
        sample_size=64,
    )


#: The toy MS-Vid2Vid-XL refiner UNet in the official constructor vocabulary (refine_stage.md §3.1): widths
#: 32/64/64, attention at the first two levels, one res block per level, head width 16, context 64 (the toy
#: text encoder's width). Its tensors have the shapes of the toy base UNet, which initialises it.
TOY_REFINER_UNET = {"in_dim": 4, "out_dim": 4, "dim": 32, "dim_mult": [1, 2, 2], "num_heads": 2, "head_dim": 16,
                    "num_res_blocks": 1, "attn_scales": [1.0, 0.5], "context_dim": 64, "y_dim": 64}
#: Native refiner frame (H, W): the 64-pixel stream output upscaled 2x to 128x128 plus 8-pixel bars above and
#: below (latent 18x16: h = 2 mod 8, w = 0 mod 8, refine_stage.md §3.4).
TOY_REFINER_NATIVE = (144, 128)
