"""Where chunk boundaries lie in a video, for the seam metrics (spec `metrics.md` §4 #3 and #7).

Two layouts:

* stream stage (`first=16,stride=8`): the first chunk writes frames 0..first−1, extension chunk k ≥ 1 writes
  frames first + stride·(k − 1) ... ; its boundary is the first frame it writes, `first + stride·(k − 1)`
  (16, 24, 32, … for StreamingT2V);
* refinement (`refine:24/8`, chunk C / overlap O): chunk starts a_j of the project plan (`refine_stage.md`
  §7.4: n = ⌈(N − O)/(C − O)⌉ chunks, a_j = ⌊(2j(N − C) + n − 1) / (2(n − 1))⌋; the official grid when N is on
  it). Randomized blending cuts chunk j − 1 / j at a random frame of the overlap that changes every step, so
  every frame a_j … a_j + O_j − 1 (O_j = a_{j−1} + C − a_j) can be the first frame taken from chunk j: all of
  them are boundaries;
* `none`: no boundaries (seam ratio and seam-locked fraction are then reported as null).

A boundary b marks the frame pair (b − 1, b) for the seam ratio, and a detected cut at frame b is
"seam-locked".
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ChunkLayout", "parse_layout", "refine_chunk_starts", "STREAM_LAYOUT"]


def refine_chunk_starts(frames: int, chunk: int, overlap: int) -> list[int]:
    """Chunk starts of the refinement plan (`refine_stage.md` §7.4) for a video of `frames` frames."""
    if not 0 <= overlap < chunk:
        raise ValueError(f"the refinement overlap must be in [0, chunk), got chunk {chunk}, overlap {overlap}")
    if frames <= chunk:
        return [0]
    count = -(-(frames - overlap) // (chunk - overlap))
    if count < 2:
        return [0]
    return [(2 * j * (frames - chunk) + count - 1) // (2 * (count - 1)) for j in range(count)]


@dataclass(frozen=True)
class ChunkLayout:
    """A chunk layout: kind "stream" (first, stride), "refine" (chunk, overlap) or "none"."""

    kind: str = "stream"
    first: int = 16
    stride: int = 8
    chunk: int = 24
    overlap: int = 8

    def __post_init__(self) -> None:
        if self.kind not in ("stream", "refine", "none"):
            raise ValueError(f"unknown chunk layout kind {self.kind!r}; expected stream, refine or none")
        if self.kind == "stream" and (self.first < 1 or self.stride < 1):
            raise ValueError(f"stream layout needs first >= 1 and stride >= 1, got {self.first}, {self.stride}")
        if self.kind == "refine" and not 0 <= self.overlap < self.chunk:
            raise ValueError(f"refine layout needs 0 <= overlap < chunk, got {self.chunk}/{self.overlap}")

    def boundaries(self, frames: int) -> list[int]:
        """Sorted frame indices (1 ≤ b < frames) that are the first frame written by a new chunk."""
        if self.kind == "stream":
            return list(range(self.first, frames, self.stride))
        if self.kind == "refine":
            starts = refine_chunk_starts(frames, self.chunk, self.overlap)
            found: set[int] = set()
            for previous, start in zip(starts, starts[1:]):
                found.update(range(start, min(previous + self.chunk, frames)))
            return sorted(b for b in found if 1 <= b < frames)
        return []

    def chunk_spans(self, frames: int) -> list[tuple[int, int]]:
        """[start, end) of the frames each chunk contributes (for per-chunk statistics)."""
        if self.kind == "none" or frames <= 0:
            return [(0, frames)] if frames > 0 else []
        if self.kind == "stream":
            edges = [0] + self.boundaries(frames) + [frames]
        else:
            starts = refine_chunk_starts(frames, self.chunk, self.overlap)
            edges = starts + [frames]
        return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]

    def as_dict(self) -> dict:
        if self.kind == "stream":
            return {"kind": "stream", "first": self.first, "stride": self.stride}
        if self.kind == "refine":
            return {"kind": "refine", "chunk": self.chunk, "overlap": self.overlap}
        return {"kind": "none"}

    def __str__(self) -> str:
        if self.kind == "stream":
            return f"first={self.first},stride={self.stride}"
        if self.kind == "refine":
            return f"refine:{self.chunk}/{self.overlap}"
        return "none"


STREAM_LAYOUT = ChunkLayout()

_STREAM_RE = re.compile(r"^\s*first\s*=\s*(\d+)\s*,\s*stride\s*=\s*(\d+)\s*$")
_REFINE_RE = re.compile(r"^\s*refine\s*:\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_layout(text: "str | ChunkLayout | None") -> ChunkLayout:
    """`first=16,stride=8` | `refine:24/8` | `none` (or a ChunkLayout, or None = none) -> ChunkLayout."""
    if isinstance(text, ChunkLayout):
        return text
    if text is None or str(text).strip().lower() in ("", "none"):
        return ChunkLayout(kind="none")
    match = _STREAM_RE.match(text)
    if match:
        return ChunkLayout(kind="stream", first=int(match.group(1)), stride=int(match.group(2)))
    match = _REFINE_RE.match(text)
    if match:
        return ChunkLayout(kind="refine", chunk=int(match.group(1)), overlap=int(match.group(2)))
    raise ValueError(f"cannot read chunk layout {text!r}; write 'first=16,stride=8', 'refine:24/8' or 'none'")
