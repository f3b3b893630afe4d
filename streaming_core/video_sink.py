"""Frame sinks: where finished frames go as soon as they are final (refine_stage.md §13).

A sink receives frames in video order, `(n, 3, H, W)` float32 in [0, 1] on the CPU, and is closed exactly once
(also after an error or an interrupt). `FrameCollector` keeps them for an IMAGE output; `Mp4Sink` encodes them
straight to an H.264 file so a long 720p run never holds the whole video in memory.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Protocol, Sequence

import torch


class FrameSink(Protocol):
    def write(self, frames: torch.Tensor, first_index: int) -> None:
        """Frames `(n, 3, H, W)` float32 in [0, 1] on the CPU, starting at video index `first_index`."""

    def close(self) -> None:
        """Flush and release; called once, also when the run stops early."""


class FrameCollector:
    """Keeps every frame (for an IMAGE output). `frames()` returns `(N, 3, H, W)`."""

    def __init__(self) -> None:
        self._parts: list[torch.Tensor] = []
        self.count = 0

    def write(self, frames: torch.Tensor, first_index: int) -> None:
        if first_index != self.count:
            raise ValueError(f"frames arrived out of order: expected index {self.count}, got {first_index}")
        self._parts.append(frames.detach().to("cpu", torch.float32))
        self.count += frames.shape[0]

    def close(self) -> None:
        pass

    def frames(self) -> torch.Tensor:
        if not self._parts:
            raise ValueError("no frames were written")
        return torch.cat(self._parts)


class Mp4Sink:
    """Encodes frames to an H.264 `.mp4` as they arrive (PyAV).

    The file is written as fragmented MP4 (a fragment per keyframe interval), so whatever was encoded before a
    crash or a kill is still playable; `close()` finishes the file normally. Frames are converted to 8-bit with
    rounding. Width and height are made even by dropping the last column/row if needed (yuv420p requires it).
    """

    def __init__(self, path: str | os.PathLike, fps: float = 8.0, crf: int = 18, keyframe_interval: int = 16) -> None:
        import av  # a declared dependency; imported lazily so the core loads without it

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w", format="mp4",
                                  options={"movflags": "frag_keyframe+empty_moov+default_base_moof",
                                           "flush_packets": "1"})
        self._fps = Fraction(fps).limit_denominator(1000)
        self._crf = crf
        self._gop = keyframe_interval
        self._stream = None
        self.count = 0
        self._closed = False

    def _open_stream(self, height: int, width: int) -> None:
        stream = self._container.add_stream("libx264", rate=self._fps)
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        # zerolatency: no frame lookahead, so each fragment reaches the disk as soon as it is complete
        stream.options = {"crf": str(self._crf), "g": str(self._gop), "preset": "veryfast", "tune": "zerolatency"}
        self._stream = stream

    def write(self, frames: torch.Tensor, first_index: int) -> None:
        import av

        if first_index != self.count:
            raise ValueError(f"frames arrived out of order: expected index {self.count}, got {first_index}")
        if self._stream is None:
            self._open_stream(frames.shape[-2], frames.shape[-1])
        h, w = self._stream.height, self._stream.width
        rgb = (frames[:, :, :h, :w].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for image in rgb:
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                self._container.mux(packet)
        self.count += frames.shape[0]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()


def write_all(sinks: Sequence[FrameSink], frames: torch.Tensor, first_index: int) -> None:
    for sink in sinks:
        sink.write(frames, first_index)


def close_all(sinks: Sequence[FrameSink]) -> None:
    """Close every sink even if one fails; re-raise the first failure."""
    error: BaseException | None = None
    for sink in sinks:
        try:
            sink.close()
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            error = error or exc
    if error is not None:
        raise error
