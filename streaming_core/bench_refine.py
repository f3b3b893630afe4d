"""Refinement benchmark: ratios measured side by side in one run (refine_stage.md §17).

    python -m streaming_core.bench refine [--random-full] [--device cuda] [--dtype fp16] [--steps 3]
                                          [--short 24] [--long 96] [--chunk 24 --overlap 8]

Default: the tiny refiner (random weights, written to a temporary folder) on the CPU. `--random-full` builds the
full-size MS-Vid2Vid-XL architecture with random weights on the device (no files needed).
Prints, for a short and a 4x longer video: seconds per refined frame, the share of wall time outside the UNet
forwards, peak host RSS growth (and peak VRAM on CUDA), with frames kept in memory vs streamed to an mp4; and the
`official` vs `minimal` padding time ratio.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from .bench import ForwardTimer, PeakRss
from .blending import BlendPlan
from .refine import RefineSettings, refine_video
from .refiner_model import RefinerModel


def random_full_refiner(device: torch.device, dtype: torch.dtype) -> RefinerModel:
    """Full-size MS-Vid2Vid-XL architecture with random weights, built directly on `device`."""
    from .openclip_names import text_config_from_openclip
    from .refine_schedule import NoiseTable
    from .refiner_files import refiner_unet_config, refiner_vae_config
    from .refiner_model import MS_VID2VID_DEFAULTS, RefinerConfig
    from .text_encoder import ClipTextEncoder
    from .tokenizer import ClipTokenizer
    from .unet3d import UNet3D
    from .vae import Vae

    cfg = RefinerConfig()
    with torch.device(device):
        unet = UNet3D(refiner_unet_config(cfg)).to(dtype)
        text = ClipTextEncoder(text_config_from_openclip(cfg.text, cfg.text_layers_used))
        vae = Vae(refiner_vae_config(cfg))
    for m in (unet, text, vae):
        m.eval().requires_grad_(False)
    return RefinerModel("ms_vid2vid", unet, text, ClipTokenizer(split_pad_token=False), vae,
                        NoiseTable.logsnr_cosine_interp(), "v", (cfg.native_height, cfg.native_width),
                        MS_VID2VID_DEFAULTS, source="random full-size", dtype=dtype)


def tiny_refiner() -> RefinerModel:
    from .refiner_files import load_ms_vid2vid
    from .tiny_refiner import write_tiny_refiner

    paths = write_tiny_refiner(Path(tempfile.mkdtemp(prefix="st2v-bench-refine-")))
    return load_ms_vid2vid(paths["unet"], paths["text"], paths["vae"])


def run(model: RefinerModel, frames: int, settings: RefineSettings, device: torch.device, dtype: torch.dtype,
        to_file: bool, in_size: int = 256) -> dict[str, float]:
    video = torch.rand(frames, 3, in_size, in_size, generator=torch.Generator().manual_seed(0))
    timer = ForwardTimer([model.unet], device)
    sinks, folder = [], None
    if to_file:
        from .video_sink import Mp4Sink

        folder = Path(tempfile.mkdtemp(prefix="st2v-bench-out-"))
        sinks = [Mp4Sink(folder / "refined.mp4")]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = PeakRss.rss()
    with PeakRss() as mem:
        start = time.perf_counter()
        out = refine_video(model, video, "a red circle moving right", "", settings, device=device, dtype=dtype,
                           sinks=sinks, keep_frames=not to_file)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    timer.remove()
    result = {"frames": frames, "wall": wall, "per_frame": wall / frames, "outside_share": 1 - timer.total / wall,
              "rss_growth": mem.peak - base, "chunks": len(out.chunk_starts)}
    if device.type == "cuda":
        result["vram_peak"] = torch.cuda.max_memory_allocated()
    del out
    return result


def main(args) -> int:
    device = torch.device(args.device)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    dtype = dtypes[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    model = random_full_refiner(device, dtype) if args.random_full else tiny_refiner()
    steps = args.steps or (30 if device.type == "cuda" else 3)
    plan = BlendPlan(args.chunk, args.overlap)
    settings = RefineSettings(steps=steps, blend=plan)
    print(f"refiner: {model.source}; device {device}, {dtype}, {steps} steps, chunk {plan.chunk_size}/"
          f"{plan.overlap}, native {model.native_size[1]}x{model.native_size[0]}", flush=True)
    results = {}
    for name, frames in (("short", args.short), ("long", 4 * args.short)):
        for to_file in (False, True):
            r = run(model, frames, settings, device, dtype, to_file)
            results[(name, to_file)] = r
            line = (f"{name} {'file ' if to_file else 'IMAGE'}: {frames} frames ({r['chunks']} chunks) in "
                    f"{r['wall']:.1f}s, {r['per_frame']:.3f}s per refined frame, {100 * r['outside_share']:.1f}% "
                    f"outside UNet forwards, host RSS growth {r['rss_growth'] / 2**20:.0f} MiB")
            if "vram_peak" in r:
                line += f", peak VRAM {r['vram_peak'] / 2**30:.2f} GiB"
            print(line, flush=True)
    minimal = run(model, args.short, RefineSettings(steps=steps, blend=plan, pad_mode="minimal"), device, dtype,
                  to_file=False)
    official = results[("short", False)]
    long_img, long_file = results[("long", False)], results[("long", True)]
    short_img = results[("short", False)]
    print(f"ratios: s per frame long/short {long_img['per_frame'] / short_img['per_frame']:.2f}x; "
          f"official/minimal padding {official['per_frame'] / minimal['per_frame']:.2f}x; host RSS growth "
          f"long IMAGE/file {max(long_img['rss_growth'], 1) / max(long_file['rss_growth'], 1):.2f}x, "
          f"file long/short {max(long_file['rss_growth'], 1) / max(results[('short', True)]['rss_growth'], 1):.2f}x",
          flush=True)
    return 0
