"""Chunk plan and randomized blending of overlapping chunks (refine_stage.md §7.4, §12).

Chunk plan: for N ≤ C one chunk of N frames; otherwise n = ⌈(N − O)/(C − O)⌉ chunks of C frames starting at
a_j = ⌊(2·j·(N − C) + (n − 1)) / (2·(n − 1))⌋ (j·(N − C)/(n − 1) rounded half up). a_0 = 0, a_{n−1} = N − C, every
overlap O_j = a_{j−1} + C − a_j ≥ O, no frame is dropped, and on the official grid (N = n·(C − O) + O) the starts
are j·(C − O).

Merge ("later chunks overwrite from their cut"): chunks are written in increasing j; chunk j writes its frames
from a_j + r_j on, so the first r_j frames of its overlap keep the earlier chunks' values. Variants:

| variant     | cut r_j at step i                          | P(overlap frame f from the earlier chunk) |
|-------------|--------------------------------------------|-------------------------------------------|
| `x0_random` | uniform in {0, …, O_j − 1} (official)      | (O − 1 − f)/O                             |
| `xt_random` | uniform in {0, …, O_j} (paper)             | (O − f)/(O + 1)                           |
| `hard`      | ⌊O_j/2⌋ every step                         | fixed seam                                |
| `average`   | none: mean of all chunks covering a frame  | —                                         |

Cuts come from the keyed generator (`keyed_rng`, stream 3, indices (step, chunk)); r_0 = 0. O = 0 means tiling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .keyed_rng import STREAM_BLEND, keyed_randint

VARIANTS = ("x0_random", "xt_random", "average", "hard")


def chunk_starts(n: int, chunk: int, overlap: int) -> list[int]:
    """First frame of every chunk for `n` frames (§7.4). Chunks have `min(chunk, n)` frames."""
    if chunk < 1 or not 0 <= overlap < chunk:
        raise ValueError(f"need chunk >= 1 and 0 <= overlap < chunk, got chunk={chunk}, overlap={overlap}")
    if n < 1:
        raise ValueError(f"need at least one frame, got {n}")
    if n <= chunk:
        return [0]
    stride = chunk - overlap
    count = -(-(n - overlap) // stride)
    span = n - chunk
    return [(2 * j * span + (count - 1)) // (2 * (count - 1)) for j in range(count)]


def chunk_overlaps(starts: Sequence[int], length: int) -> list[int]:
    """O_j = a_{j−1} + length − a_j for j ≥ 1 (overlap with the previous chunk); entry 0 is 0."""
    return [0] + [starts[j - 1] + length - starts[j] for j in range(1, len(starts))]


def cut_range(variant: str, overlap: int) -> tuple[int, int]:
    """Inclusive range of the cut r for an overlap of `overlap` frames."""
    if variant == "x0_random":
        return 0, max(overlap - 1, 0)
    if variant == "xt_random":
        return 0, overlap
    if variant == "hard":
        return overlap // 2, overlap // 2
    if variant == "average":
        return 0, 0
    raise ValueError(f"unknown blending variant {variant!r}; expected one of {VARIANTS}")


def earlier_chunk_probability(variant: str, overlap: int, f: int) -> float:
    """Probability that overlap frame f (0-based) keeps the earlier chunk's value under a random cut."""
    lo, hi = cut_range(variant, overlap)
    return sum(1 for r in range(lo, hi + 1) if f < r) / (hi - lo + 1)


@dataclass(frozen=True)
class BlendPlan:
    """Chunking and blending settings; `starts`/`cuts` are pure functions of (n, step, seed)."""

    chunk_size: int = 24
    overlap: int = 8
    variant: str = "x0_random"
    seed: int = 666

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown blending variant {self.variant!r}; expected one of {VARIANTS}")
        if self.chunk_size < 1 or not 0 <= self.overlap < self.chunk_size:
            raise ValueError(f"need chunk_size >= 1 and 0 <= overlap < chunk_size, got {self.chunk_size}, "
                             f"{self.overlap}")

    def starts(self, n: int) -> list[int]:
        return chunk_starts(n, self.chunk_size, self.overlap)

    def chunk_length(self, n: int) -> int:
        return min(self.chunk_size, n)

    def overlaps(self, n: int) -> list[int]:
        return chunk_overlaps(self.starts(n), self.chunk_length(n))

    def cuts(self, step: int, n: int) -> list[int]:
        """r_j for every chunk at solver step `step` (r_0 = 0); keyed draws (stream 3, (step, j))."""
        out = [0]
        for j, o in enumerate(self.overlaps(n)[1:], start=1):
            lo, hi = cut_range(self.variant, o)
            out.append(lo if lo == hi else keyed_randint(self.seed, STREAM_BLEND, step, j, lo, hi))
        return out


def merge(preds: Sequence[torch.Tensor], starts: Sequence[int], n: int, variant: str,
          cuts: Sequence[int] | None = None, dim: int = 2) -> torch.Tensor:
    """Merge per-chunk tensors into one whole-video tensor along frame axis `dim`.

    Args:
        preds: chunk j's values, with `preds[j].shape[dim]` frames starting at frame `starts[j]`.
        starts: increasing chunk starts; the chunks must cover 0 … n−1 without gaps.
        n: frames of the result.
        variant: one of `VARIANTS`; `average` ignores `cuts`.
        cuts: r_j per chunk (r_0 = 0, 0 ≤ r_j ≤ O_j); required unless `variant == "average"`.
    Returns:
        a new tensor with the dtype/device of `preds[0]`; frames covered by one chunk equal it exactly.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown blending variant {variant!r}; expected one of {VARIANTS}")
    if len(preds) != len(starts) or not preds:
        raise ValueError(f"{len(preds)} predictions for {len(starts)} chunk starts")
    lengths = [p.shape[dim] for p in preds]
    if starts[0] != 0 or starts[-1] + lengths[-1] != n:
        raise ValueError(f"chunks starting at {list(starts)} with lengths {lengths} do not span {n} frames")
    for j in range(1, len(starts)):
        if not starts[j - 1] < starts[j] <= starts[j - 1] + lengths[j - 1]:
            raise ValueError(f"chunk {j} starts at {starts[j]}: a gap or non-increasing start after "
                             f"chunk {j - 1} ({starts[j - 1]} + {lengths[j - 1]})")
    shape = list(preds[0].shape)
    shape[dim] = n
    if variant == "average":
        total = torch.zeros(shape, dtype=preds[0].dtype, device=preds[0].device)
        count = torch.zeros(n, dtype=preds[0].dtype, device=preds[0].device)
        for p, a, length in zip(preds, starts, lengths):
            total.narrow(dim, a, length).add_(p)
            count[a:a + length] += 1
        view = [1] * len(shape)
        view[dim] = n
        return total / count.reshape(view)
    if cuts is None or len(cuts) != len(preds):
        raise ValueError(f"variant {variant!r} needs one cut per chunk, got {cuts}")
    if cuts[0] != 0:
        raise ValueError(f"the first chunk's cut must be 0, got {cuts[0]}")
    out = torch.empty(shape, dtype=preds[0].dtype, device=preds[0].device)
    for j, (p, a, length, r) in enumerate(zip(preds, starts, lengths, cuts)):
        if j and not 0 <= r <= starts[j - 1] + lengths[j - 1] - a:
            raise ValueError(f"cut {r} of chunk {j} outside 0 … {starts[j - 1] + lengths[j - 1] - a} (its overlap)")
        out.narrow(dim, a + r, length - r).copy_(p.narrow(dim, r, length - r))
    return out


def merge_clips(a: torch.Tensor, b: torch.Tensor, overlap: int, variant: str = "x0_random", seed: int = 666,
                step: int = 0) -> torch.Tensor:
    """Join two clips `(F_a, …)` and `(F_b, …)` whose last / first `overlap` frames show the same time (frame
    axis 0) into `F_a + F_b − overlap` frames, blending the overlap with `variant` (cut drawn with keyed index
    (step, 1)). `overlap = 0` concatenates."""
    if not (0 <= overlap < a.shape[0] and overlap <= b.shape[0]):
        raise ValueError(f"overlap {overlap} does not fit clips of {a.shape[0]} and {b.shape[0]} frames")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"clip frame shapes differ: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
    lo, hi = cut_range(variant, overlap)
    r = lo if lo == hi else keyed_randint(seed, STREAM_BLEND, step, 1, lo, hi)
    n = a.shape[0] + b.shape[0] - overlap
    return merge([a, b.to(a.dtype)], [0, a.shape[0] - overlap], n, variant, [0, r], dim=0)
