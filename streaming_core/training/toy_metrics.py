"""Measurements on generated toy-world videos: where the object is and what colour it has.

The background is estimated per frame as the median colour (objects cover well under half of the frame); object
pixels are those farther than `threshold` (L2 in RGB [0, 1]) from it. Works for solid backgrounds; a two-tone
background counts its second half as "object", so use single-colour prompts for these checks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..chunks import NEW_FRAMES


@dataclass
class ObjectColour:
    rgb: torch.Tensor  # (3,) mean colour of the object pixels (NaN when none)
    pixels: float  # object pixels per frame
    fraction: float  # object pixels per frame / frame area


def object_colour(frames: torch.Tensor, threshold: float = 0.25) -> ObjectColour:
    """frames (F, 3, H, W) in [0, 1] -> mean object colour over the frames and object size in pixels/frame."""
    flat = frames.float().flatten(2)  # (F, 3, HW)
    background = flat.median(dim=2).values[:, :, None]
    mask = (flat - background).norm(dim=1) > threshold  # (F, HW)
    count = mask.sum()
    if count == 0:
        return ObjectColour(torch.full((3,), float("nan")), 0.0, 0.0)
    rgb = (flat * mask[:, None]).sum(dim=(0, 2)) / count
    pixels = float(count) / frames.shape[0]
    return ObjectColour(rgb, pixels, pixels / flat.shape[2])


@dataclass
class ColourDrift:
    reference: torch.Tensor  # colour in the first chunk
    per_chunk: list[ObjectColour]  # every later group of 8 frames
    worst: float  # largest L-inf distance to the reference over chunks that show the object (inf if one doesn't)
    smallest_object: float  # fewest object pixels per frame in any chunk
    largest_fraction: float  # largest share of the frame taken by "object" pixels (noise makes this large)


def colour_drift(video: torch.Tensor, first: int = 16, min_pixels: float = 8.0, threshold: float = 0.25
                 ) -> ColourDrift:
    """Object colour of frames [0, first) vs every later 8-frame group; a group with fewer than `min_pixels`
    object pixels per frame (the object vanished) counts as infinite drift."""
    reference = object_colour(video[:first], threshold)
    chunks = [object_colour(video[i:i + NEW_FRAMES], threshold) for i in range(first, video.shape[0], NEW_FRAMES)]
    worst = 0.0
    for c in chunks:
        if c.pixels < min_pixels or reference.pixels < min_pixels:
            worst = float("inf")
        else:
            worst = max(worst, float((c.rgb - reference.rgb).abs().max()))
    smallest = min([reference.pixels] + [c.pixels for c in chunks])
    largest = max([reference.fraction] + [c.fraction for c in chunks])
    return ColourDrift(reference.rgb, chunks, worst, smallest, largest)
