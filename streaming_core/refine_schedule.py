"""Noise tables, the solver's sigma list and SDEdit strength of the refinement stage (refine_stage.md §8-§10.1,
§16.1).

Conventions: t is the training timestep (0 … n−1), σ_t / α_t are variance-preserving levels (α² + σ² = 1) and
s_t = σ_t/α_t is the variance-exploding "k-sigma" the solver works with (s_{n−1} = +inf when α_{n−1} = 0).
Every table is float32 and computed with the official sequence of float32 operations: the last entries (α_998,
s_999 = +inf) depend on single-ulp differences, so the order of operations below is part of the contract.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NoiseTable:
    """Per-timestep float32 tables of length n (usually 1000).

    Fields: `sigmas` σ_t, `alphas` α_t, `sigmas_k` s_t; `logsnr_unrescaled` and `sigmas_unrescaled` (before the
    zero-terminal-SNR rescale) for the log-SNR family, None otherwise.
    """

    sigmas: torch.Tensor
    alphas: torch.Tensor
    sigmas_k: torch.Tensor
    logsnr_unrescaled: torch.Tensor | None = None
    sigmas_unrescaled: torch.Tensor | None = None

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.shape[0])

    # -- constructors -------------------------------------------------------------------------------------

    @classmethod
    def from_sigmas(cls, sigmas: torch.Tensor, **extra: torch.Tensor | None) -> "NoiseTable":
        """α = √(1 − σ²), s = √(σ²/(1 − σ²)) in float32 (s = +inf where σ = 1)."""
        sigmas = sigmas.to(torch.float32)
        alphas = torch.sqrt(1 - sigmas ** 2)
        sigmas_k = torch.sqrt(sigmas ** 2 / (1 - sigmas ** 2))
        return cls(sigmas, alphas, sigmas_k, **extra)

    @classmethod
    def logsnr_cosine_interp(cls, n: int = 1000, logsnr_min: float = -15.0, logsnr_max: float = 15.0,
                             scale_min: float = 2.0, scale_max: float = 4.0,
                             zero_terminal_snr: bool = True) -> "NoiseTable":
        """The MS-Vid2Vid-XL schedule (§8): cosine log-SNR, shifted by 2·ln(1/scale) for scale_min and
        scale_max, interpolated from the first (at t = 0) to the second (at t = n−1); σ = √sigmoid(−λ)."""
        u = torch.linspace(1, 0, n)
        theta_a = math.atan(math.exp(-0.5 * logsnr_min))
        theta_b = math.atan(math.exp(-0.5 * logsnr_max))

        def shifted(scale: float) -> torch.Tensor:
            return -2 * torch.log(torch.tan(theta_a + u * (theta_b - theta_a))) + 2 * math.log(1 / scale)

        logsnr = u * shifted(scale_min) + (1 - u) * shifted(scale_max)
        sigmas_unrescaled = torch.sqrt(torch.sigmoid(-logsnr))
        sigmas = sigmas_unrescaled
        if zero_terminal_snr and float(sigmas.max()) != 1.0:
            lo, hi = sigmas.min(), sigmas.max()
            sigmas = lo + (sigmas - lo) * ((1.0 - lo) / (hi - lo))
        return cls.from_sigmas(sigmas, logsnr_unrescaled=logsnr, sigmas_unrescaled=sigmas_unrescaled)

    @classmethod
    def from_betas(cls, beta_start: float, beta_end: float, schedule: str = "scaled_linear",
                   n: int = 1000) -> "NoiseTable":
        """diffusers family (§16.1): β from `scaled_linear` (√β linearly spaced, squared) or `linear`;
        ᾱ = Π(1 − β), σ = √(1 − ᾱ), all float32."""
        if schedule == "scaled_linear":
            betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float32) ** 2
        elif schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
        else:
            raise ValueError(f"unsupported beta_schedule {schedule!r}; expected 'scaled_linear' or 'linear'")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        return cls.from_sigmas(torch.sqrt(1.0 - alphas_cumprod))

    @classmethod
    def from_config(cls, cfg: dict) -> "NoiseTable":
        """From a golden set's `schedule` block (`type` = "logsnr_cosine_interp") or a diffusers
        `scheduler_config.json` (`beta_schedule`, `beta_start`, `beta_end`, `num_train_timesteps`)."""
        if cfg.get("type") == "logsnr_cosine_interp":
            if cfg.get("dtype", "float32") != "float32":
                raise ValueError(f"schedule dtype {cfg['dtype']!r}: the tables are defined in float32")
            return cls.logsnr_cosine_interp(int(cfg.get("n", 1000)), float(cfg.get("logsnr_min", -15)),
                                            float(cfg.get("logsnr_max", 15)), float(cfg.get("scale_min", 2.0)),
                                            float(cfg.get("scale_max", 4.0)), bool(cfg.get("zero_terminal_snr", True)))
        if "beta_schedule" in cfg:
            return cls.from_betas(float(cfg.get("beta_start", 0.00085)), float(cfg.get("beta_end", 0.012)),
                                  cfg["beta_schedule"], int(cfg.get("num_train_timesteps", 1000)))
        raise ValueError(f"unsupported schedule configuration {cfg!r}")

    # -- conversions --------------------------------------------------------------------------------------

    def log_sigmas_k(self) -> torch.Tensor:
        return self.sigmas_k.log()

    def t_to_s(self, t: torch.Tensor) -> torch.Tensor:
        """Continuous timesteps (any shape) -> k-sigmas: ln s interpolated linearly between ⌊t⌋ and ⌈t⌉;
        non-finite results become +inf (t = n−1)."""
        t = torch.as_tensor(t).float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigmas = self.log_sigmas_k().to(t.device)
        log_s = (1 - w) * log_sigmas[low] + w * log_sigmas[high]
        log_s[torch.isnan(log_s) | torch.isinf(log_s)] = float("inf")
        return log_s.exp()

    def s_to_t(self, s: torch.Tensor) -> torch.Tensor:
        """k-sigmas (any shape) -> continuous timesteps: k = largest index ≤ n−2 with ln s_k ≤ ln s (0 if none),
        w = clamp((ln s_k − ln s)/(ln s_k − ln s_{k+1}), 0, 1), t = (1 − w)·k + w·(k + 1); s = +inf -> n−1."""
        s = torch.as_tensor(s).float()
        shape = s.shape
        flat = s.reshape(-1)
        log_sigmas = self.log_sigmas_k().to(flat.device)
        log_s = flat.log()
        dists = log_s[None, :] - log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
        high = low + 1
        lo_v, hi_v = log_sigmas[low], log_sigmas[high]
        w = ((lo_v - log_s) / (lo_v - hi_v)).clamp(0, 1)
        t = (1 - w) * low + w * high
        t = torch.where(torch.isposinf(flat), torch.full_like(t, self.num_timesteps - 1), t)
        return t.reshape(shape)

    def model_timestep(self, s: torch.Tensor) -> torch.Tensor:
        """The integer timestep the network sees for k-sigma s: round(s→t(s)) (half to even), int64."""
        return self.s_to_t(s).round().long()

    def alpha_sigma_at(self, t_int: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_t, σ_t) read from the tables at integer timesteps (same shape as `t_int`, float32)."""
        t = torch.as_tensor(t_int, dtype=torch.long)
        if t.is_floating_point() or bool(((t < 0) | (t >= self.num_timesteps)).any()):
            raise ValueError(f"timesteps must be integers in [0, {self.num_timesteps - 1}], got {t.tolist()}")
        return self.alphas[t.cpu()], self.sigmas[t.cpu()]


def solver_sigmas(table: NoiseTable, t_max: int, t_min: int, steps: int, discretization: str = "trailing",
                  discard_penultimate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The solver's timesteps and k-sigma list (§10.1), as the official sampler builds them.

    `steps + 1` values (when the penultimate is discarded) are spaced by Δ = (t_max − t_min + 1)/(steps + 1):
    `trailing` = `torch.arange(t_max, t_min − 1, −Δ)` clamped to [t_min, t_max] (its length follows torch's
    float64 rule ⌈(t_min − 1 − t_max)/(−Δ)⌉, which for some (t_max, steps), e.g. t_max ∈ {199, 399, 799} with 30
    steps, is one more than steps + 1: the run then makes steps + 1 model evaluations); `leading` and
    `linspace` as in the official code. Their k-sigmas get a 0 appended; then the penultimate entry is dropped.

    Returns (timesteps_all float32, sigmas float32 ending in 0).
    """
    if not 0 <= t_min < t_max < table.num_timesteps:
        raise ValueError(f"need 0 <= t_min < t_max < {table.num_timesteps}, got t_min={t_min}, t_max={t_max}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = steps + (1 if discard_penultimate else 0)
    if discretization == "trailing":
        ts = torch.arange(t_max, t_min - 1, -((t_max - t_min + 1) / n)).clamp(t_min, t_max)
    elif discretization == "leading":
        ts = torch.arange(t_min, t_max + 1, (t_max - t_min + 1) / n).flip(0)
    elif discretization == "linspace":
        ts = torch.linspace(t_max, t_min, n)
    else:
        raise ValueError(f"unknown discretization {discretization!r}; expected trailing, leading or linspace")
    ts = ts.float()
    if ts.shape[0] != n:
        logger.info("timestep arange for t_max=%d, t_min=%d, %d steps has %d values instead of %d "
                    "(official length rule); the run makes %d model evaluations", t_max, t_min, steps,
                    ts.shape[0], n, ts.shape[0] - (1 if discard_penultimate else 0))
    sigmas = torch.cat([table.t_to_s(ts), torch.zeros(1)])
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return ts, sigmas


def sigmas_vp(sigmas_k: torch.Tensor) -> torch.Tensor:
    """VP noise level of each k-sigma, s/√(1 + s²)."""
    return sigmas_k / torch.sqrt(sigmas_k ** 2 + 1)


def strength_to_t_start(strength: float, num_timesteps: int = 1000) -> int:
    """SDEdit start (§9): t_start = round(n·strength) − 1, required in 1 … n−2 (0.6 -> 599)."""
    t = int(round(num_timesteps * float(strength))) - 1
    if not 1 <= t <= num_timesteps - 2:
        lo, hi = 2 / num_timesteps, (num_timesteps - 1) / num_timesteps
        raise ValueError(f"strength {strength} gives t_start {t}; allowed strengths are {lo:g} … {hi:g} "
                         f"(t_start 1 … {num_timesteps - 2})")
    return t


def sdedit_start(x0: torch.Tensor, eps: torch.Tensor, table: NoiseTable, t_start: int) -> torch.Tensor:
    """x_t = α_t·x0 + σ_t·ε at the integer start timestep (one ε over the whole latent)."""
    alpha, sigma = table.alpha_sigma_at(t_start)
    return alpha.to(x0.device) * x0 + sigma.to(x0.device) * eps
