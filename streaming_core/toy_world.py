"""A procedural toy world for training and testing small StreamingT2V models without downloads.

Every clip is a pure function of an integer seed: one or two shapes (circle, square, triangle) of distinct
colours keep their identity (shape, colour, size) for the whole video while they move at constant speed and
bounce off the frame borders, over a solid or two-tone background. The caption is built from the attributes:

    "a red circle moving right on a navy background"
    "a yellow square moving up and a cyan triangle moving left on a gray and maroon background"

Motion is analytic (positions are a triangle wave of time), so any window of an arbitrarily long video is
rendered directly: `make_clip(seed, 16, 64, start=200)` costs the same as `start=0`. The direction word in the
caption is the dominant axis of the initial velocity; after a bounce the object moves the other way, as in a
real video whose caption describes its beginning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

OBJECT_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.15, 0.78, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.88, 0.15),
    "magenta": (0.88, 0.20, 0.82),
    "cyan": (0.15, 0.85, 0.88),
    "orange": (0.98, 0.55, 0.10),
    "white": (0.96, 0.96, 0.96),
}
BACKGROUND_COLOURS: dict[str, tuple[float, float, float]] = {
    "black": (0.04, 0.04, 0.04),
    "gray": (0.42, 0.42, 0.42),
    "navy": (0.08, 0.10, 0.38),
    "maroon": (0.38, 0.08, 0.10),
    "olive": (0.30, 0.32, 0.08),
    "purple": (0.30, 0.10, 0.38),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("right", "left", "up", "down")
RADIUS_RANGE = (0.10, 0.17)  # object radius as a fraction of the frame side
SPEED_RANGE = (0.006, 0.018)  # frame sides per frame: a bounce every ~40-120 frames


@dataclass(frozen=True)
class ToyObject:
    """One shape with persistent identity. Positions and velocities are in frame-side units ([0, 1])."""

    shape: str
    colour: str
    radius: float
    start: tuple[float, float]  # (x, y) centre at frame 0
    velocity: tuple[float, float]  # (vx, vy) per frame; +x right, +y down

    @property
    def rgb(self) -> tuple[float, float, float]:
        return OBJECT_COLOURS[self.colour]

    @property
    def direction(self) -> str:
        """Dominant axis of the initial velocity as a caption word."""
        vx, vy = self.velocity
        if abs(vx) >= abs(vy):
            return "right" if vx > 0 else "left"
        return "down" if vy > 0 else "up"

    def centres(self, frames: np.ndarray) -> np.ndarray:
        """Centres (len(frames), 2) at the given frame indices: straight motion reflected at the borders."""
        lo, hi = self.radius, 1.0 - self.radius
        out = np.empty((len(frames), 2), dtype=np.float64)
        for axis in range(2):
            raw = self.start[axis] - lo + self.velocity[axis] * frames.astype(np.float64)
            span = hi - lo
            phase = np.mod(raw, 2 * span)
            out[:, axis] = lo + np.where(phase <= span, phase, 2 * span - phase)
        return out


@dataclass(frozen=True)
class ToyScene:
    """The attributes of one video: background and objects (drawn in list order, later on top)."""

    seed: int
    background: tuple[str, ...]  # one colour name (solid) or two (two-tone)
    split: str  # "none" | "vertical" (left/right halves) | "horizontal" (top/bottom halves)
    objects: tuple[ToyObject, ...]

    @property
    def caption(self) -> str:
        parts = [f"{_article(o.colour)} {o.colour} {o.shape} moving {o.direction}" for o in self.objects]
        return " and ".join(parts) + f" on a {' and '.join(self.background)} background"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_scene(seed: int) -> ToyScene:
    """The scene of `seed`: 1-2 objects (distinct colours), a solid (2/3) or two-tone (1/3) background."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x70D1]))
    bg_names = list(BACKGROUND_COLOURS)
    if rng.random() < 1 / 3:
        pair = rng.choice(len(bg_names), size=2, replace=False)
        background = (bg_names[pair[0]], bg_names[pair[1]])
        split = ("vertical", "horizontal")[int(rng.integers(2))]
    else:
        background = (bg_names[int(rng.integers(len(bg_names)))],)
        split = "none"
    count = 1 if rng.random() < 0.6 else 2
    colour_names = list(OBJECT_COLOURS)
    colours = rng.choice(len(colour_names), size=count, replace=False)
    objects = []
    for k in range(count):
        radius = float(rng.uniform(*RADIUS_RANGE))
        speed = float(rng.uniform(*SPEED_RANGE))
        angle = float(rng.uniform(0, 2 * math.pi))
        start = (float(rng.uniform(radius, 1 - radius)), float(rng.uniform(radius, 1 - radius)))
        objects.append(ToyObject(SHAPES[int(rng.integers(len(SHAPES)))], colour_names[int(colours[k])], radius,
                                 start, (speed * math.cos(angle), speed * math.sin(angle))))
    return ToyScene(int(seed), background, split, tuple(objects))


def _coverage(shape: str, px: np.ndarray, py: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: float,
              pixel: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance (one-pixel ramp). px/py: (1, H, W) pixel centres,
    cx/cy: (F, 1, 1) centres, all in frame-side units; `pixel` = 1 / side."""
    dx, dy = px - cx, py - cy
    if shape == "circle":
        sdf = np.sqrt(dx * dx + dy * dy) - r
    elif shape == "square":
        sdf = np.maximum(np.abs(dx), np.abs(dy)) - r * 0.85
    elif shape == "triangle":  # equilateral, pointing up, inscribed circle radius 0.6 r
        s3 = math.sqrt(3.0) / 2
        d1 = dy - r * 0.6  # bottom edge
        d2 = -s3 * dx - 0.5 * dy - r * 0.6  # upper-left edge
        d3 = s3 * dx - 0.5 * dy - r * 0.6  # upper-right edge
        sdf = np.maximum(np.maximum(d1, d2), d3)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return np.clip(0.5 - sdf / pixel, 0.0, 1.0)


def render(scene: ToyScene, start: int, frames: int, size: int | tuple[int, int]) -> torch.Tensor:
    """Frames `start .. start+frames-1` of `scene` as (frames, 3, H, W) float32 in [0, 1].

    `size` is the side of a square frame or (H, W); coordinates are fractions of the width for x and of the
    height for y, so a non-square frame shows the same scene stretched.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if frames < 1 or h < 4 or w < 4 or start < 0:
        raise ValueError(f"need frames >= 1, start >= 0 and a size of at least 4 px, got {frames}, {start}, {size}")
    ys = ((np.arange(h, dtype=np.float64) + 0.5) / h)[None, :, None]
    xs = ((np.arange(w, dtype=np.float64) + 0.5) / w)[None, None, :]
    img = np.empty((frames, h, w, 3), dtype=np.float64)
    first = np.array(BACKGROUND_COLOURS[scene.background[0]])
    img[:] = first
    if scene.split != "none":
        second = np.array(BACKGROUND_COLOURS[scene.background[1]])
        if scene.split == "vertical":
            img[:, :, w // 2:] = second
        else:
            img[:, h // 2:, :] = second
    t = np.arange(start, start + frames)
    pixel = 1.0 / min(h, w)
    for obj in scene.objects:
        c = obj.centres(t)
        cov = _coverage(obj.shape, xs, ys, c[:, 0, None, None], c[:, 1, None, None], obj.radius, pixel)
        img = img * (1 - cov[..., None]) + cov[..., None] * np.array(obj.rgb)
    return torch.from_numpy(img.astype(np.float32)).permute(0, 3, 1, 2).contiguous()


def make_clip(seed: int, frames: int, size: int | tuple[int, int], start: int = 0
              ) -> tuple[torch.Tensor, str, dict]:
    """The clip of `seed`: frames `start .. start+frames-1`.

    Returns (frames (F, 3, H, W) float32 in [0, 1], caption, meta). `meta` holds the attributes: `seed`,
    `background` (names), `split`, `objects` (list of dicts: shape, colour, rgb, radius, direction, `centres`
    (F, 2) in pixels (x, y) for the returned frames).
    """
    scene = make_scene(seed)
    video = render(scene, start, frames, size)
    h, w = video.shape[-2:]
    t = np.arange(start, start + frames)
    objects = []
    for obj in scene.objects:
        c = obj.centres(t) * np.array([w, h])
        objects.append({"shape": obj.shape, "colour": obj.colour, "rgb": obj.rgb, "radius": obj.radius,
                        "direction": obj.direction, "centres": c})
    meta = {"seed": scene.seed, "background": scene.background, "split": scene.split, "objects": objects}
    return video, scene.caption, meta
