"""Classifier-free guidance with standard-deviation rescale and the model-output -> x0 conversion of the
refinement stage (refine_stage.md §11).

    v_g   = v_u + g·(v_c − v_u)
    ratio = std(v_c) / (std(v_g) + 1e-12)      per batch entry, over all other elements, Bessel-corrected
    v_r   = v_g·(φ·ratio + (1 − φ))
    x0    = α_t·x̂ − σ_t·v_r                    ("v" prediction)   or   (x̂ − σ_t·ε_r)/α_t   ("epsilon")

α_t, σ_t are read at the integer timestep the network saw. Everything runs in float32 whatever the network dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PREDICTIONS = ("v", "epsilon")


@dataclass(frozen=True)
class GuidedX0:
    """`v_guided` (after the guidance combination), `ratio` ((B,) std ratio, None when the rescale is off),
    `v_rescaled` (the output used for x0), `x0`. All float32 with the shape of the model output."""

    v_guided: torch.Tensor
    ratio: torch.Tensor | None
    v_rescaled: torch.Tensor
    x0: torch.Tensor


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    return value.reshape(-1, *([1] * (like.dim() - 1))) if value.dim() else value


def to_x0(model_out: torch.Tensor, x_hat: torch.Tensor, alpha: torch.Tensor | float, sigma: torch.Tensor | float,
          prediction: str = "v") -> torch.Tensor:
    """x0 from a model output at VP-scaled input x̂; `alpha`/`sigma` scalars or (B,) tensors."""
    a, s = _per_sample(alpha, x_hat), _per_sample(sigma, x_hat)
    if prediction == "v":
        return a * x_hat - s * model_out
    if prediction == "epsilon":
        return (x_hat - s * model_out) / a
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def guided_x0(v_cond: torch.Tensor, v_uncond: torch.Tensor | None, x_hat: torch.Tensor,
              alpha: torch.Tensor | float, sigma: torch.Tensor | float, scale: float,
              rescale: float | None, prediction: str = "v") -> GuidedX0:
    """Guided, rescaled x0 of one chunk.

    Args:
        v_cond, v_uncond: model outputs `(B, C, F, h, w)` for the caption and the negative prompt; with
            `scale == 1` the unconditional output is not needed (None allowed) and the rescale is skipped.
        x_hat: the model input (VP scale), same shape.
        alpha, sigma: α_t, σ_t at the integer model timestep (scalars or (B,)).
        scale: guidance scale g. rescale: φ in [0, 1], or None to skip the rescale.
        prediction: "v" (MS-Vid2Vid-XL) or "epsilon"; the rescale acts in that output space.
    """
    v_c = v_cond.float()
    x_hat = x_hat.float()
    if scale == 1.0:
        v_g, ratio, v_r = v_c, None, v_c
    else:
        if v_uncond is None:
            raise ValueError(f"guidance scale {scale} needs the unconditional model output")
        v_u = v_uncond.float()
        v_g = v_u + scale * (v_c - v_u)
        if rescale is None:
            ratio, v_r = None, v_g
        else:
            ratio = v_c.flatten(1).std(dim=1) / (v_g.flatten(1).std(dim=1) + 1e-12)
            v_r = v_g * (rescale * _per_sample(ratio, v_g) + (1 - rescale))
    return GuidedX0(v_g, ratio, v_r, to_x0(v_r, x_hat, alpha, sigma, prediction))
