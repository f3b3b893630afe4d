"""Refiner stage: an MS-Vid2Vid-XL-type UNet (our UNet3D with the `ms_vid2vid` resampler geometry) trained with
the v objective on the refiner's log-SNR schedule (`NoiseTable.logsnr_cosine_interp`, refine_stage.md §8) on
24-frame clips at the refiner's native frame size: content upscaled into the frame with black bars, as the
refine stage places it (§7.2, pad mode `official`). The text encoder and the VAE are the stream model's, frozen;
the VAE runs with the refiner's latent scale 0.18215 (LDM convention). Captions are `"<prompt>, "` (§4.1),
dropped to "" with probability `text_dropout`. The UNet starts from the toy base UNet when the shapes agree
(`init_from_base`), else from PyTorch's default initialisation.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..refine_schedule import NoiseTable
from ..refiner_files import refiner_unet_config, refiner_vae_config
from ..refiner_model import RefinerConfig
from ..refiner_names import build_refiner_unet
from ..tokenizer import ClipTokenizer
from ..vae import Vae
from .cond_dropout import apply_text_dropout
from .datasets import sample_window, step_generator, step_rng
from .diffusion_loss import mse, noise_v
from .loop import TrainSettings
from .refiner_export import write_refiner_files
from .stage_common import Models, encode_text, prepare

REFINER_FRAMES = 24


class PaddedSource:
    """A source whose frames are placed at (top, left) in a black (frame_h, frame_w) canvas."""

    def __init__(self, source, frame_h: int, frame_w: int, top: int, left: int) -> None:
        self.source, self.frame_h, self.frame_w, self.top, self.left = source, frame_h, frame_w, top, left

    def __len__(self) -> int:
        return len(self.source)

    def length(self, index: int) -> int:
        return self.source.length(index)

    def caption(self, index: int) -> str:
        return self.source.caption(index)

    def read(self, index: int, start: int, count: int) -> torch.Tensor:
        frames = self.source.read(index, start, count)
        out = torch.zeros(count, 3, self.frame_h, self.frame_w)
        h, w = frames.shape[-2:]
        out[:, :, self.top:self.top + h, self.left:self.left + w] = frames
        return out

    def key(self) -> str:
        return f"padded({self.source.key()},{self.frame_h}x{self.frame_w}@{self.top},{self.left})"


class RefinerStage:
    name = "refiner"

    def __init__(self, models: Models, refiner_cfg: RefinerConfig, source, latents_for, settings: TrainSettings,
                 device: torch.device, frames: int = REFINER_FRAMES, text_dropout: float = 0.1,
                 init_from_base: bool = True) -> None:
        """`source`: frames already at the native size; `latents_for(vae)`: builds the latent provider."""
        self.models, self.cfg, self.source = models, refiner_cfg, source
        self.settings, self.device, self.frames, self.text_dropout = settings, device, frames, text_dropout
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            self.unet = build_refiner_unet(refiner_unet_config(refiner_cfg))
        base = models.vanilla.state_dict()
        own = self.unet.state_dict()
        if init_from_base and set(base) == set(own) and all(base[k].shape == own[k].shape for k in own):
            self.unet.load_state_dict(base)
        self.vae = Vae(refiner_vae_config(refiner_cfg))
        self.vae.load_state_dict(models.network.vae.state_dict())
        self.text = models.network.text_encoder
        self._named = prepare({"unet": self.unet}, [self.text, self.vae], settings, device)
        self.latents = latents_for(self.vae)
        self.tokenizer = ClipTokenizer(split_pad_token=False)
        self.table = NoiseTable.logsnr_cosine_interp()

    def modules(self):
        return {"unet": self.unet}

    def trainable(self):
        return self._named

    def loss(self, step: int):
        rng = step_rng(self.settings.seed, step)
        gen = step_generator(self.settings.seed, step)
        windows = [sample_window(self.source, rng, self.frames) for _ in range(self.settings.batch)]
        x0 = torch.stack([self.latents.latents(w.video, w.start, w.frames) for w in windows]).to(self.device)
        drop = torch.rand(len(windows), generator=gen) < self.text_dropout
        captions = apply_text_dropout([self.source.caption(w.video) + ", " for w in windows], drop)
        with torch.no_grad():
            context = encode_text(self.tokenizer, self.text, captions, self.device)
        noised = noise_v(self.table.alphas, self.table.sigmas, x0, gen)
        return mse(self.unet(noised.x_t, noised.t, context), noised.target), {}

    def export(self, out_dir: Path, name: str, info: dict, dtype: torch.dtype = torch.float32):
        for m in (self.unet, self.text, self.vae):
            m.to("cpu")
        return write_refiner_files(out_dir, name, self.cfg, self.unet, self.text, self.vae, dtype)
