"""Consistency Metrics node: the weight-free metric kit of `streaming_core.metrics` on an IMAGE batch.

The node converts the IMAGE batch, calls `score_video` once (on ComfyUI's device) and returns the JSON report
as text plus a few headline numbers; as an output node it also shows the report in the UI
(`{"ui": {"text": [...]}}`). Unavailable numbers (e.g. a seam ratio without chunk boundaries) are NaN on the
FLOAT outputs and null in the report.
"""
from __future__ import annotations

import logging
import math

from ..streaming_core.metrics import DEFAULT_SIZE, report_json, score_video
from . import _runtime as rt
from .types import CATEGORY_ROOT, FLOAT, IMAGE, INT, STRING

log = logging.getLogger("streamingt2v.nodes")

CATEGORY_METRICS = f"{CATEGORY_ROOT}/metrics"
MAX_FRAME_INDEX = 1_000_000


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


class ConsistencyMetrics:
    DESCRIPTION = (
        "Measures the temporal consistency of a video without any model weights: scene cuts as in the paper "
        "(PySceneDetect AdaptiveDetector) and seam-sensitive, MAWE (approximate, Lucas-Kanade flow), seam ratio "
        "at chunk boundaries, flow smoothness, colour drift against an anchor frame, and a stagnation flag. "
        "Shows a JSON report; lower MAWE, SCuts and drift are better, a seam ratio near 1 means invisible seams."
    )
    CATEGORY = CATEGORY_METRICS
    RETURN_TYPES = (STRING, FLOAT, FLOAT, FLOAT, INT, INT)
    RETURN_NAMES = ("report", "mawe", "seam_ratio", "delta_e_max", "scuts_paper", "scuts_seam")
    OUTPUT_TOOLTIPS = (
        "The full report as JSON text (one object, the format of the metrics spec).",
        "MAWE~: mean over frame pairs of warp error / (9.5 x motion); lower is better. Only compare values "
        "measured at the same size. NaN when unavailable.",
        "Warp error at chunk boundaries divided by the warp error inside chunks; about 1 means the seams do not "
        "show. NaN without chunk boundaries.",
        "Largest CIE76 colour difference between the mean colour of a frame and of the anchor frame.",
        "Scene cuts found with the paper's settings (AdaptiveDetector defaults, 15-frame minimum scene).",
        "Scene cuts found with a 1-frame minimum scene length (catches seams every 8 frames).",
    )
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": (IMAGE, {"tooltip": "The video to measure, as an IMAGE batch (at least 2 frames)."}),
                "chunk_layout": (STRING, {
                    "default": "first=16,stride=8",
                    "tooltip": "Where chunks begin: 'first=16,stride=8' for the streaming stage (16 frames, then 8 "
                               "new frames per chunk), 'refine:24/8' for refinement chunks of 24 with 8 overlapping, "
                               "or 'none'.",
                }),
                "anchor": (INT, {
                    "default": 0, "min": -MAX_FRAME_INDEX, "max": MAX_FRAME_INDEX,
                    "tooltip": "Reference frame for colour and appearance drift (negative counts from the end).",
                }),
                "size": (INT, {
                    "default": DEFAULT_SIZE, "min": 64, "max": 2048, "step": 8,
                    "tooltip": "Frames are resized to size x size for the optical-flow metrics. 720 as in the "
                               "paper; 256 is about 8x faster. Compare numbers only at the same size.",
                }),
            },
            "optional": {
                "fps": (FLOAT, {
                    "default": 8.0, "min": 0.0, "max": 240.0, "step": 0.5,
                    "tooltip": "Frame rate written into the report (not used by any metric).",
                }),
                "raft_weights": (STRING, {
                    "default": "",
                    "tooltip": "Optional path to a local torchvision RAFT-large weights file; adds the official "
                               "MAWE (slow on a CPU). Nothing is downloaded; a missing file is reported.",
                }),
            },
        }

    def run(self, images, chunk_layout, anchor, size, fps=8.0, raft_weights=""):
        frames = rt.image_to_frames(images, name="images")
        if frames.shape[0] < 2:
            raise ValueError(f"'images' has {frames.shape[0]} frame(s); the metrics compare consecutive frames, "
                             f"so at least 2 are needed.")
        if not -frames.shape[0] <= anchor < frames.shape[0]:
            raise ValueError(f"anchor is {anchor}, but the video has {frames.shape[0]} frames; use 0 .. "
                             f"{frames.shape[0] - 1} or a negative index counted from the end.")
        events = rt.ComfyEvents(total_steps=frames.shape[0])

        def progress(done: int, total: int) -> None:
            events.on_step("metrics", 0, 1, done, total)
            events.check_cancel()

        report = score_video(frames, layout=chunk_layout, anchor=anchor, size=size, fps=fps or None,
                             raft_weights=raft_weights.strip() or None, device=rt.torch_device(), progress=progress)
        text = report_json(report)
        log.info("Consistency Metrics: SCuts@paper %s, SCuts@seam %s, MAWE~ %s, seam ratio %s",
                 report["scuts_paper"], report["scuts_seam"], report["mawe_approx"], report["seam_ratio"])
        result = (text, _number(report["mawe_approx"]), _number(report["seam_ratio"]),
                  _number(report["color"]["delta_e_max"]), int(report["scuts_paper"]), int(report["scuts_seam"]))
        return {"ui": {"text": [text]}, "result": result}


NODE_CLASS_MAPPINGS = {"ST2V_ConsistencyMetrics": ConsistencyMetrics}
NODE_DISPLAY_NAME_MAPPINGS = {"ST2V_ConsistencyMetrics": "StreamingT2V Consistency Metrics"}
