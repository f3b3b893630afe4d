"""Gradient (activation) checkpointing for the UNet3D, CAM branch, VAE and text encoder without changing their
classes: the forward of every block is wrapped in `torch.utils.checkpoint` (non-reentrant) whenever gradients
are enabled, also in frozen modules that gradients flow through (the stream UNet of the CAM stage); under
`torch.no_grad()` (inference) the original forward runs."""
from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..text_encoder import ClipEncoderLayer
from ..unet_blocks import DownBlock3D, MidBlock3D, UpBlock3D
from ..vae import DownEncoderBlock, MidBlock, UpDecoderBlock

CHECKPOINTED = (DownBlock3D, MidBlock3D, UpBlock3D, DownEncoderBlock, UpDecoderBlock, MidBlock, ClipEncoderLayer)


def enable_gradient_checkpointing(root: nn.Module) -> int:
    """Wrap the forward of every block of `root` (see CHECKPOINTED); returns how many were wrapped. Idempotent."""
    count = 0
    for module in root.modules():
        if isinstance(module, CHECKPOINTED) and not getattr(module, "_st2v_checkpointed", False):
            original = module.forward

            @functools.wraps(original)
            def forward(*args, _original=original, **kwargs):
                if torch.is_grad_enabled():
                    return checkpoint(_original, *args, use_reentrant=False, **kwargs)
                return _original(*args, **kwargs)

            module.forward = forward
            module._st2v_checkpointed = True
            count += 1
    return count
