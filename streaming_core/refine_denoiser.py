"""The chunked, guided, blended denoiser of the refinement stage (refine_stage.md §12.1, §12.3).

At every solver step the denoiser receives the whole-video model input x̂ `(1, C, N, h, w)` (VP scale, usually
on the CPU) and a k-sigma s. It computes the integer model timestep t = round(s→t(s)), evaluates every chunk of
the `BlendPlan` in order — each chunk alone is moved to the evaluator's device and its x0 moved back — and merges
the chunk predictions with the plan's cuts for this step. Only one chunk is on the accelerator at a time.

`make_guided_evaluator` builds the per-chunk evaluator from a network `model(x, t, context) -> output`: cond and
uncond rows as one batch of 2 (or sequentially in the low-memory mode), guidance with rescale in float32, x0 with
α_t, σ_t at the integer t (§11).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .blending import BlendPlan, merge
from .refine_guidance import guided_x0
from .refine_schedule import NoiseTable

EvalChunk = Callable[[torch.Tensor, int], torch.Tensor]
Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_guided_evaluator(model: Model, cond: torch.Tensor, uncond: torch.Tensor | None, table: NoiseTable,
                          scale: float, rescale: float | None, prediction: str = "v",
                          batch_rows: bool = True, dtype: torch.dtype | None = None) -> EvalChunk:
    """`eval_chunk(x_hat_chunk (1, C, F, h, w), t_int) -> x0_chunk` (float32, on the chunk's device).

    Args:
        model: `model(x, t (B,) int64, context (B, L, D)) -> output` with the shape of x.
        cond, uncond: text features `(1, L, D)`; `uncond` may be None when `scale == 1`.
        table: α/σ tables read at the integer t.
        scale, rescale, prediction: guidance settings (§11).
        batch_rows: evaluate cond and uncond as one batch of 2 (identical results; False halves activations).
        dtype: network input dtype (None: float32); guidance arithmetic is always float32.
    """
    def eval_chunk(x_hat: torch.Tensor, t_int: int) -> torch.Tensor:
        device = x_hat.device
        x_in = x_hat.to(dtype) if dtype is not None else x_hat
        c = cond.to(device, x_in.dtype)
        alpha, sigma = table.alpha_sigma_at(int(t_int))
        if scale == 1.0:
            v_c = model(x_in, torch.tensor([int(t_int)], device=device), c)
            return guided_x0(v_c, None, x_hat, alpha, sigma, scale, rescale, prediction).x0
        u = uncond.to(device, x_in.dtype)
        if batch_rows:
            t = torch.tensor([int(t_int)] * 2, device=device)
            out = model(torch.cat([x_in, x_in]), t, torch.cat([c, u]))
            v_c, v_u = out[:1], out[1:]
        else:
            t = torch.tensor([int(t_int)], device=device)
            v_c = model(x_in, t, c)
            v_u = model(x_in, t, u)
        return guided_x0(v_c, v_u, x_hat, alpha, sigma, scale, rescale, prediction).x0

    return eval_chunk


class ChunkedDenoiser:
    """`denoiser(x_hat, s, step) -> D` (whole video, x̂'s device and float32) for `refine_solver.dpmpp_2m_sde`.

    Args:
        eval_chunk: per-chunk evaluator (`make_guided_evaluator`).
        plan: chunking and blending (`x0_random`, `average`, `hard`; `xt_random` uses `chunk_predictions`
            with `refine_solver.dpmpp_2m_sde_xt_random`).
        table: for t = round(s→t(s)).
        device: where chunks are evaluated (None: x̂'s device).
        cuts: optional override `cuts(step, n) -> [r_0, r_1, …]` (tests inject the official offsets).
        on_chunk: optional callback `on_chunk(step, j, t_int, x0_chunk)` after every chunk evaluation
            (progress, interrupts, recording).
    """

    def __init__(self, eval_chunk: EvalChunk, plan: BlendPlan, table: NoiseTable,
                 device: torch.device | str | None = None,
                 cuts: Callable[[int, int], Sequence[int]] | None = None,
                 on_chunk: Callable[[int, int, int, torch.Tensor], None] | None = None) -> None:
        self.eval_chunk = eval_chunk
        self.plan = plan
        self.table = table
        self.device = torch.device(device) if device is not None else None
        self.cuts = cuts or plan.cuts
        self.on_chunk = on_chunk

    def timestep(self, s: float) -> int:
        """round(s→t(s)) as the network sees it."""
        return int(self.table.model_timestep(torch.tensor([s], dtype=torch.float32))[0])

    def chunk_predictions(self, x_hat: torch.Tensor, s: float, step: int) -> list[torch.Tensor]:
        """x0 of every chunk in plan order, each `(B, C, len, h, w)` float32 on x̂'s device."""
        n = x_hat.shape[2]
        length = self.plan.chunk_length(n)
        t_int = self.timestep(s)
        home = x_hat.device
        target = self.device or home
        preds = []
        for j, a in enumerate(self.plan.starts(n)):
            chunk = x_hat[:, :, a:a + length].to(target, torch.float32)
            x0 = self.eval_chunk(chunk, t_int).to(home, torch.float32)
            del chunk
            if self.on_chunk is not None:
                self.on_chunk(step, j, t_int, x0)
            preds.append(x0)
        return preds

    def __call__(self, x_hat: torch.Tensor, s: float, step: int) -> torch.Tensor:
        n = x_hat.shape[2]
        preds = self.chunk_predictions(x_hat, s, step)
        cuts = None if self.plan.variant == "average" else list(self.cuts(step, n))
        return merge(preds, self.plan.starts(n), n, self.plan.variant, cuts)
