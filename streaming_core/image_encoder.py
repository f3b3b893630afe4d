"""Frozen OpenCLIP ViT-H/14 image encoder of the APM (stream_stage.md §7.2).

Official class: `FrozenOpenCLIPImageEmbedder(arch="ViT-H-14", output_tokens=False)`. The anchor frame in [-1, 1]
is resized to 224×224 (kornia bicubic, align_corners, Gaussian anti-aliasing: `resize.py`), mapped to [0, 1],
normalised with the CLIP mean/std and passed through `model.visual`, whose output is the pooled, projected class
token `(B, 1024)` (not L2-normalised).

State-dict names relative to `image_encoder.` (open_clip `CLIP` without its text transformer)::

    model.visual.{class_embedding, positional_embedding, proj, conv1.weight, ln_pre.*, ln_post.*}
    model.visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2,
                                          mlp.c_fc, mlp.c_proj}
    model.{token_embedding.weight, positional_embedding, ln_final.*, text_projection, logit_scale}   (unused)
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .config import ImageEncoderConfig
from .resize import resize_bicubic_antialiased

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LAYER_NORM_EPS = 1e-5

# open_clip `CLIP` tensors kept in the official state dict although the image embedder never uses them (§7.2 item 5)
UNUSED_TEXT_SIDE_KEYS = (
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "ln_final.bias",
    "text_projection",
    "logit_scale",
)


class VisionAttention(nn.Module):
    """Multi-head self-attention with a packed `in_proj_weight (3D, D)` as `torch.nn.MultiheadAttention` names it."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3D)
        qkv = qkv.view(b, l, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)  # (3, B, nh, L, hd)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, nh, L, hd), scale hd**-0.5
        return self.out_proj(y.transpose(1, 2).reshape(b, l, d))


class VisionMlp(nn.Module):
    """`c_proj(gelu(c_fc(x)))` with exact GELU (ViT-H-14 does not use quick_gelu)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block `x + attn(ln_1(x))`, `x + mlp(ln_2(x))` (no layer scale)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.attn = VisionAttention(width, num_heads)
        self.ln_2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = VisionMlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VisionTransformerStack(nn.Module):
    """`transformer.resblocks.N` of the visual tower."""

    def __init__(self, width: int, layers: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, num_heads, mlp_ratio) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class OpenClipVisual(nn.Module):
    """open_clip `VisionTransformer` with class-token pooling: normalised images → `(B, embed_dim)`."""

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
        if config.width % config.head_width:
            raise ValueError(f"width {config.width} is not a multiple of head_width {config.head_width}")
        width = config.width
        self.grid_size = config.image_size // config.patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.transformer = VisionTransformerStack(width, config.layers, width // config.head_width, config.mlp_ratio)
        self.ln_post = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.proj = nn.Parameter(scale * torch.randn(width, config.embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Args:
            pixels: CLIP-normalised images `(B, 3, image_size, image_size)`.

        Returns:
            pooled projected embedding `(B, embed_dim)`: `ln_post(class token) @ proj`.
        """
        x = self.conv1(pixels)  # (B, width, grid, grid)
        b, d = x.shape[:2]
        x = x.reshape(b, d, -1).transpose(1, 2)  # (B, grid², width)
        cls = self.class_embedding.to(x.dtype).view(1, 1, d).expand(b, 1, d)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1 + grid², width)
        x = self.transformer(self.ln_pre(x))
        pooled = self.ln_post(x)[:, 0]  # (B, width); ln_post is applied to all tokens before pooling
        return pooled @ self.proj


class OpenClipModel(nn.Module):
    """open_clip `CLIP` minus its text transformer: `visual` plus the unused text-side tensors (§7.2 item 5)."""

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.visual = OpenClipVisual(config)
        self.token_embedding = nn.Embedding(config.text_vocab_size, config.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(config.text_context_length, config.text_width))
        self.ln_final = nn.LayerNorm(config.text_width, eps=LAYER_NORM_EPS)
        self.text_projection = nn.Parameter(torch.empty(config.text_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.full((), math.log(1 / 0.07)))
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=config.text_width**-0.5)


class OpenClipImageEncoder(nn.Module):
    """APM image encoder: anchor images in [-1, 1] → pooled OpenCLIP embedding `(B, embed_dim)` (§7.2).

    Frozen in the official model. Builds on any device, including `torch.device("meta")`.
    """

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.model = OpenClipModel(config)
        # no buffers for mean/std: a meta-built module gets only its state dict loaded, so constants are made on use

    @classmethod
    def from_config(cls, config: ImageEncoderConfig) -> "OpenClipImageEncoder":
        return cls(config)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Official preprocessing (§7.2 steps 2-3).

        Args:
            images: `(B, 3, H, W)` in [-1, 1], any size.

        Returns:
            `(B, 3, image_size, image_size)` CLIP-normalised pixels, in the dtype of `images`.
        """
        size = self.config.image_size
        x = resize_bicubic_antialiased(images, (size, size))
        x = (x + 1.0) / 2.0
        mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args:
            images: `(B, 3, H, W)` in [-1, 1] (the anchor frame, or zeros for the null image of §7.4).

        Returns:
            `(B, embed_dim)` pooled projected class-token embedding, not L2-normalised.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        pixels = self.preprocess(images.float())  # resize and normalise in fp32 whatever the model dtype
        return self.model.visual(pixels.to(self.model.visual.proj.dtype))


def load_open_clip_visual_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    encoder: OpenClipImageEncoder | None = None,
    *,
    assign: bool = False,
) -> dict[str, torch.Tensor]:
    """Map a standalone open_clip ViT-H-14 state dict (`open_clip_pytorch_model.bin` layout) onto this module.

    Used when a checkpoint lacks `image_encoder.*` (VidXTend repack, §13.3/§13.4). `visual.*` and the text-side
    leftovers become `model.visual.*` / `model.*`; the text transformer (`transformer.*`) and the non-persistent
    `attn_mask` are dropped. A leading `module.` (DataParallel) is tolerated.

    Args:
        state_dict: open_clip `CLIP` state dict.
        encoder: if given, the mapped tensors are loaded into it; every `model.visual.*` tensor must be present
            with the right shape, missing text-side leftovers keep their current values.
        assign: passed to `load_state_dict` (use True for an encoder built on the meta device).

    Returns:
        the mapped state dict (names relative to `image_encoder.`).

    Raises:
        ValueError: on keys that do not belong to an open_clip CLIP model, no `visual.*` key at all, or (with
            `encoder`) missing visual tensors / shape mismatches; the message lists the offending names.
    """
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for name, tensor in state_dict.items():
        key = name[len("module.") :] if name.startswith("module.") else name
        if key.startswith("visual."):
            mapped["model." + key] = tensor
        elif key in UNUSED_TEXT_SIDE_KEYS:
            mapped["model." + key] = tensor
        elif key.startswith("transformer.") or key == "attn_mask":
            continue  # text tower: deleted by the official image embedder
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"{len(unknown)} keys do not belong to an open_clip CLIP state dict (first 20: {sorted(unknown)[:20]}); "
            "expected `visual.*`, `transformer.*` and the text-side tensors of open_clip ViT-H-14 "
            "(open_clip_pytorch_model.bin from laion/CLIP-ViT-H-14-laion2B-s32B-b79K)"
        )
    if not any(k.startswith("model.visual.") for k in mapped):
        raise ValueError("the state dict has no `visual.*` tensors; it is not an open_clip CLIP image model")
    if encoder is not None:
        expected = encoder.state_dict()
        missing = sorted(k for k in expected if k.startswith("model.visual.") and k not in mapped)
        extra = sorted(k for k in mapped if k not in expected)
        wrong = sorted(
            f"{k}: {tuple(mapped[k].shape)} vs {tuple(expected[k].shape)}"
            for k in mapped
            if k in expected and mapped[k].shape != expected[k].shape
        )
        if missing or extra or wrong:
            raise ValueError(
                f"open_clip state dict does not fit the image encoder config {encoder.config}: "
                f"{len(missing)} missing (first 20: {missing[:20]}), {len(extra)} unexpected (first 20: {extra[:20]}), "
                f"{len(wrong)} shape mismatches (first 20: {wrong[:20]})"
            )
        encoder.load_state_dict(mapped, strict=False, assign=assign)
    return mapped
