"""Initial weights for training from scratch, and the hand-over from the base UNet to the stream networks.

`fresh_models` builds every network with PyTorch's default initialisation plus the StreamingT2V conventions
(stream_stage.md §6.4, §7.5): injector `proj_out` and the CAM conditioning encoder's `conv_out` are zero (the
injectors start as identities), APM gates `alpha` are 0 (SiLU(0) = 0: mixing off), token and position embeddings
are N(0, 0.02²) as in CLIP, and the VAE posterior starts narrow (log-variance bias `VAE_INIT_LOGVAR`: with the
default 0 the sampled latents are pure noise at first and the decoder learns to ignore them). `stream_from_base` copies a trained vanilla UNet into the stream UNet (`base_model`)
and its encoder half into the CAM branch (`ControlNetModel.from_unet`, §6).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import StreamingT2VConfig
from ..models import StreamingT2VNetwork, build_vanilla_unet
from ..unet3d import UNet3D

VAE_INIT_LOGVAR = -6.0  # posterior std e^-3 ≈ 0.05 at initialisation


def zero_stream_additions(network: StreamingT2VNetwork) -> None:
    """Injectors -> identity, CAM conditioning contribution -> 0, APM mixing -> off (in place)."""
    with torch.no_grad():
        unet = network.base_model
        injectors = list(unet.cross_attention_merger_down_blocks) + [unet.cross_attention_merger_mid_block]
        for inj in injectors:
            inj.temporal_transformer.proj_out.weight.zero_()
            inj.temporal_transformer.proj_out.bias.zero_()
        conv_out = network.unet.controlnet_cond_embedding.conv_out
        conv_out.weight.zero_()
        conv_out.bias.zero_()
        for name, p in unet.named_parameters():
            if name.endswith(".alpha"):
                p.zero_()


def _clip_embeddings(module: nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, 0.02)


def fresh_models(cfg: StreamingT2VConfig, seed: int = 0) -> tuple[StreamingT2VNetwork, UNet3D]:
    """(stream network with image encoder, vanilla UNet), deterministically initialised from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = StreamingT2VNetwork(cfg, with_image_encoder=True)
        vanilla = build_vanilla_unet(cfg.unet)
        _clip_embeddings(network.text_encoder)
    with torch.no_grad():
        c = cfg.vae.latent_channels
        network.vae.quant_conv.bias[c:].fill_(VAE_INIT_LOGVAR)
    zero_stream_additions(network)
    return network, vanilla


def stream_from_base(network: StreamingT2VNetwork, vanilla: UNet3D) -> None:
    """Copy the vanilla UNet into `base_model` (injector/APM tensors keep their values) and its stem, down and
    mid blocks into the CAM branch (the conditioning encoder keeps its values). Raises ValueError when a vanilla
    tensor has no counterpart."""
    source = vanilla.state_dict()
    with torch.no_grad():
        for target in (network.base_model, network.unet):
            own = target.state_dict()
            for name, tensor in source.items():
                if target is network.base_model and name not in own:
                    raise ValueError(f"vanilla UNet tensor {name} has no counterpart in the stream UNet")
                if name in own:
                    if own[name].shape != tensor.shape:
                        raise ValueError(f"{name}: vanilla {tuple(tensor.shape)} vs stream {tuple(own[name].shape)}")
                    own[name].copy_(tensor)
