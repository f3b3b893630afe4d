"""Exponential moving average of parameters (optional; the exported weights are the EMA when enabled)."""
from __future__ import annotations

import torch
from torch import nn


class Ema:
    """shadow <- decay·shadow + (1 − decay)·param after every optimizer step, for the given named parameters."""

    def __init__(self, named: dict[str, nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = named
        self.shadow = {k: p.detach().clone().float() for k, p in named.items()}

    @torch.no_grad()
    def update(self) -> None:
        for k, p in self.params.items():
            self.shadow[k].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for k, p in self.params.items():
            p.copy_(self.shadow[k].to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        missing = set(self.params) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        self.shadow = {k: state["shadow"][k].clone() for k in self.params}
