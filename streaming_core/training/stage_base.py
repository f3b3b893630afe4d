"""Base stage: the vanilla ModelScope UNet3D on 16-frame clips with the ε objective, trained jointly with the text
encoder through the diffusion loss (no separate text pre-training; the full-size model would use the
downloaded CLIP text tower instead, `--freeze-text`). Captions are replaced by "" with probability
`text_dropout` for classifier-free guidance. The VAE is frozen (latents from a `LatentPool`)."""
from __future__ import annotations

import torch

from ..chunks import FRAMES_PER_CHUNK
from ..schedules import DiffusionSchedule
from ..tokenizer import ClipTokenizer
from .cond_dropout import apply_text_dropout
from .datasets import sample_window, step_generator, step_rng
from .diffusion_loss import mse, noise_epsilon
from .loop import TrainSettings
from .stage_common import DiffusionStage, Models, encode_text, prepare


class BaseStage(DiffusionStage):
    name = "base"

    def __init__(self, models: Models, source, latents, settings: TrainSettings, device: torch.device,
                 text_dropout: float = 0.1, train_text: bool = True) -> None:
        self.models, self.source, self.latents = models, source, latents
        self.settings, self.device, self.text_dropout = settings, device, text_dropout
        self.unet = models.vanilla
        self.text = models.network.text_encoder
        trainable = {"unet": self.unet}
        frozen = [models.network.vae]
        if train_text:
            trainable["text_encoder"] = self.text
        else:
            frozen.append(self.text)
        self._trainable = trainable
        self._named = prepare(trainable, frozen, settings, device)
        self.tokenizer = ClipTokenizer()
        self.schedule = DiffusionSchedule.scaled_linear()

    def loss(self, step: int):
        rng = step_rng(self.settings.seed, step)
        gen = step_generator(self.settings.seed, step)
        windows = [sample_window(self.source, rng, FRAMES_PER_CHUNK) for _ in range(self.settings.batch)]
        x0 = torch.stack([self.latents.latents(w.video, w.start, w.frames) for w in windows]).to(self.device)
        drop = torch.rand(len(windows), generator=gen) < self.text_dropout
        captions = apply_text_dropout([self.source.caption(w.video) for w in windows], drop)
        with torch.set_grad_enabled("text_encoder" in self._trainable):
            context = encode_text(self.tokenizer, self.text, captions, self.device)
        noised = noise_epsilon(self.schedule, x0, gen)
        prediction = self.unet(noised.x_t, noised.t, context)
        return mse(prediction, noised.target), {}
