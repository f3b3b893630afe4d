"""The embedded default model: a tiny StreamingT2V with RANDOM weights in the official file layouts.

    python -m streaming_core.tiny_default <models/streamingt2v> [--seed 0]

writes `streamingt2v_tiny.safetensors` (official `streaming_t2v.ckpt` key names: resampler, image encoder,
text encoder, VAE, CAM, UNet + injectors + APM) and `modelscope_t2v_tiny.safetensors` (vanilla ModelScope UNet,
diffusers names). Both carry their architecture in the `streamingt2v_config` metadata entry, so the regular
loaders read them exactly like the full-size files. The weights are deterministic for a seed but untrained:
videos made with them are structured noise. They exist so that every code path (loading, CAM, APM, guidance,
decoding, the ComfyUI nodes) runs on a CPU in seconds.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import StreamingT2VConfig, tiny_default
from .model_files import CONFIG_METADATA_KEY
from .models import StreamingT2VNetwork, build_vanilla_unet

STREAM_FILE = "streamingt2v_tiny.safetensors"
BASE_FILE = "modelscope_t2v_tiny.safetensors"


def random_state_dict(names_shapes: list[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic random weights: matrices/kernels N(0, 1/fan_in), embeddings N(0, 0.02²), norm scales 1,
    biases 0, APM gates alpha = 0.5 (so the mixing is active), CLIP logit scale ln(1/0.07)."""
    gen = torch.Generator("cpu").manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in names_shapes:
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "alpha":
            t = torch.full(shape, 0.5)
        elif leaf == "logit_scale":
            t = torch.full(shape, math.log(1 / 0.07))
        elif "embedding" in name and len(shape) >= 1 and leaf != "bias" and "time_embedding" not in name \
                and "cond_embedding" not in name and "context_embedding" not in name:
            t = torch.randn(shape, generator=gen) * 0.02
        elif leaf == "bias":
            t = torch.zeros(shape)
        elif len(shape) == 1 and leaf == "weight":
            t = torch.ones(shape)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        else:
            t = torch.randn(shape, generator=gen) * 0.02
        out[name] = t.contiguous()
    return out


def write_tiny_default(folder: Path, seed: int = 0, cfg: StreamingT2VConfig | None = None) -> tuple[Path, Path]:
    """Write both tiny files into `folder`; returns their paths."""
    cfg = cfg or tiny_default()
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        network = StreamingT2VNetwork(cfg)
        vanilla = build_vanilla_unet(cfg.unet)
    layout = [(n, tuple(t.shape)) for n, t in network.state_dict().items()]
    stream_sd = random_state_dict(layout, seed)
    # the first-chunk UNet is a different random draw in its own (diffusers) naming
    base_layout = [(n, tuple(t.shape)) for n, t in vanilla.state_dict().items()]
    base_sd = random_state_dict(base_layout, seed + 1)
    meta = {CONFIG_METADATA_KEY: cfg.to_json(), "format": "streamingt2v-tiny-random", "seed": str(seed)}
    stream_path, base_path = folder / STREAM_FILE, folder / BASE_FILE
    save_file(stream_sd, str(stream_path), metadata=meta)
    save_file(base_sd, str(base_path), metadata=meta)
    return stream_path, base_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streaming_core.tiny_default", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="destination, normally ComfyUI/models/streamingt2v")
    parser.add_argument("--seed", type=int, default=0)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    paths = write_tiny_default(args.folder, args.seed)
    print("wrote " + ", ".join(f"{p} ({p.stat().st_size / 1e6:.1f} MB)" for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
