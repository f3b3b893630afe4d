"""Latent sizes the MS-Vid2Vid-XL UNet accepts (refine_stage.md §3.4).

Its downsampler (padding 2 rows, 1 column, stride 2) maps h -> ⌊(h+1)/2⌋ + 1 and w -> ⌈w/2⌉, its upsampler maps
h -> 2h − 2 and w -> 2w. The decoder reproduces every encoder size only when each downsampler input is even:
with three downsamplers that means h ≡ 2 (mod 8) and w ≡ 0 (mod 8) (pixels: H ≡ 16 (mod 64), W ≡ 0 (mod 64)).
"""
from __future__ import annotations


def _modulus(levels: int) -> int:
    return 2 ** levels


def is_legal_latent_height(h: int, downsamplers: int = 3) -> bool:
    m = _modulus(downsamplers)
    return h >= 2 and h % m == 2 % m


def is_legal_latent_width(w: int, downsamplers: int = 3) -> bool:
    return w >= 1 and w % _modulus(downsamplers) == 0


def nearest_legal(value: int, legal) -> list[int]:
    """The closest legal values below and above `value` (one or two entries, ascending)."""
    below = next((v for v in range(value, 0, -1) if legal(v)), None)
    above = next(v for v in range(max(value, 1), value + 1024) if legal(v))
    return sorted({v for v in (below, above) if v is not None})


def check_refiner_latent_size(h: int, w: int, downsamplers: int = 3, vae_factor: int = 8) -> None:
    """Raise ValueError unless the latent (h, w) round-trips through the `ms_vid2vid` UNet; the message names the
    nearest legal latent and pixel sizes. (90, 160), (90, 96), (10, 16), (10, 8) are legal; (90, 90) and
    (72, 128) are not."""
    ok_h = is_legal_latent_height(h, downsamplers)
    ok_w = is_legal_latent_width(w, downsamplers)
    if ok_h and ok_w:
        return
    m = _modulus(downsamplers)
    parts = []
    if not ok_h:
        hs = nearest_legal(h, lambda v: is_legal_latent_height(v, downsamplers))
        parts.append(f"height {h} is not ≡ {2 % m} (mod {m}); nearest legal latent heights "
                     f"{' or '.join(map(str, hs))} (pixels {' or '.join(str(v * vae_factor) for v in hs)})")
    if not ok_w:
        ws = nearest_legal(w, lambda v: is_legal_latent_width(v, downsamplers))
        parts.append(f"width {w} is not a multiple of {m}; nearest legal latent widths "
                     f"{' or '.join(map(str, ws))} (pixels {' or '.join(str(v * vae_factor) for v in ws)})")
    raise ValueError(f"latent size {h}x{w} (pixels {h * vae_factor}x{w * vae_factor}) does not fit the "
                     f"MS-Vid2Vid-XL UNet: " + "; ".join(parts))
