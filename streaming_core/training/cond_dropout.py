"""Condition drop-out for classifier-free guidance (stream_stage.md §8; paper §10.1: 5 % text, 5 % anchor,
5 % both).

Per sample one uniform draw u: u < both -> drop text and anchor; < both + text -> text only; < both + text +
anchor -> anchor only. A dropped text is the empty prompt "" (what the pipeline uses as the unconditional
text); a dropped anchor is the null image (zeros in [-1, 1], §7.4).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ConditionDropout:
    text: float = 0.05
    anchor: float = 0.05
    both: float = 0.05

    def __post_init__(self) -> None:
        if min(self.text, self.anchor, self.both) < 0 or self.text + self.anchor + self.both > 1:
            raise ValueError(f"drop-out rates must be >= 0 and sum to at most 1, got {self}")

    def draw(self, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(drop_text, drop_anchor): two (batch,) bool tensors."""
        u = torch.rand(batch, generator=gen)
        both = u < self.both
        text_only = (u >= self.both) & (u < self.both + self.text)
        anchor_only = (u >= self.both + self.text) & (u < self.both + self.text + self.anchor)
        return both | text_only, both | anchor_only


def apply_text_dropout(captions: list[str], drop: torch.Tensor) -> list[str]:
    return ["" if d else c for c, d in zip(captions, drop.tolist())]
