"""Classifier-free guidance combinations (stream_stage.md §8). Rows are always evaluated in one batch."""
from __future__ import annotations

import torch


def cfg_single(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """ε̂ = ε(∅_text, ∅_img) + w·(ε(text, anchor) − ε(∅_text, ∅_img)) (released code, §8.1)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def cfg_dual(eps_null: torch.Tensor, eps_text: torch.Tensor, eps_full: torch.Tensor, scale_text: float,
             scale_anchor: float) -> torch.Tensor:
    """ε̂ = ε(∅,∅) + ω_text·(ε(τ,∅) − ε(∅,∅)) + ω_anchor·(ε(τ,a) − ε(τ,∅)) (paper Eq. 12, §8.2)."""
    return eps_null + scale_text * (eps_text - eps_null) + scale_anchor * (eps_full - eps_text)
