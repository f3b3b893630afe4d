"""Partial results of an interrupted or failed run, as one safetensors file that can be resumed from.

The file holds every frame finished so far (`frames`, float32 (N, 3, S, S) in [0, 1], input frames included),
the CPU generator state to continue the noise stream with (`noise_state`, uint8) and a JSON `info` metadata entry
(settings and remaining prompts). Resume: `extend_video(frames, anchor, info["remaining_prompts"],
info["remaining_chunks"], seed=info["seed"], noise_state=noise_state, ...)` reproduces the uninterrupted run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save_partial(path: str | os.PathLike, frames: torch.Tensor, noise_state: torch.Tensor | None,
                 info: dict[str, Any]) -> Path:
    """Write the partial run atomically (a `.part` file renamed when complete); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"frames": frames.detach().float().cpu().contiguous()}
    if noise_state is not None:
        tensors["noise_state"] = noise_state.detach().cpu().contiguous()
    tmp = path.with_suffix(path.suffix + ".part")
    save_file(tensors, str(tmp), metadata={"format": "streamingt2v-partial", "info": json.dumps(info)})
    os.replace(tmp, path)
    return path


def load_partial(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """(frames, noise_state or None, info) of a file written by `save_partial`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "streamingt2v-partial":
        raise ValueError(f"{path} is not a StreamingT2V partial-result file (format {meta.get('format')!r})")
    tensors = load_file(str(path))
    return tensors["frames"], tensors.get("noise_state"), json.loads(meta.get("info", "{}"))
