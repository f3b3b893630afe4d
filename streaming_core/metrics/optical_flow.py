"""Dense optical flow without network weights: coarse-to-fine Lucas–Kanade with iterative warping.

Contract: `lk_flow(first, second)` takes grayscale frames `(B, 1, H, W)` on the 0–255 scale and returns the
forward flow `(B, 2, H, W)` in pixels (channel 0 = x to the right, channel 1 = y down) such that
`second(p + flow(p)) ≈ first(p)`, the convention of RAFT and of the official `mawe.py`.

Method (per pyramid level, coarsest first):

* pyramid: Gaussian blur (σ = 1) and 2× decimation until the short side would drop below `min_size`;
* the flow of the coarser level is upsampled (bilinear) and doubled;
* `iterations` Gauss–Newton steps (`fine_iterations` on the finest level): warp `second` by the current flow
  (bilinear, border padding), temporal difference `It = warped − first`, spatial gradients (central
  differences) of the mean of `first` and the warped frame; pixels whose match falls outside the frame are
  left out; structure tensor and mismatch vector summed in a truncated Gaussian window (σ = `window_sigma`
  pixels); the 2×2 system is solved per pixel with a Tikhonov term `damping` (squared grey levels per pixel²)
  so that flat, textureless areas keep the flow propagated from the coarser level instead of amplifying
  noise; each step moves at most 1 px of that level;
* a `median_size` × `median_size` median filter after every level but the finest removes isolated wrong
  matches (borders, aperture problems) before they propagate.

It is not RAFT: it is smooth within a window, blurs motion boundaries and fails on large non-rigid or
occluding motion. It is deterministic, reasonably fast on a CPU (about 70 ms per 256² pair and 0.7 s per
720² pair on one core) and, on textured content, accurate to about 0.01 px for translations of 0–16 px
(the pyramid goes down to 8 px), which is what A/B comparisons between versions of the pipeline need.
Numbers measured with it are labelled `lk` and are never comparable with RAFT-based MAWE values.

`RaftFlow` is the official flow (torchvision `raft_large`, the network of `mawe.py`) with weights from a local
file given by the user; nothing is ever downloaded. Its construction raises `FileNotFoundError` naming the
missing file, which the report turns into a "skipped" entry.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

__all__ = ["lk_flow", "gray", "RaftFlow", "LK_DEFAULTS"]

LK_DEFAULTS = {"min_size": 8, "iterations": 4, "fine_iterations": 2, "window_sigma": 2.0, "damping": 4.0,
               "presmooth": 1.0, "median_size": 5, "final_median": False}


def gray(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB on any scale -> (B, 1, H, W) luma (ITU-R BT.601 weights) on the same scale."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    return (frames * weights).sum(dim=1, keepdim=True)


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _blur(x: torch.Tensor, sigma: float, *, border: str = "replicate") -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W); `border` "replicate" or "zeros" (truncated window sums)."""
    if sigma <= 0:
        return x
    kernel = _gaussian_kernel(sigma, x.device, x.dtype)
    r = kernel.numel() // 2
    c = x.shape[1]
    kx = kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    if border == "zeros":
        x = F.conv2d(x, kx, groups=c, padding=(0, r))
        return F.conv2d(x, ky, groups=c, padding=(r, 0))
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), kx, groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), ky, groups=c)


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences with replicated borders: (d/dx, d/dy) of (B, 1, H, W)."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2])
    gy = 0.5 * (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1])
    return gx, gy


def _base_grid(height: int, width: int, device, dtype) -> torch.Tensor:
    """Pixel coordinates (1, 2, H, W): channel 0 = x, channel 1 = y."""
    xs = torch.arange(width, device=device, dtype=dtype).view(1, 1, 1, width).expand(1, 1, height, width)
    ys = torch.arange(height, device=device, dtype=dtype).view(1, 1, height, 1).expand(1, 1, height, width)
    return torch.cat((xs, ys), dim=1)


def warp_backward(image: torch.Tensor, flow: torch.Tensor, *, with_mask: bool = False):
    """Sample `image` at p + flow(p) (bilinear, border padding): (B, C, H, W), flow (B, 2, H, W) in pixels.

    With `with_mask`, also returns (B, 1, H, W) float: 1 where p + flow(p) lies inside the image."""
    _, _, height, width = image.shape
    coords = _base_grid(height, width, image.device, image.dtype) + flow
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], dtype=image.dtype,
                         device=image.device).view(1, 2, 1, 1)
    grid = (coords * scale - 1.0).permute(0, 2, 3, 1)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    if not with_mask:
        return warped
    # Half a pixel of slack: border padding still returns the edge pixel's own value there.
    limit = 1.0 + scale * 0.5
    inside = (grid.abs() <= limit.view(1, 1, 1, 2)).all(dim=-1)
    return warped, inside.unsqueeze(1).to(image.dtype)


def _median(flow: torch.Tensor, size: int) -> torch.Tensor:
    """size x size median filter of (B, C, H, W) with replicated borders, computed in row bands."""
    r = size // 2
    batch, channels, height, width = flow.shape
    padded = F.pad(flow, (r, r, r, r), mode="replicate")
    out = torch.empty_like(flow)
    band = max(1, (1 << 22) // max(1, batch * channels * width * size * size))
    for top in range(0, height, band):
        rows = min(band, height - top)
        patch = padded[:, :, top:top + rows + 2 * r]
        windows = patch.unfold(2, size, 1).unfold(3, size, 1)  # (B, C, rows, W, size, size)
        out[:, :, top:top + rows] = windows.reshape(batch, channels, rows, width, -1).median(dim=-1).values
    return out


def _pyramid(x: torch.Tensor, min_size: int) -> list[torch.Tensor]:
    levels = [x]
    while min(levels[-1].shape[-2:]) // 2 >= min_size:
        smooth = _blur(levels[-1], 1.0)
        levels.append(smooth[:, :, ::2, ::2].contiguous())
    return levels


@torch.no_grad()
def lk_flow(first: torch.Tensor, second: torch.Tensor, *, min_size: int = LK_DEFAULTS["min_size"],
            iterations: int = LK_DEFAULTS["iterations"], fine_iterations: int = LK_DEFAULTS["fine_iterations"],
            window_sigma: float = LK_DEFAULTS["window_sigma"], damping: float = LK_DEFAULTS["damping"],
            presmooth: float = LK_DEFAULTS["presmooth"],
            median_size: int = LK_DEFAULTS["median_size"],
            final_median: bool = LK_DEFAULTS["final_median"]) -> torch.Tensor:
    """Forward flow from `first` to `second`, both (B, 1, H, W) float on the 0–255 scale -> (B, 2, H, W) px."""
    if first.shape != second.shape or first.dim() != 4 or first.shape[1] != 1:
        raise ValueError(f"lk_flow needs two (B, 1, H, W) tensors of one shape, got {tuple(first.shape)} and "
                         f"{tuple(second.shape)}")
    first = _blur(first.float(), presmooth)
    second = _blur(second.float(), presmooth)
    pyr_a = _pyramid(first, min_size)
    pyr_b = _pyramid(second, min_size)
    flow: torch.Tensor | None = None
    for level, (a, b) in reversed(list(enumerate(zip(pyr_a, pyr_b)))):
        height, width = a.shape[-2:]
        if flow is None:
            flow = a.new_zeros(a.shape[0], 2, height, width)
        else:
            scale_y = height / flow.shape[-2]
            scale_x = width / flow.shape[-1]
            flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
            flow = flow * torch.tensor([scale_x, scale_y], dtype=flow.dtype, device=flow.device).view(1, 2, 1, 1)
        for _ in range(iterations if level > 0 else fine_iterations):
            warped, inside = warp_backward(b, flow, with_mask=True)
            it = warped - a
            gx, gy = _gradients(0.5 * (a + warped))
            # Pixels whose match falls outside the frame carry no information: they leave the window sums.
            gx = gx * inside
            gy = gy * inside
            it = it * inside
            # Window sums of the normal equations: [Sxx Sxy; Sxy Syy] d = -[Sxt; Syt].
            terms = _blur(torch.cat((gx * gx, gx * gy, gy * gy, gx * it, gy * it), dim=1), window_sigma,
                          border="zeros")
            sxx = terms[:, 0:1] + damping
            sxy = terms[:, 1:2]
            syy = terms[:, 2:3] + damping
            sxt = terms[:, 3:4]
            syt = terms[:, 4:5]
            det = sxx * syy - sxy * sxy
            du = (-syy * sxt + sxy * syt) / det
            dv = (sxy * sxt - sxx * syt) / det
            # A Gauss-Newton step beyond one pixel of this level leaves the linear range of the model.
            flow = flow + torch.cat((du, dv), dim=1).clamp(-1.0, 1.0)
        # Median filtering after each level removes isolated wrong matches (borders, aperture problems)
        # before they are propagated to the finer levels.
        if median_size > 1 and (level > 0 or final_median):
            flow = _median(flow, median_size)
    assert flow is not None
    return flow


class RaftFlow:
    """torchvision RAFT-large with weights from a local file (the network of the official `mawe.py`).

    `weights_path` is a state dict saved from `torchvision.models.optical_flow.raft_large` (e.g. the file that
    torchvision caches as `raft_large_C_T_SKHT_V2-ff5fadd5.pth`). Frames are given on the 0–255 scale, as
    (B, 3, H, W) with H and W multiples of 8 and at least 128 (RAFT's correlation pyramid); the input
    transform of `Raft_Large_Weights` is applied (x / 255 · 2 − 1) and the last refinement iteration is
    returned.
    """

    def __init__(self, weights_path: str | os.PathLike, *, device: torch.device | str = "cpu",
                 num_flow_updates: int = 12) -> None:
        path = os.fspath(weights_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"RAFT weights file not found: {path}")
        from torchvision.models.optical_flow import raft_large  # torchvision is optional for the rest

        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        model = raft_large(weights=None, progress=False)
        model.load_state_dict(state)
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.num_flow_updates = num_flow_updates
        self.path = path

    @torch.no_grad()
    def __call__(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB on 0–255 -> forward flow (B, 2, H, W) in pixels."""
        height, width = first.shape[-2:]
        if height % 8 or width % 8 or min(height, width) < 128:
            raise ValueError(f"RAFT needs frame sides that are multiples of 8 and at least 128, got {width}x{height}")
        a = (first.to(self.device, torch.float32) / 255.0) * 2.0 - 1.0
        b = (second.to(self.device, torch.float32) / 255.0) * 2.0 - 1.0
        flows = self.model(a, b, num_flow_updates=self.num_flow_updates)
        return flows[-1].to(first.device)
