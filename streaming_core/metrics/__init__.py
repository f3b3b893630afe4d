"""Offline consistency metrics for long videos (spec `metrics.md` §4, the CPU kit): torch and numpy only.

Python API (what the ablation scripts call), `score_video` and `report_json` of this package::

    report = score_video(frames, layout="first=16,stride=8", anchor=0, size=720)
    print(report_json(report))

Command line::

    python -m streaming_core.metrics video.mp4 [--chunk-layout first=16,stride=8 | refine:24/8 | none]
        [--anchor 0] [--size 720] [--raft-weights FILE] [--json]

Modules:

* `scene_cuts`: SCuts@paper / SCuts@seam (PySceneDetect's AdaptiveDetector, native, OpenCV-exact HSV);
* `optical_flow`: coarse-to-fine Lucas–Kanade flow (weight-free) and RAFT-large from a local weights file;
* `warp_error`: forward-splat warp error, MAWE~ (official `mawe.py` formula), W/OFS (paper formula), seam
  ratio, flow-std (A), flow-jerk (B);
* `color_drift`: CIELAB drift against the anchor, L* histogram EMD per chunk, H-S histogram correlation,
  optional ORB ratio (only with OpenCV installed);
* `chunk_layout`: stream-stage and refinement chunk boundaries;
* `video_io`: frames from a video file (PyAV) and frame normalisation;
* `report`: `score_video` and the JSON report (format of spec §4.3 plus documented additions).
"""
from .chunk_layout import ChunkLayout, parse_layout, refine_chunk_starts
from .optical_flow import RaftFlow, lk_flow
from .report import DEFAULT_SIZE, REPORT_KEYS, report_json, score_video
from .scene_cuts import PAPER, SEAM, AdaptiveParams, adaptive_cuts, content_values, rgb_to_hsv_opencv
from .video_io import read_video, to_uint8_frames

__all__ = [
    "ChunkLayout", "parse_layout", "refine_chunk_starts", "RaftFlow", "lk_flow", "DEFAULT_SIZE", "REPORT_KEYS",
    "report_json", "score_video", "PAPER", "SEAM", "AdaptiveParams", "adaptive_cuts", "content_values",
    "rgb_to_hsv_opencv", "read_video", "to_uint8_frames",
]
