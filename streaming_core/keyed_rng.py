"""Counter-based random draws of the refinement stage (refine_stage.md §14).

Every draw has its own key derived from (seed, stream, a, b), so a value never depends on how many draws came
before it, on the evaluation order of chunks, on the schedule (step-major or wavefront) or on the device:

    mix64(z) = splitmix64 finaliser (all arithmetic mod 2^64)
    key(seed, stream, a, b) = mix64(mix64(mix64(mix64(seed) ^ stream) ^ a) ^ b) mod 2^63

The draw itself is made by a fresh `torch.Generator("cpu").manual_seed(key)` in float32; callers move/cast it.

| stream             | id | (a, b)          | draw                     |
|--------------------|----|-----------------|--------------------------|
| SDEdit ε           | 1  | (frame, 0)      | `randn(4, h, w)`         |
| solver noise       | 2  | (step, frame)   | `randn(4, h, w)`         |
| blending cut       | 3  | (step, chunk)   | `randint(lo, hi + 1)`    |
| VAE posterior      | 4  | (frame, 0)      | `randn(4, h, w)`         |
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

KEY_DERIVATION_VERSION = 1  # part of the output metadata; bump when the derivation changes

STREAM_SDEDIT = 1
STREAM_SOLVER = 2
STREAM_BLEND = 3
STREAM_POSTERIOR = 4

_MASK64 = (1 << 64) - 1


def mix64(z: int) -> int:
    """splitmix64 finaliser of `z mod 2^64` (returns an int in [0, 2^64))."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_key(seed: int, stream: int, a: int, b: int) -> int:
    """Generator seed in [0, 2^63) for draw (a, b) of `stream` under the user `seed` (any Python int;
    negative values and indices are taken mod 2^64)."""
    z = mix64(int(seed) & _MASK64)
    z = mix64(z ^ (int(stream) & _MASK64))
    z = mix64(z ^ (int(a) & _MASK64))
    z = mix64(z ^ (int(b) & _MASK64))
    return z & ((1 << 63) - 1)


def _generator(seed: int, stream: int, a: int, b: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(derive_key(seed, stream, a, b))


def keyed_randn(seed: int, stream: int, a: int, b: int, shape: Sequence[int]) -> torch.Tensor:
    """Standard normal float32 CPU tensor of `shape` for draw (a, b) of `stream`."""
    return torch.randn(tuple(shape), generator=_generator(seed, stream, a, b), dtype=torch.float32)


def keyed_randint(seed: int, stream: int, a: int, b: int, lo: int, hi: int) -> int:
    """Uniform integer in the inclusive range [lo, hi] for draw (a, b) of `stream`."""
    if hi < lo:
        raise ValueError(f"empty range [{lo}, {hi}]")
    return int(torch.randint(lo, hi + 1, (1,), generator=_generator(seed, stream, a, b))[0])


def keyed_frames_randn(seed: int, stream: int, frames: Iterable[int], shape: Sequence[int],
                       step: int | None = None) -> torch.Tensor:
    """Per-frame draws stacked on a new frame axis 1: `(1, shape[0], F, *shape[1:])`, i.e. a `(1, 4, F, h, w)`
    latent for `shape = (4, h, w)`.

    Indices: (step, frame) when `step` is given (solver noise), else (frame, 0) (SDEdit ε, VAE posterior). A frame
    gets the same values whatever other frames are requested with it.
    """
    frames = list(frames)
    if step is None:
        draws = [keyed_randn(seed, stream, f, 0, shape) for f in frames]
    else:
        draws = [keyed_randn(seed, stream, step, f, shape) for f in frames]
    if not draws:
        return torch.empty((1, shape[0], 0, *shape[1:]), dtype=torch.float32)
    return torch.stack(draws, dim=1)[None]
