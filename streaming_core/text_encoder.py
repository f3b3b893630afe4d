"""CLIP text encoder with transformers' `CLIPTextModel` parameter names (stream_stage.md §4).

The released model is the OpenCLIP ViT-H/14 text tower converted to the Hugging Face layout with its last block
dropped (23 layers, "penultimate" semantics). The stream stage uses the last hidden state after
`final_layer_norm` at all 77 positions, with a causal self-attention mask and no padding mask. The pooled output
and the text projection are not part of this model.

State-dict names relative to `text_encoder.`::

    text_model.embeddings.token_embedding.weight            (vocab_size, hidden)
    text_model.embeddings.position_embedding.weight         (max_position_embeddings, hidden)
    text_model.encoder.layers.N.self_attn.{q,k,v,out}_proj.{weight,bias}
    text_model.encoder.layers.N.layer_norm{1,2}.{weight,bias}
    text_model.encoder.layers.N.mlp.fc{1,2}.{weight,bias}
    text_model.final_layer_norm.{weight,bias}
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextEncoderConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """Sigmoid approximation of GELU used by the original OpenAI CLIP: `x · σ(1.702 x)`."""
    return x * torch.sigmoid(1.702 * x)


def exact_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU with the exact erf formulation (transformers' `"gelu"`)."""
    return F.gelu(x)


ACTIVATIONS = {"gelu": exact_gelu, "quick_gelu": quick_gelu}


class ClipTextEmbeddings(nn.Module):
    """Token plus learned absolute position embeddings, `(B, L) -> (B, L, D)`."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[-1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(
                f"input_ids has {length} tokens but the text encoder has only "
                f"{self.position_embedding.num_embeddings} positions; tokenize with max_length "
                f"{self.position_embedding.num_embeddings}"
            )
        # position ids are recomputed here, never stored (the official state dict has no `position_ids`)
        positions = torch.arange(length, device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class ClipAttention(nn.Module):
    """Multi-head causal self-attention with separate q/k/v/out projections (scale `head_dim**-0.5`)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not divisible by num_attention_heads "
                f"{config.num_attention_heads}"
            )
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        q = self.q_proj(x).view(b, l, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, L, hd)
        k = self.k_proj(x).view(b, l, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, l, self.num_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(self.head_dim))
        y = y.transpose(1, 2).reshape(b, l, d)  # (B, L, D)
        return self.out_proj(y)


class ClipMlp(nn.Module):
    """`fc2(act(fc1(x)))` with `act` from `config.hidden_act` ("gelu" or "quick_gelu")."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        if config.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act {config.hidden_act!r} is not supported; expected one of {sorted(ACTIVATIONS)}"
            )
        self.activation = ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class ClipEncoderLayer(nn.Module):
    """Pre-norm transformer block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.self_attn = ClipAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ClipMlp(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipEncoder(nn.Module):
    """The stack of `num_hidden_layers` encoder layers (`encoder.layers.N`)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ClipEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ClipTextTransformer(nn.Module):
    """Embeddings → encoder → `final_layer_norm` (the `text_model` submodule)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.embeddings = ClipTextEmbeddings(config)
        self.encoder = ClipEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.final_layer_norm(self.encoder(self.embeddings(input_ids)))


class ClipTextEncoder(nn.Module):
    """Native `CLIPTextModel`: token ids `(B, 77)` → last hidden state `(B, 77, hidden_size)` (§4).

    Builds on any device, including `torch.device("meta")` for layout checks and lazy loading.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.text_model = ClipTextTransformer(config)

    @classmethod
    def from_config(cls, config: TextEncoderConfig) -> "ClipTextEncoder":
        return cls(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Args:
            input_ids: int64 `(B, L)` with L ≤ `max_position_embeddings` (77), from `ClipTokenizer`.

        Returns:
            `(B, L, hidden_size)` hidden states after `final_layer_norm`, in the parameters' dtype.
        """
        return self.text_model(input_ids)
