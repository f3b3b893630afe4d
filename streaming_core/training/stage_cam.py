"""CAM stage: the CAM branch and the injectors learn to continue a video from its last 8 frames; the stream UNet
is frozen and APM is off (gates `alpha` stay 0, so the image tokens have no effect). With `from_base` the stage
first copies the vanilla UNet into the stream UNet and the CAM branch and resets injectors / conditioning
encoder / APM to their neutral initial values (the start of StreamingT2V training). Text is dropped (-> "")
with probability `text_dropout` so classifier-free guidance works."""
from __future__ import annotations

import torch

from ..schedules import DiffusionSchedule
from ..tokenizer import ClipTokenizer
from .cond_dropout import apply_text_dropout
from .datasets import step_generator, step_rng
from .diffusion_loss import mse, noise_epsilon
from .init_weights import stream_from_base, zero_stream_additions
from .loop import TrainSettings
from .stage_common import DiffusionStage, Models, encode_text, prepare
from .stage_stream import injectors, stream_batch, stream_forward


class CamStage(DiffusionStage):
    name = "cam"

    def __init__(self, models: Models, source, latents, settings: TrainSettings, device: torch.device,
                 text_dropout: float = 0.1, from_base: bool = False) -> None:
        self.models, self.source, self.latents = models, source, latents
        self.settings, self.device, self.text_dropout = settings, device, text_dropout
        net = models.network
        if from_base:
            stream_from_base(net, models.vanilla)
            zero_stream_additions(net)
        self._trainable = {"cam": net.unet, "injectors": injectors(net)}
        frozen = [net.base_model, net.text_encoder, net.vae, net.resampler, net.image_encoder]
        self._named = prepare(self._trainable, frozen, settings, device)
        self.tokenizer = ClipTokenizer()
        self.schedule = DiffusionSchedule.scaled_linear()

    def loss(self, step: int):
        rng = step_rng(self.settings.seed, step)
        gen = step_generator(self.settings.seed, step)
        batch = stream_batch(self.source, self.latents, rng, self.settings.batch, self.device)
        net = self.models.network
        drop = torch.rand(len(batch.captions), generator=gen) < self.text_dropout
        with torch.no_grad():
            text = encode_text(self.tokenizer, net.text_encoder, apply_text_dropout(batch.captions, drop), self.device)
        tokens = torch.zeros(text.shape[0], self.models.cfg.apm.num_image_tokens, text.shape[2], device=self.device)
        noised = noise_epsilon(self.schedule, batch.x0, gen)
        prediction = stream_forward(net, noised.x_t, noised.t, text, tokens, batch.cond)
        return mse(prediction, noised.target), {}
