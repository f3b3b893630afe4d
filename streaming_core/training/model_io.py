"""Stage inputs and outputs as model files in the official layouts (the same files users download).

A model folder holds `streamingt2v_<name>.safetensors` (official `streaming_t2v.ckpt` key names: resampler, image
encoder, text encoder, VAE, CAM, UNet + injectors + APM) and `modelscope_t2v_<name>.safetensors` (vanilla
ModelScope UNet, diffusers names), both with the architecture in the `streamingt2v_config` metadata entry, so
`streaming_core.model_files.load_stream_model` / `load_base_model` and the ComfyUI loader nodes read them. The
refiner, when trained, is `refiner_<name>.safetensors` (see `stage_refiner.py`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..config import StreamingT2VConfig
from ..model_files import CONFIG_METADATA_KEY, load_base_model, load_stream_model
from ..models import StreamingT2VNetwork
from ..unet3d import UNet3D

STREAM_PREFIX = "streamingt2v_"
BASE_PREFIX = "modelscope_t2v_"


def stream_file(folder: Path, name: str) -> Path:
    return Path(folder) / f"{STREAM_PREFIX}{name}.safetensors"


def base_file(folder: Path, name: str) -> Path:
    return Path(folder) / f"{BASE_PREFIX}{name}.safetensors"


def _state(module: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
            for k, v in module.state_dict().items()}


def write_models(folder: Path, name: str, cfg: StreamingT2VConfig, network: StreamingT2VNetwork, vanilla: UNet3D,
                 info: dict | None = None, dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    """Write both files atomically with floating tensors in `dtype` (the loaders cast on load; float16 halves
    the size); `info` (JSON-able) goes into the metadata entry `training`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {CONFIG_METADATA_KEY: cfg.to_json(), "format": "streamingt2v-trained", "training": json.dumps(info or {})}
    paths = (stream_file(folder, name), base_file(folder, name))
    for path, module in zip(paths, (network, vanilla)):
        tmp = path.with_suffix(".tmp")
        save_file(_state(module, dtype), str(tmp), metadata=meta)
        tmp.replace(path)
    return paths


def find_models(folder: Path) -> tuple[Path, Path]:
    """The (stream, base) files of a model folder; exactly one of each must be present."""
    folder = Path(folder)
    found = []
    for prefix in (STREAM_PREFIX, BASE_PREFIX):
        files = sorted(folder.glob(f"{prefix}*.safetensors"))
        if len(files) != 1:
            raise FileNotFoundError(f"{folder}: expected one {prefix}*.safetensors, found {[f.name for f in files]}")
        found.append(files[0])
    return found[0], found[1]


def _own_memory(module: nn.Module) -> None:
    # the loaders may hand out tensors that share storage with the file reader; training updates in place
    with torch.no_grad():
        for p in list(module.parameters()) + list(module.buffers()):
            p.data = p.data.clone()


def read_models(stream_path: Path, base_path: Path | None) -> tuple[StreamingT2VConfig, StreamingT2VNetwork,
                                                                     UNet3D | None]:
    """Load with the regular loaders (strict layout check); returns trainable float32 copies in train mode with
    `requires_grad` off everywhere (stages switch on what they train)."""
    model = load_stream_model(stream_path, dtype=torch.float32)
    network = model.network
    _own_memory(network)
    vanilla = None
    if base_path is not None:
        base = load_base_model(base_path, shared=model, dtype=torch.float32)
        vanilla = base.unet
        _own_memory(vanilla)
    return model.config, network, vanilla
