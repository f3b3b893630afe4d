"""Writes the example clip of the "extend a clip" workflow: `workflows/inputs/st2v_example_clip.mp4`.

24 frames, 160x120 (not square, so Init Chunk's crop/resize is exercised), 8 fps, h264, drawn from a
formula (a coloured ball moving over a sky-to-grass gradient) - no randomness, no external media.

    .venv/bin/python scripts/make_example_clip.py [output.mp4]
"""

from __future__ import annotations

import math
import pathlib
import sys
from fractions import Fraction

import av
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "workflows" / "inputs" / "st2v_example_clip.mp4"
FRAMES, WIDTH, HEIGHT, FPS = 24, 160, 120, 8


def frame(i: int) -> np.ndarray:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    t = i / FRAMES
    sky = np.stack([90 + 60 * y / HEIGHT, 140 + 50 * y / HEIGHT, np.full_like(y, 235)], -1)
    grass = np.stack([np.full_like(y, 60), 150 - 40 * (y - HEIGHT * 0.65) / HEIGHT, np.full_like(y, 50)], -1)
    img = np.where((y > HEIGHT * 0.65)[..., None], grass, sky)
    cx = 20 + (WIDTH - 40) * t
    cy = HEIGHT * 0.55 - 35 * abs(math.sin(math.pi * 2 * t))
    ball = (x - cx) ** 2 + (y - cy) ** 2 < 12 ** 2
    img[ball] = (230, 70, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


def write(path: pathlib.Path = DEFAULT_OUT) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("h264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "18", "preset": "medium", "threads": "1"}
        stream.codec_context.thread_count = 1
        for i in range(FRAMES):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


if __name__ == "__main__":
    out = write(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
    print(f"wrote {out} ({out.stat().st_size} bytes, {FRAMES} frames {WIDTH}x{HEIGHT} @ {FPS} fps)")
