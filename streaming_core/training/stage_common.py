"""Helpers shared by the stage classes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import StreamingT2VConfig
from ..models import StreamingT2VNetwork
from ..text_encoder import ClipTextEncoder
from ..tokenizer import ClipTokenizer
from ..unet3d import UNet3D
from .grad_checkpoint import enable_gradient_checkpointing
from .loop import TrainSettings
from .model_io import write_models


@dataclass
class Models:
    """What a stage starts from: the architecture, the stream network (official names) and the vanilla UNet."""

    cfg: StreamingT2VConfig
    network: StreamingT2VNetwork
    vanilla: UNet3D


def prepare(trainable: dict[str, nn.Module], frozen: list[nn.Module], settings: TrainSettings,
            device: torch.device) -> dict[str, nn.Parameter]:
    """Move to `device`, freeze `frozen` (eval mode), unfreeze `trainable` (train mode); optional gradient
    checkpointing on both (gradients flow through frozen UNets); returns the trainable parameters by
    `<module key>.<name>`."""
    for module in frozen:
        module.to(device).eval().requires_grad_(False)
    named: dict[str, nn.Parameter] = {}
    for key, module in trainable.items():
        module.to(device).train().requires_grad_(True)
    if settings.grad_checkpointing:
        for module in list(trainable.values()) + frozen:
            enable_gradient_checkpointing(module)
    for key, module in trainable.items():
        named.update({f"{key}.{n}": p for n, p in module.named_parameters()})
    return named


def encode_text(tokenizer: ClipTokenizer, encoder: ClipTextEncoder, captions: list[str],
                device: torch.device) -> torch.Tensor:
    """Captions -> (B, 77, D) last hidden states (gradients flow when the encoder trains)."""
    return encoder(tokenizer(captions).to(device))


def export_models(models: Models, out_dir: Path, name: str, info: dict,
                  dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    for module in (models.network, models.vanilla):
        module.to("cpu")
    return write_models(out_dir, name, models.cfg, models.network, models.vanilla, info, dtype)


class DiffusionStage:
    """The stage-protocol methods shared by the stages that train diffusion networks of the stream model
    (`base`, `cam`, `cam_apm`): the subclass sets `models`, `_trainable` (name -> module) and `_named`
    (`prepare`'s result) and writes the two model files on export."""

    models: Models
    _trainable: dict[str, nn.Module]
    _named: dict[str, nn.Parameter]

    def modules(self) -> dict[str, nn.Module]:
        return dict(self._trainable)

    def trainable(self) -> dict[str, nn.Parameter]:
        return self._named

    def export(self, out_dir: Path, name: str, info: dict, dtype: torch.dtype = torch.float32):
        return export_models(self.models, out_dir, name, info, dtype)
