"""Training command line (docs/training.md).

    python -m streaming_core.train init    --out runs/toy/00_init [--config toy|tiny|FILE.json] [--name toy]
    python -m streaming_core.train vae     --init runs/toy/00_init --out runs/toy/01_vae --steps 600 --batch 16
    python -m streaming_core.train base    --init runs/toy/01_vae  --out runs/toy/02_base --steps 2000
    python -m streaming_core.train cam     --init runs/toy/02_base --out runs/toy/03_cam --from-base
    python -m streaming_core.train cam_apm --init runs/toy/03_cam  --out runs/toy/04_cam_apm
    python -m streaming_core.train refiner --init runs/toy/04_cam_apm --out runs/toy/05_refiner
    python -m streaming_core.train eval    --model runs/toy/04_cam_apm --frames 240 --video out.mp4

Every stage reads the model files of `--init` (a folder with `streamingt2v_*.safetensors` and
`modelscope_t2v_*.safetensors`, or `--stream-file/--base-file`, e.g. the official full-size files), trains,
and writes the same files with its part trained into `--out`. Checkpoints go to `<out>/run/` (or `--run`); a
stage started again resumes from its last checkpoint, and a finished stage (`<out>/DONE.json`) is skipped.
SIGINT/SIGTERM save a checkpoint after the current step and exit with status 130.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch

from .config import StreamingT2VConfig, tiny_default

logger = logging.getLogger("streaming_core")
STAGES = ("vae", "base", "cam", "cam_apm", "refiner")
EXIT_STOPPED = 130


def _config(name: str) -> StreamingT2VConfig:
    from .training.toy_config import toy_config

    if name == "toy":
        return toy_config()
    if name == "tiny":
        return tiny_default()
    if name == "full":
        return StreamingT2VConfig.full()
    return StreamingT2VConfig.from_json(Path(name).read_text())


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m streaming_core.train", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)

    init = sub.add_parser("init", help="write freshly initialised model files")
    init.add_argument("--out", type=Path, required=True)
    init.add_argument("--config", default="toy", help="toy | tiny | full | a StreamingT2VConfig JSON file")
    init.add_argument("--name", default="toy", help="file name part: streamingt2v_<name>.safetensors")
    init.add_argument("--seed", type=int, default=0)

    ev = sub.add_parser("eval", help="generate a long video from a model folder and report object colour drift")
    ev.add_argument("--model", type=Path, required=True)
    ev.add_argument("--prompt", default="a red circle moving right on a gray background")
    ev.add_argument("--frames", type=int, default=240)
    ev.add_argument("--steps", type=int, default=10)
    ev.add_argument("--init-steps", type=int, default=50)
    ev.add_argument("--cfg", type=float, default=7.5)
    ev.add_argument("--seed", type=int, default=33)
    ev.add_argument("--video", type=Path, help="write the video here (mp4)")
    ev.add_argument("--threads", type=int)

    for stage in STAGES:
        p = sub.add_parser(stage, help=f"train the {stage} stage")
        p.add_argument("--init", type=Path, help="model folder to start from")
        p.add_argument("--stream-file", type=Path, help="StreamingT2V file to start from (instead of --init)")
        p.add_argument("--base-file", type=Path, help="ModelScope UNet file to start from (instead of --init)")
        p.add_argument("--out", type=Path, required=True, help="folder for the trained files")
        p.add_argument("--name", help="file name part of the outputs (default: that of the input)")
        p.add_argument("--run", type=Path, help="checkpoint folder (default <out>/run)")
        p.add_argument("--cache", type=Path, help="latent cache folder (default <out>/../cache)")
        p.add_argument("--data", default="toy", help="'toy' (procedural world) or a folder of videos / frame folders")
        p.add_argument("--toy-videos", type=int, default=1024)
        p.add_argument("--toy-frames", type=int, default=64, help="frames per toy video")
        p.add_argument("--toy-seed", type=int, default=0)
        p.add_argument("--toy-simple", action="store_true",
                       help="only scenes with one object on a solid background (the shipped toy model)")
        p.add_argument("--frame-step", type=int, default=1, help="keep every n-th frame of real videos")
        p.add_argument("--latents", choices=("pool", "on-the-fly"), default="pool",
                       help="encode the whole source once (pool) or every batch (large datasets)")
        p.add_argument("--steps", type=int, required=True)
        p.add_argument("--batch", type=int, default=4, help="clips per step (frames per step for the VAE)")
        p.add_argument("--lr", type=float, default=5e-4)
        p.add_argument("--weight-decay", type=float, default=0.01)
        p.add_argument("--warmup", type=int, default=50)
        p.add_argument("--min-lr-ratio", type=float, default=0.1)
        p.add_argument("--grad-clip", type=float, default=1.0)
        p.add_argument("--ema", type=float, help="EMA decay (exported weights are the EMA)")
        p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                       help="autocast dtype (fp16 with loss scaling, CUDA only)")
        p.add_argument("--grad-checkpointing", action="store_true")
        p.add_argument("--checkpoint-every", type=int, default=100)
        p.add_argument("--checkpoint-minutes", type=float, default=5.0)
        p.add_argument("--log-every", type=int, default=10)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--threads", type=int, help="torch CPU threads")
        p.add_argument("--stop-after", type=int, help="stop (resumably) after this many steps in this process")
        p.add_argument("--save-dtype", choices=("fp32", "fp16"), default="fp32",
                       help="dtype of the written model files (fp16 halves their size)")
        if stage == "vae":
            p.add_argument("--kl-weight", type=float, default=1e-4)
            p.add_argument("--object-weight", type=float, default=10.0,
                           help="extra loss weight of pixels away from the frame's median colour")
        if stage == "base":
            p.add_argument("--text-dropout", type=float, default=0.1)
            p.add_argument("--freeze-text", action="store_true", help="keep the text encoder fixed")
        if stage == "cam":
            p.add_argument("--text-dropout", type=float, default=0.1)
            p.add_argument("--from-base", action="store_true",
                           help="start the stream UNet and the CAM branch from the ModelScope UNet (fresh CAM)")
        if stage == "cam_apm":
            p.add_argument("--drop-text", type=float, default=0.05)
            p.add_argument("--drop-anchor", type=float, default=0.05)
            p.add_argument("--drop-both", type=float, default=0.05)
            p.add_argument("--freeze-image-encoder", action="store_true",
                           help="keep the image encoder fixed (as the released model; a pre-trained one is needed)")
        if stage == "refiner":
            p.add_argument("--native", type=_size, default=None, help="refiner frame HxW (default: the toy 144x128)")
            p.add_argument("--frames", type=int, default=24, help="frames per training clip")
            p.add_argument("--text-dropout", type=float, default=0.1)
            p.add_argument("--no-init-from-base", action="store_true")
    return parser


def _settings(args) -> "TrainSettings":
    from .training.loop import TrainSettings

    return TrainSettings(steps=args.steps, batch=args.batch, lr=args.lr, weight_decay=args.weight_decay,
                         warmup=args.warmup, min_lr_ratio=args.min_lr_ratio, grad_clip=args.grad_clip,
                         ema_decay=args.ema, precision=args.precision, grad_checkpointing=args.grad_checkpointing,
                         checkpoint_every=args.checkpoint_every, checkpoint_minutes=args.checkpoint_minutes,
                         log_every=args.log_every, seed=args.seed)


def _source(args, size, frames_needed: int):
    from .training.datasets import ToyWorldSource, VideoFolderSource

    if args.data == "toy":
        return ToyWorldSource(args.toy_videos, args.toy_frames, size, args.toy_seed, args.toy_simple)
    if not isinstance(size, int):
        raise SystemExit("--data with a folder needs a square frame size")
    return VideoFolderSource(args.data, size, frame_step=args.frame_step, min_frames=frames_needed)


def _latents(args, source, vae, cache: Path):
    from .training.latent_pool import LatentPool, OnTheFlyLatents

    if args.latents == "pool":
        return LatentPool.build(source, vae, cache)
    return OnTheFlyLatents(source, vae)


def _input_files(args) -> tuple[Path, Path]:
    from .training.model_io import find_models

    if args.stream_file or args.base_file:
        if not (args.stream_file and args.base_file):
            raise SystemExit("give both --stream-file and --base-file (or --init with a folder holding both)")
        return args.stream_file, args.base_file
    if args.init is None:
        raise SystemExit("give --init <model folder> (or --stream-file and --base-file)")
    return find_models(args.init)


def run_stage(args) -> int:
    from .training.loop import DONE_NAME, train
    from .training.model_io import STREAM_PREFIX, read_models
    from .training.stage_common import Models

    out: Path = args.out
    done = out / DONE_NAME
    if done.is_file():
        logger.info("%s: already finished (%s); delete it to train again", args.stage, done)
        return 0
    device = torch.device(args.device)
    stream_path, base_path = _input_files(args)
    name = args.name or stream_path.name[len(STREAM_PREFIX):-len(".safetensors")]
    cfg, network, vanilla = read_models(stream_path, base_path)
    models = Models(cfg, network, vanilla)
    settings = _settings(args)
    cache = args.cache or out.parent / "cache"
    stage = _make_stage(args, models, settings, device, cache)
    started = time.time()
    result = train(stage, settings, args.run or out / "run", device=device, stop_after=args.stop_after)
    if not result.finished:
        logger.warning("%s stopped at step %d of %d; run the same command again to resume", args.stage,
                       result.step, settings.steps)
        return EXIT_STOPPED if result.stopped_by_signal else 0
    info = {"stage": args.stage, "steps": settings.steps, "settings": dataclasses.asdict(settings),
            "data": args.data if args.data != "toy" else stage_source_key(stage),
            "inputs": [str(stream_path), str(base_path)]}
    paths = stage.export(out, name, info, torch.float16 if args.save_dtype == "fp16" else torch.float32)
    tail = result.losses[-50:]
    summary = {**info, "final_loss_mean_last_50": sum(tail) / len(tail) if tail else None,
               "seconds_this_process": time.time() - started,
               "files": [str(p) for p in (paths.values() if isinstance(paths, dict) else paths)]}
    done.write_text(json.dumps(summary, indent=1) + "\n")
    logger.info("%s: wrote %s", args.stage, ", ".join(summary["files"]))
    return 0


def stage_source_key(stage) -> str:
    return stage.source.key() if hasattr(stage, "source") else ""


def _make_stage(args, models, settings, device: torch.device, cache: Path):
    from .training.cond_dropout import ConditionDropout
    from .training.stage_base import BaseStage
    from .training.stage_cam import CamStage
    from .training.stage_cam_apm import CamApmStage
    from .training.stage_refiner import PaddedSource, RefinerStage
    from .training.stage_vae import VaeStage

    size = models.cfg.sample_size
    if args.stage == "vae":
        return VaeStage(models, _source(args, size, 1), settings, device, kl_weight=args.kl_weight,
                        object_weight=args.object_weight)
    if args.stage == "refiner":
        from .training.refiner_export import refiner_config_for
        from .training.toy_config import TOY_REFINER_NATIVE, TOY_REFINER_UNET

        from .refine_frames import MS_VID2VID_RULE, plan_geometry

        native = args.native or TOY_REFINER_NATIVE
        # the stream frames placed in the native frame exactly as the refine stage does it (pad mode official)
        g = plan_geometry(size, size, native_h=native[0], native_w=native[1],
                          factor=models.network.vae.downsample_factor, rule=MS_VID2VID_RULE)
        if g.content_h != g.content_w:
            raise SystemExit(f"refiner native size {native} gives non-square content {g.content_h}x{g.content_w}")
        source = PaddedSource(_source(args, g.content_h, args.frames), g.frame_h, g.frame_w, g.top, g.left)
        rcfg = refiner_config_for(models.cfg, TOY_REFINER_UNET, native)
        return RefinerStage(models, rcfg, source, lambda vae: _latents(args, source, vae.to(device), cache),
                            settings, device, frames=args.frames, text_dropout=args.text_dropout,
                            init_from_base=not args.no_init_from_base)
    source = _source(args, size, 16)
    vae = models.network.vae.to(device).eval()
    latents = _latents(args, source, vae, cache)
    if args.stage == "base":
        return BaseStage(models, source, latents, settings, device, text_dropout=args.text_dropout,
                         train_text=not args.freeze_text)
    if args.stage == "cam":
        return CamStage(models, source, latents, settings, device, text_dropout=args.text_dropout,
                        from_base=args.from_base)
    dropout = ConditionDropout(text=args.drop_text, anchor=args.drop_anchor, both=args.drop_both)
    return CamApmStage(models, source, latents, settings, device, dropout=dropout,
                       train_image_encoder=not args.freeze_image_encoder)


def run_init(args) -> int:
    from .training.init_weights import fresh_models
    from .training.model_io import write_models

    from .training.model_io import base_file, stream_file

    if stream_file(args.out, args.name).is_file() and base_file(args.out, args.name).is_file():
        print(f"{args.out}: initial files exist, kept")
        return 0
    cfg = _config(args.config)
    network, vanilla = fresh_models(cfg, args.seed)
    paths = write_models(args.out, args.name, cfg, network, vanilla, {"stage": "init", "seed": args.seed})
    print("wrote " + ", ".join(f"{p} ({p.stat().st_size / 1e6:.1f} MB)" for p in paths))
    return 0


def run_eval(args) -> int:
    from .training.toy_eval import generate_long_video, write_mp4
    from .training.toy_metrics import colour_drift

    started = time.time()
    video = generate_long_video(args.model, args.prompt, args.frames, steps=args.steps, init_steps=args.init_steps,
                                cfg=args.cfg, seed=args.seed)
    drift = colour_drift(video)
    print(json.dumps({"frames": video.shape[0], "seconds": round(time.time() - started, 1),
                      "reference_rgb": [round(float(x), 3) for x in drift.reference],
                      "worst_colour_drift": drift.worst, "smallest_object_pixels": drift.smallest_object,
                      "largest_object_fraction": round(drift.largest_fraction, 4)}))
    if args.video:
        print(f"wrote {write_mp4(video, args.video)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.stage == "init":
        return run_init(args)
    if args.stage == "eval":
        return run_eval(args)
    return run_stage(args)


if __name__ == "__main__":
    sys.exit(main())
