"""Warp error, MAWE, W/OFS, seam ratio and flow statistics from consecutive-frame flows.

Definitions (spec `metrics.md` §1.2, §1.6, §4 #4–#8; frames on the 0–255 scale, flows in pixels at the
metric size):

* forward splat (official `mawe.py`): every pixel p of frame t goes to `round(p + flow(p))`; destinations in
  the image hit by at least one source are *known*; when several sources hit one destination, the last one in
  raster order wins (what the official numpy assignment does); the warped frame takes frame t's value there
  (nearest, no interpolation); unknown pixels are excluded (occlusion mask).
* `W_t = Σ_known,3 channels (I_{t+1} − warp(I_t))² / (3 · #known)` (all entries when nothing is known);
* `M_t = mean_pixels ‖flow_t‖₂` (motion), `OFS_t = mean_pixels ‖flow_t‖₂²` (paper's optical flow score);
* `MAWE = mean_t W_t / (c · max(M_t, motion_floor))`, c = 9.5 (official `--coeff`). The official code has no
  floor; here `motion_floor` (1e-3 px) only keeps an exactly frozen pair (W_t = 0, M_t = 0) from giving 0/0;
* `W/OFS = mean_t W_t / mean_t OFS_t` (paper App. §12 formula: ratio of means, squared magnitudes);
* flow-std (A) = mean_t std_pixels ‖flow_t‖; flow-jerk (B) = std_t M_t (population std, ddof 0);
* seam ratio = (mean W_t over boundary pairs + ε) / (mean W_t over interior pairs + ε), where the boundary
  pair of a chunk boundary b (first frame written by a new chunk) is (b − 1, b); ε = 0.01 (squared grey
  levels, an RMS error of 0.1 level, invisible) so that a video without any warp error scores 1.0 instead
  of 0/0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["forward_splat", "warp_error", "PairStats", "FlowSummary", "summarize", "seam_ratio",
           "MAWE_COEFF", "MOTION_FLOOR", "SEAM_EPS"]

MAWE_COEFF = 9.5
MOTION_FLOOR = 1e-3
SEAM_EPS = 0.01
BLOCK_GRID = 8


def forward_splat(image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest forward splat of `image` (B, C, H, W) along `flow` (B, 2, H, W, pixels).

    Returns (warped (B, C, H, W), known (B, 1, H, W) bool). Deterministic: for each destination the source
    with the largest raster index wins, as in the official sequential assignment.
    """
    batch, channels, height, width = image.shape
    device = image.device
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    dest_x = torch.round(xs.unsqueeze(0) + flow[:, 0]).long()
    dest_y = torch.round(ys.unsqueeze(0) + flow[:, 1]).long()
    valid = (dest_x >= 0) & (dest_x < width) & (dest_y >= 0) & (dest_y < height)
    dest = torch.where(valid, dest_y * width + dest_x, torch.full_like(dest_x, height * width))
    source = torch.arange(height * width, device=device).expand(batch, -1)
    # One extra slot collects the sources that leave the image.
    winner = torch.full((batch, height * width + 1), -1, dtype=torch.long, device=device)
    winner.scatter_reduce_(1, dest.reshape(batch, -1), source, reduce="amax", include_self=True)
    winner = winner[:, :-1]
    known = winner >= 0
    gathered = torch.gather(image.reshape(batch, channels, -1), 2,
                            winner.clamp(min=0).unsqueeze(1).expand(-1, channels, -1))
    warped = gathered * known.unsqueeze(1)
    return warped.reshape(batch, channels, height, width), known.reshape(batch, 1, height, width)


def warp_error(first: torch.Tensor, second: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """W_t for each pair: first, second (B, 3, H, W) on 0–255, flow (B, 2, H, W) from first to second -> (B,)."""
    warped, known = forward_splat(first, flow)
    mask = known.to(first.dtype)
    squared = ((second - warped) ** 2 * mask).flatten(1).sum(dim=1)
    count = mask.flatten(1).sum(dim=1) * first.shape[1]
    total = float(first[0].numel())
    return squared / torch.where(count > 0, count, torch.full_like(count, total))


@dataclass
class PairStats:
    """Per-pair series (length F − 1, pair t = frames (t, t+1))."""

    warp_error: list[float] = field(default_factory=list)   # W_t, squared grey levels
    motion: list[float] = field(default_factory=list)       # M_t, px
    ofs: list[float] = field(default_factory=list)          # mean squared magnitude, px²
    magnitude_std: list[float] = field(default_factory=list)  # std over pixels of ‖flow‖, px
    block_motion: list[float] = field(default_factory=list)  # mean ‖block-averaged flow‖ (8 × 8 blocks), px

    def add(self, first: torch.Tensor, second: torch.Tensor, flow: torch.Tensor) -> None:
        """Append the statistics of a batch of pairs: frames (B, 3, H, W) on 0–255, flow (B, 2, H, W).

        Computed on the CPU in float64 whatever device produced the flow (some devices lack float64)."""
        first, second, flow = first.cpu(), second.cpu(), flow.cpu()
        # Magnitudes in float32 (exact enough), sums and moments in float64.
        magnitude = torch.sqrt(flow[:, 0].float() ** 2 + flow[:, 1].float() ** 2).flatten(1).double()
        # Averaging the flow over a BLOCK_GRID x BLOCK_GRID grid of blocks keeps coherent motion (pans, zooms,
        # objects) and cancels the spatially random flow that noise and flicker produce.
        blocks = F.adaptive_avg_pool2d(flow.double(), (BLOCK_GRID, BLOCK_GRID))
        self.block_motion.extend(torch.linalg.vector_norm(blocks, dim=1).flatten(1).mean(dim=1).tolist())
        self.warp_error.extend(warp_error(first.double(), second.double(), flow.double()).tolist())
        self.motion.extend(magnitude.mean(dim=1).tolist())
        self.ofs.extend((magnitude ** 2).mean(dim=1).tolist())
        self.magnitude_std.extend(magnitude.std(dim=1, unbiased=False).tolist())


@dataclass(frozen=True)
class FlowSummary:
    mawe: float
    w_over_ofs: float | None
    mean_warp_error: float
    mean_motion_px: float
    flow_std_a: float
    flow_jerk_b: float


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def summarize(stats: PairStats, coeff: float = MAWE_COEFF, motion_floor: float = MOTION_FLOOR) -> FlowSummary:
    """Video-level numbers from the per-pair series (see module docstring)."""
    if not stats.warp_error:
        nan = float("nan")
        return FlowSummary(nan, None, nan, nan, nan, nan)
    ratios = [w / (coeff * max(m, motion_floor)) for w, m in zip(stats.warp_error, stats.motion)]
    mean_ofs = _mean(stats.ofs)
    mean_w = _mean(stats.warp_error)
    mean_motion = _mean(stats.motion)
    jerk = math.sqrt(_mean([(m - mean_motion) ** 2 for m in stats.motion]))
    return FlowSummary(
        mawe=_mean(ratios),
        w_over_ofs=(mean_w / mean_ofs) if mean_ofs > 0 else None,
        mean_warp_error=mean_w,
        mean_motion_px=mean_motion,
        flow_std_a=_mean(stats.magnitude_std),
        flow_jerk_b=jerk,
    )


def seam_ratio(warp_errors: list[float], boundaries: list[int], eps: float = SEAM_EPS) -> float | None:
    """(mean W over boundary pairs + eps) / (mean W over interior pairs + eps); None without both kinds.

    `warp_errors[t]` belongs to pair (t, t+1); boundary b (a frame index) selects pair b − 1.
    """
    seam_pairs = {b - 1 for b in boundaries if 1 <= b <= len(warp_errors)}
    seam = [w for t, w in enumerate(warp_errors) if t in seam_pairs]
    interior = [w for t, w in enumerate(warp_errors) if t not in seam_pairs]
    if not seam or not interior:
        return None
    return (_mean(seam) + eps) / (_mean(interior) + eps)
