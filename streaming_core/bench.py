"""Benchmarks: ratios measured side by side in one run.

    python -m streaming_core.bench refine ...   (see bench_refine.py)
    python -m streaming_core.bench stream [--model FILE | --random-full] [--device cuda] [--dtype fp16]
                                          [--steps 10] [--short 48] [--long 240]

Default: the tiny random default model on the CPU. `--random-full` builds the full-size architecture with
random weights directly on the device (no files needed), for speed and memory figures of the real network.
Prints: seconds per new frame, the share of wall time spent outside the network forwards, batched vs sequential
guidance, and peak host memory (and peak VRAM on CUDA) for a short and a long video.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from .config import StreamingT2VConfig
from .events import NullEvents
from .models import StreamingT2VNetwork, StreamModel
from .stream import extend_video
from .tokenizer import ClipTokenizer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ForwardTimer:
    """Accumulates wall time inside the CAM and UNet forwards (synchronising CUDA at both ends)."""

    def __init__(self, modules, device: torch.device) -> None:
        self.total = 0.0
        self.calls = 0
        self._start = 0.0
        self._sync = device.type == "cuda"
        self._handles = []
        for m in modules:
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))

    def _pre(self, module, args) -> None:
        if self._sync:
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def _post(self, module, args, output) -> None:
        if self._sync:
            torch.cuda.synchronize()
        self.total += time.perf_counter() - self._start
        self.calls += 1

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class PeakRss:
    """Samples the resident set size of this process every 20 ms; `peak` in bytes."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.02)

    def __enter__(self) -> "PeakRss":
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def random_full_model(device: torch.device, dtype: torch.dtype) -> StreamModel:
    """Full-size architecture, random weights, built directly on `device` (benchmarks only)."""
    cfg = StreamingT2VConfig.full()
    with torch.device(device):
        network = StreamingT2VNetwork(cfg).to(dtype)
    network.vae.float()
    for name, p in network.named_parameters():
        if name.endswith("alpha"):
            p.data.fill_(0.5)
    network.eval().requires_grad_(False)
    return StreamModel(cfg, network, ClipTokenizer(), source="random full-size", dtype=dtype)


def run(model: StreamModel, frames_total: int, steps: int, device: torch.device, dtype: torch.dtype,
        offload: torch.device, guidance_mode: str = "single") -> dict[str, float]:
    size = model.sample_size
    init = torch.rand((16, 3, size, size), generator=torch.Generator().manual_seed(0))
    chunks = (frames_total - 16) // 8
    timer = ForwardTimer([model.unet, model.cam], device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = PeakRss.rss()
    with PeakRss() as mem:
        start = time.perf_counter()
        out = extend_video(model, init, init[0], ["a red circle moving right"], chunks, steps=steps, seed=1,
                           device=device, dtype=dtype, offload_device=offload, guidance_mode=guidance_mode,
                           events=NullEvents())
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    timer.remove()
    frame_bytes = out.numel() * out.element_size()
    result = {
        "frames": out.shape[0], "wall": wall, "per_new_frame": wall / (8 * chunks), "forward": timer.total,
        "outside_share": 1.0 - timer.total / wall, "rss_growth": mem.peak - base_rss,
        "rss_growth_minus_frames": mem.peak - base_rss - frame_bytes,
    }
    if device.type == "cuda":
        result["vram_peak"] = torch.cuda.max_memory_allocated()
    return result


@torch.no_grad()
def guidance_batching(model: StreamModel, device: torch.device, dtype: torch.dtype, repeats: int = 3,
                      offload: bool = True) -> tuple[float, float]:
    """Seconds per guided evaluation: both rows in one batch vs two batch-1 forwards."""
    model.unet.to(device)
    model.cam.to(device)
    h = model.latent_size
    d = model.unet.cfg.cross_attention_dim
    tokens = model.config.apm.num_text_tokens + model.config.apm.num_image_tokens
    z = torch.randn(2, 4, 16, h, h, device=device, dtype=dtype)
    ctx = torch.randn(2, tokens, d, device=device, dtype=dtype)
    frames = torch.rand(16, 3, model.sample_size, model.sample_size, device=device, dtype=dtype)
    t = torch.tensor([501], device=device)
    n_text = model.config.apm.num_text_tokens

    def batched() -> None:
        model.unet(z, t, ctx, model.cam(z[:, :, :8], t, ctx[:, :n_text], frames))

    def sequential() -> None:
        for i in range(2):
            zi, ci = z[i:i + 1], ctx[i:i + 1]
            model.unet(zi, t, ci, model.cam(zi[:, :, :8], t, ci[:, :n_text], frames[:8]))

    def timed(fn) -> float:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats

    result = timed(batched), timed(sequential)
    if offload:
        model.unet.cpu()
        model.cam.cpu()
    return result


def profile_evaluation(model: StreamModel, device: torch.device, dtype: torch.dtype) -> str:
    """torch.profiler table (top 20 by device or CPU time) of one batched guided evaluation."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    guidance_batching(model, device, dtype, repeats=1, offload=False)  # weights on the device, kernels warm
    with profile(activities=activities) as prof:
        guidance_batching(model, device, dtype, repeats=1, offload=False)
    model.unet.cpu()
    model.cam.cpu()
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=20)


def speedups(model: StreamModel, device: torch.device, dtype: torch.dtype, compile_model: bool = False) -> None:
    """Seconds per batched guided evaluation: eager vs channels_last convolutions (vs torch.compile with
    `compile_model`; on an H100 its warm-up on the full-size UNet did not finish within 6 minutes), printed as
    each is measured."""
    eager, _ = guidance_batching(model, device, dtype, repeats=5, offload=False)
    print(f"speedups ({dtype}): eager {eager:.4f}s per guided evaluation", flush=True)
    convs = [m for net in (model.unet, model.cam) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    last, _ = guidance_batching(model, device, dtype, repeats=5, offload=False)
    print(f"speedups: channels_last {last:.4f}s, eager/channels_last = {eager / last:.2f}x", flush=True)
    for conv in convs:
        conv.weight.data = conv.weight.data.contiguous()
    if not compile_model:
        return
    unet_forward, cam_forward = model.unet.forward, model.cam.forward
    model.unet.forward = torch.compile(unet_forward, dynamic=False)
    model.cam.forward = torch.compile(cam_forward, dynamic=False)
    start = time.perf_counter()
    guidance_batching(model, device, dtype, repeats=1, offload=False)
    warmup = time.perf_counter() - start
    compiled, _ = guidance_batching(model, device, dtype, repeats=5, offload=False)
    model.unet.forward, model.cam.forward = unet_forward, cam_forward
    print(f"speedups: torch.compile {compiled:.4f}s, eager/compile = {eager / compiled:.2f}x "
          f"(warm-up {warmup:.0f}s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streaming_core.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stream")
    p.add_argument("--model", type=Path, help="a StreamingT2V file (default: the tiny random default)")
    p.add_argument("--random-full", action="store_true", help="full-size architecture with random weights")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50 on CUDA, 5 on CPU)")
    p.add_argument("--short", type=int, default=48)
    p.add_argument("--long", type=int, default=240)
    p.add_argument("--offload", default="cpu", help="where idle models go (cpu, or the compute device to keep them)")
    p.add_argument("--profile", action="store_true", help="also print the top operators of one guided evaluation")
    p.add_argument("--speedups", action="store_true", help="only compare eager and channels_last convolutions")
    p.add_argument("--compile", action="store_true", help="with --speedups, also try torch.compile (slow warm-up)")
    r = sub.add_parser("refine")
    r.add_argument("--random-full", action="store_true", help="full-size MS-Vid2Vid-XL with random weights")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    r.add_argument("--steps", type=int, default=None, help="solver steps (default 30 on CUDA, 3 on CPU)")
    r.add_argument("--short", type=int, default=24, help="frames of the short video; the long one has 4x")
    r.add_argument("--chunk", type=int, default=24)
    r.add_argument("--overlap", type=int, default=8)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if args.command == "refine":
        from .bench_refine import main as refine_main
        return refine_main(args)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    steps = args.steps or (50 if device.type == "cuda" else 5)
    torch.backends.cuda.matmul.allow_tf32 = True
    from .model_files import load_stream_model
    if args.random_full:
        model = random_full_model(device, dtype)
    elif args.model:
        model = load_stream_model(args.model, dtype=dtype)
    else:
        from .tiny_default import write_tiny_default
        folder = Path(tempfile.mkdtemp(prefix="st2v-bench-"))
        stream_path, _ = write_tiny_default(folder)
        model = load_stream_model(stream_path, dtype=dtype)
    offload = torch.device(args.offload)
    print(f"model: {model.source}; device {device}, {dtype}, {steps} steps, {model.sample_size}px")
    if args.speedups:
        speedups(model, device, dtype, args.compile)
        if args.profile:
            print(profile_evaluation(model, device, dtype))
        return 0
    batched, sequential = guidance_batching(model, device, dtype)
    print(f"guidance: batched {batched:.4f}s vs sequential {sequential:.4f}s per guided evaluation "
          f"-> sequential/batched = {sequential / batched:.2f}x")
    if args.profile:
        print(profile_evaluation(model, device, dtype))
    short = run(model, args.short, steps, device, dtype, offload)
    long = run(model, args.long, steps, device, dtype, offload)
    for name, r in (("short", short), ("long", long)):
        line = (f"{name}: {r['frames']} frames in {r['wall']:.1f}s, {r['per_new_frame']:.3f}s per new frame, "
                f"{100 * r['outside_share']:.1f}% outside network forwards, host RSS growth "
                f"{r['rss_growth'] / 2**20:.0f} MiB ({r['rss_growth_minus_frames'] / 2**20:.0f} MiB excluding "
                f"the output frames)")
        if "vram_peak" in r:
            line += f", peak VRAM {r['vram_peak'] / 2**30:.2f} GiB"
        print(line)
    ratio_rss = max(long["rss_growth_minus_frames"], 1) / max(short["rss_growth_minus_frames"], 1)
    summary = (f"ratios long/short: s per new frame {long['per_new_frame'] / short['per_new_frame']:.2f}x, "
               f"host RSS growth excl. frames {ratio_rss:.2f}x")
    if "vram_peak" in long:
        summary += f", peak VRAM {long['vram_peak'] / short['vram_peak']:.2f}x"
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
