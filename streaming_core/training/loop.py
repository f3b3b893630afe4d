"""The generic training loop shared by all stages.

A stage object provides `name`, `modules()` (name -> module holding trainable tensors; these are checkpointed),
`trainable()` (name -> parameter), `loss(step) -> (loss, logs)` computed from generators keyed by the step, and
`export(out_dir, name, info, dtype)` (writes the final files). The loop adds AdamW with linear warm-up and cosine decay,
gradient clipping, optional EMA, autocast (fp16 with loss scaling, or bf16) on CUDA, periodic and on-signal
checkpoints, and JSON-lines logs (`<run>/log.jsonl`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .ema import Ema
from .train_state import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

logger = logging.getLogger("streaming_core")
DONE_NAME = "DONE.json"
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainSettings:
    steps: int
    batch: int = 4
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float | None = None
    precision: str = "fp32"
    grad_checkpointing: bool = False
    checkpoint_every: int = 100
    checkpoint_minutes: float = 5.0
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.steps < 0 or self.batch < 1:
            raise ValueError(f"need steps >= 0 and batch >= 1, got {self.steps} and {self.batch}")

    def lr_at(self, step: int) -> float:
        """Linear warm-up over `warmup` steps, then cosine from `lr` down to `lr·min_lr_ratio` at `steps`."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(self.steps - self.warmup, 1)
        progress = min((step - self.warmup) / span, 1.0)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainResult:
    step: int
    losses: list[float]  # per step, of this process's steps
    finished: bool
    stopped_by_signal: bool = False


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop after the current step (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> "_StopFlag":
        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal stops at once
            raise KeyboardInterrupt
        logger.warning("signal %d: saving a checkpoint after this step, then stopping", signum)
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type != "cuda" and precision == "fp16":
        raise ValueError("fp16 training needs a CUDA device; use fp32 (or bf16) on the CPU")
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def train(stage, settings: TrainSettings, run_dir: Path, *, device: torch.device = torch.device("cpu"),
          stop_after: int | None = None) -> TrainResult:
    """Run (or resume) `stage` up to `settings.steps` steps, checkpointing into `run_dir`.

    `stop_after`: stop (with a checkpoint) once this process has done that many steps, as if interrupted.
    When all steps are done the EMA (if any) is copied into the weights, and the stage is not exported here:
    call `stage.export` (the CLI does).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    named = stage.trainable()
    params = list(named.values())
    if not params:
        raise ValueError(f"stage {stage.name} has nothing to train")
    decay, no_decay = [], []
    for name, p in named.items():
        (no_decay if p.dim() < 2 or name.endswith(".alpha") else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.999))
    ema = Ema(named, settings.ema_decay) if settings.ema_decay else None
    scaler = torch.amp.GradScaler("cuda") if settings.precision == "fp16" else None
    modules = stage.modules()
    ckpt = run_dir / CHECKPOINT_NAME
    step = 0
    if ckpt.is_file():
        step, extra = load_checkpoint(ckpt, modules=modules, optimizer=optimizer, ema=ema, scaler=scaler)
        logger.info("%s: resumed from %s at step %d", stage.name, ckpt, step)
    losses: list[float] = []
    log_path = run_dir / "log.jsonl"
    last_save = time.monotonic()
    t_log, c_log, n_log, sum_log = time.perf_counter(), time.process_time(), 0, 0.0

    def checkpoint() -> None:
        nonlocal last_save
        save_checkpoint(ckpt, step=step, modules=modules, optimizer=optimizer, ema=ema, scaler=scaler,
                        extra={"settings": json.dumps(dataclasses.asdict(settings))})
        last_save = time.monotonic()

    with _StopFlag() as stop:
        while step < settings.steps:
            lr = settings.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with _autocast(device, settings.precision):
                loss, logs = stage.loss(step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{stage.name}: non-finite loss at step {step} ({logs}); last checkpoint "
                                         f"{ckpt} is intact")
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            step += 1
            value = float(loss.detach())
            losses.append(value)
            sum_log += value
            n_log += 1
            if step % settings.log_every == 0 or step == settings.steps:
                dt = (time.perf_counter() - t_log) / n_log
                cpu = (time.process_time() - c_log) / n_log  # CPU seconds: comparable when the machine is shared
                record = {"stage": stage.name, "step": step, "loss": sum_log / n_log, "lr": lr,
                          "grad_norm": float(grad_norm), "s_per_step": dt, "cpu_s_per_step": cpu, **logs}
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                logger.info("%s step %d/%d loss %.4f lr %.2e %.2f s/step (%.2f CPU s)", stage.name, step,
                            settings.steps, sum_log / n_log, lr, dt, cpu)
                t_log, c_log, n_log, sum_log = time.perf_counter(), time.process_time(), 0, 0.0
            done_here = len(losses)
            if (step % settings.checkpoint_every == 0 or time.monotonic() - last_save > 60 * settings.checkpoint_minutes
                    or stop.requested or (stop_after is not None and done_here >= stop_after)):
                checkpoint()
            if stop.requested or (stop_after is not None and done_here >= stop_after and step < settings.steps):
                return TrainResult(step, losses, False, stopped_by_signal=stop.requested)
    if not losses or step % settings.checkpoint_every:
        checkpoint()
    if ema is not None:
        ema.copy_to_params()
    return TrainResult(step, losses, True)
