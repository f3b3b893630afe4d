"""`python -m streaming_core.metrics <video> [options]`: print every consistency metric of one video file."""
from __future__ import annotations

import argparse
import sys
import time

from .report import DEFAULT_SIZE, report_json, score_video
from .video_io import read_video


def _size(text: str) -> int | None:
    if text.lower() in ("native", "none", "0"):
        return None
    value = int(text)
    if value < 16:
        raise argparse.ArgumentTypeError("size must be at least 16 (or 'native')")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streaming_core.metrics",
        description="Offline consistency metrics of a video (SCuts, MAWE~, seam ratio, flow statistics, colour "
                    "drift, stagnation). No network, no model weights unless --raft-weights is given.")
    parser.add_argument("video", help="video file (anything PyAV/FFmpeg decodes)")
    parser.add_argument("--chunk-layout", default="first=16,stride=8",
                        help="'first=16,stride=8' (stream stage, default), 'refine:24/8' (refinement chunk/"
                             "overlap) or 'none'")
    parser.add_argument("--anchor", type=int, default=0, help="reference frame for colour/appearance drift")
    parser.add_argument("--size", type=_size, default=DEFAULT_SIZE,
                        help=f"square side for the flow metrics (default {DEFAULT_SIZE} as in the paper; "
                             "256 is ~8x faster; 'native' keeps the frame size)")
    parser.add_argument("--fps", type=float, default=None, help="override the file's frame rate (reporting only)")
    parser.add_argument("--max-frames", type=int, default=None, help="score only the first N frames")
    parser.add_argument("--raft-weights", default=None,
                        help="local torchvision raft_large state dict: adds the official MAWE (mawe_raft)")
    parser.add_argument("--coeff", type=float, default=9.5, help="MAWE constant c (official default 9.5)")
    parser.add_argument("--series", action="store_true", help="include per-frame series in the JSON")
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    return parser


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _summary(report: dict, path: str, seconds: float) -> str:
    color = report["color"]
    appearance = report["appearance"]
    lines = [
        f"{path}: {report['frames']} frames, fps {_fmt(report['fps'], 2)}, layout {report['layout']}, "
        f"anchor {report['anchor']}, flow metrics at {report['metric_size'] or 'native'} px",
        f"  SCuts@paper {report['scuts_paper']}   SCuts@seam {report['scuts_seam']}   cut frames "
        f"{report['cut_frames']}   seam-locked {_fmt(report['seam_locked_fraction'], 2)}",
        f"  MAWE~ {_fmt(report['mawe_approx'])}   MAWE(RAFT) {_fmt(report['mawe_raft'])}   W/OFS "
        f"{_fmt(report['w_over_ofs'])}   mean W {_fmt(report['mean_warp_error'])}",
        f"  motion {_fmt(report['mean_motion_px'])} px/frame   long-baseline {_fmt(report['motion_span_px'], 4)} "
        f"px/frame   stagnant {_fmt(report['stagnant'])}",
        f"  seam ratio {_fmt(report['seam_ratio'])}   flow-std (A) {_fmt(report['flow_std_a'])}   flow-jerk (B) "
        f"{_fmt(report['flow_jerk_b'])}",
        f"  colour: dE76 max {_fmt(color['delta_e_max'], 2)}   L* slope {_fmt(color['l_slope_per_100'], 2)}/100 "
        f"frames   L* hist EMD max {_fmt(color['l_hist_emd_max'], 2)}",
        f"  appearance: H-S corr min {_fmt(appearance['hsv_corr_min'])}   ORB ratio min "
        f"{_fmt(appearance['orb_ratio_min'])}",
    ]
    for name, reason in report["skipped"].items():
        lines.append(f"  skipped {name}: {reason}")
    lines.append(f"  ({seconds:.1f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        frames, fps = read_video(args.video, max_frames=args.max_frames)
        started = time.perf_counter()
        report = score_video(frames, layout=args.chunk_layout, anchor=args.anchor, size=args.size,
                             fps=args.fps if args.fps is not None else fps, raft_weights=args.raft_weights,
                             coeff=args.coeff, series=args.series)
        seconds = time.perf_counter() - started
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.json:
        print(_summary(report, args.video, seconds))
    print(report_json(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
