"""DPM++ 2M SDE as the MS-Vid2Vid-XL sampler runs it (refine_stage.md §10.3), its noise sources (§10.4) and the
paper's `xt_random` blending variant (§12.3).

State x lives in variance-exploding scale (x_VE = x_VP/α). For step i with k-sigmas s_i > s_{i+1}:

    x̂   = x / √(s_i² + 1)                               model input (VP scale)
    D_i = denoise(x̂, s_i, i)                             merged x0 prediction
    if s_{i+1} = 0:  x = D_i
    else:  h = ln s_i − ln s_{i+1}
           x = (s_{i+1}/s_i)·e^{−ηh}·x + (1 − e^{−(1+η)h})·D_i
           x += ½(1 − e^{−(1+η)h})·(h/h_prev)·(D_i − D_{i−1})          (i > 0)
           x += s_{i+1}·√(1 − e^{−2ηh})·n_i

Start: `quirk` (official) x = x_t·s_0; `proper` x = x_t/α_{t_start}. Scalars are float32 0-dim tensors combined
in the official order of operations.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

from .blending import BlendPlan, merge

Denoise = Callable[[torch.Tensor, float, int], torch.Tensor]
ChunkDenoise = Callable[[torch.Tensor, float, int], Sequence[torch.Tensor]]
Noise = Callable[[int], torch.Tensor]
OnStep = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]

STARTS = ("quirk", "proper")


def initial_state(x_t: torch.Tensor, sigmas: torch.Tensor, start: str = "quirk",
                  alpha_start: float | torch.Tensor | None = None) -> torch.Tensor:
    """Solver state from the SDEdit latent x_t (VP scale): x_t·s_0 (`quirk`) or x_t/α_{t_start} (`proper`)."""
    if not torch.isfinite(sigmas[0]):
        raise ValueError("the first k-sigma is infinite (t_start = 999); start from a finite noise level")
    if start == "quirk":
        return x_t.float() * sigmas[0].to(x_t.device)
    if start == "proper":
        if alpha_start is None:
            raise ValueError("start='proper' needs alpha_start (α at the SDEdit start timestep)")
        return x_t.float() / torch.as_tensor(alpha_start, dtype=torch.float32).to(x_t.device)
    raise ValueError(f"start must be one of {STARTS}, got {start!r}")


def model_input(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x̂ = x·c_in with c_in = 1/√(s² + 1)."""
    return x * (1 / (s ** 2 + 1.0) ** 0.5).to(x.device)


def dpm_update(x: torch.Tensor, denoised: torch.Tensor, old_denoised: torch.Tensor | None, s: torch.Tensor,
               s_next: torch.Tensor, h_last: torch.Tensor | None, eta: float,
               noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One DPM++ 2M SDE update (midpoint), returning (x_next, h). `s_next == 0` returns `denoised`."""
    if float(s_next) == 0.0:
        return denoised, h_last
    dev = x.device
    h = (-s_next.log()) - (-s.log())
    eta_h = eta * h
    x = (s_next / s * (-eta_h).exp()).to(dev) * x + (-h - eta_h).expm1().neg().to(dev) * denoised
    if old_denoised is not None:
        r = h_last / h
        x = x + (0.5 * (-h - eta_h).expm1().neg() * (1 / r)).to(dev) * (denoised - old_denoised)
    if eta:
        if noise is None:
            raise ValueError("eta > 0 needs a noise tensor for every step that does not end at s = 0")
        x = x + noise.to(dev, x.dtype) * s_next.to(dev) * (-2 * eta_h).expm1().neg().sqrt().to(dev)
    return x, h


def dpmpp_2m_sde(x_t: torch.Tensor, sigmas: torch.Tensor, denoise: Denoise, noise: Noise | None,
                 eta: float = 1.0, start: str = "quirk", alpha_start: float | torch.Tensor | None = None,
                 on_step: OnStep | None = None) -> torch.Tensor:
    """Run the solver from the SDEdit latent `x_t` over `sigmas` (float32, decreasing, usually ending in 0).

    Args:
        x_t: `(B, C, F, h, w)` VP latent at the start timestep; the state stays on its device, float32.
        sigmas: k-sigma list (`refine_schedule.solver_sigmas`).
        denoise: `denoise(x_hat, s_i, i) -> D_i` (whole video, same shape as x_hat).
        noise: `noise(i) -> n_i` (like x) for steps with s_{i+1} > 0; may be None when eta = 0.
        eta: stochasticity (1 = official SDE, 0 = deterministic DPM-Solver++(2M)).
        start, alpha_start: see `initial_state`.
        on_step: `on_step(i, x_hat, D_i, x_after)` after every step (for recording / progress).
    Returns:
        the final state (= D of the last step when the list ends in 0).
    """
    sigmas = sigmas.float().cpu()
    x = initial_state(x_t, sigmas, start, alpha_start)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x_hat = model_input(x, s)
        denoised = denoise(x_hat, float(s), i).to(x.device, torch.float32)
        n = noise(i) if (float(s_next) > 0 and eta) else None
        x, h_last = dpm_update(x, denoised, old_denoised, s, s_next, h_last, eta, n)
        old_denoised = denoised
        if on_step is not None:
            on_step(i, x_hat, denoised, x)
    return x


def dpmpp_2m_sde_xt_random(x_t: torch.Tensor, sigmas: torch.Tensor, denoise_chunks: ChunkDenoise,
                           noise: Noise | None, plan: BlendPlan, eta: float = 1.0, start: str = "quirk",
                           alpha_start: float | torch.Tensor | None = None, on_step: OnStep | None = None,
                           cuts: Callable[[int, int], Sequence[int]] | None = None) -> torch.Tensor:
    """The paper's blending (§12.3 `xt_random`): every chunk advances with its own history D_{i−1}^{(j)} and the
    shared whole-video noise; the chunks' next-step latents are merged with cuts r ∈ {0, …, O_j}
    (`plan.cuts`, or `cuts(step, n)`); the last step returns the merged x0 predictions.

    `denoise_chunks(x_hat, s_i, i)` returns the chunk x0 predictions in plan order. `on_step` receives the
    merged D_i (same cuts) for recording.
    """
    if plan.variant != "xt_random":
        raise ValueError(f"the xt_random solver needs a plan with variant 'xt_random', got {plan.variant!r}")
    sigmas = sigmas.float().cpu()
    n = x_t.shape[2]
    starts = plan.starts(n)
    length = plan.chunk_length(n)
    cut_fn = cuts or plan.cuts
    x = initial_state(x_t, sigmas, start, alpha_start)
    history: list[torch.Tensor | None] = [None] * len(starts)
    h_last = None
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        x_hat = model_input(x, s)
        preds = [p.to(x.device, torch.float32) for p in denoise_chunks(x_hat, float(s), i)]
        if len(preds) != len(starts):
            raise ValueError(f"denoise_chunks returned {len(preds)} chunks, the plan has {len(starts)}")
        r = list(cut_fn(i, n))
        n_i = noise(i) if (float(s_next) > 0 and eta) else None
        advanced, h = [], h_last
        for j, a in enumerate(starts):
            part = None if n_i is None else n_i[:, :, a:a + length]
            nxt, h = dpm_update(x[:, :, a:a + length], preds[j], history[j], s, s_next, h_last, eta, part)
            advanced.append(nxt)
        h_last = h
        x = merge(advanced, starts, n, "xt_random", r)
        history = preds
        if on_step is not None:
            on_step(i, x_hat, merge(preds, starts, n, "xt_random", r), x)
    return x


class BrownianNoise:
    """Official solver noise (§10.4): one `torchsde.BrownianTree` over the whole latent (t0 = smallest positive
    k-sigma, t1 = largest, w0 = zeros like `x`, entropy = seed); n_i = (W(s_{i+1}) − W(s_i))/√|s_{i+1} − s_i|.

    Values depend on shape, dtype and device of `x`. Call `noise(i)` for solver step i.
    """

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seed: int = 0) -> None:
        import torchsde  # a ComfyUI dependency; imported here so the rest of the package does not need it

        self.sigmas = sigmas.float().cpu()
        positive = self.sigmas[self.sigmas > 0]
        if positive.numel() < 2:
            raise ValueError("the Brownian tree needs at least two positive sigmas")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.tree = torchsde.BrownianTree(positive.min(), torch.zeros_like(x), self.sigmas.max(),
                                              entropy=int(seed))

    def between(self, s: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
        lo, hi, sign = (s, s_next, 1) if s < s_next else (s_next, s, -1)
        with warnings.catch_warnings():
            # the float32 sigma list sits a rounding error outside the float64 tree interval (harmless)
            warnings.simplefilter("ignore")
            w = self.tree(lo, hi) * sign
        return w / (s_next - s).abs().sqrt()

    def __call__(self, step: int) -> torch.Tensor:
        return self.between(self.sigmas[step], self.sigmas[step + 1])


def keyed_solver_noise(seed: int, frames: int, shape: Sequence[int]) -> Noise:
    """Default noise source (`noise_source="gaussian"`): n_i frame by frame from the keyed generator
    (stream 2, indices (step, frame)), `(1, shape[0], frames, *shape[1:])` float32 on the CPU."""
    from .keyed_rng import STREAM_SOLVER, keyed_frames_randn

    def noise(step: int) -> torch.Tensor:
        return keyed_frames_randn(seed, STREAM_SOLVER, range(frames), shape, step=step)

    return noise
