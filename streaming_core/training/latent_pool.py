"""VAE latents of every frame of a video source, computed once and reused by the diffusion stages.

The VAE is frozen after its own stage, so encoding each training window again at every step would repeat the
same work; at toy size the pool of a 1024-video source fits in memory (1 kB per frame) and is cached on disk,
keyed by the VAE weights and the source. For large real datasets use `OnTheFlyLatents` instead (same interface).
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import torch

from ..vae import Vae

logger = logging.getLogger("streaming_core")


def vae_digest(vae: Vae) -> str:
    h = hashlib.sha1()
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(repr(vae.config).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_frames(vae: Vae, frames: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> posterior means times the scaling factor, (N, C, h, w) float32 on the CPU."""
    device = next(vae.parameters()).device
    out = [vae.encode(x.to(device), slice_size=batch).float().cpu() for x in frames.split(batch)]
    return torch.cat(out)


class LatentPool:
    """latents(video, start, count) -> (C, count, h, w): the scaled latents of frames start..start+count-1."""

    def __init__(self, videos: list[torch.Tensor]) -> None:
        self.videos = videos

    def latents(self, video: int, start: int, count: int) -> torch.Tensor:
        return self.videos[video][start:start + count].permute(1, 0, 2, 3)

    @classmethod
    def build(cls, source, vae: Vae, cache_dir: Path | None = None) -> "LatentPool":
        """Encode every frame of `source` (or read the cached result)."""
        key = hashlib.sha1(f"{source.key()}|{vae_digest(vae)}".encode()).hexdigest()[:20]
        path = Path(cache_dir) / f"latents_{key}.pt" if cache_dir is not None else None
        if path is not None and path.is_file():
            logger.info("latent pool: reading %s", path)
            return cls(torch.load(path, weights_only=True))
        t0 = time.perf_counter()
        was_training = vae.training
        vae.eval()
        videos = [encode_frames(vae, source.read(i, 0, source.length(i))) for i in range(len(source))]
        vae.train(was_training)
        logger.info("latent pool: encoded %d videos (%d frames) in %.0f s", len(videos),
                    sum(v.shape[0] for v in videos), time.perf_counter() - t0)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(videos, tmp)
            tmp.replace(path)
        return cls(videos)


class OnTheFlyLatents:
    """Same interface as `LatentPool`, encoding the requested frames at every call (large datasets)."""

    def __init__(self, source, vae: Vae) -> None:
        self.source, self.vae = source, vae

    def latents(self, video: int, start: int, count: int) -> torch.Tensor:
        return encode_frames(self.vae, self.source.read(video, start, count)).permute(1, 0, 2, 3)
