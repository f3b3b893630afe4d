"""Resumable training checkpoints: model tensors, optimizer, EMA, loss scaler, step and RNG states.

A run resumed from a checkpoint computes exactly what the uninterrupted run computes (bit-exact on the CPU; the
per-step data and noise come from generators keyed by the step, `datasets.step_rng`, and the global RNGs are
restored as well for anything else). Files are written to a temporary name and renamed, so an interruption
while saving leaves the previous checkpoint intact. Loading uses `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_NAME = "checkpoint.pt"


def rng_states() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, step: int, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                    ema=None, scaler=None, extra: dict | None = None) -> None:
    """Write the training state after `step` completed steps."""
    payload = {
        "step": step,
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_states(),
        "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, *, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, ema=None,
                    scaler=None) -> tuple[int, dict]:
    """Restore everything `save_checkpoint` wrote; returns (step, extra). Raises KeyError when the checkpoint's
    modules differ from `modules` (a checkpoint of another stage)."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if set(payload["modules"]) != set(modules):
        raise KeyError(f"{path} holds modules {sorted(payload['modules'])}, this stage trains {sorted(modules)}")
    for key, module in modules.items():
        module.load_state_dict(payload["modules"][key])
    optimizer.load_state_dict(payload["optimizer"])
    if ema is not None:
        if payload["ema"] is None:
            raise KeyError(f"{path} has no EMA state but this run uses EMA")
        ema.load_state_dict(payload["ema"])
    if scaler is not None and payload["scaler"] is not None:
        scaler.load_state_dict(payload["scaler"])
    restore_rng_states(payload["rng"])
    return int(payload["step"]), payload["extra"]
