"""The paper's ablations (App. §9) in miniature on the toy model: one command, one table per ablation.

    python -m streaming_core.training.ablation --model models/toy --out docs/ablation.md
        [--frames 240] [--prompts 2] [--steps 10] [--seed 33] [--threads 1] [--metric-size 128]
        [--refine-frames 72] [--refine-steps 15] [--cam-model runs/toy/03_cam] [--save-videos DIR] [--no-refine]

writes the results region of `--out` (Markdown; the rest of the file is kept, see `ablation_report`) and the
raw numbers next to it (`<out>.json`, or `--json`).

Prompts: captions of toy-world scenes (`toy_world.make_scene`) with a solid background and one object, taken in
order from scene seed 10 000 on (the toy training set uses scene seeds 0 … 383); `--prompts N` takes the first N.
Every variant of an ablation gets the same prompts and the same `--seed`; the stream-stage variants of one
prompt also share the first chunk (16 frames from the base model, DPM-Solver++(2M), `--init-steps`,
`--init-cfg`), so only the mechanism under test differs.

A. Conditioning (metrics kit, layout `first=16,stride=8`: SCuts@paper, SCuts@seam, seam ratio, MAWE~, motion):
   * CAM + APM: the trained model (`stream.extend_video`, DDIM η = 1, `--steps`, CFG `--cfg`, anchor = frame 0);
   * CAM, APM off: the same with every APM gate α = 0 (`ablation_variants.apm_disabled`);
   * CAM stage model (only with `--cam-model`): the CAM stage's files, trained without APM;
   * replacement: training-free temporal concatenation with the vanilla base UNet — each new 16-frame chunk's
     first 8 latent frames are replaced before every DDIM step by the previous chunk's last 8 latents noised to
     that step, its last 8 frames are kept (`ablation_variants.extend_by_replacement`); not the paper's trained
     channel-concatenation model;
   * independent chunks: each continuation = the last 8 frames of a text-only 16-frame base-model sample.
B. APM on vs off: the same long videos as A (CAM + APM vs APM off, and the CAM stage model when given); drift of
   the tracked object against the first 16 frames: colour (RGB L∞, ΔE76), area ratio, fill ratio (shape),
   vanished groups (`ablation_metrics.object_drift`), plus the kit's whole-frame ΔE against frame 0.
C. Refinement of the first `--refine-frames` frames of the first prompt's CAM + APM video with the model
   folder's refiner (`refiner_*_non_ema.pth`, `_open_clip.bin`, `_sd21.ckpt`), chunks 24 / overlap 8:
   randomized blending (`x0_random`), shared noise only (`hard`: one latent and noise stream, fixed cut in the
   middle of each overlap), independent chunks (each refined alone with seed + j, joined by a hard cut in the
   middle of each overlap); metrics flow std (A), flow jerk (B), seam ratio (layout `refine:24/8`) and the seam
   ratio at exactly the fixed cut frames. Skipped (and said so) when the folder has no refiner.

Runtime: the stream-stage part samples 4 videos per prompt (5 with `--cam-model`), 4 × (frames − 16) / 8
extension chunks. Measured with one torch thread on the 2-core development machine (toy architecture, other jobs
running): CAM chunk (10 DDIM steps, CFG) 2.6 s, replacement chunk 1.6 s, independent chunk 1.4 s, first chunk
(20 steps) 3 s, scoring 240 frames at 128² about 5 s, refining 72 frames (15 steps, 4 chunks) about 18 s per
variant. Defaults (240 frames, 2 prompts, 72 refined frames): about 4.2 min per prompt + 1.2 min refinement
≈ 10 min; each further prompt adds about 4 min. The run record in the document gives the measured time.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from ..blending import BlendPlan
from ..chunks import chunks_for_target
from ..model_files import load_base_model, load_stream_model
from ..models import BaseModel, StreamModel
from ..refine import RefineSettings, refine_video
from ..stream import extend_video, generate_init_chunk
from ..toy_world import make_scene
from .ablation_metrics import object_drift, score
from .ablation_report import write_json, write_markdown
from .ablation_variants import (apm_disabled, apm_gates, extend_by_replacement, extend_independently, overlap_midpoints,
                                refine_independent_chunks)
from .cam_usage import cam_usage
from .model_io import find_models

FIRST_SCENE_SEED = 10_000
STREAM_LAYOUT = "first=16,stride=8"
REFINE_CHUNK, REFINE_OVERLAP = 24, 8
REFINER_SUFFIXES = ("_non_ema.pth", "_open_clip.bin", "_sd21.ckpt")

DEFAULTS = {"frames": 240, "prompts": 2, "steps": 10, "seed": 33, "init_steps": 50, "cfg": 7.5, "init_cfg": 9.0,
            "eta": 1.0, "metric_size": 128, "refine_frames": 72, "refine_steps": 15, "threads": 1}


def ablation_prompts(count: int, first_seed: int = FIRST_SCENE_SEED) -> list[dict]:
    """The first `count` toy scenes from `first_seed` on with a solid background and one object:
    [{"scene_seed", "prompt"}] (deterministic)."""
    out, seed = [], first_seed
    while len(out) < count:
        scene = make_scene(seed)
        if scene.split == "none" and len(scene.objects) == 1:
            out.append({"scene_seed": seed, "prompt": scene.caption})
        seed += 1
    return out


def sha12(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def find_refiner(folder: Path) -> dict[str, Path] | None:
    """The three refiner files of a model folder ({"unet", "text", "vae"}), or None unless exactly one of each."""
    found = {}
    for role, suffix in zip(("unet", "text", "vae"), REFINER_SUFFIXES):
        files = sorted(Path(folder).glob(f"refiner_*{suffix}"))
        if len(files) != 1:
            return None
        found[role] = files[0]
    return found


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
    info["summary"] = f"{cpu}, {threads} torch thread(s) of {os.cpu_count()} CPUs, torch {torch.__version__}"
    return info


def log(message: str) -> None:
    print(f"[ablation {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Clock:
    """Wall-time accounting per part."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - t0

    def summary(self) -> dict[str, float]:
        return {"total": time.perf_counter() - self.started, **self.parts}


def _save(video: torch.Tensor, folder: Path | None, name: str) -> None:
    if folder is not None:
        from .toy_eval import write_mp4

        write_mp4(video, Path(folder) / f"{name}.mp4")


def stream_videos(model: StreamModel, base: BaseModel, cam_model: StreamModel | None, prompt: str, args,
                  clock: Clock) -> dict[str, torch.Tensor]:
    """Every stream-stage variant's video for one prompt, all from the same first chunk and seed."""
    chunks = chunks_for_target(args.frames, "exact")
    common = dict(steps=args.steps, guidance_scale=args.cfg, eta=args.eta, seed=args.seed)
    with clock.part("first_chunks"):
        first = generate_init_chunk(base, prompt, steps=args.init_steps, guidance_scale=args.init_cfg, seed=args.seed,
                                    sampler="ddim")
    videos = {}
    with clock.part("cam_apm"):
        videos["cam_apm"] = extend_video(model, first, first[0], [prompt], chunks, guidance_mode="single", **common)
    log(f"  CAM + APM: {videos['cam_apm'].shape[0]} frames")
    with clock.part("cam_no_apm"), apm_disabled(model.unet):
        videos["cam_no_apm"] = extend_video(model, first, first[0], [prompt], chunks, guidance_mode="single",
                                            **common)
    log("  CAM, APM off: done")
    if cam_model is not None:
        with clock.part("cam_only"):
            videos["cam_only"] = extend_video(cam_model, first, first[0], [prompt], chunks, guidance_mode="single",
                                              **common)
        log("  CAM stage model: done")
    with clock.part("replacement"):
        videos["replacement"] = extend_by_replacement(base, first, prompt, chunks, **common)
    log("  replacement: done")
    with clock.part("independent"):
        videos["independent"] = extend_independently(base, first, prompt, chunks, **common)
    log("  independent chunks: done")
    return videos


COND_LABELS = {
    "cam_apm": "CAM + APM (trained toy model)",
    "cam_no_apm": "CAM, APM off (α = 0)",
    "cam_only": "CAM stage model (trained without APM)",
    "replacement": "training-free concatenation: base UNet, replacement conditioning (not the paper's trained "
                   "Conc-Cond)",
    "independent": "independent chunks (base UNet, text only, last 8 of 16 frames)",
}
APM_LABELS = {"apm_on": "APM on (trained CAM + APM)", "apm_off": "APM off (α = 0, same weights)",
              "cam_only": "no APM: CAM stage model (trained without APM)"}
APM_SOURCES = {"apm_on": "cam_apm", "apm_off": "cam_no_apm", "cam_only": "cam_only"}
REFINE_LABELS = {"input": "low-res input (reference, not refined)",
                 "x0_random": "randomized blending (x0_random)",
                 "hard": "shared noise only (fixed cut at the overlap middle)",
                 "independent": "independent chunks (own seeds, hard cut at the overlap middle)"}


def run_refinement(model_dir: Path, video: torch.Tensor, prompt: str, args, clock: Clock) -> dict:
    """Part C on `video` (the first prompt's CAM + APM video); returns the `refinement` results section."""
    if args.no_refine:
        return {"skipped": "switched off with --no-refine"}
    files = find_refiner(model_dir)
    if files is None:
        return {"skipped": f"no refiner files (refiner_*{', refiner_*'.join(REFINER_SUFFIXES)}) in {model_dir}"}
    from ..refiner_files import load_ms_vid2vid

    refiner = load_ms_vid2vid(files["unet"], files["text"], files["vae"])
    frames = video[:min(args.refine_frames, video.shape[0])]
    n = frames.shape[0]
    plan = BlendPlan(REFINE_CHUNK, REFINE_OVERLAP, "x0_random", seed=args.seed)
    base_settings = RefineSettings(steps=args.refine_steps, seed=args.seed, blend=plan,
                                   strength=args.refine_strength)
    cuts = overlap_midpoints(n, REFINE_CHUNK, REFINE_OVERLAP)
    layout = f"refine:{REFINE_CHUNK}/{REFINE_OVERLAP}"
    outputs = {}
    with clock.part("refine_x0_random"):
        outputs["x0_random"] = refine_video(refiner, frames, prompt, "", base_settings).frames
    log("  refinement, randomized blending: done")
    with clock.part("refine_hard"):
        hard = RefineSettings(steps=args.refine_steps, seed=args.seed, strength=args.refine_strength,
                              blend=BlendPlan(REFINE_CHUNK, REFINE_OVERLAP, "hard", seed=args.seed))
        outputs["hard"] = refine_video(refiner, frames, prompt, "", hard).frames
    log("  refinement, shared noise only: done")
    with clock.part("refine_independent"):
        outputs["independent"] = refine_independent_chunks(refiner, frames, prompt, base_settings)
    log("  refinement, independent chunks: done")
    variants = {}
    with clock.part("scoring"):
        for key, frames_out in [("input", frames)] + list(outputs.items()):
            size = args.metric_size
            variants[key] = {"label": REFINE_LABELS[key], "scores": score(frames_out, layout, size, cuts)}
            _save(frames_out, args.save_videos, f"refine_{key}")
    resolved = base_settings.resolved(refiner)
    return {"prompt": prompt, "frames": n, "chunk_starts": plan.starts(n), "cuts": cuts,
            "refiner": {role: p.name for role, p in files.items()}, "strength": resolved.strength,
            "cfg": resolved.cfg, "output_size": list(outputs["x0_random"].shape[-2:]), "variants": variants}


def run_ablation(args) -> dict:
    """Run all three ablations; returns the results dict.

    Layout: `command`, `finished`, `settings` (every CLI value plus `frames_generated`), `machine`, `models`
    ({file name: sha256[:12]}), `prompts` ([{scene_seed, prompt}]), `wall_time_s` ({total, part: s}),
    `apm` also `gate_max_abs` (largest |α| of the model's APM gates),
    `conditioning` / `apm`: {"variants": {key: {"label", "per_prompt": [one dict per prompt]}}}, conditioning also
    `cam_usage` (`cam_usage.cam_usage` of the model) (conditioning
    rows: `ablation_metrics.score` output; APM rows: `object_drift` output plus `frame_delta_e_max`),
    `refinement`: {"skipped": reason} or {prompt, frames, chunk_starts, cuts, refiner, strength, cfg,
    output_size, variants: {key: {"label", "scores"}}}.
    """
    clock = Clock()
    torch.set_num_threads(args.threads)
    model_dir = Path(args.model)
    stream_path, base_path = find_models(model_dir)
    model = load_stream_model(stream_path)
    base = load_base_model(base_path, shared=model)
    cam_model = None
    hashed = [stream_path, base_path]
    if args.cam_model:
        cam_stream, _ = find_models(Path(args.cam_model))
        cam_model = load_stream_model(cam_stream)
        hashed.append(cam_stream)
    refiner_files = find_refiner(model_dir)
    if refiner_files and not args.no_refine:
        hashed += list(refiner_files.values())
    prompts = ablation_prompts(args.prompts)
    cond_keys = ["cam_apm", "cam_no_apm"] + (["cam_only"] if cam_model else []) + ["replacement", "independent"]
    conditioning = {k: {"label": COND_LABELS[k], "per_prompt": []} for k in cond_keys}
    apm_keys = ["apm_on", "apm_off"] + (["cam_only"] if cam_model else [])
    apm = {k: {"label": APM_LABELS[k], "per_prompt": []} for k in apm_keys}
    first_video = None
    for i, p in enumerate(prompts):
        log(f"prompt {i + 1}/{len(prompts)}: {p['prompt']!r}")
        videos = stream_videos(model, base, cam_model, p["prompt"], args, clock)
        if first_video is None:
            first_video = videos["cam_apm"]
        with clock.part("scoring"):
            scores = {}
            for key, video in videos.items():
                scores[key] = score(video, STREAM_LAYOUT, args.metric_size)
                conditioning[key]["per_prompt"].append({"prompt": p["prompt"], **scores[key]})
                _save(video, args.save_videos, f"p{i}_{key}")
            for key in apm_keys:
                source = APM_SOURCES[key]
                drift = object_drift(videos[source])
                apm[key]["per_prompt"].append({"prompt": p["prompt"], **drift,
                                               "frame_delta_e_max": scores[source]["color"]["delta_e_max"]})
    with clock.part("cam_usage"):
        usage = cam_usage(model)
    log(f"CAM usage: ε loss {usage['mean_with']:.5f} with the CAM, {usage['mean_without']:.5f} without")
    log("refinement")
    refinement = run_refinement(model_dir, first_video, prompts[0]["prompt"], args, clock)
    frames_generated = int(first_video.shape[0])
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "json", "command")}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}
    settings.update(frames_generated=frames_generated, refine_frames_used=refinement.get("frames"),
                    refine_strength=refinement.get("strength", args.refine_strength))
    return {
        "command": args.command,
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": settings,
        "machine": machine_info(args.threads),
        "models": {p.name: sha12(p) for p in hashed},
        "prompts": prompts,
        "wall_time_s": clock.summary(),
        "conditioning": {"layout": STREAM_LAYOUT, "variants": conditioning, "cam_usage": usage},
        "apm": {"variants": apm, "gate_max_abs": max(float(g.detach().abs().max()) for g in apm_gates(model.unet))},
        "refinement": refinement,
    }


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(prog="python -m streaming_core.training.ablation",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", type=Path, required=True, help="model folder (streamingt2v_*, modelscope_t2v_*, "
                                                             "refiner_* files), e.g. models/toy")
    p.add_argument("--out", type=Path, required=True, help="Markdown document to fill, e.g. docs/ablation.md")
    p.add_argument("--json", type=Path, help="raw numbers (default: --out with the suffix .json)")
    p.add_argument("--frames", type=int, default=d["frames"], help="frames per stream-stage video (≥ 24)")
    p.add_argument("--prompts", type=int, default=d["prompts"], help="number of toy-world prompts")
    p.add_argument("--steps", type=int, default=d["steps"], help="DDIM steps per extension chunk")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--init-steps", type=int, default=d["init_steps"], help="DDIM (eta 1) steps of the first chunk")
    p.add_argument("--cfg", type=float, default=d["cfg"], help="guidance of the extension chunks")
    p.add_argument("--init-cfg", type=float, default=d["init_cfg"], help="guidance of the first chunk")
    p.add_argument("--eta", type=float, default=d["eta"], help="DDIM eta of the extension chunks")
    p.add_argument("--metric-size", type=int, default=d["metric_size"], help="side the flow metrics run at")
    p.add_argument("--refine-frames", type=int, default=d["refine_frames"],
                   help="frames of the first video that are refined (72 = 4 chunks of 24 on the official grid)")
    p.add_argument("--refine-steps", type=int, default=d["refine_steps"], help="refinement solver steps")
    p.add_argument("--refine-strength", type=float, default=None, help="SDEdit strength (default: the family's)")
    p.add_argument("--no-refine", action="store_true", help="skip part C")
    p.add_argument("--cam-model", type=Path, help="also run the CAM stage's model folder (trained without APM)")
    p.add_argument("--save-videos", type=Path, help="write every video as mp4 into this folder")
    p.add_argument("--threads", type=int, default=d["threads"],
                   help="torch CPU threads (1 by default: on a shared 2-core machine 2 threads stall when the other "
                        "core is busy; use 2 on an idle machine)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.frames < 24:
        raise SystemExit("--frames must be at least 24 (the first chunk of 16 frames and one extension chunk)")
    if args.prompts < 1:
        raise SystemExit("--prompts must be at least 1")
    args.command = "python -m streaming_core.training.ablation " + shlex.join(argv)
    results = run_ablation(args)
    json_path = args.json or args.out.with_suffix(".json")
    results["json_name"] = json_path.name
    write_json(json_path, results)
    write_markdown(args.out, results)
    log(f"wrote {args.out} and {json_path} in {results['wall_time_s']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
