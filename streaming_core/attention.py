"""Attention, the APM token mixing, and the transformer blocks of the ModelScope UNet3D.

Parameter names equal diffusers' (`to_q`, `to_k`, `to_v`, `to_out.0`, `ff.net.0.proj`, ...) so official
state dicts load without renaming. All attention goes through `torch.nn.functional.scaled_dot_product_attention`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ApmConfig


def sdpa_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax attention, scale 1/sqrt(head width), no mask.

    q: (N, Lq, heads*d), k/v: (N, Lk, heads*d) -> (N, Lq, heads*d).
    """
    n, lq, inner = q.shape
    d = inner // heads
    q = q.view(n, lq, heads, d).transpose(1, 2)
    k = k.view(n, -1, heads, d).transpose(1, 2)
    v = v.view(n, -1, heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(n, lq, inner)


def apm_mix(context: torch.Tensor, conv: nn.Conv1d, conv_ln: nn.LayerNorm, alpha: torch.Tensor,
            num_text_tokens: int) -> torch.Tensor:
    """APM token mixing (stream_stage.md §7.5, paper Eq. 6): context (B, T+I, D) -> (B, T, D).

    `c[:, :T] + SiLU(alpha) * LayerNorm_D(Conv1d_{T+I -> T, k=3, pad 1}(c))`: tokens act as the Conv1d channels
    and the feature axis as its length. The parameters live on the owning attention module (`conv`,
    `conv_ln`, `alpha`), as in the official checkpoint.
    """
    mixed = conv_ln(conv(context))
    return context[:, :num_text_tokens] + F.silu(alpha) * mixed


class Attention(nn.Module):
    """Multi-head attention with diffusers parameter names.

    `apm` (an `ApmConfig`) adds the APM mixing parameters (`conv`, `conv_ln`, `alpha`): the context keys/values
    are computed from the mixed 77-token context (only the base UNet's spatial cross-attentions have them).
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 qkv_bias: bool = False, apm: ApmConfig | None = None) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])
        self.apm_tokens = (apm.num_text_tokens, apm.num_image_tokens) if apm is not None else None
        if apm is not None:
            text, image = self.apm_tokens
            k = apm.mix_kernel_size
            self.conv = nn.Conv1d(text + image, text, kernel_size=k, padding=k // 2)
            self.conv_ln = nn.LayerNorm(context_dim, eps=apm.mix_ln_eps)
            self.alpha = nn.Parameter(torch.zeros(()))

    def mix_context(self, context: torch.Tensor) -> torch.Tensor:
        """The context the keys/values are computed from: APM-mixed when this layer has APM parameters.

        context: (B, L, D). With APM, L must equal T + I (text + image tokens); a 77-token context is an error
        rather than a silent skip of the mixing (stream_stage.md §7.5 requirement 2).
        """
        if self.apm_tokens is None:
            return context
        text, image = self.apm_tokens
        if context.shape[1] != text + image:
            raise ValueError(
                f"APM cross-attention expects {text}+{image}={text + image} context tokens (text ‖ anchor image "
                f"tokens), got {context.shape[1]}; pass the anchor image tokens (extension mode) or build the "
                f"UNet in vanilla mode"
            )
        return apm_mix(context, self.conv, self.conv_ln, self.alpha, text)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                frames_per_context: int = 1) -> torch.Tensor:
        """x: (N, L, C). context: (N // frames_per_context, Lc, Dc) or None (self-attention).

        With `frames_per_context = F > 1` the same context serves F consecutive rows of x (all frames of one
        sample); the F query sequences are then attended jointly, which is exact because keys/values are
        shared, and avoids repeating the context F times.
        """
        if context is None:
            return self.to_out[0](sdpa_heads(self.to_q(x), self.to_k(x), self.to_v(x), self.heads))
        ctx = self.mix_context(context)
        n, length, c = x.shape
        b = n // frames_per_context
        q = self.to_q(x).reshape(b, frames_per_context * length, -1)
        out = sdpa_heads(q, self.to_k(ctx), self.to_v(ctx), self.heads)
        return self.to_out[0](out.reshape(n, length, -1))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward, 4x inner width (`ff.net.0.proj`, `ff.net.2`)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """LayerNorm -> attn1 (self) -> LayerNorm -> attn2 (cross, or self when `context_dim` is None)
    -> LayerNorm -> GEGLU FF, each with a residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None,
                 apm: ApmConfig | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim=context_dim, apm=apm)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.is_cross = context_dim is not None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                frames_per_context: int = 1) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.is_cross:
            x = x + self.attn2(self.norm2(x), context, frames_per_context)
        else:
            x = x + self.attn2(self.norm2(x))
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """Spatial transformer (diffusers `Transformer2DModel`, linear projections, one block).

    x: (B·F, C, H, W), context: (B, L, D) shared by the F frames of a sample -> (B·F, C, H, W).
    """

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, norm_groups: int,
                 apm: ApmConfig | None = None) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim, apm)]
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        n, c, h, w = x.shape
        residual = x
        x = self.norm(x).permute(0, 2, 3, 1).reshape(n, h * w, c)  # (B·F, HW, C)
        x = self.proj_in(x)
        frames_per_context = n // context.shape[0]
        for block in self.transformer_blocks:
            x = block(x, context, frames_per_context)
        x = self.proj_out(x)
        return x.reshape(n, h, w, c).permute(0, 3, 1, 2) + residual


class TransformerTemporal(nn.Module):
    """Per-pixel attention over frames (diffusers `TransformerTemporalModel`, two self-attentions).

    x: (B·F, C, H, W) -> (B·F, C, H, W). No positional encoding, no context.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, norm_groups: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, dim_head, None)])
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        n, c, h, w = x.shape
        b = n // num_frames
        residual = x
        x = x.view(b, num_frames, c, h, w).permute(0, 2, 1, 3, 4)  # (B, C, F, H, W)
        x = self.norm(x)
        x = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, num_frames, c)  # (B·H·W, F, C)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x)
        x = self.proj_out(x)
        x = x.view(b, h, w, num_frames, c).permute(0, 3, 4, 1, 2).reshape(n, c, h, w)
        return x + residual
