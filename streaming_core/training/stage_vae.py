"""VAE stage: reconstruction (L1 + L2 in [-1, 1]) plus a small KL term, on single frames.

Pixels that differ from their frame's median colour (the objects, on the toy world a few percent of the frame)
get `object_weight` times the weight of the rest: with a plain mean the background dominates and the decoder
learns washed-out object colours (measured on the toy world: object colour error 0.2-0.37 after 400 steps).

At export the latent scale is normalised: the encoder's mean output is multiplied by k and the decoder's
`post_quant_conv` input by 1/k (the posterior log-variance shifts by 2 ln k), an exact re-parameterisation chosen
so that the scaled latents (times `scaling_factor`, kept at the SD value 0.18215) have unit standard deviation.
Both the stream stage (which reads `scaling_factor` from the config) and the refiner (whose LDM convention fixes
0.18215) then see unit-variance latents from the same VAE weights."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .datasets import step_generator, step_rng
from .latent_pool import encode_frames
from .loop import TrainSettings
from .stage_common import Models, export_models, prepare

CALIBRATION_FRAMES = 256


class VaeStage:
    name = "vae"

    def __init__(self, models: Models, source, settings: TrainSettings, device: torch.device,
                 kl_weight: float = 1e-4, object_weight: float = 10.0) -> None:
        self.models, self.source, self.settings, self.device = models, source, settings, device
        self.kl_weight = kl_weight
        self.object_weight = object_weight
        self.vae = models.network.vae
        self._named = prepare({"vae": self.vae}, [], settings, device)

    def modules(self):
        return {"vae": self.vae}

    def trainable(self):
        return self._named

    def _frames(self, rng, count: int) -> torch.Tensor:
        picks = []
        for _ in range(count):
            video = int(rng.integers(len(self.source)))
            picks.append(self.source.read(video, int(rng.integers(self.source.length(video))), 1))
        return torch.cat(picks)

    def loss(self, step: int):
        rng = step_rng(self.settings.seed, step)
        gen = step_generator(self.settings.seed, step)
        x = self._frames(rng, self.settings.batch).to(self.device) * 2.0 - 1.0
        vae = self.vae
        mean, logvar = vae.quant_conv(vae.encoder(x)).chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        noise = torch.randn(mean.shape, generator=gen).to(self.device)
        z = mean + (0.5 * logvar).exp() * noise
        y = vae.decoder(vae.post_quant_conv(z)).float()
        diff = y - x
        weight = pixel_weights(x, self.object_weight)
        rec = ((diff.abs() + diff.pow(2)) * weight).sum() / (weight.sum() * x.shape[1])
        kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()
        return rec + self.kl_weight * kl, {"rec": float(rec.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def latent_std(self) -> float:
        """Std of the scaled latent means over `CALIBRATION_FRAMES` frames (a fixed draw)."""
        frames = self._frames(step_rng(self.settings.seed, 0, stream=99), CALIBRATION_FRAMES)
        was_training = self.vae.training
        self.vae.eval()
        std = encode_frames(self.vae, frames).std().item()
        self.vae.train(was_training)
        return std

    def export(self, out_dir: Path, name: str, info: dict, dtype: torch.dtype = torch.float32):
        before = self.latent_std()
        rescale_latents(self.vae, 1.0 / before)
        after = self.latent_std()
        return export_models(self.models, out_dir, name, {**info, "latent_std_before": before,
                                                          "latent_std_after": after}, dtype)


@torch.no_grad()
def rescale_latents(vae, k: float) -> None:
    """Multiply the latent space by k without changing what the VAE computes end to end (see module doc)."""
    c = vae.config.latent_channels
    vae.quant_conv.weight[:c] *= k
    vae.quant_conv.bias[:c] *= k
    vae.quant_conv.bias[c:] += 2.0 * math.log(k)
    vae.post_quant_conv.weight /= k


def pixel_weights(x: torch.Tensor, object_weight: float, threshold: float = 0.2) -> torch.Tensor:
    """(B, 1, H, W) weights for frames x (B, 3, H, W) in [-1, 1]: 1 + object_weight where a pixel is more than
    `threshold` (max over channels) from its frame's median colour, else 1."""
    median = x.flatten(2).median(dim=2).values[:, :, None, None]
    far = (x - median).abs().amax(dim=1, keepdim=True) > threshold
    return 1.0 + object_weight * far.float()
