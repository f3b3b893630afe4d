"""Long videos from a trained model folder (first chunk from text, then CAM + APM chunks), for smoke checks,
the colour-consistency test and `python -m streaming_core.train eval`."""
from __future__ import annotations

from pathlib import Path

import torch

from ..chunks import chunks_for_target
from ..model_files import load_base_model, load_stream_model
from ..stream import extend_video, generate_init_chunk
from .model_io import find_models


def generate_long_video(model_dir: Path, prompt: str, frames: int = 240, *, steps: int = 10, init_steps: int = 50,
                        cfg: float = 7.5, init_cfg: float = 9.0, seed: int = 33, init_sampler: str = "ddim",
                        guidance_mode: str = "single", anchor_index: int = 0,
                        device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """(N, 3, S, S) in [0, 1], N = 16 + 8·⌈(frames − 16)/8⌉ (at least `frames`).

    The first chunk defaults to DDIM (η = 1) with 50 steps: on the toy base model DPM-Solver++(2M) with 20 steps
    leaves noisy frames in the middle of the chunk (its deterministic updates do not correct the small model's
    errors at low noise), DDIM with fresh noise at every step does."""
    stream_path, base_path = find_models(model_dir)
    model = load_stream_model(stream_path)
    base = load_base_model(base_path, shared=model)
    first = generate_init_chunk(base, prompt, steps=init_steps, guidance_scale=init_cfg, seed=seed,
                                sampler=init_sampler, device=device)
    chunks = chunks_for_target(frames, "exact")
    return extend_video(model, first, first[anchor_index], [prompt], chunks, steps=steps, guidance_scale=cfg,
                        seed=seed, guidance_mode=guidance_mode, cfg_text=cfg, cfg_anchor=cfg, device=device)


def write_mp4(frames: torch.Tensor, path: Path, fps: int = 8) -> Path:
    """(N, 3, H, W) in [0, 1] -> H.264 mp4 (yuv420p; H and W must be even)."""
    import av
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = data.shape[2], data.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for image in data:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
