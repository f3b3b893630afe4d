"""Video sources for training and the clip positions the stages sample from them.

A source is a list of videos with captions: `len(src)`, `src.length(i)` (frames), `src.read(i, start, count)`
-> (count, 3, S, S) float32 in [0, 1], `src.caption(i)`, `src.key()` (a string that identifies the content, for
latent caches). `ToyWorldSource` renders the procedural toy world (`streaming_core.toy_world`);
`VideoFolderSource` reads a folder of video files (PyAV) or of frame folders (PNG/JPEG).

Stream-stage clips follow the alignment of the released model (stream_stage.md §6.2 step 1, §7.1): the model
denoises a 16-frame chunk whose first 8 frames are the conditioning frames (the paper conditions on frames 17-24
and denoises 17-32), so a clip is 8 conditioning frames + the 16 frames to generate (8 of them new), and the
anchor is drawn among the first 16 frames of the video, before the chunk.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..chunks import COND_FRAMES, FRAMES_PER_CHUNK
from ..toy_world import make_scene, render

logger = logging.getLogger("streaming_core")

ANCHOR_FRAMES = 16  # the anchor is drawn among the first 16 frames (paper §10)
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ToyWorldSource:
    """`videos` procedural videos of `frames` frames at `size` (int: square, or (H, W)); video i is the toy-world
    scene of seed `seed * 1_000_003 + i`, or with `simple` the i-th seed from there whose scene has one object on
    a solid background (the scenes the shipped toy model is trained on: a model that small learns the simple
    scenes well in an hour on a CPU, the full mix only vaguely)."""

    def __init__(self, videos: int = 1024, frames: int = 64, size: int | tuple[int, int] = 64, seed: int = 0,
                 simple: bool = False) -> None:
        if videos < 1 or frames < 1:
            raise ValueError(f"need at least one video and one frame, got {videos} videos of {frames} frames")
        self.videos, self.frames, self.size, self.seed, self.simple = videos, frames, size, seed, simple
        self._seeds: list[int] = []  # simple scenes found so far, in seed order
        self._next_candidate = seed * 1_000_003

    def __len__(self) -> int:
        return self.videos

    def scene_seed(self, index: int) -> int:
        if not self.simple:
            return self.seed * 1_000_003 + index
        while len(self._seeds) <= index:
            scene = make_scene(self._next_candidate)
            if len(scene.objects) == 1 and scene.split == "none":
                self._seeds.append(self._next_candidate)
            self._next_candidate += 1
        return self._seeds[index]

    def length(self, index: int) -> int:
        return self.frames

    def read(self, index: int, start: int, count: int) -> torch.Tensor:
        if not 0 <= start <= start + count <= self.frames:
            raise IndexError(f"frames {start}..{start + count - 1} outside video {index} of {self.frames} frames")
        return render(make_scene(self.scene_seed(index)), start, count, self.size)

    def caption(self, index: int) -> str:
        return make_scene(self.scene_seed(index)).caption

    def key(self) -> str:
        extra = ",simple" if self.simple else ""
        return f"toy_world(videos={self.videos},frames={self.frames},size={self.size},seed={self.seed}{extra})"


def _fit(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, size, size): centre square crop, then antialiased bilinear resize."""
    h, w = frames.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    frames = frames[:, :, top:top + s, left:left + s]
    if s != size:
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return frames.clamp(0.0, 1.0)


class VideoFolderSource:
    """Real videos: every video file under `root` (decoded with PyAV) and every folder of images (one video,
    frames in name order). Frames are centre-cropped to a square and resized to `size`. Caption: the text of a
    sidecar `<video stem>.txt` (or `caption.txt` inside a frame folder), else `default_caption`. `frame_step`
    keeps every n-th frame (e.g. 3 for 24 fps footage trained at 8 fps). Decoded videos are kept in a small
    cache (`cache_videos`)."""

    def __init__(self, root: str | Path, size: int, frame_step: int = 1, default_caption: str = "",
                 min_frames: int = FRAMES_PER_CHUNK, cache_videos: int = 4) -> None:
        self.root, self.size, self.frame_step = Path(root), size, frame_step
        self.default_caption = default_caption
        self.cache_videos = cache_videos
        self._cache: dict[int, torch.Tensor] = {}
        entries = []
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
                entries.append(path)
            elif path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
                entries.append(path)
        if not entries:
            raise FileNotFoundError(f"no video files or frame folders under {self.root}")
        self.entries: list[Path] = []
        self.lengths: list[int] = []
        for path in entries:
            n = self._count(path)
            if n >= min_frames:
                self.entries.append(path)
                self.lengths.append(n)
            else:
                logger.info("skipping %s: %d frames (< %d)", path, n, min_frames)
        if not self.entries:
            raise ValueError(f"no video under {self.root} has at least {min_frames} frames")

    def _count(self, path: Path) -> int:
        if path.is_dir():
            return len(self._images(path))
        import av

        with av.open(str(path)) as container:
            n = container.streams.video[0].frames
        if n <= 0:  # containers without a frame count in the header
            return self._decode(path).shape[0]
        return -(-n // self.frame_step)

    def _images(self, folder: Path) -> list[Path]:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return files[::self.frame_step]

    def _decode(self, path: Path) -> torch.Tensor:
        if path.is_dir():
            from PIL import Image

            arrays = [np.asarray(Image.open(p).convert("RGB")) for p in self._images(path)]
        else:
            import av

            with av.open(str(path)) as container:
                arrays = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)][::self.frame_step]
        frames = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        return _fit(frames, self.size)

    def __len__(self) -> int:
        return len(self.entries)

    def length(self, index: int) -> int:
        return self.lengths[index]

    def read(self, index: int, start: int, count: int) -> torch.Tensor:
        if index not in self._cache:
            if len(self._cache) >= self.cache_videos:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = self._decode(self.entries[index])
        video = self._cache[index]
        if not 0 <= start <= start + count <= video.shape[0]:
            raise IndexError(f"frames {start}..{start + count - 1} outside {self.entries[index]} "
                             f"({video.shape[0]} frames)")
        return video[start:start + count].clone()

    def caption(self, index: int) -> str:
        path = self.entries[index]
        side = path / "caption.txt" if path.is_dir() else path.with_suffix(".txt")
        return side.read_text().strip() if side.is_file() else self.default_caption

    def key(self) -> str:
        listing = "\n".join(f"{p}:{p.stat().st_mtime_ns}:{n}" for p, n in zip(self.entries, self.lengths))
        digest = hashlib.sha1(listing.encode()).hexdigest()[:16]
        return f"video_folder({self.root},size={self.size},step={self.frame_step},{digest})"


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The data generator of one training step: a pure function of (seed, step, stream), so a resumed run draws
    exactly what an uninterrupted one draws."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, step, stream]))


def step_generator(seed: int, step: int, stream: int = 1) -> torch.Generator:
    """The torch CPU generator of one training step (noise, timesteps, drop-out), keyed like `step_rng`."""
    key = np.random.SeedSequence([seed & 0xFFFFFFFF, step, stream]).generate_state(2, np.uint64)
    return torch.Generator("cpu").manual_seed(int(key[0] >> np.uint64(1)))


@dataclass(frozen=True)
class WindowPosition:
    """`frames` consecutive frames of video `video` from `start`."""

    video: int
    start: int
    frames: int


@dataclass(frozen=True)
class StreamPosition:
    """A stream-stage training clip: chunk frames `chunk_start .. +15` (the first 8 are the conditioning
    frames) and the anchor frame `anchor` (< 16, and never after the chunk start)."""

    video: int
    chunk_start: int
    anchor: int

    @property
    def cond_start(self) -> int:
        return self.chunk_start


def sample_window(source, rng: np.random.Generator, frames: int) -> WindowPosition:
    """A uniformly random video (among those with >= `frames` frames) and start."""
    for _ in range(1000):
        video = int(rng.integers(len(source)))
        n = source.length(video)
        if n >= frames:
            return WindowPosition(video, int(rng.integers(n - frames + 1)), frames)
    raise ValueError(f"no video of at least {frames} frames found in {source.key()}")


def sample_stream_position(source, rng: np.random.Generator, chunk: int = FRAMES_PER_CHUNK,
                           anchor_frames: int = ANCHOR_FRAMES) -> StreamPosition:
    """Anchor uniform in [0, min(anchor_frames, L)); chunk start uniform in [min(anchor_frames, L - chunk),
    L - chunk], so the chunk starts after the anchor range whenever the video is long enough (L >= 32 for the
    defaults); shorter videos put the chunk anywhere and the anchor before or at its start."""
    window = sample_window(source, rng, chunk)
    n = source.length(window.video)
    first = min(anchor_frames, n - chunk)
    start = int(rng.integers(first, n - chunk + 1))
    anchor = int(rng.integers(min(anchor_frames, start + 1)))
    return StreamPosition(window.video, start, anchor)


@dataclass
class StreamClip:
    """Pixels of a stream-stage clip: `chunk` (16, 3, S, S) in [0, 1] (its first 8 frames = `cond`), `anchor`
    (3, S, S), the caption and where it came from."""

    chunk: torch.Tensor
    anchor: torch.Tensor
    caption: str
    position: StreamPosition

    @property
    def cond(self) -> torch.Tensor:
        return self.chunk[:COND_FRAMES]


def read_stream_clip(source, position: StreamPosition, chunk: int = FRAMES_PER_CHUNK) -> StreamClip:
    return StreamClip(source.read(position.video, position.chunk_start, chunk),
                      source.read(position.video, position.anchor, 1)[0], source.caption(position.video), position)


class StreamClips:
    """Indexable dataset of stream-stage clips: item i is the clip drawn with `step_rng(seed, i)` (8
    conditioning + 16 chunk frames, anchor among the first 16 frames); deterministic and unbounded."""

    def __init__(self, source, seed: int = 0) -> None:
        self.source, self.seed = source, seed

    def position(self, index: int) -> StreamPosition:
        return sample_stream_position(self.source, step_rng(self.seed, index, stream=7))

    def __getitem__(self, index: int) -> StreamClip:
        return read_stream_clip(self.source, self.position(index))
