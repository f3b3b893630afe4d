"""CAM + APM stage (paper §10): CAM branch, the whole stream UNet (injectors, APM token mixing, spatial and
temporal layers), the anchor resampler and the image encoder train together; text encoder and VAE stay frozen.
The anchor is a frame among the first 16 of the video (the chunk comes later); per sample the text, the anchor
or both are dropped (`ConditionDropout`, default 5 % each) so that single and dual guidance work.

The released model keeps its OpenCLIP image encoder frozen; at toy size there is no pre-trained one, so the toy
image encoder is trained here (`train_image_encoder=False` freezes it for full-size runs).
"""
from __future__ import annotations

import torch

from ..schedules import DiffusionSchedule
from ..tokenizer import ClipTokenizer
from .cond_dropout import ConditionDropout, apply_text_dropout
from .datasets import step_generator, step_rng
from .diffusion_loss import mse, noise_epsilon
from .loop import TrainSettings
from .stage_common import DiffusionStage, Models, encode_text, prepare
from .stage_stream import stream_batch, stream_forward


class CamApmStage(DiffusionStage):
    name = "cam_apm"

    def __init__(self, models: Models, source, latents, settings: TrainSettings, device: torch.device,
                 dropout: ConditionDropout = ConditionDropout(), train_image_encoder: bool = True) -> None:
        self.models, self.source, self.latents = models, source, latents
        self.settings, self.device, self.dropout = settings, device, dropout
        net = models.network
        self._trainable = {"cam": net.unet, "unet": net.base_model, "resampler": net.resampler}
        frozen = [net.text_encoder, net.vae]
        if train_image_encoder:
            self._trainable["image_encoder"] = net.image_encoder
        else:
            frozen.append(net.image_encoder)
        self._named = prepare(self._trainable, frozen, settings, device)
        self.tokenizer = ClipTokenizer()
        self.schedule = DiffusionSchedule.scaled_linear()

    def loss(self, step: int):
        rng = step_rng(self.settings.seed, step)
        gen = step_generator(self.settings.seed, step)
        batch = stream_batch(self.source, self.latents, rng, self.settings.batch, self.device)
        net = self.models.network
        drop_text, drop_anchor = self.dropout.draw(len(batch.captions), gen)
        with torch.no_grad():
            text = encode_text(self.tokenizer, net.text_encoder, apply_text_dropout(batch.captions, drop_text),
                               self.device)
        keep = (~drop_anchor).to(self.device, batch.anchor.dtype).view(-1, 1, 1, 1)
        images = batch.anchor * keep  # a dropped anchor is the null image: zeros in [-1, 1]
        tokens = net.resampler(net.image_encoder(images))
        noised = noise_epsilon(self.schedule, batch.x0, gen)
        prediction = stream_forward(net, noised.x_t, noised.t, text, tokens, batch.cond)
        return mse(prediction, noised.target), {}
